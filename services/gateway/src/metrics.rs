//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    api: &'static str,
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: &'static str,
    call: &'static str,
    outcome: &'static str,
}

/// The gateway's counters.
pub struct Metrics {
    registry: Registry,
    shed: Family<ShedLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    reports: Family<ReportLabels, Counter>,
    watches: Gauge,
    fallbacks: Counter,
    loads: Family<CacheLabels, Counter>,
    durations: Family<CallLabels, Histogram, fn() -> Histogram>,
    ready: Gauge,
    /// The busiest series, resolved once: no label lookup on the hot path.
    http_check_ok: Counter,
    http_check_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let ready = Gauge::default();
        // One name for every service's readiness.
        root.register("ferry_ready", "1 while the service takes new work (what /readyz answers)", ready.clone());
        let registry = root.sub_registry_with_prefix("ferry_gateway");
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register("requests_shed", "Requests refused by a rate limit (429), by limit scope", shed.clone());
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered, by API, call and outcome", requests.clone());
        let reports = Family::<ReportLabels, Counter>::default();
        registry.register("reports", "Upgrade reports stored (retries not counted), by result", reports.clone());
        let loads = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_loads",
            "Entries read from PostgreSQL into a cache (misses and refreshes), by cache",
            loads.clone(),
        );
        let fallbacks = Counter::default();
        registry.register(
            "rate_limit_fallbacks",
            "Requests limited by this replica alone because the shared store (FERRY_REDIS_URL) did not answer",
            fallbacks.clone(),
        );
        let watches = Gauge::default();
        registry.register("watches_open", "Watches (push-notice streams) open now", watches.clone());
        let durations: Family<CallLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(ferry_store::metrics::LATENCY_BUCKETS));
        registry.register(
            "request_duration_seconds",
            "Time taken to answer requests (not watches), by API and call",
            durations.clone(),
        );
        ferry_store::metrics::register(registry);
        let http_check_ok =
            requests.get_or_create(&RequestLabels { api: "http", call: "check", outcome: "ok" }).clone();
        let http_check_duration = durations.get_or_create(&CallLabels { api: "http", call: "check" }).clone();
        Self {
            registry: root,
            shed,
            requests,
            reports,
            watches,
            fallbacks,
            loads,
            durations,
            ready,
            http_check_ok,
            http_check_duration,
        }
    }
}

impl Metrics {
    pub(crate) fn shed(&self, scope: &'static str) {
        self.shed.get_or_create(&ShedLabels { scope }).inc();
    }

    pub(crate) fn limit_fallback(&self) {
        self.fallbacks.inc();
    }

    pub(crate) fn report(&self, result: &'static str) {
        self.reports.get_or_create(&ReportLabels { result }).inc();
    }

    pub(crate) fn request(&self, api: &'static str, call: &'static str, outcome: &'static str) {
        if (api, call, outcome) == ("http", "check", "ok") {
            self.http_check_ok.inc();
        } else {
            self.requests.get_or_create(&RequestLabels { api, call, outcome }).inc();
        }
    }

    /// Records how long a request that began at `started` took.
    pub(crate) fn took(&self, api: &'static str, call: &'static str, started: std::time::Instant) {
        let seconds = started.elapsed().as_secs_f64();
        if (api, call) == ("http", "check") {
            self.http_check_duration.observe(seconds);
        } else {
            self.durations.get_or_create(&CallLabels { api, call }).observe(seconds);
        }
    }

    pub(crate) fn cache_load(&self, cache: &'static str) {
        self.loads.get_or_create(&CacheLabels { cache }).inc();
    }

    pub(crate) fn watch_started(&self) {
        self.watches.inc();
    }

    pub(crate) fn watch_ended(&self) {
        self.watches.dec();
    }

    /// The text exposition format; `ready` is the readiness now.
    pub fn render(&self, ready: bool) -> String {
        self.ready.set(i64::from(ready));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
