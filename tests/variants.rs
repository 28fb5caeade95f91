//! Tenant variants from one common configuration (S1-2, S1-5, S1-8, S1-9):
//! one variants file published for three tenants through the real
//! registry, answered by the real gateway, downloaded from the real S3
//! server, with publisher keys (sent once) and agent keys (per tenant), and
//! one tenant on a download location of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferry_agent::Progress;
use ferry_agent::variants::{LinkMode, Variants, VariantsRequest, publish_variants};
use ferry_e2e::{GatewayHandle, Stack, noise};
use ferry_gateway::GatewayConfig;
use ferry_release::{Hash, Name};
use serde_json::Value;

const VARIANTS: &str = r##"app = "crm"

[base.artifacts.web]
path = "base/web"
[base.artifacts.mobile]
path = "base/crm.apk"
platforms = ["android"]
[base.artifacts.api]
path = "base/openapi.json"

[variants.acme]
tenants = ["acme"]
[variants.acme.web]
replace = { "img/logo.png" = "acme/logo.png" }
[variants.acme.web.set."config.json"]
"/api/endpoint" = "https://api.acme.example"

[variants.north]
tenants = ["globex", "initech"]
[variants.north.web]
remove = ["img/promo.png"]
add = { "img/extra.png" = "north/extra.png" }
[variants.north.web.set."config.json"]
"/api/endpoint" = "https://api.north.example"
"/theme/primary" = "#004488"
[variants.north.mobile]
source = "north/crm.apk"
"##;

/// A base release of crm and two variants' overrides, on disk.
struct Workspace {
    dir: tempfile::TempDir,
    variants: Arc<Variants>,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p);
        for d in ["base/web/img", "base/web/js", "acme", "north"] {
            std::fs::create_dir_all(at(d)).unwrap();
        }
        std::fs::write(at("base/web/index.html"), b"<!doctype html><script src=js/app.js></script>").unwrap();
        std::fs::write(at("base/web/js/app.js"), noise(900_000, 1)).unwrap();
        std::fs::write(at("base/web/img/logo.png"), noise(120_000, 2)).unwrap();
        std::fs::write(at("base/web/img/promo.png"), noise(150_000, 3)).unwrap();
        std::fs::write(
            at("base/web/config.json"),
            br##"{"api": {"endpoint": "https://api.example"}, "theme": {"primary": "#000000"}}"##,
        )
        .unwrap();
        std::fs::write(at("base/crm.apk"), noise(1_500_000, 4)).unwrap();
        std::fs::write(at("base/openapi.json"), br#"{"openapi":"3.1.0","info":{"title":"crm","version":"1"}}"#)
            .unwrap();
        std::fs::write(at("acme/logo.png"), noise(110_000, 5)).unwrap();
        std::fs::write(at("north/extra.png"), noise(90_000, 6)).unwrap();
        // A tenant-built APK: the base with its signing block changed.
        let mut apk = noise(1_500_000, 4);
        apk[1_400_000..1_420_000].copy_from_slice(&noise(20_000, 7));
        std::fs::write(at("north/crm.apk"), apk).unwrap();
        std::fs::write(at("ferry.variants.toml"), VARIANTS).unwrap();
        let variants = Arc::new(Variants::load(&at("ferry.variants.toml")).unwrap());
        Self { dir, variants }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    /// The distinct chunks (hash, length) of `tenant`'s rendered release.
    fn chunks(&self, tenant: &str) -> HashMap<Hash, u32> {
        let out = tempfile::tempdir().unwrap();
        let specs = self.variants.render(&name(tenant), &out.path().join("r"), LinkMode::Copy).unwrap();
        let manifest = ferry_release::pack("1.0.0".parse().unwrap(), &specs, &|_| {}).unwrap();
        manifest.unique_chunks().iter().map(|c| (c.hash, c.len)).collect()
    }
}

fn name(s: &str) -> Name {
    Name::parse("tenant", s).unwrap()
}

fn request(ws: &Workspace, version: &str, only: &[&str]) -> VariantsRequest {
    VariantsRequest {
        variants: Arc::clone(&ws.variants),
        app: Name::parse("app", "crm").unwrap(),
        version: version.parse().unwrap(),
        only: only.iter().map(|t| name(t)).collect(),
        deploy: true,
        retries: 0,
        compatible: None,
    }
}

/// Bytes of the chunks in `mine` that none of `before` holds.
fn new_bytes(mine: &HashMap<Hash, u32>, before: &[&HashMap<Hash, u32>]) -> u64 {
    mine.iter().filter(|(h, _)| before.iter().all(|b| !b.contains_key(*h))).map(|(_, len)| u64::from(*len)).sum()
}

