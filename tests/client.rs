//! The reference client end to end (S0-5, S1-6, S1-8): ferry-client
//! against a real gateway, PostgreSQL and S3, downloads passing through a
//! relay that cuts and corrupts them for real.

use std::path::Path;
use std::time::Duration;

use ferry_client::{Action, Cache, Client, Config, Error, Progress};
use ferry_e2e::{GatewayHandle, Release, Stack, publish_to};
use ferry_gateway::{Gateway, GatewayConfig};
use ferry_store::{Blobs, S3Settings};
use ferry_testkit::{Damage, Downstream, Faults, Relay, Target};

/// A stack with acme/crm and a gateway whose download URLs go through a
/// relay with `faults` in front of S3.
struct Env {
    stack: Stack,
    gw: GatewayHandle,
    relay: Relay,
    agent: String,
    key: String,
}

async fn env(faults: Faults) -> Env {
    let stack = Stack::start().await;
    let agent = stack.tenant("acme").await;
    let s3: std::net::SocketAddr = stack.s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let relay = Relay::start_with(Target::Tcp(s3), faults).await.unwrap();
    // Presigned for the relay's address: the signature covers the host.
    let blobs = Blobs::from_settings(
        &S3Settings { endpoint: Some(relay.url()), ..stack.s3_settings() },
        stack.blobs.bucket().to_owned(),
    );
    // These tests make more calls per device than the default device limit
    // (a burst of 10, then 1 a second) allows on a slow machine; limits are
    // tested elsewhere, with an injected clock.
    let unlimited = ferry_gateway::Rate { per_second: 1e6, burst: 1_000_000 };
    let config = GatewayConfig { device_rate: unlimited, ..GatewayConfig::default() };
    let gw = stack.serve_gateway(Gateway::new(stack.meta.clone(), blobs, config)).await;
    let key = stack.client_key("acme").await;
    Env { stack, gw, relay, agent, key }
}

impl Env {
    fn client(&self, device: &str) -> Client {
        let mut config = Config::new(&self.gw.http, &self.key, "acme", "crm");
        config.device_id = Some(device.to_owned());
        Client::new(config).unwrap()
    }

    /// A client downloading one file at a time, in manifest order: the
    /// first connection carries the 1 MB APK first, so a fault injected
    /// hundreds of kilobytes into it lands in the APK's body. (With several
    /// connections it could land in a response header nobody checks, and
    /// the test would prove nothing.)
    fn serial_client(&self, device: &str) -> Client {
        let mut config = Config::new(&self.gw.http, &self.key, "acme", "crm");
        config.device_id = Some(device.to_owned());
        config.parallel = 1;
        Client::new(config).unwrap()
    }

    /// Publishes and deploys `version`, and returns once the gateway
    /// answers with it: the gateway learns of a deploy from a database
    /// notice, which may arrive after the deploy call returns.
    async fn deploy(&self, version: &str, release: &Release) {
        let mut applied = self.gw.gateway.applied();
        publish_to(&self.stack.connection(&self.agent), "acme", version, &release.artifacts(), true).await.unwrap();
        let probe = self.client("deploy-probe");
        let seen = async {
            loop {
                if probe.check("0.0.0-0", None).await.unwrap().target == version {
                    return;
                }
                // Nothing to do until the gateway applies another change.
                let _ = applied.recv().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), seen)
            .await
            .expect("the gateway answers with the deployed version within 30 s");
    }

    /// Reports stored for acme/crm: (device, from, to, result, error code).
    async fn reports(&self) -> Vec<(String, String, String, String, Option<String>)> {
        let client = self.stack.meta.pool().get().await.unwrap();
        let rows = client
            .query("SELECT device_id, from_version, to_version, result, error_code FROM reports ORDER BY seq", &[])
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
    }
}

