//! An embedded S3 server: s3s's protocol layer (which verifies SigV4
//! headers and presigned URLs) over s3s-fs's file system store.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

/// Requests an [`S3Server`] served, by method.
#[derive(Debug, Default)]
pub struct Requests {
    pub get: std::sync::atomic::AtomicU64,
    pub put: std::sync::atomic::AtomicU64,
    pub post: std::sync::atomic::AtomicU64,
    pub delete: std::sync::atomic::AtomicU64,
    pub other: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`Requests`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCounts {
    pub get: u64,
    pub put: u64,
    pub post: u64,
    pub delete: u64,
    pub other: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.get + self.put + self.post + self.delete + self.other
    }

    /// What was served between `earlier` and this snapshot.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get - earlier.get,
            put: self.put - earlier.put,
            post: self.post - earlier.post,
            delete: self.delete - earlier.delete,
            other: self.other - earlier.other,
        }
    }
}

impl Requests {
    fn count(&self, method: &hyper::Method) {
        let counter = match *method {
            hyper::Method::GET => &self.get,
            hyper::Method::PUT => &self.put,
            hyper::Method::POST => &self.post,
            hyper::Method::DELETE => &self.delete,
            _ => &self.other,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestCounts {
        use std::sync::atomic::Ordering::Relaxed;
        RequestCounts {
            get: self.get.load(Relaxed),
            put: self.put.load(Relaxed),
            post: self.post.load(Relaxed),
            delete: self.delete.load(Relaxed),
            other: self.other.load(Relaxed),
        }
    }
}

/// A running S3 server on `127.0.0.1:<random port>`, serving on its own
/// thread and runtime so it keeps answering whatever the caller's runtime
/// does. Stops when dropped.
pub struct S3Server {
    /// Requests served so far, by HTTP method (what a benchmark reports as
    /// S3 requests).
    pub requests: std::sync::Arc<Requests>,
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    root: PathBuf,
    addr: SocketAddr,
    _temp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server storing objects under `root`, or in a temporary
    /// directory removed on drop.
    pub fn start(root: Option<PathBuf>, bind: SocketAddr) -> anyhow::Result<Self> {
        let (temp, root) = match root {
            Some(root) => (None, root),
            None => {
                let dir = tempfile::Builder::new().prefix("ferry-s3-").tempdir()?;
                let path = dir.path().to_owned();
                (Some(dir), path)
            }
        };
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut server = Self {
            requests: std::sync::Arc::default(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            access_key_id: format!("ferry{}", crate::random_suffix(6)),
            secret_access_key: crate::random_suffix(20),
            root,
            addr: bind,
            _temp: temp,
            stop: None,
            thread: None,
        };
        server.run()?;
        Ok(server)
    }

    /// Stops serving (connections are refused) but keeps the stored objects.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Serves again, on the same address, with the same objects and keys.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.run()
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let root = &self.root;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3 store at {}: {e:?}", root.display()))?;
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(self.access_key_id.clone(), self.secret_access_key.clone()));
            b.build()
        };
        let listener =
            std::net::TcpListener::bind(self.addr).with_context(|| format!("binding s3 server to {}", self.addr))?;
        listener.set_nonblocking(true)?;
        self.addr = listener.local_addr()?;
        self.endpoint = format!("http://{}", self.addr);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let requests = self.requests.clone();
        let thread = std::thread::Builder::new().name("ferry-s3".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("s3 server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("s3 listener");
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(e) => { tracing::warn!(error = %e, "s3 accept failed"); continue; }
                        },
                        _ = &mut stopped => break,
                    };
                    let (service, requests) = (service.clone(), requests.clone());
                    let counted = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        requests.count(req.method());
                        hyper::service::Service::call(&service, req)
                    });
                    let conn = http.serve_connection(TokioIo::new(socket), counted).into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
            // Dropping the runtime here ends open connections too.
            rt.shutdown_background();
        })?;
        self.stop = Some(stop);
        self.thread = Some(thread);
        Ok(())
    }

    /// Starts a server on a random loopback port with a temporary store.
    pub fn start_temp() -> anyhow::Result<Self> {
        Self::start(None, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// An SDK client for this server (path-style, static credentials).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds =
            aws_sdk_s3::config::Credentials::new(&self.access_key_id, &self.secret_access_key, None, None, "testkit");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates a bucket with a random name and returns the name.
    pub async fn create_bucket(&self) -> anyhow::Result<String> {
        let name = format!("ferry-{}", crate::random_suffix(6));
        self.client().create_bucket().bucket(&name).send().await.context("creating a test bucket")?;
        Ok(name)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
