use super::*;
use ferry_release::{ArtifactSpec, Owner};
use ferry_testkit::noise;

/// A packed release of two files (one compressible, one not) and every
/// chunk's bytes.
struct Fixture {
    _dir: tempfile::TempDir,
    out_dir: tempfile::TempDir,
    manifest: Manifest,
    chunks: Vec<(Hash, Vec<u8>)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let apk = dir.path().join("crm.apk");
    std::fs::write(&apk, noise(600_000, 7)).unwrap();
    let api = dir.path().join("openapi.json");
    let text: String = (0..20_000).map(|i| format!("{{\"op\":{i}}},")).collect();
    std::fs::write(&api, &text).unwrap();
    let specs = vec![
        ArtifactSpec { name: Name::parse("artifact", "mobile").unwrap(), platforms: vec![], path: apk.clone() },
        ArtifactSpec { name: Name::parse("artifact", "api").unwrap(), platforms: vec![], path: api.clone() },
    ];
    let mut manifest = ferry_release::pack("1.2.0".parse().unwrap(), &specs, &|_| {}).unwrap();
    manifest.owner =
        Some(Owner { tenant: Name::parse("tenant", "acme").unwrap(), app: Name::parse("app", "crm").unwrap() });
    let mut chunks = Vec::new();
    let mut seen = HashSet::new();
    for artifact in &manifest.artifacts {
        let data = std::fs::read(if artifact.name.as_str() == "mobile" { &apk } else { &api }).unwrap();
        let mut offset = 0;
        for c in &artifact.files[0].chunks {
            if seen.insert(c.hash) {
                chunks.push((c.hash, data[offset..offset + c.len as usize].to_vec()));
            }
            offset += c.len as usize;
        }
    }
    Fixture { _dir: dir, out_dir: tempfile::tempdir().unwrap(), manifest, chunks }
}

fn header(f: &Fixture, chunks: &[(Hash, Vec<u8>)], base: Option<String>) -> BundleHeader {
    BundleHeader {
        tenant: "acme".into(),
        app: "crm".into(),
        version: "1.2.0".into(),
        manifest_id: f.manifest.id().to_string(),
        deploy: true,
        compatible: None,
        base_manifest_id: base,
        chunks: chunks.len() as u64,
        chunk_bytes: chunks.iter().map(|(_, d)| d.len() as u64).sum(),
        created_by: "test".into(),
    }
}

fn write(f: &Fixture, name: &str, chunks: &[(Hash, Vec<u8>)], base: Option<String>) -> PathBuf {
    let out = f.out_dir.path().join(name);
    let mut w = BundleWriter::create(&out, &header(f, chunks, base), &f.manifest.encode()).unwrap();
    for (hash, data) in chunks {
        w.add(hash, data).unwrap();
    }
    w.finish().unwrap();
    out
}

#[test]
fn a_bundle_round_trips_and_compresses_what_it_can() {
    let f = fixture();
    let path = write(&f, "full.ferry", &f.chunks, None);
    let b = Bundle::open(&path).unwrap();
    assert_eq!(b.manifest(), &f.manifest);
    assert_eq!(b.header().chunks, f.chunks.len() as u64);
    let read: Vec<(Hash, Vec<u8>)> = b.chunks(|_| true).unwrap().map(Result::unwrap).collect();
    assert_eq!(read, f.chunks);
    let some: Vec<Hash> = b.chunks(|h| h == &f.chunks[1].0).unwrap().map(|c| c.unwrap().0).collect();
    assert_eq!(some, [f.chunks[1].0]);
    let raw: u64 = f.chunks.iter().map(|(_, d)| d.len() as u64).sum();
    let size = std::fs::metadata(&path).unwrap().len();
    // The JSON compresses well, the noise not at all.
    assert!(size < raw - 200_000, "bundle {size} bytes for {raw} of chunks");
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(f.out_dir.path()).unwrap().count(), 1);
    // It is never overwritten.
    let again = BundleWriter::create(&path, &header(&f, &f.chunks, None), &f.manifest.encode());
    assert_eq!(again.err().unwrap().kind(), io::ErrorKind::AlreadyExists);
}

