//! A whole publishing stack per test: real PostgreSQL (a fresh database),
//! a real S3 server (a fresh bucket), the registry serving gRPC on a port-0
//! listener in-process, and helpers to make tenants, keys and artifacts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_agent::{Connection, Progress, PublishRequest, PublishSummary};
use ferry_gateway::{Gateway, GatewayConfig};
use ferry_registry::{Registry, Tls};
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
    stop: Option<oneshot::Sender<()>>,
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
        let s3 = S3Server::start_temp().expect("s3 server");
        let bucket = s3.create_bucket().await.expect("bucket");
        let database_url = ferry_testkit::fresh_database().await.expect("database");
        let meta = ferry_store::connect(&database_url, 8).expect("pool");
        meta.migrate().await.expect("migrations");
        let blobs = Blobs::from_settings(
            &S3Settings {
                endpoint: Some(s3.endpoint.clone()),
                region: s3.region.clone(),
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: s3.secret_access_key.clone(),
                force_path_style: true,
            },
            bucket,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let scheme = if tls.is_some() { "https://localhost" } else { "http://127.0.0.1" };
        let url = format!("{scheme}:{}", addr.port());
        let (stop, stopped) = oneshot::channel::<()>();
        let registry = Registry::new(meta.clone(), blobs.clone());
        tokio::spawn(async move {
            ferry_registry::serve(registry, listener, tls, async {
                let _ = stopped.await;
            })
            .await
            .expect("registry serves");
        });
        Stack { s3, meta, blobs, database_url, addr, url, stop: Some(stop) }
    }

    /// Starts a gateway on this stack's database and bucket; returns once
    /// it listens for change notifications (no change can be missed).
    pub async fn gateway(&self, config: GatewayConfig) -> GatewayHandle {
        let gateway = Gateway::new(self.meta.clone(), self.blobs.clone(), config);
        let mut applied = gateway.applied();
        gateway.follow(ferry_store::listen(&self.database_url).expect("listen"));
        // The first thing a listener reports is that it is listening.
        assert_eq!(applied.recv().await.unwrap(), ferry_store::Change::Resync);
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
        Connection { url: self.url.clone(), token: token.to_owned(), ca_cert: None }
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

    /// The manifest the agent packs for this release as `version`.
    pub fn manifest(&self, version: &str) -> ferry_release::Manifest {
        ferry_release::pack(version.parse().unwrap(), &specs(&self.artifacts()), &|_| {}).unwrap()
    }
}

/// A self-signed certificate for `localhost`.
pub fn self_signed_tls() -> (Tls, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem().into_bytes();
    let tls = Tls { cert_pem: cert_pem.clone(), key_pem: cert.signing_key.serialize_pem().into_bytes() };
    (tls, cert_pem)
}
