//! `ferry-agent watch` (issue 14): the agent reads the version the private
//! system runs from an HTTP endpoint and keeps the registry deploying it:
//! it publishes new versions, only deploys known ones, retries what fails,
//! undoes a deploy made by hand, and does nothing twice after a restart.
//! Real registry, PostgreSQL, S3 and HTTP.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use ferry_agent::watch::{Phase, Status, WatchConfig, Watcher};
use ferry_e2e::{Stack, noise};
use ferry_release::Name;
use tokio::sync::{oneshot, watch};

/// What the private system's version endpoint answers.
type Answer = Arc<Mutex<(StatusCode, String)>>;

/// Serves `answer` at `/version` on a port-0 listener; its URL.
async fn version_endpoint(answer: Answer) -> String {
    let router = axum::Router::new()
        .route("/version", axum::routing::get(|State(a): State<Answer>| async move { a.lock().unwrap().clone() }))
        .with_state(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/version", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Writes the artifacts of `version` where the configuration looks, then
/// the marker that says they are whole.
fn install(root: &Path, version: &str, seed: u64) {
    let dir = root.join(version);
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::write(dir.join("crm.apk"), noise(200_000, seed)).unwrap();
    std::fs::write(dir.join("web/app.js"), noise(100_000, seed + 1)).unwrap();
    std::fs::write(dir.join("openapi.json"), format!(r#"{{"openapi":"3.1.0","info":{{"version":"{version}"}}}}"#))
        .unwrap();
    std::fs::write(dir.join(".complete"), b"").unwrap();
}

/// Writes the configuration file and loads it as `watch --config` does,
/// with waits shortened for the test.
fn configure(dir: &Path, registry: &str, token: &str, source: &str) -> WatchConfig {
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    let text = format!(
        r#"tenant = "acme"
app = "crm"
state_dir = "state"

[registry]
url = "{registry}"
token_file = "token"

[version]
url = "{source}"
json_pointer = "/version"

[[artifacts]]
name = "mobile"
path = "releases/{{version}}/crm.apk"
platforms = ["android"]

[[artifacts]]
name = "web"
path = "releases/{{version}}/web"

[[artifacts]]
name = "api"
path = "releases/{{version}}/openapi.json"
"#
    );
    let file = dir.join("agent.toml");
    std::fs::write(&file, text).unwrap();
    let mut config = ferry_agent::watch::load(&file).unwrap();
    config.interval = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(100);
    config.retries = 0;
    config.connection.proxy = ferry_agent::Proxy::none();
    config
}

/// Runs a watcher until the returned sender fires (or is dropped).
fn start(config: WatchConfig) -> (watch::Receiver<Status>, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let watcher = Watcher::new(config).unwrap();
    let status = watcher.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(watcher.run(async move {
        let _ = stopped.await;
    }));
    (status, stop, task)
}

/// Waits until the status satisfies `what`; its value then.
async fn until(status: &mut watch::Receiver<Status>, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    let seen =
        tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| f(s))).await.map(|s| s.map(|s| s.clone()));
    match seen {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}; last status: {:#?}", status.borrow().clone()),
    }
}

fn set(answer: &Answer, code: StatusCode, body: &str) {
    *answer.lock().unwrap() = (code, body.to_owned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_follows_the_version_the_private_system_runs() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let (tenant, app) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let releases = dir.path().join("releases");
    install(&releases, "1.0.0", 1);
    let answer: Answer = Arc::new(Mutex::new((StatusCode::SERVICE_UNAVAILABLE, "starting".into())));
    let source = version_endpoint(answer.clone()).await;
    let mut config = configure(dir.path(), &conn.url, &token, &source);
    config.reconcile = Duration::from_millis(300);
    config.ready_file = Some(releases.join("{version}/.complete").to_str().unwrap().to_owned());
    let (mut status, stop, task) = start(config.clone());

    // The endpoint is not up yet: the round fails, naming the source.
    let s = until(&mut status, "a failing round", |s| s.phase == Phase::Failing).await;
    let e = s.last_error.unwrap();
    assert!(e.contains(&format!("version source GET {source} (JSON at /version): answered 503")), "{e}");

    // 1.0.0 is published and deployed.
    set(&answer, StatusCode::OK, r#"{"version":"1.0.0"}"#);
    let s = until(&mut status, "1.0.0 deployed", |s| s.deployed_version.as_deref() == Some("1.0.0")).await;
    assert_eq!((s.published, s.deployed, s.last_error), (1, 1, None));
    let r = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    assert_eq!(r.deployed_version.as_deref(), Some("1.0.0"));

    // 2.0.0 runs while its files are still being copied: the agent waits
    // for the ready file rather than publish half an APK for good.
    std::fs::create_dir_all(releases.join("2.0.0")).unwrap();
    std::fs::write(releases.join("2.0.0/crm.apk"), &noise(200_000, 2)[..50_000]).unwrap();
    set(&answer, StatusCode::OK, r#"{"version":"2.0.0"}"#);
    let s = until(&mut status, "waiting for 2.0.0's files", |s| {
        s.observed_version.as_deref() == Some("2.0.0") && s.phase == Phase::Waiting && s.rounds >= 8
    })
    .await;
    assert_eq!((s.published, s.failures, s.deployed_version.as_deref()), (1, 1, Some("1.0.0")), "{s:#?}");
    install(&releases, "2.0.0", 2);
    let s = until(&mut status, "2.0.0 deployed", |s| s.deployed_version.as_deref() == Some("2.0.0")).await;
    assert_eq!((s.published, s.deployed, s.phase), (2, 2, Phase::UpToDate));

    // A garbled answer changes nothing.
    set(&answer, StatusCode::OK, r#"{"version":"latest"}"#);
    let s = until(&mut status, "a garbled version refused", |s| s.phase == Phase::Failing).await;
    assert!(s.last_error.unwrap().contains("invalid version \"latest\""));
    let r = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    assert_eq!(r.deployed_version.as_deref(), Some("2.0.0"));

    // Rolled back to 1.0.0: deployed again, not published again.
    set(&answer, StatusCode::OK, r#"{"version":"1.0.0"}"#);
    let s = until(&mut status, "1.0.0 deployed again", |s| s.deployed_version.as_deref() == Some("1.0.0")).await;
    assert_eq!((s.published, s.deployed), (2, 3));

    // Someone deploys 2.0.0 by hand: the next reconcile undoes it.
    ferry_agent::deploy(&conn, &tenant, &app, &"2.0.0".parse().unwrap()).await.unwrap();
    let s = until(&mut status, "the hand deploy undone", |s| s.deployed == 4).await;
    assert_eq!((s.published, s.deployed_version.as_deref()), (2, Some("1.0.0")));
    let r = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    assert_eq!(r.deployed_version.as_deref(), Some("1.0.0"));
    let history: Vec<&str> = r.history.iter().map(|d| d.version.as_str()).collect();
    assert_eq!(history[..5], ["1.0.0", "2.0.0", "1.0.0", "2.0.0", "1.0.0"]);

    // /status and /metrics say the same.
    let watcher_ops = Watcher::new(config.clone()).err().expect("the state directory is locked while watching");
    assert!(watcher_ops.contains("another agent is watching acme/crm"), "{watcher_ops}");
    stop.send(()).unwrap();
    task.await.unwrap();

    // A restart finds its work done: nothing is published or deployed.
    let watcher = Watcher::new(config.clone()).unwrap();
    let mut status = watcher.status();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let (ops_stop, ops_stopped) = oneshot::channel::<()>();
    let router = watcher.router();
    let served = tokio::spawn(ferry_net::serve_http(listener, ferry_net::Limits::default(), router, async move {
        let _ = ops_stopped.await;
    }));
    let task = tokio::spawn(watcher.run(async move {
        let _ = stopped.await;
    }));
    let s = until(&mut status, "two rounds after the restart", |s| s.rounds >= 2).await;
    assert_eq!((s.phase, s.published, s.deployed, s.failures), (Phase::UpToDate, 0, 0, 0), "{s:#?}");
    let r = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    assert_eq!(r.history.len(), history.len(), "no deploy was recorded by the restart");
    let http = ferry_testkit::http();
    let body: serde_json::Value = http.get(format!("{ops}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!((body["phase"].as_str(), body["deployed_version"].as_str()), (Some("up_to_date"), Some("1.0.0")));
    let metrics = http.get(format!("{ops}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ferry_agent_watch_up_to_date 1"), "{metrics}");
    assert!(metrics.contains("ferry_agent_watch_rounds_total{outcome=\"up_to_date\"}"), "{metrics}");
    assert_eq!(http.get(format!("{ops}/healthz")).send().await.unwrap().status(), 200);
    stop.send(()).unwrap();
    task.await.unwrap();
    ops_stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yanked_version_is_refused_and_retried_without_publishing() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let (tenant, app) = (Name::parse("tenant", "acme").unwrap(), Name::parse("app", "crm").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let releases = dir.path().join("releases");
    install(&releases, "1.0.0", 1);
    install(&releases, "2.0.0", 2);
    let answer: Answer = Arc::new(Mutex::new((StatusCode::OK, r#"{"version":"2.0.0"}"#.into())));
    let source = version_endpoint(answer.clone()).await;
    let config = configure(dir.path(), &conn.url, &token, &source);
    let (mut status, stop, task) = start(config.clone());
    until(&mut status, "2.0.0 deployed", |s| s.deployed_version.as_deref() == Some("2.0.0")).await;

    // 4.0.0 runs but nothing is where the configuration says: rounds fail,
    // naming the path.
    set(&answer, StatusCode::OK, r#"{"version":"4.0.0"}"#);
    let s = until(&mut status, "a round failing on 4.0.0", |s| {
        s.observed_version.as_deref() == Some("4.0.0") && s.phase == Phase::Failing
    })
    .await;
    let e = s.last_error.unwrap();
    assert!(e.contains("releases/4.0.0/crm.apk"), "{e}");

    set(&answer, StatusCode::OK, r#"{"version":"1.0.0"}"#);
    until(&mut status, "1.0.0 deployed", |s| s.deployed_version.as_deref() == Some("1.0.0")).await;
    ferry_agent::yank(&conn, &tenant, &app, &"2.0.0".parse().unwrap(), "corrupts reports").await.unwrap();

    // The private system goes back to the withdrawn 2.0.0: the deploy is
    // refused with the reason, again after each back-off.
    set(&answer, StatusCode::OK, r#"{"version":"2.0.0"}"#);
    let s = until(&mut status, "two refusals", |s| s.consecutive_failures >= 2).await;
    let e = s.last_error.unwrap();
    assert!(e.contains("corrupts reports"), "{e}");
    assert_eq!((s.published, s.deployed_version.as_deref()), (2, Some("1.0.0")));
    let r = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    assert_eq!(r.deployed_version.as_deref(), Some("1.0.0"));

    // Back on 1.0.0. With the agent stopped, someone deploys 3.0.0 by hand
    // and withdraws 1.0.0: the restarted agent cannot deploy 1.0.0 back, and
    // says so round after round instead of calling itself up to date.
    set(&answer, StatusCode::OK, r#"{"version":"1.0.0"}"#);
    until(&mut status, "1.0.0 again", |s| s.phase == Phase::UpToDate && s.observed_version.as_deref() == Some("1.0.0"))
        .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let v3 = ferry_e2e::Release::new(50_000, 3);
    ferry_e2e::publish_to(&conn, "acme", "3.0.0", &v3.artifacts(), true).await.unwrap();
    ferry_agent::yank(&conn, &tenant, &app, &"1.0.0".parse().unwrap(), "leaks sessions").await.unwrap();
    let mut config = config;
    config.reconcile = Duration::from_millis(200);
    let (mut status, stop, task) = start(config);
    let s = until(&mut status, "three refusals in a row", |s| s.consecutive_failures >= 3).await;
    assert!(s.last_error.unwrap().contains("leaks sessions"));
    assert_eq!(s.phase, Phase::Failing);
    let r = ferry_agent::releases(&conn, &tenant, &app).await.unwrap();
    assert_eq!(r.deployed_version.as_deref(), Some("3.0.0"));
    stop.send(()).unwrap();
    task.await.unwrap();
}
