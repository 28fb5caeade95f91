//! Faults injected between the services and their dependencies by the test
//! kit's relay (cuts, resets, delays, outages), during publish and check.
//! After each, the invariants hold: nothing partial is visible, no release
//! refers to a missing object, a re-run completes, and the gateway keeps
//! answering from its caches while PostgreSQL is away.

use std::time::Duration;

use ferry_e2e::{GatewayHandle, Release, Stack, publish_to};
use ferry_gateway::{Gateway, GatewayConfig};
use ferry_registry::{Registry, RegistrySettings};
use ferry_store::{Blobs, Meta};
use ferry_testkit::{Faults, Relay, Target};
use reqwest::StatusCode;

/// A PostgreSQL connection string for the stack's database through `relay`.
fn through(relay: &Relay, stack: &Stack) -> String {
    let dbname = stack.database_url.split_whitespace().find_map(|p| p.strip_prefix("dbname=")).unwrap();
    format!("host=127.0.0.1 port={} user=postgres dbname={dbname} connect_timeout=5", relay.addr.port())
}

async fn postgres_relay(faults: Faults) -> Relay {
    let socket = ferry_testkit::Postgres::shared().unwrap().socket_dir().join(".s.PGSQL.5432");
    Relay::start_with(Target::Unix(socket), faults).await.unwrap()
}

async fn s3_relay(stack: &Stack, faults: Faults) -> Relay {
    let addr = stack.s3.endpoint.trim_start_matches("http://").parse().unwrap();
    Relay::start_with(Target::Tcp(addr), faults).await.unwrap()
}

fn blobs_through(relay: &Relay, stack: &Stack) -> Blobs {
    let settings = ferry_store::S3Settings { endpoint: Some(relay.url()), ..stack.s3_settings() };
    Blobs::from_settings(&settings, stack.blobs.bucket())
}

/// A second registry on the stack's data, reached through relays; returns
/// its URL and a guard that stops it.
async fn registry(meta: Meta, blobs: Blobs) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = RegistrySettings { gc_interval: None, alerts: None, ..RegistrySettings::default() };
    tokio::spawn(ferry_registry::serve(Registry::with_settings(meta, blobs, settings), listener, None, async {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// Every release of `tenant`/crm is whole: each file of its manifest is in
/// S3 with its BLAKE3.
async fn releases_are_whole(stack: &Stack, tenant: &str, versions: &[&str]) {
    let app = stack.app_id(tenant).await;
    let tenant_id = stack.tenant_id(tenant).await;
    for version in versions {
        let id = stack.meta.release_manifest(app, version).await.unwrap().unwrap();
        let body = stack.meta.load_manifest(tenant_id, id).await.unwrap().unwrap();
        for file in ferry_release::Manifest::decode(&body).unwrap().files() {
            let bytes = stack.blobs.get_file(&file.hash).await.unwrap();
            assert_eq!(blake3::hash(&bytes), file.hash, "{version}: {}", file.path);
        }
    }
}

/// A publish of `version` through the faulty registry at `url` fails as
/// retryable with nothing visible; the same publish through the stack's own
/// registry then completes, whole.
async fn fails_then_completes(stack: &Stack, token: &str, url: &str, version: &str, release: &Release) {
    let conn = ferry_agent::Connection {
        url: url.to_owned(),
        token: token.to_owned(),
        ca_cert: None,
        proxy: ferry_agent::Proxy::none(),
    };
    let err = publish_to(&conn, "acme", version, &release.artifacts(), true).await.unwrap_err();
    assert!(err.is_retryable(), "{version}: {err}");
    let app = stack.app_id("acme").await;
    assert_eq!(stack.meta.release_manifest(app, version).await.unwrap(), None, "nothing half-published");

    let done = publish_to(&stack.connection(token), "acme", version, &release.artifacts(), true).await.unwrap();
    assert!(done.created, "{version}");
    releases_are_whole(stack, "acme", &[version]).await;
}

/// S3 cut off in the middle of a publish (chunks, then assembly), at
/// several points: the publish fails as retryable, nothing is visible, and
/// once S3 is reachable again the same publish completes whole.
#[tokio::test]
async fn publish_survives_s3_cut_mid_stream() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    for (i, budget) in [200_000u64, 4_000_000, 11_000_000].into_iter().enumerate() {
        let version = format!("1.0.{i}");
        // New bytes each time, so every run has as much to store.
        let release = Release::new(12 * 1024 * 1024, 101 + i as u64);
        let relay = s3_relay(&stack, Faults { cut_after: Some(budget), ..Faults::default() }).await;
        let (url, _stop) = registry(stack.meta.clone(), blobs_through(&relay, &stack)).await;
        fails_then_completes(&stack, &token, &url, &version, &release).await;
    }
}

/// PostgreSQL cut off in the middle of a publish: the same.
#[tokio::test]
async fn publish_survives_postgres_cut_mid_stream() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    for (i, budget) in [3_000u64, 12_000, 40_000].into_iter().enumerate() {
        let version = format!("2.0.{i}");
        let release = Release::new(6 * 1024 * 1024, 111 + i as u64);
        let relay = postgres_relay(Faults { cut_after: Some(budget), ..Faults::default() }).await;
        let meta = ferry_store::connect(&through(&relay, &stack), 4).unwrap();
        let (url, _stop) = registry(meta, stack.blobs.clone()).await;
        fails_then_completes(&stack, &token, &url, &version, &release).await;
    }
}

/// Slow links everywhere (every read through the relays held 2 ms): a
/// publish still completes, whole.
#[tokio::test]
async fn publish_completes_over_slow_links() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let slow = Faults { delay: Some(Duration::from_millis(2)), ..Faults::default() };
    let pg = postgres_relay(slow.clone()).await;
    let s3 = s3_relay(&stack, slow.clone()).await;
    let meta = ferry_store::connect(&through(&pg, &stack), 4).unwrap();
    let (url, _stop) = registry(meta, blobs_through(&s3, &stack)).await;
    let agent_link =
        Relay::start_with(Target::Tcp(url.trim_start_matches("http://").parse().unwrap()), slow).await.unwrap();
    let conn =
        ferry_agent::Connection { url: agent_link.url(), token, ca_cert: None, proxy: ferry_agent::Proxy::none() };
    let release = Release::new(3 * 1024 * 1024, 103);
    let done = publish_to(&conn, "acme", "3.0.0", &release.artifacts(), true).await.unwrap();
    assert!(done.created);
    releases_are_whole(&stack, "acme", &["3.0.0"]).await;
}