/// What `tenant`'s app is told to download from version 0.0.1, by path.
async fn files(gw: &GatewayHandle, key: &str, tenant: &str) -> (Value, HashMap<String, Value>) {
    let resp = ferry_testkit::http()
        .get(format!("{}/v1/check", gw.http))
        .query(&[("tenant", tenant), ("app", "crm"), ("version", "0.0.1"), ("platform", "android")])
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let files = body["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (format!("{}/{}", f["kind"].as_str().unwrap(), f["path"].as_str().unwrap()), f.clone()))
        .collect();
    (body, files)
}

/// Downloads a listed file from its presigned URL and checks its BLAKE3.
async fn download(file: &Value) -> Vec<u8> {
    let resp = ferry_testkit::http().get(file["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", file["url"]);
    let bytes = resp.bytes().await.unwrap().to_vec();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), file["blake3"].as_str().unwrap());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_from_one_file_send_the_base_once_and_get_their_own_files() {
    let stack = Stack::start().await;
    let clients: Vec<String> = {
        let mut keys = Vec::new();
        for t in ["acme", "globex", "initech"] {
            stack.tenant(t).await;
            keys.push(stack.client_key(t).await);
        }
        keys
    };
    // initech downloads from a bucket of its own, through another host name.
    let bucket = stack.s3.create_bucket().await.unwrap();
    let public = stack.s3.endpoint.replace("127.0.0.1", "localhost");
    assert_ne!(public, stack.s3.endpoint);
    stack.meta.set_location(&name("initech"), &bucket, "tenants/initech/", Some(&public)).await.unwrap();

    let ws = Workspace::new();
    let publisher =
        stack.meta.issue_publisher_key(&[name("acme"), name("globex"), name("initech")]).await.unwrap().token();
    let conn = stack.connection(&publisher);
    let summary = publish_variants(&conn, &request(&ws, "1.0.0", &[]), &Progress::hidden()).await.unwrap();

    // Sent once: acme sends its whole release, globex only what differs
    // from acme's, initech (the same files as globex) nothing at all.
    let (acme, globex, initech) = (ws.chunks("acme"), ws.chunks("globex"), ws.chunks("initech"));
    let sent: Vec<(&str, u64)> =
        summary.tenants.iter().map(|t| (t.publish.tenant.as_str(), t.publish.bytes_sent)).collect();
    let expected_globex = new_bytes(&globex, &[&acme]);
    assert!(expected_globex > 0 && expected_globex < new_bytes(&globex, &[]) / 2, "{expected_globex}");
    assert_eq!(sent, [("acme", new_bytes(&acme, &[])), ("globex", expected_globex), ("initech", 0)]);
    assert_eq!(summary.bytes_sent, sent.iter().map(|(_, b)| b).sum::<u64>());
    assert!(summary.tenants.iter().all(|t| t.publish.created && t.publish.deployed));
    assert_eq!(summary.tenants.iter().map(|t| t.variant.as_str()).collect::<Vec<_>>(), ["acme", "north", "north"]);
    // Stored once: every chunk of the three releases is one row and one object.
    let distinct: HashSet<&Hash> = acme.keys().chain(globex.keys()).chain(initech.keys()).collect();
    let client = stack.meta.client().await.unwrap();
    let rows: i64 = client.query_one("SELECT count(*) FROM chunks", &[]).await.unwrap().get(0);
    assert_eq!(rows as usize, distinct.len());

    let gw = stack.gateway(GatewayConfig::default()).await;
    let logo_base = std::fs::read(ws.path("base/web/img/logo.png")).unwrap();
    for (tenant, key) in ["acme", "globex", "initech"].iter().zip(&clients) {
        let (body, files) = files(&gw, key, tenant).await;
        // Each manifest names its own tenant and app (S1-8).
        assert_eq!((body["tenant"].as_str(), body["app"].as_str()), (Some(*tenant), Some("crm")), "{body}");
        let config: Value = serde_json::from_slice(&download(&files["web/config.json"]).await).unwrap();
        let logo = download(&files["web/img/logo.png"]).await;
        let apk = download(&files["mobile/crm.apk"]).await;
        if *tenant == "acme" {
            assert_eq!(config["api"]["endpoint"], "https://api.acme.example");
            assert_eq!(config["theme"]["primary"], "#000000");
            assert_eq!(logo, std::fs::read(ws.path("acme/logo.png")).unwrap());
            assert!(files.contains_key("web/img/promo.png") && !files.contains_key("web/img/extra.png"));
            assert_eq!(apk, std::fs::read(ws.path("base/crm.apk")).unwrap());
        } else {
            assert_eq!(config["api"]["endpoint"], "https://api.north.example");
            assert_eq!(config["theme"]["primary"], "#004488");
            assert_eq!(logo, logo_base);
            assert!(!files.contains_key("web/img/promo.png"));
            let extra = download(&files["web/img/extra.png"]).await;
            assert_eq!(extra, std::fs::read(ws.path("north/extra.png")).unwrap());
            assert_eq!(apk, std::fs::read(ws.path("north/crm.apk")).unwrap());
        }
        // initech's URLs name its location; the others the registry's bucket.
        for file in files.values() {
            let url = file["url"].as_str().unwrap();
            if *tenant == "initech" {
                let prefix = format!("{public}/{bucket}/tenants/initech/files/");
                assert!(url.starts_with(&prefix), "{url} does not start with {prefix}");
            } else {
                let prefix = format!("{}/{}/files/", stack.s3.endpoint, stack.blobs.bucket());
                assert!(url.starts_with(&prefix), "{url} does not start with {prefix}");
            }
        }
    }
    // Publishing again changes nothing and sends nothing.
    let again = publish_variants(&conn, &request(&ws, "1.0.0", &[]), &Progress::hidden()).await.unwrap();
    assert!(again.tenants.iter().all(|t| !t.publish.created && t.publish.bytes_sent == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_agent_keys_each_tenant_sends_its_own_chunks() {
    let stack = Stack::start().await;
    let ws = Workspace::new();
    let mut keys = HashMap::new();
    for t in ["acme", "globex", "initech"] {
        keys.insert(t, stack.tenant(t).await);
    }
    for t in ["acme", "globex", "initech"] {
        let conn = stack.connection(&keys[t]);
        let summary = publish_variants(&conn, &request(&ws, "1.0.0", &[t]), &Progress::hidden()).await.unwrap();
        assert_eq!(summary.tenants.len(), 1);
        // A tenant never learns what another holds: everything is sent.
        assert_eq!(summary.bytes_sent, new_bytes(&ws.chunks(t), &[]), "{t}");
    }
    // An agent key acts for its own tenant only.
    let conn = stack.connection(&keys["acme"]);
    let err = publish_variants(&conn, &request(&ws, "1.0.1", &["globex"]), &Progress::hidden()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("tenant globex") && text.contains("not valid for tenant globex"), "{text}");
    // And a publisher key for exactly the tenants it was issued for.
    let publisher = stack.meta.issue_publisher_key(&[name("acme")]).await.unwrap().token();
    let conn = stack.connection(&publisher);
    let err = publish_variants(&conn, &request(&ws, "1.0.1", &[]), &Progress::hidden()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("tenant globex") && text.contains("publishes for acme"), "{text}");
    // --only names a tenant the file does not serve.
    let err = publish_variants(&conn, &request(&ws, "1.0.1", &["umbrella"]), &Progress::hidden()).await.unwrap_err();
    assert!(err.to_string().contains("umbrella"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_tenants_the_registry_does_not_know_with_their_line() {
    let stack = Stack::start().await;
    let ws = Workspace::new();
    stack.tenant("acme").await;
    stack.tenant("globex").await;
    let publisher = stack.meta.issue_publisher_key(&[name("acme"), name("globex")]).await.unwrap().token();
    let problems = ferry_agent::variants::check_tenants(&stack.connection(&publisher), &ws.variants).await.unwrap();
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    // `tenants = ["globex", "initech"]` is line 19 of the file.
    let expected = format!("{}:19:", ws.path("ferry.variants.toml").display());
    assert!(lines[0].starts_with(&expected) && lines[0].contains("initech"), "{}", lines[0]);
    // A key the registry does not know is an error, not an empty answer.
    let unknown = format!("ferry_publisher_{}_{}", "0".repeat(12), "0".repeat(64));
    let err = ferry_agent::variants::check_tenants(&stack.connection(&unknown), &ws.variants).await.unwrap_err();
    assert!(err.to_string().contains("unknown or revoked"), "{err}");
}

/// Every file `files` lists downloads from its URL, which starts with `prefix`.
async fn all_download_from(files: &HashMap<String, Value>, prefix: &str) {
    assert!(!files.is_empty());
    for file in files.values() {
        let url = file["url"].as_str().unwrap();
        assert!(url.starts_with(prefix), "{url} does not start with {prefix}");
        download(file).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_survive_moves_and_collection_and_keys_act_only_in_scope() {
    let stack = Stack::start().await;
    let ws = Workspace::new();
    let (acme_agent, globex_agent) = (stack.tenant("acme").await, stack.tenant("globex").await);
    let (acme_client, globex_client) = (stack.client_key("acme").await, stack.client_key("globex").await);
    let registry_files = format!("{}/{}/files/", stack.s3.endpoint, stack.blobs.bucket());
    let cdn = stack.s3.endpoint.replace("127.0.0.1", "localhost");
    let cdn_files = format!("{cdn}/{}/files/", stack.blobs.bucket());

    // globex's files stay in the registry's bucket but its links name
    // another host (a CDN name): collecting garbage keeps every one of them.
    stack.meta.set_location(&name("globex"), stack.blobs.bucket(), "", Some(&cdn)).await.unwrap();
    for (key, tenant) in [(&acme_agent, "acme"), (&globex_agent, "globex")] {
        publish_variants(&stack.connection(key), &request(&ws, "1.0.0", &[tenant]), &Progress::hidden()).await.unwrap();
    }
    let report = ferry_store::collect_garbage(&stack.meta, &stack.blobs, std::time::Duration::ZERO).await.unwrap();
    assert!(report.ran);
    let gw = stack.gateway(GatewayConfig::default()).await;
    all_download_from(&files(&gw, &globex_client, "globex").await.1, &cdn_files).await;
    all_download_from(&files(&gw, &acme_client, "acme").await.1, &registry_files).await;

    // Moving acme: its published release keeps its links; the next one is
    // assembled in the new bucket and linked there.
    let bucket = stack.s3.create_bucket().await.unwrap();
    stack.meta.set_location(&name("acme"), &bucket, "tenants/acme/", None).await.unwrap();
    let (_, before) = files(&gw, &acme_client, "acme").await;
    all_download_from(&before, &registry_files).await;
    let conn = stack.connection(&acme_agent);
    let mut changes = gw.gateway.applied();
    publish_variants(&conn, &request(&ws, "1.1.0", &["acme"]), &Progress::hidden()).await.unwrap();
    let acme_app = stack.app_id("acme").await;
    let seen = async {
        while !matches!(changes.recv().await.unwrap(), ferry_store::Change::App { app_id, .. } if app_id == acme_app) {}
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), seen).await.expect("the gateway sees the deploy");
    let moved = format!("{}/{bucket}/tenants/acme/files/", stack.s3.endpoint);
    let after = files(&gw, &acme_client, "acme").await;
    assert_eq!(after.0["target"], "1.1.0", "{}", after.0);
    all_download_from(&after.1, &moved).await;

    // FERRY_S3_PUBLIC_ENDPOINT: the registry's own files, linked by another name.
    let public = ferry_gateway::Gateway::new(
        stack.meta.clone(),
        stack.blobs.clone().with_public_endpoint(Some(cdn.clone())),
        GatewayConfig::default(),
    );
    let public = stack.serve_gateway(public).await;
    let mut listed = files(&public, &acme_client, "acme").await.1;
    listed.retain(|_, f| !f["url"].as_str().unwrap().contains("/tenants/acme/"));
    assert!(listed.is_empty(), "acme's 1.1.0 is at its location: {listed:?}");
    let globex = files(&public, &globex_client, "globex").await.1;
    all_download_from(&globex, &cdn_files).await;

    // A publisher key deploys only for its tenants, and not once revoked.
    let publisher = stack.meta.issue_publisher_key(&[name("acme")]).await.unwrap();
    let conn = stack.connection(&publisher.token());
    let app = Name::parse("app", "crm").unwrap();
    let err = ferry_agent::deploy(&conn, &name("globex"), &app, &"1.0.0".parse().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("not valid for tenant globex"), "{err}");
    ferry_agent::deploy(&conn, &name("acme"), &app, &"1.0.0".parse().unwrap()).await.unwrap();
    stack.meta.revoke_key(&publisher.id).await.unwrap();
    let err = ferry_agent::deploy(&conn, &name("acme"), &app, &"1.0.0".parse().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("unknown or revoked"), "{err}");

    // The registry's API answers agent and publisher keys only.
    let err = ferry_agent::variants::check_tenants(&stack.connection(&acme_client), &ws.variants).await.unwrap_err();
    assert!(err.to_string().contains("takes agent and publisher keys"), "{err}");

    // A made-up token of another role under a real key's id does not make
    // the real key look missing.
    let agent_id = ferry_store::ApiKey::parse(&acme_agent).unwrap().id;
    let forged = format!("ferry_publisher_{agent_id}_{}", "0".repeat(64));
    assert!(ferry_agent::variants::check_tenants(&stack.connection(&forged), &ws.variants).await.is_err());
    let problems = ferry_agent::variants::check_tenants(&stack.connection(&acme_agent), &ws.variants).await.unwrap();
    assert_eq!(problems.len(), 2, "globex and initech are not acme's: {problems:?}");
}
