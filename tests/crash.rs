//! Processes killed (SIGKILL) at the worst moments lose nothing:
//!
//! - the registry, at random points during 50 publishes: every release is
//!   either whole or absent, and publishing again completes;
//! - the reference client, between download and switch and at random
//!   points of a sync: `current` always names a whole release, and the next
//!   sync completes (without downloading again what was staged).
//!
//! Each runs in a child process: this very test binary, started again with
//! `FERRY_CRASH_CHILD` set (`client` for the client), so it is always the
//! code under test, never a stale binary. The test has its own `main` for
//! that (`harness = false`); it fails with a non-zero exit and a message,
//! like any test.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::{Stack, noise, publish_to};

const PUBLISHES: usize = 50;

fn main() {
    match std::env::var("FERRY_CRASH_CHILD").as_deref() {
        Ok("client") => return client_child(),
        Ok(_) => return child(),
        Err(_) => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    rt.block_on(registry_killed_at_random_points_loses_nothing());
    println!("test registry_killed_at_random_points_loses_nothing ... ok ({:.1} s)", started.elapsed().as_secs_f64());
    let started = Instant::now();
    rt.block_on(client_killed_during_a_sync_keeps_a_complete_release());
    println!(
        "test client_killed_during_a_sync_keeps_a_complete_release ... ok ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

/// Client child mode: sync the cache in `DIR`; with `STOP_AT_STAGED`, say
/// `STAGED` once every file is downloaded and verified, and wait there
/// (to be killed between download and switch).
fn client_child() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent"));
        let mut config = ferry_client::Config::new(env("GATEWAY"), env("KEY"), "acme", "crm");
        config.device_id = Some("crash-phone".into());
        let client = ferry_client::Client::new(config).unwrap();
        let cache = ferry_client::Cache::open(env("DIR")).unwrap();
        let stop = std::env::var_os("STOP_AT_STAGED").is_some();
        let synced = client
            .sync_observed(&cache, &|p| {
                if stop && matches!(p, ferry_client::Progress::Staged { .. }) {
                    println!("STAGED");
                    loop {
                        std::thread::park();
                    }
                }
            })
            .await
            .unwrap();
        println!("SYNCED {}", synced.version);
    });
}

/// Child mode: serve the registry on a port-0 listener, print the address.
fn child() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let stack = ferry_e2e::StackEnv::from_env().unwrap();
        let meta = ferry_store::connect(&stack.database_url, 8).unwrap();
        let blobs = stack.blobs();
        let registry_settings =
            ferry_registry::RegistrySettings { gc_interval: None, alerts: None, ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("LISTENING {}", listener.local_addr().unwrap());
        let registry = ferry_registry::Registry::with_settings(meta, blobs, registry_settings);
        ferry_registry::serve(registry, listener, None, std::future::pending()).await.unwrap();
    });
}

/// A registry child process, killed when dropped.
struct Child_ {
    child: Child,
    url: String,
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_registry(stack: &Stack) -> Child_ {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("FERRY_CRASH_CHILD", "1")
        .envs(stack.child_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the registry child");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("the child prints its address");
    let addr = line.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("unexpected child output {line:?}"));
    Child_ { url: format!("http://{addr}"), child }
}

/// Deterministic pseudo-random numbers (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn whole_or_absent(stack: &Stack, version: &str) -> bool {
    let app = stack.app_id("acme").await;
    let Some(id) = stack.meta.release_manifest(app, version).await.unwrap() else { return false };
    let body =
        stack.meta.load_manifest(stack.tenant_id("acme").await, id).await.unwrap().expect("a release's manifest");
    for file in ferry_release::Manifest::decode(&body).unwrap().files() {
        let bytes = stack
            .blobs
            .get_file(&file.hash)
            .await
            .unwrap_or_else(|e| panic!("{version}: {} is missing: {e}", file.path));
        assert_eq!(blake3::hash(&bytes), file.hash, "{version}: {} is corrupt", file.path);
    }
    true
}

async fn registry_killed_at_random_points_loses_nothing() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5EED_F00D);
    let (mut killed_mid_publish, mut survived) = (0, 0);
    for i in 0..PUBLISHES {
        let version = format!("1.0.{i}");
        // Each release new bytes: an APK of 0.5 to 3 MiB and a small file.
        let apk = dir.path().join(format!("app-{i}.apk"));
        std::fs::write(&apk, noise(512 * 1024 + rng.below(2_500_000) as usize, 300 + i as u64)).unwrap();
        let api = dir.path().join(format!("api-{i}.json"));
        std::fs::write(&api, format!("{{\"release\":{i}}}")).unwrap();
        let artifacts = [("mobile", apk.as_path()), ("api", api.as_path())];

        let mut registry = spawn_registry(&stack);
        let conn = ferry_agent::Connection {
            url: registry.url.clone(),
            token: token.clone(),
            ca_cert: None,
            proxy: ferry_agent::Proxy::none(),
        };
        let kill_after = Duration::from_millis(rng.below(400));
        let publish = publish_to(&conn, "acme", &version, &artifacts, true);
        let outcome = tokio::select! {
            done = publish => Some(done),
            () = tokio::time::sleep(kill_after) => None,
        };
        registry.child.kill().unwrap();
        registry.child.wait().unwrap();
        match outcome {
            Some(result) => {
                result.unwrap_or_else(|e| panic!("{version} failed without a crash: {e}"));
                survived += 1;
            }
            None => {
                killed_mid_publish += 1;
                // Killed mid-publish: whole or absent, never in between.
                whole_or_absent(&stack, &version).await;
            }
        }
        // Publishing again (to a fresh registry) completes, and the result
        // is whole.
        let registry = spawn_registry(&stack);
        let conn = ferry_agent::Connection {
            url: registry.url.clone(),
            token: token.clone(),
            ca_cert: None,
            proxy: ferry_agent::Proxy::none(),
        };
        publish_to(&conn, "acme", &version, &artifacts, true).await.unwrap_or_else(|e| panic!("{version} again: {e}"));
        assert!(whole_or_absent(&stack, &version).await, "{version} is published");
    }
    // Every release is still whole, and the last one deployed.
    for i in 0..PUBLISHES {
        assert!(whole_or_absent(&stack, &format!("1.0.{i}")).await);
    }
    let app = stack.app_id("acme").await;
    assert_eq!(stack.meta.deployed_version(app).await.unwrap().as_deref(), Some(&*format!("1.0.{}", PUBLISHES - 1)));
    assert!(
        killed_mid_publish >= PUBLISHES / 4,
        "only {killed_mid_publish} kills landed mid-publish ({survived} finished first)"
    );
}

