//! How PostgreSQL and S3 answer, seen from this process: failures by
//! dependency and latencies by operation. One set per process (every
//! [`crate::Meta`] and [`crate::Blobs`] records into it); each service adds
//! it to the registry it serves at `/metrics` with [`register`].

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    dependency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    dependency: &'static str,
    operation: &'static str,
}

struct DependencyMetrics {
    errors: Family<ErrorLabels, Counter>,
    durations: Family<CallLabels, Histogram, fn() -> Histogram>,
}

static METRICS: LazyLock<DependencyMetrics> = LazyLock::new(|| DependencyMetrics {
    errors: Family::default(),
    durations: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
});

/// Seconds, from 1 ms to 10 s: dependency calls and requests alike.
pub const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Adds `dependency_errors` and `dependency_duration_seconds` to
/// `registry` (which carries the service's prefix).
pub fn register(registry: &mut Registry) {
    registry.register(
        "dependency_errors",
        "Failed calls to PostgreSQL or S3 (not answers such as 'not found'), by dependency",
        METRICS.errors.clone(),
    );
    registry.register(
        "dependency_duration_seconds",
        "Time taken by calls to PostgreSQL and S3, by dependency and operation",
        METRICS.durations.clone(),
    );
}

pub(crate) fn failed(dependency: &'static str) {
    METRICS.errors.get_or_create(&ErrorLabels { dependency }).inc();
}

/// Records how long the call that began at `started` took.
pub(crate) fn took(dependency: &'static str, operation: &'static str, started: Instant) {
    METRICS.durations.get_or_create(&CallLabels { dependency, operation }).observe(started.elapsed().as_secs_f64());
}
