//! What a watching agent serves on `listen`: `/healthz` (the process
//! answers), `/status` (what it has seen and done, as JSON) and `/metrics`
//! (Prometheus), like the services' ops listeners.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;

use super::{Phase, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The watcher's counters.
pub(super) struct Metrics {
    registry: Registry,
    rounds: Family<OutcomeLabels, Counter>,
    bytes_sent: Counter,
    consecutive_failures: Gauge,
    last_success: Gauge<f64, AtomicU64>,
    up_to_date: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ferry_agent");
        let rounds = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "watch_rounds",
            "Rounds of reading the private system's version, by outcome (up_to_date, deployed, published, error)",
            rounds.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register("bytes_sent", "Chunk bytes uploaded to the registry", bytes_sent.clone());
        let consecutive_failures = Gauge::default();
        registry.register(
            "watch_consecutive_failures",
            "Rounds that failed in a row (0 when the last succeeded)",
            consecutive_failures.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "watch_last_success_timestamp_seconds",
            "When a round last succeeded (Unix time)",
            last_success.clone(),
        );
        let up_to_date = Gauge::default();
        registry.register(
            "watch_up_to_date",
            "1 while the registry deploys the version the private system runs",
            up_to_date.clone(),
        );
        Self { registry: root, rounds, bytes_sent, consecutive_failures, last_success, up_to_date }
    }
}

impl Metrics {
    /// Counts a round: its outcome label and bytes sent, or an error.
    pub(super) fn record(&self, result: &Result<(&'static str, u64), String>, status: &Status) {
        let outcome = match result {
            Ok((outcome, bytes)) => {
                self.bytes_sent.inc_by(*bytes);
                self.last_success.set(super::unix_now());
                outcome
            }
            Err(_) => &"error",
        };
        self.rounds.get_or_create(&OutcomeLabels { outcome }).inc();
        self.consecutive_failures.set(i64::from(status.consecutive_failures));
        self.up_to_date.set(i64::from(status.phase == Phase::UpToDate));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[derive(Clone)]
struct Ops {
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
}

pub(super) fn router(status: watch::Receiver<Status>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status_json))
        .route("/metrics", get(render_metrics))
        .with_state(Ops { status, metrics })
}

async fn status_json(State(ops): State<Ops>) -> Response {
    let status = ops.status.borrow().clone();
    axum::Json(status).into_response()
}

async fn render_metrics(State(ops): State<Ops>) -> Response {
    let body = ops.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
