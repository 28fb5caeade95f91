//! Storage that does not double (issue 13): once a commit assembles its
//! files, each chunk's bytes live only inside them (`chunk_places`); later
//! releases are assembled from those places, uploads of placed chunks store
//! nothing, tenants still answer only for themselves, and garbage
//! collection of a file takes the chunks that lived only there (keeping a
//! file a publish in progress still needs). Real PostgreSQL and S3.

use std::collections::HashSet;
use std::time::Duration;

use ferry_e2e::{Release, Stack, noise};
use ferry_proto::registry::v1 as pb;
use ferry_release::{Hash, Manifest};

/// (count, bytes) of the objects under `prefix` in the registry's bucket.
async fn objects(stack: &Stack, prefix: &str) -> (usize, u64) {
    let listed = stack.s3.client().list_objects_v2().bucket(stack.blobs.bucket()).prefix(prefix).send().await.unwrap();
    let sizes: Vec<u64> = listed.contents().iter().map(|o| o.size().unwrap_or(0) as u64).collect();
    (sizes.len(), sizes.iter().sum())
}

/// Bytes of the distinct files of these manifests.
fn unique_file_bytes(manifests: &[&Manifest]) -> u64 {
    let mut seen = HashSet::new();
    manifests.iter().flat_map(|m| m.files()).filter(|f| seen.insert(f.hash)).map(|f| f.size).sum()
}

/// Every file of the release downloads whole and hashes to its name.
async fn assert_whole(stack: &Stack, manifest: &Manifest) {
    for file in manifest.files() {
        let bytes = stack.blobs.get_file(&file.hash).await.unwrap();
        assert_eq!(blake3::hash(&bytes), file.hash, "{}", file.path);
    }
}

