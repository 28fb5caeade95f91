//! W3C trace context (`traceparent`, `tracestate`) across processes: the
//! agent adds it to its gRPC calls, apps may send it with their HTTP
//! requests, and the registry and gateway make it the parent of the span
//! that serves the call, so one publish (or one check) is one trace across
//! services. Without a tracing exporter the spans carry no context and
//! nothing is added.

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Collect(Vec<(String, String)>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// The headers that carry the current span's trace context to the next
/// hop (empty when there is none).
pub fn trace_headers() -> Vec<(String, String)> {
    let context = tracing::Span::current().context();
    let mut collect = Collect(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut collect));
    collect.0
}

/// Makes the trace context found by `header` (a lookup of incoming headers
/// or gRPC metadata by lower-case name) the parent of `span`. A missing or
/// malformed `traceparent` leaves `span` a root.
pub fn adopt_parent(span: &tracing::Span, header: impl Fn(&str) -> Option<String>) {
    let Some(traceparent) = header("traceparent") else { return };
    let tracestate = header("tracestate");
    let carrier = Owned { traceparent, tracestate };
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(parent);
}

struct Owned {
    traceparent: String,
    tracestate: Option<String>,
}

impl Extractor for Owned {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.traceparent),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec!["traceparent"];
        if self.tracestate.is_some() {
            keys.push("tracestate");
        }
        keys
    }
}
