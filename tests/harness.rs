//! A whole publishing stack per test: real PostgreSQL (a fresh database),
//! a real S3 server (a fresh bucket), the registry serving gRPC on a port-0
//! listener in-process, and helpers to make tenants, keys and artifacts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_agent::{Connection, Progress, PublishRequest, PublishSummary};
use ferry_gateway::{Gateway, GatewayConfig};
use ferry_registry::{Registry, RegistrySettings, Tls};
use ferry_release::{ArtifactSpec, Name};
use ferry_store::{Blobs, KeyRole, Meta, S3Settings};
use ferry_testkit::S3Server;
use tokio::sync::oneshot;

pub struct Stack {
    pub s3: S3Server,
    pub meta: Meta,
    pub blobs: Blobs,
    pub database_url: String,
    pub addr: SocketAddr,
    pub url: String,
    /// The registry's ops listener (`/healthz`, `/readyz`, `/metrics`).
    pub ops: String,
    /// The registry being served (its lifecycle, its metrics).
    pub registry: Registry,
    stop: Option<oneshot::Sender<()>>,
}

/// The operator dashboard served in-process; stops when dropped.
pub struct DashboardHandle {
    /// `http://localhost:PORT`: browsers keep `Secure` cookies for
    /// localhost over plain HTTP.
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for DashboardHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A gateway serving HTTP and gRPC in-process, following the stack's
/// database for changes.
pub struct GatewayHandle {
    pub gateway: Gateway,
    pub http: String,
    pub grpc: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with_tls(None).await
    }

    pub async fn start_with_tls(tls: Option<Tls>) -> Self {
        // Garbage collection, alerts and patches only when a test runs them
        // (patches: `Stack::make_patches`).
        let patches = ferry_registry::patcher::PatchSettings { workers: 0, ..Default::default() };
        Self::start_configured(
            tls,
            RegistrySettings { gc_interval: None, alerts: None, patches, ..RegistrySettings::default() },
        )
        .await
    }

    /// A stack whose registry has these settings (listener limits, ...).
    pub async fn start_configured(tls: Option<Tls>, settings: RegistrySettings) -> Self {
        let s3 = S3Server::start_temp().expect("s3 server");
        let bucket = s3.create_bucket().await.expect("bucket");
        let database_url = ferry_testkit::fresh_database().await.expect("database");
        let meta = ferry_store::connect(&database_url, 8).expect("pool");
        meta.migrate().await.expect("migrations");
        let s3_settings = S3Settings {
            endpoint: Some(s3.endpoint.clone()),
            region: s3.region.clone(),
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            force_path_style: true,
        };
        let blobs = Blobs::from_settings(&s3_settings, bucket);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let scheme = if tls.is_some() { "https://localhost" } else { "http://127.0.0.1" };
        let url = format!("{scheme}:{}", addr.port());
        let (stop, stopped) = oneshot::channel::<()>();
        let registry = Registry::with_settings(meta.clone(), blobs.clone(), settings);
        let ops_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ops = format!("http://{}", ops_listener.local_addr().expect("addr"));
        let limits = registry.settings().listener;
        let (served, lifecycle) = (registry.clone(), registry.lifecycle().clone());
        tokio::spawn(async move {
            let stopping = lifecycle.stopping();
            let ops = ferry_registry::serve_ops(served.clone(), ops_listener, limits, lifecycle.stopping());
            let grpc = ferry_registry::serve(served, listener, tls, async {
                let _ = stopped.await;
                lifecycle.stop();
            });
            let (ops, grpc) = tokio::join!(ops, grpc);
            drop(stopping);
            grpc.expect("registry serves");
            ops.expect("ops listener serves");
        });
        Stack { s3, meta, blobs, database_url, addr, url, ops, registry, stop: Some(stop) }
    }

    /// Starts a gateway on this stack's database and bucket; returns once
    /// it listens for change notifications (no change can be missed).
    pub async fn gateway(&self, config: GatewayConfig) -> GatewayHandle {
        self.serve_gateway(Gateway::new(self.meta.clone(), self.blobs.clone(), config)).await
    }

