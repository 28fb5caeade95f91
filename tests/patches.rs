//! Binary patches end to end (issue 13): a deploy queues patches between the
//! new release and the ones clients run, in both directions; the registry's
//! worker makes and checks them; the gateway offers them beside the whole
//! files; the reference client downloads a patch instead of a file, and
//! falls back to the whole file when a patch is damaged. Real PostgreSQL,
//! S3 (SigV4) and HTTP throughout.

use std::path::Path;

use bytes::Bytes;
use ferry_client::{Action, Cache, Client, Config};
use ferry_e2e::{GatewayHandle, Release, Stack, noise, publish_to};
use ferry_gateway::GatewayConfig;
use ferry_release::{Hash, Name};
use serde_json::Value;

struct Env {
    stack: Stack,
    gw: GatewayHandle,
    agent: String,
    key: String,
}

async fn env() -> Env {
    let stack = Stack::start().await;
    let agent = stack.tenant("acme").await;
    let unlimited = ferry_gateway::Rate { per_second: 1e6, burst: 1_000_000 };
    let gw = stack.gateway(GatewayConfig { device_rate: unlimited, ..GatewayConfig::default() }).await;
    let key = stack.client_key("acme").await;
    Env { stack, gw, agent, key }
}

impl Env {
    fn client(&self, device: &str) -> Client {
        let mut config = Config::new(&self.gw.http, &self.key, "acme", "crm");
        config.device_id = Some(device.to_owned());
        Client::new(config).unwrap()
    }

