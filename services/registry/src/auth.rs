//! Authentication before decoding: every registry call's bearer key is
//! checked (with bounded cost, see ferry-auth) before its message, up to
//! 16 MiB, is read. The caller's identity travels to the handler as a
//! request extension; what the key may do is decided there.

use std::pin::Pin;
use std::task::{Context, Poll};

use ferry_auth::{AuthError, Keys};
use ferry_net::ConnInfo;
use tonic::Status;
use tonic::body::Body;

/// The path prefix of the calls this layer guards (health checks and other
/// services stay open).
const GUARDED: &str = "/ferry.registry.v1.Registry/";

#[derive(Clone)]
pub(crate) struct AuthLayer {
    keys: Keys,
}

impl AuthLayer {
    pub(crate) fn new(keys: Keys) -> Self {
        Self { keys }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, keys: self.keys.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    keys: Keys,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keys = self.keys.clone();
        Box::pin(async move {
            if !req.uri().path().starts_with(GUARDED) {
                return inner.call(req).await;
            }
            let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match keys.authenticate_caller(header, source(&req)).await {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(e) => Ok(refusal(e).into_http()),
            }
        })
    }
}

/// The peer address of the connection a call came on (plain or TLS).
fn source<B>(req: &http::Request<B>) -> Option<std::net::IpAddr> {
    let extensions = req.extensions();
    let info = extensions
        .get::<ConnInfo>()
        .or_else(|| extensions.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>().map(|t| t.get_ref()))?;
    info.remote_addr.map(|a| a.ip())
}

fn refusal(e: AuthError) -> Status {
    match e {
        AuthError::Unauthenticated(why) => Status::unauthenticated(why),
        AuthError::Throttled { retry_after } => {
            let mut status = Status::resource_exhausted(e.to_string());
            status.metadata_mut().insert("retry-after", (retry_after.as_secs().max(1)).into());
            status
        }
        AuthError::Store(store) => ferry_proto::to_status(&store),
    }
}
