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

/// Ten consecutive public releases of one artifact (`storage`).
pub(crate) struct ReleaseSeries {
    pub(crate) artifact: &'static str,
    pub(crate) kind: &'static str,
    versions: Vec<NpmTarball>,
    /// As [`ReleasePair`]'s.
    path: &'static str,
}

/// A series, fetched and verified: each version's path, oldest first.
pub(crate) struct FetchedSeries {
    pub(crate) artifact: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) label: String,
    pub(crate) versions: Vec<PathBuf>,
}

/// Ten consecutive published versions of a web bundle (preact), and for
/// the full run also of an Android APK (Appium's UiAutomator2 server) and
/// of GitHub's OpenAPI description: the releases the `storage` benchmark
/// publishes one after the other.
fn release_series(quick: bool) -> Vec<ReleaseSeries> {
    let mut out = vec![ReleaseSeries {
        artifact: "web",
        kind: "web bundle directory",
        versions: vec![
            npm("preact", "10.19.0", "6b9d4db96c9a0959f7cdefb0b4d0c94f24d306fe7385344427debab72e32769a"),
            npm("preact", "10.19.1", "1af9d01b33f3b7c2a98b57a9b3d1edfb9b69cb8d2bbce6fd293e8ee3024fef19"),
            npm("preact", "10.19.2", "cb2dfe65736b9cb0c2fb07fd635e65a5331c12e2ef0437988a0a3428caef3638"),
            npm("preact", "10.19.3", "6d3d0157b462a600deb8e061067c350f0243df390b518e1272263168dda667a7"),
            npm("preact", "10.19.4", "bbc3407d9e82715e32cfad0d14fd01acdf9bf64fe457a74cadb96ffcede76a62"),
            npm("preact", "10.19.5", "581fdec330a93bd38d89f3f943e1f89a6974759e34cc634f1423e5bbde846fb9"),
            npm("preact", "10.19.6", "38c28aaaecff743cf6c41aad702c5759664e2665d5824ad27e85b2a1f82c8744"),
            npm("preact", "10.19.7", "4bf9d2fe2573ad116ada99441a2d6cb27a71b9bc895f2e0776c3764aaf0661c7"),
            npm("preact", "10.20.0", "d1abb67b451743002f17fb380c3eaa7a43bd8b487b4900d291366273ef628e72"),
            npm("preact", "10.20.1", "4baf2f1716e3dc0f35ef1eed309abfb452f5dd9de08494d25dd39da26dfd0d2c"),
        ],
        path: "",
    }];
    if !quick {
        out.push(ReleaseSeries {
            artifact: "mobile",
            kind: "Android APK",
            versions: vec![
                npm(
                    "appium-uiautomator2-server",
                    "10.0.0",
                    "e69749b595b18836a542e1668a2bfa310d85ece04f29f6ba5f89f438c3e7d471",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.1.0",
                    "f082a44e40a54bfe56dc08c8f49e651e9c0d9717c2111069ee0560ef4026fa09",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.2.1",
                    "2fec35772d63de721c2d904493c56bee77db46b1711a6d5635dd179293925c1d",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.3.2",
                    "c0419ff49b87239731e77a470476786b797ca3f9fab5cad5c706d34ba457e865",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.3.5",
                    "e40284ca4080696fe49bbc95565d5045db50cc04ee16c2ff9f580c5c07321ad1",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.4.0",
                    "7017060260c5dd985c24f99b952169138792038143fbc5cacd2d7dc67604ad81",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.6.0",
                    "732ea95d61c11b1c4889f9cc9670c03fdd3dad5b6f633b85db91ea37197a5de2",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.6.2",
                    "82d5ec554698c5b01ab58182af6b14c417f6f7fcbac6d62e29e30177ee8abd99",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.6.4",
                    "ace05a701401fa971593ade56440c15b86d7a0bfea373b9dc05c570fb5539b79",
                ),
                npm(
                    "appium-uiautomator2-server",
                    "10.6.6",
                    "359f1c4b5e642b7abbd35a21dbf5c7242d9a9b28aed105563e6a3ce0ae2593bc",
                ),
            ],
            path: "apks/appium-uiautomator2-server-v{v}.apk",
        });
        out.push(ReleaseSeries {
            artifact: "api",
            kind: "API description (OpenAPI JSON)",
            versions: vec![
                npm("@octokit/openapi", "18.0.0", "f5c610a1c9581a2211c79156e1b83c04010bcc836eb8f63a0bc93f7d61179a6b"),
                npm("@octokit/openapi", "18.2.0", "f148ae64ae3b093abcb6865718fbdaa6dd6e937b62d93de6b17651cad6c5b26a"),
                npm("@octokit/openapi", "19.0.0", "488f7aaf2b103d4bea43a84e243c62c4fa1d0463e8e90d53d52a8cd49ba5104e"),
                npm("@octokit/openapi", "19.1.0", "68b891280e92db32b7d5ab8d423e606d5028a84c5be2739753b81a24bb9f11cf"),
                npm("@octokit/openapi", "20.0.0", "cf0c1b450ae7d438e4e73f1c5f6df4f2272a671031f49f8553dbf553ce17f16c"),
                npm("@octokit/openapi", "21.0.0", "9d56d411de758658b9721dac285b5faed73fc196d475d47a81f148c5ba4f12a4"),
                npm("@octokit/openapi", "22.0.0", "d6fd6c17fc7d4b2e56de6253212997d25b18d243b6334a24e2fb09572afcce89"),
                npm("@octokit/openapi", "23.0.0", "2f11493acd75f82fd56ed09df44e64669315285ca9fc74ad1fd43f4a37cbc154"),
                npm("@octokit/openapi", "23.0.1", "74e0c0260658974b1cd08dcb21443344ae4caf341ca626ce3a221bd1292d0c66"),
                npm("@octokit/openapi", "23.0.2", "27922b0fc7b7550d5239150ccc0aab2563b4fbc4f35b6d1996c335e4a3599b45"),
            ],
            path: "generated/api.github.com.json",
        });
    }
    out
}

/// The release series, fetched (once) and verified.
pub(crate) fn fetch_series(quick: bool) -> anyhow::Result<Vec<FetchedSeries>> {
    release_series(quick)
        .into_iter()
        .map(|s| {
            let versions = s.versions.iter().map(|v| fetch(v, s.path)).collect::<anyhow::Result<Vec<_>>>()?;
            let (first, last) = (&s.versions[0], &s.versions[s.versions.len() - 1]);
            Ok(FetchedSeries {
                artifact: s.artifact,
                kind: s.kind,
                label: format!(
                    "`{}` {} → {} ({} versions)",
                    first.package,
                    first.version,
                    last.version,
                    s.versions.len()
                ),
                versions,
            })
        })
        .collect()
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