    /// S3 settings of this stack's server (for blobs with other credentials).
    pub fn s3_settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.s3.endpoint.clone()),
            region: self.s3.region.clone(),
            access_key_id: self.s3.access_key_id.clone(),
            secret_access_key: self.s3.secret_access_key.clone(),
            force_path_style: true,
        }
    }

    /// What a child process needs to reach this stack's database and
    /// bucket, as environment variables; the child reads them back with
    /// [`StackEnv::from_env`].
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("S3_ENDPOINT", self.s3.endpoint.clone()),
            ("S3_REGION", self.s3.region.clone()),
            ("S3_KEY", self.s3.access_key_id.clone()),
            ("S3_SECRET", self.s3.secret_access_key.clone()),
            ("S3_BUCKET", self.blobs.bucket().to_owned()),
        ]
    }

    /// Serves `gateway` (made by the test, e.g. with its own clock) over
    /// HTTP and gRPC, following this stack's database for changes.
    pub async fn serve_gateway(&self, gateway: Gateway) -> GatewayHandle {
        let mut applied = gateway.applied();
        gateway.follow(ferry_store::listen(&self.database_url).expect("listen"));
        // The first thing a listener reports is that it is listening.
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), applied.recv())
            .await
            .expect("the gateway starts listening for changes within 30 s");
        assert_eq!(first.unwrap(), ferry_store::Change::Resync);
        self.serve_gateway_following(gateway).await
    }

    /// Serves a gateway that already follows changes (the test set that
    /// up, e.g. through a relay).
    pub async fn serve_gateway_following(&self, gateway: Gateway) -> GatewayHandle {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_url, grpc_url) =
            (format!("http://{}", http.local_addr().unwrap()), format!("http://{}", grpc.local_addr().unwrap()));
        let (stop, stopped) = oneshot::channel::<()>();
        let served = gateway.clone();
        tokio::spawn(async move {
            ferry_gateway::serve(served, http, grpc, async {
                let _ = stopped.await;
            })
            .await
            .expect("gateway serves");
        });
        GatewayHandle { gateway, http: http_url, grpc: grpc_url, stop: Some(stop) }
    }

    /// Serves the operator dashboard in-process on a port-0 listener,
    /// listening to this stack's database for live events.
    pub async fn serve_dashboard(&self, settings: ferry_dashboard::DashboardSettings) -> DashboardHandle {
        let live = ferry_dashboard::Live::listen(&self.database_url, self.meta.clone()).await.expect("listen");
        let dashboard = ferry_dashboard::Dashboard::new(self.meta.clone(), live, settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            ferry_registry::serve_dashboard(dashboard, listener, ferry_net::Limits::default(), async {
                let _ = stopped.await;
            })
            .await
            .expect("dashboard serves");
        });
        DashboardHandle { url, stop: Some(stop) }
    }

    /// Issues another agent key for `tenant`.
    pub async fn tenant_agent_key(&self, tenant: &str) -> String {
        self.meta.issue_key(&Name::parse("tenant", tenant).unwrap(), KeyRole::Agent).await.unwrap().token()
    }

    /// Issues a client key for `tenant`.
    pub async fn client_key(&self, tenant: &str) -> String {
        self.meta.issue_key(&Name::parse("tenant", tenant).unwrap(), KeyRole::Client).await.unwrap().token()
    }

    /// Creates a tenant with an app `crm` and returns an agent key for it.
    pub async fn tenant(&self, name: &str) -> String {
        let tenant = Name::parse("tenant", name).unwrap();
        self.meta.create_tenant(&tenant).await.unwrap();
        self.meta.create_app(&tenant, &Name::parse("app", "crm").unwrap()).await.unwrap();
        self.meta.issue_key(&tenant, KeyRole::Agent).await.unwrap().token()
    }

    pub fn connection(&self, token: &str) -> Connection {
        Connection { url: self.url.clone(), token: token.to_owned(), ca_cert: None, proxy: ferry_agent::Proxy::none() }
    }

    /// Publishes `artifacts` as `tenant`/crm `version` with `token`.
    pub async fn publish(
        &self,
        token: &str,
        tenant: &str,
        version: &str,
        artifacts: &[(&str, &Path)],
    ) -> Result<PublishSummary, ferry_agent::AgentError> {
        publish_to(&self.connection(token), tenant, version, artifacts, false).await
    }

    /// Makes every queued patch now, as the registry's workers would;
    /// returns how many jobs were worked.
    pub async fn make_patches(&self) -> usize {
        let settings = ferry_registry::patcher::PatchSettings::default();
        let mut worked = 0;
        while ferry_registry::patcher::work_once(&self.registry, &settings).await.expect("patch job") {
            worked += 1;
        }
        worked
    }

    pub async fn tenant_id(&self, name: &str) -> i64 {
        self.meta.tenant_id(&Name::parse("tenant", name).unwrap()).await.unwrap()
    }

    pub async fn app_id(&self, tenant: &str) -> i64 {
        let tenant_id = self.tenant_id(tenant).await;
        self.meta.app_id(tenant_id, &Name::parse("app", "crm").unwrap()).await.unwrap().unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn publish_to(
    conn: &Connection,
    tenant: &str,
    version: &str,
    artifacts: &[(&str, &Path)],
    deploy: bool,
) -> Result<PublishSummary, ferry_agent::AgentError> {
    let req = PublishRequest {
        tenant: Name::parse("tenant", tenant).unwrap(),
        app: Name::parse("app", "crm").unwrap(),
        version: version.parse().unwrap(),
        artifacts: specs(artifacts),
        deploy,
        retries: 0,
        compatible: None,
        state_dir: None,
    };
    ferry_agent::publish(conn, &req, &Progress::hidden()).await
}

pub use ferry_testkit::noise;

/// `NAME=PATH` artifact specs, as the agent's command line takes them.
pub fn specs(artifacts: &[(&str, &Path)]) -> Vec<ArtifactSpec> {
    artifacts.iter().map(|(name, path)| ArtifactSpec::parse(&format!("{name}={}", path.display())).unwrap()).collect()
}

/// A small release: an APK-like file, a web bundle directory, an API file.
pub struct Release {
    pub dir: tempfile::TempDir,
    pub apk: PathBuf,
    pub web: PathBuf,
    pub api: PathBuf,
}

impl Release {
    pub fn new(apk_bytes: usize, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let apk = dir.path().join("crm.apk");
        std::fs::write(&apk, noise(apk_bytes, seed)).unwrap();
        let web = dir.path().join("web");
        std::fs::create_dir_all(web.join("assets")).unwrap();
        std::fs::write(web.join("index.html"), b"<!doctype html><script src=assets/app.js></script>").unwrap();
        std::fs::write(web.join("assets/app.js"), noise(300_000, seed + 1)).unwrap();
        std::fs::write(web.join("assets/vendor.js"), noise(500_000, 99)).unwrap();
        let api = dir.path().join("openapi.json");
        std::fs::write(&api, br#"{"openapi":"3.1.0","info":{"title":"crm","version":"1"}}"#).unwrap();
        Self { dir, apk, web, api }
    }

    pub fn artifacts(&self) -> Vec<(&'static str, &Path)> {
        vec![("mobile", self.apk.as_path()), ("web", self.web.as_path()), ("api", self.api.as_path())]
    }

    /// Every distinct chunk of this release with its bytes, in manifest
    /// order (for tests that speak the upload protocol themselves).
    pub fn chunks(&self, version: &str) -> Vec<(ferry_release::Hash, Vec<u8>)> {
        let manifest = self.manifest(version);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for artifact in &manifest.artifacts {
            for file in &artifact.files {
                let path = match artifact.name.as_str() {
                    "mobile" => self.apk.clone(),
                    "api" => self.api.clone(),
                    _ => self.web.join(file.path.as_str()),
                };
                let data = std::fs::read(path).unwrap();
                let mut offset = 0;
                for chunk in &file.chunks {
                    let end = offset + chunk.len as usize;
                    if seen.insert(chunk.hash) {
                        out.push((chunk.hash, data[offset..end].to_vec()));
                    }
                    offset = end;
                }
            }
        }
        out
    }

    /// The manifest the agent packs for this release as `version`.
    pub fn manifest(&self, version: &str) -> ferry_release::Manifest {
        self.manifest_of("acme", version)
    }

    /// The manifest the agent of `tenant` packs for this release of crm.
    pub fn manifest_of(&self, tenant: &str, version: &str) -> ferry_release::Manifest {
        let mut manifest = ferry_release::pack(version.parse().unwrap(), &specs(&self.artifacts()), &|_| {}).unwrap();
        manifest.owner = Some(ferry_release::Owner {
            tenant: Name::parse("tenant", tenant).unwrap(),
            app: Name::parse("app", "crm").unwrap(),
        });
        manifest
    }
}

/// A self-signed certificate for `localhost`.
pub fn self_signed_tls() -> (Tls, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem().into_bytes();
    let tls = Tls { cert_pem: cert_pem.clone(), key_pem: cert.signing_key.serialize_pem().into_bytes() };
    (tls, cert_pem)
}

/// A stack as a child process sees it (see [`Stack::child_env`]).
pub struct StackEnv {
    pub database_url: String,
    pub s3: S3Settings,
    pub bucket: String,
}

impl StackEnv {
    /// Reads what [`Stack::child_env`] set; the error names what is missing.
    pub fn from_env() -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set (by the parent)"));
        Ok(Self {
            database_url: env("DATABASE_URL")?,
            s3: S3Settings {
                endpoint: Some(env("S3_ENDPOINT")?),
                region: env("S3_REGION")?,
                access_key_id: env("S3_KEY")?,
                secret_access_key: env("S3_SECRET")?,
                force_path_style: true,
            },
            bucket: env("S3_BUCKET")?,
        })
    }

    pub fn blobs(&self) -> Blobs {
        Blobs::from_settings(&self.s3, self.bucket.clone())
    }
}

/// A Ferry service run as a child process (a test binary started again in
/// a child mode of its own), its JSON log lines kept for inspection; killed
/// when dropped if it has not exited.
pub struct ServiceProcess {
    pub child: std::process::Child,
    /// The fields of the log event the service announced itself with.
    pub listening: serde_json::Value,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts this test binary again with exactly `envs` (and `PATH`), JSON
    /// logs, and waits until it logs `message` (e.g. "gateway listening").
    pub fn spawn(envs: &[(String, String)], message: &str) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FERRY_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting a child process");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (kept, wanted) = (logs.clone(), message.to_owned());
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in stderr.lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["fields"]["message"] == wanted.as_str()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(event["fields"].clone());
                }
                kept.lock().unwrap().push(line);
            }
        });
        let listening = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(fields) => fields,
            Err(_) => {
                let _ = child.kill();
                panic!("the child did not log {message:?}; its log:\n{}", logs.lock().unwrap().join("\n"))
            }
        };
        Self { child, listening, logs }
    }

    /// A field of the announcing event, e.g. the address it listens on.
    pub fn field(&self, name: &str) -> String {
        self.listening[name].as_str().unwrap_or_else(|| panic!("no {name} in {}", self.listening)).to_owned()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (up to a minute) for the process to exit; its status.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the child did not exit");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stack {
    /// What `ferry-registry serve` and `ferry-gateway serve` need to reach
    /// this stack's database and bucket, as their own variables.
    pub fn service_env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database_url.clone()),
            ("FERRY_S3_BUCKET", self.blobs.bucket().to_owned()),
            ("AWS_ENDPOINT_URL_S3", self.s3.endpoint.clone()),
            ("AWS_REGION", self.s3.region.clone()),
            ("AWS_ACCESS_KEY_ID", self.s3.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.s3.secret_access_key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
