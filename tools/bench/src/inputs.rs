//! Benchmark inputs, cached under `target/bench/inputs`: synthetic files and
//! trees (deterministic, made once), and real consecutive releases fetched
//! from the npm registry and checked against pinned BLAKE3 hashes.
//!
//! Every input is made in a temporary path and renamed into place, so an
//! interrupted run never leaves a half-made input that a later run trusts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::procs;

fn inputs_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::bench_dir().join("inputs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A temporary sibling of `path`, removed first if an earlier run left it.
fn staging(path: &Path) -> anyhow::Result<PathBuf> {
    let tmp = path.with_extension("partial");
    if tmp.is_dir() {
        std::fs::remove_dir_all(&tmp)?;
    } else if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    Ok(tmp)
}

/// Deterministic incompressible bytes (xorshift64), like a packed binary.
pub(crate) struct Noise(u64);

impl Noise {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// Writes `size` bytes of noise from `seed` to `path` (not cached: for
/// inputs that must be new to the registry on every run).
pub(crate) fn write_noise(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let mut noise = Noise::new(seed);
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        noise.fill(&mut block[..n]);
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// A cached file of `size` pseudo-random bytes.
pub(crate) fn random_file(size: u64) -> anyhow::Result<PathBuf> {
    let path = inputs_dir()?.join(format!("random-{}MiB.bin", size >> 20));
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
        let tmp = staging(&path)?;
        write_noise(&tmp, size, 1)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// A cached directory of `files` files, 100 per subdirectory, sized
/// log-uniformly between 100 bytes and 32 KiB (about 5.6 KiB on average:
/// the shape of a web bundle's assets).
pub(crate) fn tree(files: usize, seed: u64) -> anyhow::Result<PathBuf> {
    let path = inputs_dir()?.join(format!("tree-{files}-{seed}"));
    if path.is_dir() {
        return Ok(path);
    }
    let tmp = staging(&path)?;
    let mut noise = Noise::new(seed);
    let mut buf = vec![0u8; 32 * 1024];
    for i in 0..files {
        let dir = tmp.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        // 100 · 327.68^u for u uniform in [0, 1): log-uniform in [100, 32768).
        let u = (noise.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let len = (100.0 * 327.68f64.powf(u)) as usize;
        noise.fill(&mut buf[..len]);
        std::fs::write(dir.join(format!("f{i:06}.js")), &buf[..len])?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Reads every file below `path` once, so timings start from a warm page
/// cache for every contender alike.
pub(crate) fn warm(path: &Path) -> anyhow::Result<u64> {
    if path.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(path)? {
            total += warm(&entry?.path())?;
        }
        Ok(total)
    } else {
        Ok(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?.len() as u64)
    }
}

/// Total bytes of the files below `path`.
pub(crate) fn size(path: &Path) -> anyhow::Result<u64> {
    if path.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(path)? {
            total += size(&entry?.path())?;
        }
        Ok(total)
    } else {
        Ok(std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len())
    }
}

/// One npm package version whose tarball is pinned by BLAKE3 (npm never
/// lets a published version change, so a mismatch means a corrupt
/// download or a tampering mirror).
struct NpmTarball {
    package: &'static str,
    version: &'static str,
    blake3: &'static str,
}

/// Two consecutive public releases of one artifact.
pub(crate) struct ReleasePair {
    /// The artifact's name in the published release (`mobile`, `web`, `api`).
    pub(crate) artifact: &'static str,
    /// What it is, for the report.
    pub(crate) kind: &'static str,
    v1: NpmTarball,
    v2: NpmTarball,
    /// The file or directory inside the package (`{v}` is the version);
    /// empty for the whole package.
    path: &'static str,
}

/// Fetched and verified pair: the artifact's two versions on disk.
pub(crate) struct FetchedPair {
    pub(crate) artifact: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) label: String,
    pub(crate) v1: PathBuf,
    pub(crate) v2: PathBuf,
}

const fn npm(package: &'static str, version: &'static str, blake3: &'static str) -> NpmTarball {
    NpmTarball { package, version, blake3 }
}

/// Real releases: an Android APK (Appium's UiAutomator2 server, 18 MB), a
/// web bundle directory (react-dom) and a large API description (GitHub's
/// OpenAPI, 13 MB); smaller ones of each kind for quick mode.
fn release_pairs(quick: bool) -> Vec<ReleasePair> {
    if quick {
        vec![
            ReleasePair {
                artifact: "mobile",
                kind: "Android APK",
                v1: npm(
                    "io.appium.settings",
                    "8.0.9",
                    "592c1f285674a6b601ad2f4107545339e684a1f0748a7ec6d94af0164f841dfd",
                ),
                v2: npm(
                    "io.appium.settings",
                    "8.0.10",
                    "7afa81648232f3e97993b386d303846b8dc3f9f9320d515532b977e23d057685",
                ),
                path: "apks/settings_apk-debug.apk",
            },
            ReleasePair {
                artifact: "web",
                kind: "web bundle directory",
                v1: npm("preact", "10.19.2", "cb2dfe65736b9cb0c2fb07fd635e65a5331c12e2ef0437988a0a3428caef3638"),
                v2: npm("preact", "10.19.3", "6d3d0157b462a600deb8e061067c350f0243df390b518e1272263168dda667a7"),
                path: "",
            },
            ReleasePair {
                artifact: "api",
                kind: "API description (OpenAPI JSON)",
                v1: npm(
                    "@readme/oas-examples",
                    "7.0.0",
                    "8da67db881bb941d14498306474bc3a9579ea9c52d6935d6885995c1b3b5aa50",
                ),
                v2: npm(
                    "@readme/oas-examples",
                    "7.2.0",
                    "2ec8fb694d8826b13830be55130a122e39313ae133afe1e855331d5eb31e4cfd",
                ),
                path: "3.0/json/schema-additional-properties.json",
            },
        ]
    } else {
        vec![
            ReleasePair {
                artifact: "mobile",
                kind: "Android APK",
                v1: npm(
                    "appium-uiautomator2-server",
                    "10.6.4",
                    "ace05a701401fa971593ade56440c15b86d7a0bfea373b9dc05c570fb5539b79",
                ),
                v2: npm(
                    "appium-uiautomator2-server",
                    "10.6.6",
                    "359f1c4b5e642b7abbd35a21dbf5c7242d9a9b28aed105563e6a3ce0ae2593bc",
                ),
                path: "apks/appium-uiautomator2-server-v{v}.apk",
            },
            ReleasePair {
                artifact: "web",
                kind: "web bundle directory",
                v1: npm("react-dom", "18.2.0", "8ec909ead8436f59915d3c1f484bab0043c6ae7aea4166d066616f48ed56ee6c"),
                v2: npm("react-dom", "18.3.1", "524fcc5c05e3f8907d6f3e9a60cd18a01f5d418af3553dedcfa50a214301bffd"),
                path: "",
            },
            ReleasePair {
                artifact: "api",
                kind: "API description (OpenAPI JSON)",
                v1: npm(
                    "@octokit/openapi",
                    "23.0.1",
                    "74e0c0260658974b1cd08dcb21443344ae4caf341ca626ce3a221bd1292d0c66",
                ),
                v2: npm(
                    "@octokit/openapi",
                    "23.0.2",
                    "27922b0fc7b7550d5239150ccc0aab2563b4fbc4f35b6d1996c335e4a3599b45",
                ),
                path: "generated/api.github.com.json",
            },
        ]
    }
}

/// The release pairs, fetched (once) and verified.
pub(crate) fn fetch_pairs(quick: bool) -> anyhow::Result<Vec<FetchedPair>> {
    release_pairs(quick)
        .into_iter()
        .map(|p| {
            let v1 = fetch(&p.v1, p.path)?;
            let v2 = fetch(&p.v2, p.path)?;
            Ok(FetchedPair {
                artifact: p.artifact,
                kind: p.kind,
                label: format!(
                    "`{}` {} → {}{}",
                    p.v1.package,
                    p.v1.version,
                    p.v2.version,
                    if p.path.is_empty() { String::new() } else { format!(", `{}`", p.path.replace("{v}", "V")) }
                ),
                v1,
                v2,
            })
        })
        .collect()
}

/// The npm registry to fetch from: `FERRY_BENCH_NPM_REGISTRY` (a mirror),
/// else the public one. curl honours `HTTPS_PROXY`.
fn registry() -> String {
    std::env::var("FERRY_BENCH_NPM_REGISTRY")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "https://registry.npmjs.org".into())
        .trim_end_matches('/')
        .to_owned()
}

/// The path of `inner` inside the extracted `tarball`, fetching and
/// extracting it first if needed.
fn fetch(tarball: &NpmTarball, inner: &str) -> anyhow::Result<PathBuf> {
    let name = tarball.package.rsplit('/').next().expect("split yields one");
    let slug = format!("{}-{}", tarball.package.replace('/', "+"), tarball.version);
    let dir = inputs_dir()?.join("npm").join(&slug);
    let inner = inner.replace("{v}", tarball.version);
    let target = if inner.is_empty() { dir.join("package") } else { dir.join("package").join(&inner) };
    if target.exists() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir.parent().expect("has a parent"))?;
    let tmp = staging(&dir)?;
    std::fs::create_dir_all(&tmp)?;
    let tgz = tmp.join("package.tgz");
    let url = format!("{}/{}/-/{name}-{}.tgz", registry(), tarball.package, tarball.version);
    eprintln!("    fetching {url}");
    procs::run(procs::command("curl")?.args(["-sSfL", "--retry", "3", "-o"]).arg(&tgz).arg(&url))
        .with_context(|| format!("fetching benchmark input {}@{}", tarball.package, tarball.version))?;
    let hash = blake3::hash(&std::fs::read(&tgz)?).to_hex();
    if hash.as_str() != tarball.blake3 {
        bail!(
            "{url} has BLAKE3 {hash}, expected {}: a corrupt download or a mirror serving other bytes",
            tarball.blake3
        );
    }
    let member = if inner.is_empty() { "package".to_owned() } else { format!("package/{inner}") };
    procs::run(procs::command("tar")?.arg("xzf").arg(&tgz).arg("-C").arg(&tmp).arg(&member))
        .with_context(|| format!("extracting {member} from {url}"))?;
    std::fs::remove_file(&tgz)?;
    std::fs::rename(&tmp, &dir)?;
    if !target.exists() {
        bail!("{url} holds no {member}");
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_seeded() {
        let (mut a, mut b, mut c) = (vec![0u8; 1001], vec![0u8; 1001], vec![0u8; 1001]);
        Noise::new(7).fill(&mut a);
        Noise::new(7).fill(&mut b);
        Noise::new(8).fill(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Not trivially compressible: no byte value dominates.
        let zeros = a.iter().filter(|&&x| x == 0).count();
        assert!(zeros < 30, "{zeros}");
    }

    #[test]
    fn every_pair_is_pinned_to_a_full_blake3() {
        for quick in [true, false] {
            for p in release_pairs(quick) {
                for t in [&p.v1, &p.v2] {
                    assert_eq!(t.blake3.len(), 64, "{}@{}", t.package, t.version);
                    assert!(t.blake3.bytes().all(|b| b.is_ascii_hexdigit()), "{}@{}", t.package, t.version);
                }
                assert_ne!(p.v1.version, p.v2.version);
            }
        }
    }
}
