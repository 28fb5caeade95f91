//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    loads: Family<CacheLabels, Counter>,
    /// The busiest series, resolved once: no label lookup on the hot path.
    http_check_ok: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_gateway");
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
        let watches = Gauge::default();
        registry.register("watches_open", "Watches (push-notice streams) open now", watches.clone());
        let http_check_ok =
            requests.get_or_create(&RequestLabels { api: "http", call: "check", outcome: "ok" }).clone();
        Self { registry, shed, requests, reports, watches, loads, http_check_ok }
    }
}

impl Metrics {
    pub(crate) fn shed(&self, scope: &'static str) {
        self.shed.get_or_create(&ShedLabels { scope }).inc();
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

    pub(crate) fn cache_load(&self, cache: &'static str) {
        self.loads.get_or_create(&CacheLabels { cache }).inc();
    }

    pub(crate) fn watch_started(&self) {
        self.watches.inc();
    }

    pub(crate) fn watch_ended(&self) {
        self.watches.dec();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