#[test]
fn every_truncation_and_every_flipped_byte_is_refused() {
    let f = fixture();
    // A small bundle, so that every offset can be tried.
    let part = [f.chunks[0].clone(), f.chunks.last().unwrap().clone()];
    let path = write(&f, "part.ferry", &part, Some("00".repeat(32)));
    let good = std::fs::read(&path).unwrap();
    Bundle::open(&path).unwrap();
    let bad = f.out_dir.path().join("bad.ferry");
    let step = (good.len() / 997).max(1);
    for cut in (0..good.len()).step_by(step) {
        std::fs::write(&bad, &good[..cut]).unwrap();
        let e = Bundle::open(&bad).unwrap_err();
        assert!(
            matches!(e, BundleError::Truncated { .. } | BundleError::NotABundle { .. } | BundleError::Damaged { .. }),
            "cut at {cut}: {e}"
        );
    }
    for at in (0..good.len()).step_by(step) {
        let mut flipped = good.clone();
        flipped[at] ^= 0x40;
        std::fs::write(&bad, &flipped).unwrap();
        assert!(Bundle::open(&bad).is_err(), "a flipped byte at {at} went unnoticed");
    }
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&bad, &longer).unwrap();
    let e = Bundle::open(&bad).unwrap_err().to_string();
    assert!(e.contains("bytes follow the end"), "{e}");
    std::fs::write(&bad, &good[..good.len() - 10]).unwrap();
    let e = Bundle::open(&bad).unwrap_err().to_string();
    assert!(e.contains("truncated") && e.contains("inside the digest") && e.contains("copy it again"), "{e}");
    std::fs::write(&bad, b"PK\x03\x04 something else").unwrap();
    let e = Bundle::open(&bad).unwrap_err().to_string();
    assert!(e.contains("not a Ferry bundle"), "{e}");
}

#[test]
fn a_full_bundle_must_hold_every_chunk_and_only_the_manifests() {
    let f = fixture();
    let e = Bundle::open(&write(&f, "short.ferry", &f.chunks[1..], None)).unwrap_err().to_string();
    assert!(e.contains(&format!("must hold all {} chunks", f.chunks.len())), "{e}");
    let stranger = noise(1000, 99);
    let extra = [(blake3::hash(&stranger), stranger)];
    let e = Bundle::open(&write(&f, "stranger.ferry", &extra, Some("11".repeat(32)))).unwrap_err().to_string();
    assert!(e.contains("is not in the manifest"), "{e}");
    // A chunk whose bytes do not match its hash (written by a liar: the
    // digest is right, the content is not).
    let lie = [(f.chunks[0].0, f.chunks[1].1.clone())];
    let out = f.out_dir.path().join("lie.ferry");
    let mut h = header(&f, &lie, Some("22".repeat(32)));
    h.chunk_bytes = lie[0].1.len() as u64;
    let mut w = BundleWriter::create(&out, &h, &f.manifest.encode()).unwrap();
    w.add(&lie[0].0, &lie[0].1).unwrap();
    w.finish().unwrap();
    let e = Bundle::open(&out).unwrap_err().to_string();
    assert!(e.contains("claims") || e.contains("does not match its hash"), "{e}");
}

#[test]
fn the_header_must_describe_its_manifest() {
    let f = fixture();
    let out = f.out_dir.path().join("other.ferry");
    let mut h = header(&f, &f.chunks, None);
    h.tenant = "globex".into();
    let mut w = BundleWriter::create(&out, &h, &f.manifest.encode()).unwrap();
    for (hash, data) in &f.chunks {
        w.add(hash, data).unwrap();
    }
    w.finish().unwrap();
    let e = Bundle::open(&out).unwrap_err().to_string();
    assert!(e.contains("the manifest is not globex/crm's"), "{e}");
    let out = f.out_dir.path().join("escape.ferry");
    let mut h = header(&f, &f.chunks, None);
    h.created_by = "ferry-agent \u{1b}[2J".into();
    let mut w = BundleWriter::create(&out, &h, &f.manifest.encode()).unwrap();
    for (hash, data) in &f.chunks {
        w.add(hash, data).unwrap();
    }
    w.finish().unwrap();
    let e = Bundle::open(&out).unwrap_err().to_string();
    assert!(e.contains("created_by must be at most 200 printable characters"), "{e}");
}