fn spawn_client(gateway: &str, key: &str, dir: &std::path::Path, stop_at_staged: bool) -> Child_ {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env("FERRY_CRASH_CHILD", "client").env("GATEWAY", gateway).env("KEY", key).env("DIR", dir);
    if stop_at_staged {
        command.env("STOP_AT_STAGED", "1");
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the client child");
    Child_ { url: String::new(), child }
}

/// `current` names a complete release of one of `versions` (or nothing,
/// when `versions` allows it), whose files verify.
fn assert_complete(cache: &ferry_client::Cache, versions: &[Option<&str>]) {
    let current = cache.current().unwrap();
    let version = current.as_ref().map(|c| c.version.as_str());
    assert!(versions.contains(&version), "current is {version:?}, expected one of {versions:?}");
    if let Some(c) = current {
        cache.verify(&c.manifest_id).unwrap_or_else(|e| panic!("current release {} is not whole: {e}", c.version));
    }
}

/// S0-5: a client killed (SIGKILL) between download and switch keeps
/// running the old release, whole, and its next sync switches without
/// downloading again; killed at random points of a sync, `current` always
/// names a whole release.
async fn client_killed_during_a_sync_keeps_a_complete_release() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let gw = stack.gateway(ferry_gateway::GatewayConfig::default()).await;
    let key = stack.client_key("acme").await;
    let files = tempfile::tempdir().unwrap();
    let apk = files.path().join("crm.apk");
    let api = files.path().join("openapi.json");
    let publish = |version: &'static str, seed: u64| {
        std::fs::write(&apk, noise(3_000_000, seed)).unwrap();
        std::fs::write(&api, format!("{{\"v\":{seed}}}")).unwrap();
        let artifacts = [("mobile", apk.clone()), ("api", api.clone())];
        let conn = &conn;
        async move {
            let artifacts: Vec<(&str, &std::path::Path)> = artifacts.iter().map(|(n, p)| (*n, p.as_path())).collect();
            publish_to(conn, "acme", version, &artifacts, true).await.unwrap();
        }
    };
    publish("1.0.0", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = ferry_client::Cache::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let mut client = spawn_client(&gw.http, &key, dir.path(), false);
    let mut line = String::new();
    BufReader::new(client.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "SYNCED 1.0.0");
    // How long a whole sync takes here (start, download, switch): the kills
    // below land within it, whatever this machine's speed.
    let sync_ms = (started.elapsed().as_millis() as u64).max(20);
    assert_complete(&cache, &[Some("1.0.0")]);

    // Killed between download and switch.
    publish("1.1.0", 2).await;
    let mut client = spawn_client(&gw.http, &key, dir.path(), true);
    let mut line = String::new();
    BufReader::new(client.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "STAGED");
    client.child.kill().unwrap();
    client.child.wait().unwrap();
    assert_complete(&cache, &[Some("1.0.0")]);
    let mut config = ferry_client::Config::new(&gw.http, &key, "acme", "crm");
    config.device_id = Some("crash-phone".into());
    let synced = ferry_client::Client::new(config.clone()).unwrap().sync(&cache).await.unwrap();
    assert_eq!((synced.version.as_str(), synced.downloaded_files, synced.downloaded_bytes), ("1.1.0", 0, 0));
    assert_complete(&cache, &[Some("1.1.0")]);

    // Killed at random points: always a whole release, and the next sync
    // completes.
    let mut rng = Rng(0x00C1_1E27);
    let versions = ["1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0", "1.7.0"];
    let mut before = "1.1.0";
    let mut killed_before_switch = 0;
    for (i, version) in versions.into_iter().enumerate() {
        publish(version, 10 + i as u64).await;
        let mut client = spawn_client(&gw.http, &key, dir.path(), false);
        tokio::time::sleep(Duration::from_millis(rng.below(sync_ms * 3 / 4))).await;
        client.child.kill().unwrap();
        client.child.wait().unwrap();
        assert_complete(&cache, &[Some(before), Some(version)]);
        if cache.current().unwrap().is_some_and(|c| c.version == before) {
            killed_before_switch += 1;
        }
        let synced = ferry_client::Client::new(config.clone()).unwrap().sync(&cache).await.unwrap();
        assert_eq!(synced.version, version);
        assert_complete(&cache, &[Some(version)]);
        before = version;
    }
    assert!(killed_before_switch >= 2, "only {killed_before_switch} of 6 kills landed before the switch");
}