    /// The gateway's answer to a check of acme's crm with `query` added.
    async fn answer(&self, query: &[(&str, &str)]) -> Value {
        ferry_testkit::http()
            .get(format!("{}/v1/check", self.gw.http))
            .query(&[("tenant", "acme"), ("app", "crm")])
            .query(query)
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Publishes (or deploys again) `version` and waits until the gateway
    /// answers with it.
    async fn deploy(&self, version: &str, release: Option<&Release>) {
        let mut applied = self.gw.gateway.applied();
        let conn = self.stack.connection(&self.agent);
        match release {
            Some(release) => {
                publish_to(&conn, "acme", version, &release.artifacts(), true).await.unwrap();
            }
            None => {
                let (tenant, app) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
                ferry_agent::deploy(&conn, &tenant, &app, &version.parse().unwrap()).await.unwrap();
            }
        }
        let probe = self.client("deploy-probe");
        let seen = async {
            while probe.check("0.0.0-0", None).await.unwrap().target != version {
                let _ = applied.recv().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), seen).await.expect("the gateway sees the deploy");
    }
}

/// Version 2 of `v1`'s files: 20 KB of the 1 MB APK and 10 KB of app.js
/// changed; everything else the same.
fn edited(v1: &Release) -> Release {
    let v2 = Release::new(1_000_000, 7);
    let mut apk = std::fs::read(&v1.apk).unwrap();
    apk[600_000..620_000].copy_from_slice(&noise(20_000, 70));
    std::fs::write(&v2.apk, apk).unwrap();
    let mut app = std::fs::read(v1.web.join("assets/app.js")).unwrap();
    app[100_000..110_000].copy_from_slice(&noise(10_000, 71));
    std::fs::write(v2.web.join("assets/app.js"), app).unwrap();
    v2
}

fn hash(path: &Path) -> Hash {
    Hash::from_bytes(*blake3::hash(&std::fs::read(path).unwrap()).as_bytes())
}

/// The patch stored from `base` to `target`: (its hash, size).
async fn stored_patch(stack: &Stack, base: &Path, target: &Path) -> (Hash, u64) {
    let client = stack.meta.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT patch_hash, size FROM patches WHERE base_hash = $1 AND target_hash = $2",
            &[&hash(base).as_bytes().as_slice(), &hash(target).as_bytes().as_slice()],
        )
        .await
        .unwrap();
    (Hash::from_bytes(<[u8; 32]>::try_from(row.get::<_, &[u8]>(0)).unwrap()), row.get::<_, i64>(1) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_are_made_offered_and_applied_in_both_directions() {
    let env = env().await;
    let v1 = Release::new(1_000_000, 7);
    let v2 = edited(&v1);
    env.deploy("1.0.0", Some(&v1)).await;
    // Nothing to patch from; the two scripts are tried compressed (noise:
    // not worth it, skipped).
    assert_eq!(env.stack.make_patches().await, 2);

    // A phone on 1.0.0 (and one that will start on 2.0.0).
    let (phone, cache_dir) = (env.client("phone-1"), tempfile::tempdir().unwrap());
    let cache = Cache::open(cache_dir.path()).unwrap();
    phone.sync(&cache).await.unwrap();
    let v1_id = cache.current().unwrap().unwrap().manifest_id;

    // Deploying 2.0.0 queues the APK and app.js, both ways (and the new
    // app.js compressed); the small API file (under 4 KiB) and the
    // unchanged files get none.
    env.deploy("2.0.0", Some(&v2)).await;
    assert_eq!(env.stack.make_patches().await, 5);
    let counts = env.stack.meta.patch_job_counts().await.unwrap();
    assert_eq!((counts.get("done"), counts.get("skipped")), (Some(&4), Some(&3)), "{counts:?}");

    // The gateway offers them beside the whole files.
    let answer = env.answer(&[("version", "1.0.0"), ("have", v1_id.as_str())]).await;
    let files = answer["artifacts"].as_array().unwrap();
    let patched: Vec<(&str, &Value)> =
        files.iter().filter_map(|f| Some((f["path"].as_str().unwrap(), f.get("patch")?))).collect();
    let names: Vec<&str> = patched.iter().map(|(p, _)| *p).collect();
    assert_eq!(names.len(), 2, "{answer}");
    assert!(names.contains(&"crm.apk") && names.contains(&"assets/app.js"), "{names:?}");
    let mut patch_bytes = 0;
    for (path, offer) in &patched {
        let (base, target) =
            if *path == "crm.apk" { (v1.apk.clone(), v2.apk.clone()) } else { (v1.web.join(path), v2.web.join(path)) };
        assert_eq!(offer["algorithm"], "zstd-ref");
        assert_eq!(offer["base_blake3"].as_str().unwrap(), hash(&base).to_hex().as_str());
        let body =
            ferry_testkit::http().get(offer["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len() as u64, offer["size"].as_u64().unwrap());
        assert_eq!(blake3::hash(&body).to_hex().as_str(), offer["blake3"].as_str().unwrap());
        let target_bytes = std::fs::read(&target).unwrap();
        assert!(body.len() * 10 < target_bytes.len(), "{path}: a {} byte patch", body.len());
        let rebuilt = ferry_patch::apply_to_vec(
            &std::fs::read(&base).unwrap(),
            &body,
            &blake3::hash(&target_bytes),
            target_bytes.len() as u64,
        )
        .unwrap();
        assert!(rebuilt == target_bytes, "{path} rebuilt");
        patch_bytes += body.len() as u64;
    }

    // The phone upgrades by patch: it downloads exactly the patches.
    let synced = phone.sync(&cache).await.unwrap();
    assert_eq!((synced.action, synced.switched), (Action::Upgrade, true));
    assert_eq!((synced.patched_files, synced.downloaded_files), (2, 2));
    assert_eq!(synced.downloaded_bytes, patch_bytes);
    let current = cache.current().unwrap().unwrap();
    assert_eq!(current.version, "2.0.0");
    cache.verify(&current.manifest_id).unwrap();

    // A phone that starts on 2.0.0 holds no 1.0.0: rolling back is by patch
    // too, except where a patch is damaged, which costs only the patch.
    let (other, other_dir) = (env.client("phone-2"), tempfile::tempdir().unwrap());
    let other_cache = Cache::open(other_dir.path()).unwrap();
    other.sync(&other_cache).await.unwrap();
    env.deploy("1.0.0", None).await;
    assert_eq!(env.stack.make_patches().await, 0, "patches back were made with the first deploy of 2.0.0");
    let (damaged, size) = stored_patch(&env.stack, &v2.apk, &v1.apk).await;
    env.stack.blobs.put_patch(&damaged, Bytes::from(noise(size as usize, 99))).await.unwrap();
    let synced = other.sync(&other_cache).await.unwrap();
    assert_eq!((synced.action, synced.switched), (Action::Downgrade, true));
    assert_eq!((synced.patched_files, synced.downloaded_files), (1, 2), "app.js by patch, the APK whole");
    let (_, app_patch) = stored_patch(&env.stack, &v2.web.join("assets/app.js"), &v1.web.join("assets/app.js")).await;
    assert_eq!(synced.downloaded_bytes, size + app_patch + std::fs::metadata(&v1.apk).unwrap().len());
    let current = other_cache.current().unwrap().unwrap();
    assert_eq!(current.version, "1.0.0");
    other_cache.verify(&current.manifest_id).unwrap();
}

/// An API description of `entries` operations: text that compresses well.
fn api_description(entries: usize, revision: usize) -> Vec<u8> {
    let mut out = String::from("{\"openapi\":\"3.1.0\",\"paths\":{");
    for i in 0..entries {
        out.push_str(&format!(
            "\"/v{revision}/items/{i}\":{{\"get\":{{\"operationId\":\"getItem{i}\",\"summary\":\"Item {i} of the catalogue\",\
             \"responses\":{{\"200\":{{\"description\":\"the item, revision {}\"}}}}}}}},",
            i % 7
        ));
    }
    out.push_str("\"/\":{}}}");
    out.into_bytes()
}

/// Text-like files are stored compressed and offered beside the whole
/// file to every client; a phone downloads the compressed bytes, and a
/// damaged copy costs only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_files_are_offered_compressed() {
    let env = env().await;
    let v1 = Release::new(100_000, 21);
    let api = api_description(3_000, 1);
    std::fs::write(&v1.api, &api).unwrap();
    env.deploy("1.0.0", Some(&v1)).await;
    // openapi.json, app.js and vendor.js are text by name; only the API
    // description shrinks (the scripts are noise here). The list the
    // gateway built while they were queued is built again on the notice.
    let mut applied = env.gw.gateway.applied();
    assert_eq!(env.stack.make_patches().await, 3);
    let notice = async { while applied.recv().await.unwrap() != ferry_store::Change::Patches {} };
    tokio::time::timeout(std::time::Duration::from_secs(30), notice).await.expect("the gateway hears of the patch");
    let counts = env.stack.meta.patch_job_counts().await.unwrap();
    assert_eq!((counts.get("done"), counts.get("skipped")), (Some(&1), Some(&2)), "{counts:?}");

    let answer = env.answer(&[("version", "0.1.0")]).await;
    let files = answer["artifacts"].as_array().unwrap();
    let offered: Vec<&Value> = files.iter().filter(|f| f.get("compressed").is_some()).collect();
    assert_eq!(offered.len(), 1, "{answer}");
    let (file, offer) = (offered[0], &offered[0]["compressed"]);
    assert_eq!((file["kind"].as_str(), file["path"].as_str()), (Some("api"), Some("openapi.json")));
    assert_eq!(file["blake3"].as_str().unwrap(), blake3::hash(&api).to_hex().as_str(), "the file's own hash");
    assert_eq!(offer["encoding"], "zstd");
    let body = ferry_testkit::http().get(offer["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len() as u64, offer["size"].as_u64().unwrap());
    assert_eq!(blake3::hash(&body).to_hex().as_str(), offer["blake3"].as_str().unwrap());
    assert!(body.len() * 5 < api.len(), "{} compressed bytes for {}", body.len(), api.len());
    // Any zstd decoder reads it, without a dictionary.
    assert!(zstd::stream::decode_all(body.as_ref()).unwrap() == api);

    // A new phone downloads the API description compressed, the rest whole.
    let whole = |r: &Release| -> u64 {
        [r.apk.clone(), r.web.join("index.html"), r.web.join("assets/app.js"), r.web.join("assets/vendor.js")]
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let (phone, dir) = (env.client("phone-1"), tempfile::tempdir().unwrap());
    let cache = Cache::open(dir.path()).unwrap();
    let synced = phone.sync(&cache).await.unwrap();
    assert_eq!((synced.compressed_files, synced.patched_files, synced.downloaded_files), (1, 0, 5));
    assert_eq!(synced.downloaded_bytes, whole(&v1) + body.len() as u64);
    let current = cache.current().unwrap().unwrap();
    cache.verify(&current.manifest_id).unwrap();

    // A damaged compressed copy: the phone falls back to the whole file.
    let stored = Hash::from_hex(offer["blake3"].as_str().unwrap()).unwrap();
    env.stack.blobs.put_patch(&stored, Bytes::from(noise(body.len(), 5))).await.unwrap();
    let (other, other_dir) = (env.client("phone-2"), tempfile::tempdir().unwrap());
    let other_cache = Cache::open(other_dir.path()).unwrap();
    let synced = other.sync(&other_cache).await.unwrap();
    assert_eq!((synced.compressed_files, synced.downloaded_files), (0, 5));
    assert_eq!(synced.downloaded_bytes, whole(&v1) + body.len() as u64 + api.len() as u64);
    other_cache.verify(&other_cache.current().unwrap().unwrap().manifest_id).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_not_clearly_smaller_is_not_offered() {
    let env = env().await;
    let v1 = Release::new(200_000, 11);
    env.deploy("1.0.0", Some(&v1)).await;
    // Unrelated bytes: a patch would be as large as the file.
    let v2 = Release::new(200_000, 12);
    env.deploy("2.0.0", Some(&v2)).await;
    assert!(env.stack.make_patches().await > 0);
    let counts = env.stack.meta.patch_job_counts().await.unwrap();
    assert!(!counts.contains_key("done") && counts.get("skipped").is_some_and(|n| *n > 0), "{counts:?}");
    let client = env.stack.meta.client().await.unwrap();
    let offered: i64 = client.query_one("SELECT count(*) FROM patches", &[]).await.unwrap().get(0);
    assert_eq!(offered, 0);
}

/// The queue's leases: a job whose lease ran out is taken again, the
/// worker that lost it cannot change its state, a job tried too often is
/// given up, and a later deploy queues it again.
#[tokio::test]
async fn patch_jobs_are_leased_taken_over_given_up_and_queued_again() {
    use ferry_store::{PatchOutcome, PatchPair};
    use std::time::Duration;
    let stack = Stack::start().await;
    let meta = &stack.meta;
    let h = |seed: u8| Hash::from_bytes([seed; 32]);
    let pair = PatchPair { base: h(1), base_location_id: None, target: h(2), target_location_id: None };
    assert_eq!(meta.enqueue_patches(&[pair, pair]).await.unwrap(), 1, "one job per pair");
    assert_eq!(meta.enqueue_patches(&[pair]).await.unwrap(), 0);

    // A lease of zero has run out at once: the job is anyone's again.
    let first = meta.take_patch_job(Duration::ZERO, 3).await.unwrap().expect("a job");
    let second = meta.take_patch_job(Duration::ZERO, 3).await.unwrap().expect("the same job, taken over");
    assert_eq!((first.id, first.attempts, second.attempts), (second.id, 1, 2));
    assert!(!meta.renew_patch_lease(&first, Duration::from_secs(60)).await.unwrap(), "the first lost its lease");
    let failed = PatchOutcome::Failed { error: "late".into(), retry_in: Duration::ZERO, give_up: true };
    assert!(!meta.finish_patch_job(&first, &failed).await.unwrap(), "a stale worker changes nothing");
    assert_eq!(meta.patch_job_counts().await.unwrap().get("pending"), Some(&1));

    // Tried as often as allowed: given up when next looked at.
    let third = meta.take_patch_job(Duration::ZERO, 3).await.unwrap().expect("a third attempt");
    assert_eq!(third.attempts, 3);
    assert!(meta.take_patch_job(Duration::ZERO, 3).await.unwrap().is_none());
    assert_eq!(meta.patch_job_counts().await.unwrap().get("failed"), Some(&1));

    // A later deploy queues it again, from the start.
    assert_eq!(meta.enqueue_patches(&[pair]).await.unwrap(), 1);
    let again = meta.take_patch_job(Duration::from_secs(60), 3).await.unwrap().expect("queued again");
    assert_eq!(again.attempts, 1);
    assert!(meta.take_patch_job(Duration::from_secs(60), 3).await.unwrap().is_none(), "leased: nobody else gets it");
    assert!(meta.renew_patch_lease(&again, Duration::from_secs(60)).await.unwrap());
    let made = PatchOutcome::Made { algorithm: "zstd-ref".into(), hash: h(3), size: 10 };
    assert!(meta.finish_patch_job(&again, &made).await.unwrap());
    let (offered, pending) = meta.patches_for(&[(h(1), h(2))]).await.unwrap();
    assert_eq!((offered.len(), pending), (1, 0));
    assert_eq!(meta.enqueue_patches(&[pair]).await.unwrap(), 0, "done jobs stay done");
}

/// Once an app deploys another release, patches between releases that are
/// neither the deployed one nor its bases are collected (rows, jobs and
/// objects); deploying an old release again makes its patches anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_no_client_is_offered_are_collected() {
    let env = env().await;
    let v1 = Release::new(1_000_000, 7);
    let v2 = edited(&v1);
    let v3 = Release::new(1_000_000, 9);
    let mut apk = std::fs::read(&v2.apk).unwrap();
    apk[200_000..230_000].copy_from_slice(&noise(30_000, 90));
    std::fs::write(&v3.apk, apk).unwrap();
    for path in ["index.html", "assets/app.js", "assets/vendor.js"] {
        std::fs::copy(v2.web.join(path), v3.web.join(path)).unwrap();
    }
    env.deploy("1.0.0", Some(&v1)).await;
    env.deploy("2.0.0", Some(&v2)).await;
    env.deploy("3.0.0", Some(&v3)).await;
    env.stack.make_patches().await;
    let (meta, blobs) = (&env.stack.meta, &env.stack.blobs);
    let pairs = |rows: Vec<tokio_postgres::Row>| -> Vec<(Hash, Hash)> {
        rows.iter()
            .map(|r| {
                let h = |i| Hash::from_bytes(<[u8; 32]>::try_from(r.get::<_, &[u8]>(i)).unwrap());
                (h(0), h(1))
            })
            .collect()
    };
    let client = meta.client().await.unwrap();
    let before = pairs(client.query("SELECT base_hash, target_hash FROM patches", &[]).await.unwrap());
    let (a1, a2, a3) = (hash(&v1.apk), hash(&v2.apk), hash(&v3.apk));
    for pair in [(a1, a2), (a2, a1), (a2, a3), (a3, a2), (a1, a3), (a3, a1)] {
        assert!(before.contains(&pair), "{pair:?} made");
    }

    // With one base, 3.0.0's window is 3.0.0 and 2.0.0: every patch from
    // or to 1.0.0 goes (the app.js ones too), with its job and object.
    let report = ferry_store::collect_patches(meta, blobs, 1, std::time::Duration::ZERO).await.unwrap();
    let after = pairs(client.query("SELECT base_hash, target_hash FROM patches", &[]).await.unwrap());
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&(a2, a3)) && after.contains(&(a3, a2)), "{after:?}");
    assert_eq!(report.patches as usize, before.len() - 2, "{report}");
    let listed =
        env.stack.s3.client().list_objects_v2().bucket(blobs.bucket()).prefix("patches/").send().await.unwrap();
    assert_eq!(listed.key_count().unwrap_or(0), 2, "objects of collected patches are deleted");
    let jobs: i64 = client
        .query_one(
            "SELECT count(*) FROM patch_jobs WHERE base_hash = $1 OR target_hash = $1",
            &[&a1.as_bytes().as_slice()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 0);
    let again = ferry_store::collect_patches(meta, blobs, 1, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(again.patches, 0, "{again}");

    // Rolling back to 1.0.0 makes its patches again.
    env.deploy("1.0.0", None).await;
    assert!(env.stack.make_patches().await >= 4);
    let now = pairs(client.query("SELECT base_hash, target_hash FROM patches", &[]).await.unwrap());
    assert!(now.contains(&(a3, a1)) && now.contains(&(a1, a3)), "{now:?}");
}