/// Version 2 of `v1`: 64 KiB of the APK changed and 100 KB appended.
fn edited(v1: &Release, seed: u64) -> Release {
    let v2 = Release::new(1000, seed);
    let mut apk = std::fs::read(&v1.apk).unwrap();
    let at = apk.len() / 2;
    apk[at..at + 65_536].copy_from_slice(&noise(65_536, seed));
    apk.extend_from_slice(&noise(100_000, seed + 1));
    std::fs::write(&v2.apk, apk).unwrap();
    for path in ["assets/app.js", "assets/vendor.js", "index.html"] {
        std::fs::copy(v1.web.join(path), v2.web.join(path)).unwrap();
    }
    std::fs::copy(&v1.api, &v2.api).unwrap();
    v2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_live_in_the_files_that_hold_them() {
    let stack = Stack::start().await;
    let acme = stack.tenant("acme").await;
    let v1 = Release::new(3_000_000, 31);
    let v2 = edited(&v1, 32);
    let (m1, m2) = (v1.manifest("1.0.0"), v2.manifest("2.0.0"));

    // After each commit only the files are stored: no chunk objects.
    stack.publish(&acme, "acme", "1.0.0", &v1.artifacts()).await.unwrap();
    assert_eq!(objects(&stack, "chunks/").await.0, 0);
    assert_eq!(objects(&stack, "files/").await.1, unique_file_bytes(&[&m1]));
    // Version 2 sends only its new chunks; the APK is assembled from the
    // places of the old ones in version 1's APK and the new objects.
    let sent = stack.publish(&acme, "acme", "2.0.0", &v2.artifacts()).await.unwrap();
    let old: HashSet<Hash> = m1.unique_chunks().iter().map(|c| c.hash).collect();
    let new = m2.unique_chunks().iter().filter(|c| !old.contains(&c.hash)).count() as u64;
    assert_eq!(sent.chunks_sent, new);
    assert!(new > 0 && new < sent.chunks_total / 2, "{new} of {}", sent.chunks_total);
    assert_whole(&stack, &m2).await;
    assert_eq!(objects(&stack, "chunks/").await.0, 0);
    let stored = objects(&stack, "files/").await.1;
    assert_eq!(stored, unique_file_bytes(&[&m1, &m2]), "exactly the distinct files");

    // Another tenant uploads every chunk itself (it learns nothing of
    // acme's), yet nothing new is stored; its release checks out whole.
    let globex = stack.tenant("globex").await;
    let g = stack.publish(&globex, "globex", "1.0.0", &v1.artifacts()).await.unwrap();
    assert_eq!(g.chunks_sent, g.chunks_total, "globex must send the bytes too");
    assert_eq!(objects(&stack, "chunks/").await.0, 0);
    assert_eq!(objects(&stack, "files/").await.1, stored);

    // A chunk's recorded place that lies (its bytes are not there) is
    // caught by its hash, never served as the chunk.
    let client = stack.meta.client().await.unwrap();
    let apk = m2.files().find(|f| f.path.as_str() == "crm.apk").unwrap().clone();
    client
        .execute(
            "UPDATE chunk_places SET \"offset\" = \"offset\" + 1 WHERE hash = $1",
            &[&apk.chunks[0].hash.as_bytes().as_slice()],
        )
        .await
        .unwrap();
    let sources = stack.meta.chunk_sources(&[apk.chunks[0].hash]).await.unwrap();
    let err = stack.blobs.verify_file(&apk, &sources).await.unwrap_err();
    assert!(err.to_string().contains("not at its recorded place"), "{err}");
}

/// What a commit that failed after assembling leaves: the files go once no
/// manifest uses them, and the chunks that lived only in them go too (with
/// the claims on them, so the next publish sends them again), unless a
/// publish in progress still needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collecting_a_file_takes_the_chunks_that_lived_only_there() {
    let stack = Stack::start().await;
    let acme = stack.tenant("acme").await;
    let v1 = Release::new(2_000_000, 41);
    let m1 = v1.manifest("1.0.0");
    stack.publish(&acme, "acme", "1.0.0", &v1.artifacts()).await.unwrap();
    // As if the release transaction had failed: files assembled, no
    // release; and all of it an hour old (past the grace period).
    let client = stack.meta.client().await.unwrap();
    client.execute("DELETE FROM releases", &[]).await.unwrap();
    for table in ["files", "tenant_files", "chunks", "tenant_chunks"] {
        let sql = format!("UPDATE {table} SET created_at = now() - interval '1 hour'");
        client.execute(&sql, &[]).await.unwrap();
    }
    client.execute("UPDATE manifests SET touched_at = now() - interval '1 hour'", &[]).await.unwrap();
    let grace = Duration::from_secs(600);

    // A publish in progress of version 2 (prepared, nothing uploaded) uses
    // most of version 1's chunks: the files holding them stay.
    let v2 = edited(&v1, 42);
    let m2 = v2.manifest("2.0.0");
    let mut registry = pb::registry_client::RegistryClient::connect(stack.url.clone()).await.unwrap();
    let mut prepare = tonic::Request::new(pb::PrepareReleaseRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        manifest: m2.encode(),
    });
    prepare.metadata_mut().insert("authorization", format!("Bearer {acme}").parse().unwrap());
    registry.prepare_release(prepare).await.unwrap();
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, grace).await.unwrap();
    assert_eq!(report.manifests, 1, "{report}");
    let apk1 = m1.files().find(|f| f.path.as_str() == "crm.apk").unwrap().hash;
    let kept = stack.meta.files_stored(&[apk1]).await.unwrap();
    assert!(kept.contains(&apk1), "the APK holds chunks version 2 needs: {report}");

    // Version 2 completes from those places.
    let sent = stack.publish(&acme, "acme", "2.0.0", &v2.artifacts()).await.unwrap();
    assert!(sent.chunks_sent < sent.chunks_total / 2, "{} of {}", sent.chunks_sent, sent.chunks_total);
    assert_whole(&stack, &m2).await;

    // With version 2 committed, version 1's own APK is nobody's: it goes,
    // and the chunks only it held go with their claims.
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, Duration::ZERO).await.unwrap();
    assert!(report.files >= 1, "{report}");
    assert!(!stack.meta.files_stored(&[apk1]).await.unwrap().contains(&apk1));
    let only_v1: Vec<Hash> = {
        let in_v2: HashSet<Hash> = m2.unique_chunks().iter().map(|c| c.hash).collect();
        m1.unique_chunks().iter().map(|c| c.hash).filter(|h| !in_v2.contains(h)).collect()
    };
    assert!(!only_v1.is_empty());
    assert!(stack.meta.chunk_sources(&only_v1).await.unwrap().is_empty(), "gone from the store");
    let acme_id = stack.tenant_id("acme").await;
    assert!(stack.meta.tenant_chunks(acme_id, &only_v1).await.unwrap().is_empty(), "and from acme's claims");
    assert_whole(&stack, &m2).await;
    assert_eq!(objects(&stack, "files/").await.1, unique_file_bytes(&[&m2]));

    // Publishing version 1 again sends those chunks again and rebuilds it.
    let again = stack.publish(&acme, "acme", "1.0.0", &v1.artifacts()).await.unwrap();
    assert!(again.chunks_sent as usize >= only_v1.len());
    assert_whole(&stack, &m1).await;
    assert_eq!(objects(&stack, "chunks/").await.0, 0);
}

/// A claimed chunk whose bytes are nowhere (whatever lost them) counts as
/// missing: the next publish sends it again, which repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_without_bytes_is_asked_for_again() {
    let stack = Stack::start().await;
    let acme = stack.tenant("acme").await;
    let v1 = Release::new(2_000_000, 51);
    let v2 = edited(&v1, 52);
    let (m1, m2) = (v1.manifest("1.0.0"), v2.manifest("2.0.0"));
    stack.publish(&acme, "acme", "1.0.0", &v1.artifacts()).await.unwrap();
    let lost = m1.files().find(|f| f.path.as_str() == "crm.apk").unwrap().chunks[0].hash;
    let client = stack.meta.client().await.unwrap();
    let n = client.execute("DELETE FROM chunk_places WHERE hash = $1", &[&lost.as_bytes().as_slice()]).await.unwrap();
    assert!(n > 0);

    let sent = stack.publish(&acme, "acme", "2.0.0", &v2.artifacts()).await.unwrap();
    let old: HashSet<Hash> = m1.unique_chunks().iter().map(|c| c.hash).collect();
    let new = m2.unique_chunks().iter().filter(|c| !old.contains(&c.hash)).count() as u64;
    assert_eq!(sent.chunks_sent, new + 1, "the new chunks and the lost one");
    assert_whole(&stack, &m2).await;
    assert!(matches!(
        stack.meta.chunk_sources(&[lost]).await.unwrap().get(&lost),
        Some(ferry_store::ChunkSource::Place { .. })
    ));
}