/// While PostgreSQL is away the gateway keeps answering what it has cached
/// (as documented, for up to the cache TTLs), reports not ready while
/// staying alive, and answers what it has not cached with 503; once
/// PostgreSQL is back, it is ready again.
#[tokio::test]
async fn gateway_answers_from_cache_while_postgres_is_away() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(100_000, 104);
    publish_to(&stack.connection(&token), "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    let key = stack.client_key("acme").await;

    let relay = postgres_relay(Faults::default()).await;
    let url = through(&relay, &stack);
    let gateway = Gateway::new(ferry_store::connect(&url, 4).unwrap(), stack.blobs.clone(), GatewayConfig::default());
    let gw: GatewayHandle = {
        // Follows changes through the relay too.
        let mut applied = gateway.applied();
        gateway.follow(ferry_store::listen(&url).unwrap());
        tokio::time::timeout(Duration::from_secs(30), applied.recv()).await.unwrap().unwrap();
        stack.serve_gateway_following(gateway).await
    };
    let check = |version: &'static str| {
        let (http, key) = (gw.http.clone(), key.clone());
        async move {
            ferry_testkit::http()
                .get(format!("{http}/v1/check?tenant=acme&app=crm&version={version}&platform=android"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(check("0.9.0").await.status(), StatusCode::OK);
    let status = |path: &'static str| {
        let http = gw.http.clone();
        async move { ferry_testkit::http().get(format!("{http}{path}")).send().await.unwrap().status() }
    };
    assert_eq!(status("/readyz").await, StatusCode::OK);

    relay.set_down(true);
    let cached = check("0.9.0").await;
    assert_eq!(cached.status(), StatusCode::OK, "answered from cache");
    assert_eq!(status("/healthz").await, StatusCode::OK, "alive");
    assert_eq!(status("/readyz").await, StatusCode::SERVICE_UNAVAILABLE, "not ready");
    let other_key = {
        // A key it has never seen needs the database: retry later, not 500.
        let resp = ferry_testkit::http()
            .get(format!("{}/v1/check?tenant=acme&app=crm&version=0.9.0", gw.http))
            .bearer_auth(ferry_store::ApiKey::generate(ferry_store::KeyRole::Client).token())
            .send()
            .await
            .unwrap();
        resp.status()
    };
    assert_eq!(other_key, StatusCode::SERVICE_UNAVAILABLE);

    relay.set_down(false);
    let ready_again = async {
        while status("/readyz").await != StatusCode::OK {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready_again).await.expect("ready again once PostgreSQL is back");
    assert_eq!(check("0.9.0").await.status(), StatusCode::OK);
}

/// Twenty agents publishing the same version at once: with the same
/// content all succeed and exactly one created it; with different content
/// exactly one wins and the others are told the version exists.
#[tokio::test]
async fn concurrent_publishes_of_one_version() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let conn = stack.connection(&token);
    let same = Release::new(200_000, 105);
    let artifacts = same.artifacts();
    let results =
        futures::future::join_all((0..20).map(|_| publish_to(&conn, "acme", "1.0.0", &artifacts, false))).await;
    let created = results.iter().map(|r| r.as_ref().unwrap().created).filter(|c| *c).count();
    assert_eq!(created, 1);

    let releases: Vec<Release> = (0..20).map(|i| Release::new(50_000, 200 + i)).collect();
    let all: Vec<Vec<(&str, &std::path::Path)>> = releases.iter().map(Release::artifacts).collect();
    let results = futures::future::join_all(all.iter().map(|a| publish_to(&conn, "acme", "2.0.0", a, false))).await;
    let won = results.iter().filter(|r| r.as_ref().is_ok_and(|s| s.created)).count();
    assert_eq!(won, 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        let e = r.as_ref().unwrap_err();
        assert!(matches!(e, ferry_agent::AgentError::Rpc { code: tonic::Code::AlreadyExists, .. }), "{e}");
    }
    releases_are_whole(&stack, "acme", &["1.0.0", "2.0.0"]).await;
}
