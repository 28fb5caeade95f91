//! The registry's Prometheus metrics, served at `/metrics` on the ops
//! listener (`FERRY_METRICS_LISTEN`): calls by outcome and latency, bytes
//! received against bytes the tenant already held, readiness, and how
//! PostgreSQL and S3 answer (`ferry_store::metrics`).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    call: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

/// The registry's counters.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<CallLabels, Histogram, fn() -> Histogram>,
    received: Counter,
    reused: Counter,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let ready = Gauge::default();
        // One name for every service's readiness.
        root.register("ferry_ready", "1 while the service takes new work (what /readyz answers)", ready.clone());
        let registry = root.sub_registry_with_prefix("ferry_registry");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "gRPC calls answered, by call and status code", requests.clone());
        let durations: Family<CallLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(ferry_store::metrics::LATENCY_BUCKETS));
        registry.register("request_duration_seconds", "Time taken by gRPC calls, by call", durations.clone());
        let received = Counter::default();
        registry.register("bytes_received", "Chunk bytes received from agents", received.clone());
        let reused = Counter::default();
        registry.register(
            "bytes_reused",
            "Chunk bytes of prepared releases that the tenant already held (not sent again)",
            reused.clone(),
        );
        ferry_store::metrics::register(registry);
        Self { registry: root, requests, durations, received, reused, ready }
    }
}

impl Metrics {
    /// Counts one answered call and its duration.
    pub(crate) fn call<T>(&self, call: &'static str, started: Instant, result: &Result<T, tonic::Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.requests.get_or_create(&RequestLabels { call, code: format!("{code:?}") }).inc();
        self.durations.get_or_create(&CallLabels { call }).observe(started.elapsed().as_secs_f64());
    }

    pub(crate) fn received(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    pub(crate) fn reused(&self, bytes: u64) {
        self.reused.inc_by(bytes);
    }

    /// The text exposition format; `ready` is the readiness now.
    pub fn render(&self, ready: bool) -> String {
        self.ready.set(i64::from(ready));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
