//! The operator dashboard (S4-6): upgrade status of every tenant and app at
//! a glance, per app in depth, live. Served by the registry on its admin
//! listener (`FERRY_ADMIN_LISTEN`), never on the public gateway port.
//!
//! - [`access`]: who is asking (a dashboard key as `Authorization: Bearer`,
//!   or the session cookie a sign-in with that key set), CSRF, headers.
//! - [`status`]: what the pages show, read from pre-aggregated tables
//!   (`report_counts`, `devices`) and indexed queries only.
//! - [`pages`]: HTML (minijinja templates compiled in) and the same numbers
//!   as JSON (`/api/v1/...`, documented in docs/dashboard.md).
//! - [`live`]: one PostgreSQL listener per process, fanned out to the pages
//!   over server-sent events.
//! - [`assets`]: the page script and style, and the vendored chart library.

mod access;
mod assets;
mod live;
mod pages;
mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use ferry_store::Meta;

pub use live::{Live, LiveEvent};
pub use status::{AppStatus, Overview};

/// Tunables; defaults are what README documents.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// How long a sign-in lasts (`FERRY_ADMIN_SESSION_HOURS`).
    pub session_lifetime: Duration,
    /// Whether the session cookie is marked `Secure` (always, unless a test
    /// or a developer turns it off for plain HTTP on a host other than
    /// localhost).
    pub secure_cookie: bool,
    /// How often an open live stream checks that its viewer's key or
    /// session is still valid (and ends when it is not).
    pub recheck: Duration,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self { session_lifetime: Duration::from_secs(12 * 3600), secure_cookie: true, recheck: Duration::from_secs(15) }
    }
}

/// The dashboard: cheap to clone, one per process.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Meta,
    settings: DashboardSettings,
    live: Live,
    /// The serving process's life: `/readyz` fails once it drains.
    lifecycle: ferry_net::Lifecycle,
}

impl Dashboard {
    /// A dashboard reading `meta`, with live updates from `live` (see
    /// [`Live::listen`]).
    pub fn new(meta: Meta, live: Live, settings: DashboardSettings) -> Self {
        Self::with_lifecycle(meta, live, settings, ferry_net::Lifecycle::new())
    }

    /// [`Dashboard::new`] in a process whose `lifecycle` `/readyz` follows.
    pub fn with_lifecycle(
        meta: Meta,
        live: Live,
        settings: DashboardSettings,
        lifecycle: ferry_net::Lifecycle,
    ) -> Self {
        Self { inner: Arc::new(Inner { meta, settings, live, lifecycle }) }
    }

    /// Every route: pages, their JSON, sign-in, live events, assets.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(pages::overview_page))
            .route("/tenants/{tenant}/apps/{app}", get(pages::app_page))
            .route("/api/v1/overview", get(pages::overview_json))
            .route("/api/v1/tenants/{tenant}/apps/{app}", get(pages::app_json))
            .route("/events", get(live::events))
            .route("/signin", get(access::signin_page).post(access::signin))
            .route("/signout", post(access::signout))
            .route("/assets/{*path}", get(assets::serve))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .fallback(pages::not_found)
            .layer(axum::middleware::from_fn(access::security_headers))
            // Forms carry a key or a CSRF token; nothing needs more.
            .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
            .with_state(self.clone())
    }

    /// Whether this dashboard takes new work: its process is not shutting
    /// down and PostgreSQL answers within 3 s.
    pub async fn readiness(&self) -> Result<(), String> {
        if !self.inner.lifecycle.is_ready() {
            return Err("shutting down".into());
        }
        tokio::time::timeout(std::time::Duration::from_secs(3), self.inner.meta.ping())
            .await
            .map_err(|_| "postgresql did not answer within 3 s".to_owned())?
            .map_err(|e| format!("postgresql: {e}"))
    }

    /// Removes expired sessions; returns how many.
    pub async fn purge_sessions(&self) -> Result<u64, ferry_store::StoreError> {
        access::purge_sessions(&self.inner.meta).await
    }
}

async fn ready(axum::extract::State(dashboard): axum::extract::State<Dashboard>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match dashboard.readiness().await {
        Ok(()) => "ready".into_response(),
        Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}