/// Every file of `release` as the cache should hold it: (artifact/path, bytes).
fn expected_files(release: &Release) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("api/openapi.json".to_owned(), std::fs::read(&release.api).unwrap()),
        ("mobile/crm.apk".to_owned(), std::fs::read(&release.apk).unwrap()),
    ];
    let mut stack = vec![release.web.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&release.web).unwrap().to_str().unwrap().to_owned();
                files.push((format!("web/{rel}"), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// The files under a release directory (without its record).
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap() != ferry_client::RECORD_FILE {
                let rel = path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                files.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn assert_current(cache: &Cache, version: &str, release: &Release) {
    let current = cache.current().unwrap().expect("a current release");
    assert_eq!(current.version, version);
    cache.verify(&current.manifest_id).unwrap();
    assert!(files_in(&cache.release_dir(&current.manifest_id)) == expected_files(release), "files of {version}");
}

/// A second release: app.js changed, index.html removed, a new page, the
/// API description changed; vendor.js and the APK unchanged.
fn next_release(seed: u64) -> Release {
    let release = Release::new(1_000_000, seed);
    std::fs::write(release.web.join("assets/app.js"), ferry_e2e::noise(300_000, 4242)).unwrap();
    std::fs::remove_file(release.web.join("index.html")).unwrap();
    std::fs::write(release.web.join("home.html"), b"<!doctype html><h1>home</h1>").unwrap();
    std::fs::write(&release.api, br#"{"openapi":"3.1.0","info":{"title":"crm","version":"2"}}"#).unwrap();
    release
}

/// S0-3, S0-5: a fresh cache gets 1.0.0; an upgrade to 1.1.0 downloads
/// only what changed (the delta, with unchanged files copied from the
/// cache) and drops a removed file; a downgrade back to 1.0.0 finds it
/// kept for rollback and downloads nothing. Each switch is reported.
#[tokio::test]
async fn upgrade_and_downgrade_switch_download_only_changes_and_report() {
    let env = env(Faults::default()).await;
    let (v1, v2) = (Release::new(1_000_000, 7), next_release(7));
    env.deploy("1.0.0", &v1).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let client = env.client("phone-1");

    let synced = client.sync(&cache).await.unwrap();
    assert_eq!((synced.action, synced.switched, synced.reported), (Action::Upgrade, true, true));
    assert_eq!((synced.downloaded_files, synced.reused_files), (5, 0));
    let total: usize = expected_files(&v1).iter().map(|(_, b)| b.len()).sum();
    assert_eq!(synced.downloaded_bytes, total as u64);
    assert_current(&cache, "1.0.0", &v1);
    let v1_id = synced.manifest_id.clone();

    // Up to date: nothing happens, nothing is reported.
    let again = client.sync(&cache).await.unwrap();
    assert_eq!((again.action, again.switched), (Action::None, false));

    env.deploy("1.1.0", &v2).await;
    let answers = std::sync::Mutex::new(Vec::new());
    let synced = client
        .sync_observed(&cache, &|p| {
            if let Progress::Checked(a) = p {
                answers.lock().unwrap().push((a.delta, a.artifacts.len(), a.deleted.len()));
            }
        })
        .await
        .unwrap();
    assert_eq!(synced.action, Action::Upgrade);
    // The delta lists app.js, home.html, the API file and the APK (single
    // files are always listed), and deletes index.html.
    assert_eq!(answers.lock().unwrap().as_slice(), &[(true, 4, 1)]);
    // The APK is copied from the cache; app.js, home.html and the API
    // description are downloaded; vendor.js comes from the cache too.
    assert_eq!((synced.downloaded_files, synced.reused_files), (3, 2));
    let changed = 300_000 + b"<!doctype html><h1>home</h1>".len() + std::fs::read(&v2.api).unwrap().len();
    assert_eq!(synced.downloaded_bytes, changed as u64);
    assert_current(&cache, "1.1.0", &v2);
    assert!(cache.release_dir(&v1_id).exists(), "the previous release stays for rollback");

    // Deploying 1.0.0 again: a downgrade, from the release kept.
    env.deploy("1.0.0", &v1).await;
    let synced = client.sync(&cache).await.unwrap();
    assert_eq!((synced.action, synced.downloaded_files, synced.downloaded_bytes), (Action::Downgrade, 0, 0));
    assert_current(&cache, "1.0.0", &v1);

    // The device rolls back from 1.1.0 by hand: syncs hold it back while
    // 1.1.0 stays deployed, and install the next deployment again.
    env.deploy("1.1.0", &v2).await;
    let synced = client.sync(&cache).await.unwrap();
    assert_eq!((synced.version.as_str(), synced.switched), ("1.1.0", true));
    cache.rollback().unwrap();
    let held = client.sync(&cache).await.unwrap();
    assert_eq!((held.version.as_str(), held.switched, held.held_back), ("1.0.0", false, true));
    assert_current(&cache, "1.0.0", &v1);
    let v3 = next_release(7);
    std::fs::write(&v3.api, b"{\"v\":3}").unwrap();
    env.deploy("1.2.0", &v3).await;
    let synced = client.sync(&cache).await.unwrap();
    assert_eq!((synced.version.as_str(), synced.held_back), ("1.2.0", false));
    assert_current(&cache, "1.2.0", &v3);

    let success = |from: &str, to: &str| {
        ("phone-1".to_owned(), from.to_owned(), to.to_owned(), "success".to_owned(), None::<String>)
    };
    assert_eq!(
        env.reports().await,
        vec![
            success("0.0.0-0", "1.0.0"),
            success("1.0.0", "1.1.0"),
            success("1.1.0", "1.0.0"),
            success("1.0.0", "1.1.0"),
            success("1.0.0", "1.2.0"),
        ]
    );
}

/// A connection cut mid-file is resumed with Range: every byte arrives
/// once (a restart would fetch the cut part again).
#[tokio::test]
async fn a_cut_download_resumes_where_it_stopped() {
    let cut = Downstream { connections: 1, after: 400_000, damage: Damage::Cut };
    let env = env(Faults { downstream: Some(cut), ..Faults::default() }).await;
    let v1 = Release::new(1_000_000, 11);
    env.deploy("1.0.0", &v1).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();

    let synced = env.serial_client("phone-1").sync(&cache).await.unwrap();
    let total: usize = expected_files(&v1).iter().map(|(_, b)| b.len()).sum();
    assert_eq!(synced.downloaded_bytes, total as u64, "nothing downloaded twice");
    assert_current(&cache, "1.0.0", &v1);
}

/// A download whose bytes arrive damaged is refused (BLAKE3) and fetched
/// again; a file corrupt at the source fails the sync, leaves `current`
/// alone and is reported.
#[tokio::test]
async fn corrupted_downloads_are_refused_and_retried_and_a_corrupt_source_is_reported() {
    let flip = Downstream { connections: 1, after: 300_000, damage: Damage::Flip };
    let env = env(Faults { downstream: Some(flip), ..Faults::default() }).await;
    let (v1, v2) = (Release::new(1_000_000, 13), next_release(13));
    env.deploy("1.0.0", &v1).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let client = env.serial_client("phone-1");

    let synced = client.sync(&cache).await.unwrap();
    assert_current(&cache, "1.0.0", &v1);
    let total: usize = expected_files(&v1).iter().map(|(_, b)| b.len()).sum();
    assert!(synced.downloaded_bytes > total as u64, "the damaged file was downloaded again");

    // 1.1.0's app.js replaced in the bucket by other bytes.
    env.deploy("1.1.0", &v2).await;
    let app_js = blake3::hash(&std::fs::read(v2.web.join("assets/app.js")).unwrap());
    let key = ferry_store::file_key(&app_js);
    env.stack
        .blobs
        .client()
        .put_object()
        .bucket(env.stack.blobs.bucket())
        .key(&key)
        .body(ferry_e2e::noise(300_000, 1).into())
        .send()
        .await
        .unwrap();
    let err = client.sync(&cache).await.unwrap_err();
    assert!(matches!(&err, Error::Corrupt { file, .. } if file == "web/assets/app.js"), "{err}");
    assert_current(&cache, "1.0.0", &v1);
    let reports = env.reports().await;
    let last = reports.last().unwrap();
    assert_eq!((last.2.as_str(), last.3.as_str(), last.4.as_deref()), ("1.1.0", "failure", Some("E_VERIFY")));
}

/// S1-8: an answer naming another tenant (a proxy or cache mixing up
/// tenants' answers) is refused before anything is downloaded. It is not
/// reported: it is no failure of an upgrade, and a report would mark the
/// version the device runs as failed.
#[tokio::test]
async fn a_release_of_another_tenant_is_refused() {
    let env = env(Faults::default()).await;
    let v1 = Release::new(100_000, 17);
    env.deploy("1.0.0", &v1).await;
    let globex = env.stack.tenant("globex").await;
    publish_to(&env.stack.connection(&globex), "globex", "9.0.0", &Release::new(100_000, 18).artifacts(), true)
        .await
        .unwrap();
    let globex_key = env.stack.client_key("globex").await;
    let proxy = MixUp::start(&env.gw.http, &globex_key).await;

    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let mut config = Config::new(&proxy.url, &env.key, "acme", "crm");
    config.device_id = Some("phone-1".into());
    let client = Client::new(config).unwrap();
    let err = client.sync(&cache).await.unwrap_err();
    assert!(matches!(&err, Error::Foreign { got, .. } if got == "globex/crm"), "{err}");
    assert_eq!(cache.current().unwrap(), None);
    assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0, "nothing was downloaded");
    assert_eq!(env.reports().await, vec![]);
}

/// `f`, failing the test if it takes more than 30 s.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("within 30 s")
}

/// A proxy that answers checks with globex's answer (asked with globex's
/// key) and passes everything else on untouched.
struct MixUp {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MixUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MixUp {
    async fn start(gateway: &str, globex_key: &str) -> Self {
        use axum::extract::Request;
        let (gateway, globex_key) = (gateway.to_owned(), globex_key.to_owned());
        let handler = move |request: Request| {
            let (gateway, globex_key) = (gateway.clone(), globex_key.clone());
            async move {
                let http = ferry_testkit::http();
                let path = request.uri().path_and_query().unwrap().as_str().to_owned();
                let response = if path.starts_with("/v1/check") {
                    let query = path.replace("tenant=acme", "tenant=globex");
                    http.get(format!("{gateway}{query}")).bearer_auth(&globex_key).send().await.unwrap()
                } else {
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                    let mut forwarded = http.request(parts.method, format!("{gateway}{path}")).body(body);
                    for (name, value) in &parts.headers {
                        if name != "host" {
                            forwarded = forwarded.header(name, value);
                        }
                    }
                    forwarded.send().await.unwrap()
                };
                let status = response.status();
                let body = response.bytes().await.unwrap();
                (status, [("content-type", "application/json")], body)
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, task }
    }
}

/// S1-6: a watch gets the current deployment at once and every deploy
/// after it; reconnecting with the last event's id gets a deploy made
/// while it was away, and not one it has seen.
#[tokio::test]
async fn watches_see_deploys_including_those_made_while_away() {
    let env = env(Faults::default()).await;
    let v1 = Release::new(100_000, 19);
    env.deploy("1.0.0", &v1).await;
    let client = env.client("phone-1");

    let mut watch = client.watch(Some("1.0.0".into()), None);
    let first = within(watch.next()).await.unwrap();
    assert_eq!((first.version.as_str(), first.action, first.required), ("1.0.0", Some(Action::None), Some(false)));
    let first_id = watch.last_event_id().unwrap().to_owned();

    let mut v2 = Release::new(100_000, 19);
    std::fs::write(&v2.api, b"{\"v\":2}").unwrap();
    env.deploy("1.1.0", &v2).await;
    let second = within(watch.next()).await.unwrap();
    assert_eq!((second.version.as_str(), second.action, second.required), ("1.1.0", Some(Action::Upgrade), Some(true)));
    let second_id = watch.last_event_id().unwrap().to_owned();
    assert_ne!(first_id, second_id);
    drop(watch);

    // Away while 1.2.0 is deployed.
    v2 = Release::new(100_000, 19);
    std::fs::write(&v2.api, b"{\"v\":3}").unwrap();
    env.deploy("1.2.0", &v2).await;
    let mut watch = client.watch(None, Some(second_id));
    let missed = within(watch.next()).await.unwrap();
    assert_eq!(missed.version, "1.2.0");
    let third_id = watch.last_event_id().unwrap().to_owned();
    drop(watch);

    // Back with the latest id: nothing is repeated; the next deploy is the
    // first notice.
    let mut watch = client.watch(None, Some(third_id));
    std::fs::write(&v2.api, b"{\"v\":4}").unwrap();
    env.deploy("1.3.0", &v2).await;
    assert_eq!(within(watch.next()).await.unwrap().version, "1.3.0");

    // The same over gRPC.
    let channel = tonic::transport::Endpoint::from_shared(env.gw.grpc.clone()).unwrap().connect().await.unwrap();
    let mut grpc = ferry_proto::gateway::v1::gateway_client::GatewayClient::new(channel);
    let mut request = tonic::Request::new(ferry_proto::gateway::v1::WatchRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        version: "1.0.0".into(),
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", format!("Bearer {}", env.key).parse().unwrap());
    let mut stream = grpc.watch(request).await.unwrap().into_inner();
    let event = within(stream.message()).await.unwrap().unwrap();
    let deployed = event.deployed.unwrap();
    assert_eq!((deployed.version.as_str(), deployed.action.as_str(), deployed.required), ("1.3.0", "upgrade", true));
    drop(env.relay);
}

/// A watch whose connection is cut reconnects by itself (with backoff) and,
/// thanks to Last-Event-ID, hears of a deploy made while it was cut off.
#[tokio::test]
async fn a_cut_watch_reconnects_and_catches_up() {
    let env = env(Faults::default()).await;
    let mut release = Release::new(50_000, 29);
    env.deploy("1.0.0", &release).await;
    let gateway: std::net::SocketAddr = env.gw.http.trim_start_matches("http://").parse().unwrap();
    let network = Relay::start(gateway, None).await.unwrap();
    let mut config = Config::new(network.url(), &env.key, "acme", "crm");
    config.device_id = Some("phone-1".into());
    let client = Client::new(config).unwrap();
    let mut watch = client.watch(None, None);
    assert_eq!(within(watch.next()).await.unwrap().version, "1.0.0");

    network.set_down(true);
    std::fs::write(&release.api, b"{\"v\":2}").unwrap();
    env.deploy("1.1.0", &release).await;
    network.set_down(false);
    assert_eq!(within(watch.next()).await.unwrap().version, "1.1.0");
    release = Release::new(50_000, 29);
    std::fs::write(&release.api, b"{\"v\":3}").unwrap();
    env.deploy("1.2.0", &release).await;
    assert_eq!(within(watch.next()).await.unwrap().version, "1.2.0", "no repeat of 1.1.0 after the reconnect");
}

/// URLs that expire before their download starts are replaced by a new
/// check, and the sync completes.
#[tokio::test]
async fn expired_download_urls_are_refreshed() {
    let stack = Stack::start().await;
    let agent = stack.tenant("acme").await;
    let s3: std::net::SocketAddr = stack.s3.endpoint.trim_start_matches("http://").parse().unwrap();
    // Slow downloads (0.1 s per read) and URLs living 2 s: the later files'
    // URLs have expired by the time their turn comes.
    let relay =
        Relay::start_with(Target::Tcp(s3), Faults { delay: Some(Duration::from_millis(100)), ..Faults::default() })
            .await
            .unwrap();
    let blobs = Blobs::from_settings(
        &S3Settings { endpoint: Some(relay.url()), ..stack.s3_settings() },
        stack.blobs.bucket().to_owned(),
    );
    let config = GatewayConfig { presign_lifetime: Duration::from_secs(2), ..GatewayConfig::default() };
    let gw = stack.serve_gateway(Gateway::new(stack.meta.clone(), blobs, config)).await;
    let release = Release::new(1_000_000, 37);
    publish_to(&stack.connection(&agent), "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    let mut config = Config::new(&gw.http, stack.client_key("acme").await, "acme", "crm");
    config.device_id = Some("phone-1".into());
    config.parallel = 1;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let synced = Client::new(config).unwrap().sync(&cache).await.unwrap();
    assert_current(&cache, "1.0.0", &release);
    assert_eq!(synced.downloaded_files, 5);
    let metrics = ferry_testkit::http().get(format!("{}/metrics", gw.http)).send().await.unwrap().text().await.unwrap();
    let checks: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("ferry_gateway_requests_total{")
                && l.contains("call=\"check\"")
                && l.contains("outcome=\"ok\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no check counter in {metrics}"));
    assert!(checks >= 2, "the expired URLs were replaced by a new check ({checks} checks)");
}

/// A watch authenticates like a check: a wrong key or another tenant's app
/// is refused up front, and a key revoked while watching ends the stream.
#[tokio::test]
async fn watches_are_authenticated_and_end_when_the_key_is_revoked() {
    let stack = Stack::start().await;
    let agent = stack.tenant("acme").await;
    publish_to(&stack.connection(&agent), "acme", "1.0.0", &Release::new(10_000, 23).artifacts(), true).await.unwrap();
    let config =
        GatewayConfig { watch_heartbeat: Duration::from_millis(200), max_watches: 2, ..GatewayConfig::default() };
    let gw = stack.gateway(config).await;
    let key = stack.client_key("acme").await;
    let http = ferry_testkit::http();
    let watch = |key: &str, tenant: &str| {
        http.get(format!("{}/v1/watch?tenant={tenant}&app=crm", gw.http)).bearer_auth(key).send()
    };
    assert_eq!(watch("nope", "acme").await.unwrap().status(), 401);
    assert_eq!(watch(&key, "globex").await.unwrap().status(), 404);

    // EventSource cannot send headers: the key as `access_token` works.
    let response =
        http.get(format!("{}/v1/watch?tenant=acme&app=crm&access_token={key}", gw.http)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    drop(response);

    let mut response = watch(&key, "acme").await.unwrap();
    // At most two watches on this gateway: a third waits for room.
    let _second = watch(&key, "acme").await.unwrap();
    let third = watch(&key, "acme").await.unwrap();
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: deployed"), "{first:?}");
    // ferry_client_<id>_<secret>
    let key_id = key.split('_').nth(2).unwrap();
    stack.meta.revoke_key(key_id).await.unwrap();
    // Heartbeats until the revocation is seen, then the end of the stream.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            assert!(!String::from_utf8_lossy(&chunk).contains("event:"), "only heartbeats: {chunk:?}");
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch ends once the key is revoked");
}

/// Browser apps: CORS answers preflights for configured origins only.
#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let stack = Stack::start().await;
    let cors = ferry_gateway::cors::Origins::parse(&["https://crm.acme.example".to_owned()]).unwrap();
    let gw = stack.gateway(GatewayConfig { cors, ..GatewayConfig::default() }).await;
    let preflight = |origin: &'static str| {
        ferry_testkit::http()
            .request(reqwest::Method::OPTIONS, format!("{}/v1/check", gw.http))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization,x-ferry-device")
            .send()
    };
    let allowed = preflight("https://crm.acme.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://crm.acme.example");
    let methods = allowed.headers()["access-control-allow-headers"].to_str().unwrap().to_owned();
    assert!(methods.contains("authorization") && methods.contains("x-ferry-device"), "{methods}");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}
