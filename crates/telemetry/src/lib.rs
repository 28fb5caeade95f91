//! One telemetry set-up for every Ferry service (STYLE: Garage's
//! tracing_setup).
//!
//! Logs go to stderr: human-readable by default, JSON lines with
//! `FERRY_LOG_FORMAT=json`; the level comes from `RUST_LOG` (default: what
//! the service passes, `info` for servers, `warn` for command-line tools). When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also
//! exported over OTLP/gRPC with the resource attributes `service.name` and
//! `service.instance.id`; the exporter reads the other standard `OTEL_*`
//! variables itself.

mod propagation;

pub use propagation::{adopt_parent, trace_headers};

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` is set): hot
/// paths make per-request spans only then, since nobody else reads them.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporter alive; flushes pending spans when dropped.
#[must_use = "telemetry stops exporting when the guard is dropped"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber for `service` (e.g. `ferry-registry`).
/// Call once, from `main`, inside the Tokio runtime.
pub fn init(service: &'static str, default_level: &str) -> anyhow::Result<Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("FERRY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service)?),
        _ => None,
    };
    // W3C trace context in and out (see `propagation`).
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init()?;
    Ok(Guard { provider })
}

/// Runs a binary's `main` body: sets telemetry up for `service`, awaits
/// `body`, and turns an error into one line on stderr (`error: ` and the
/// chain of causes) and a failing exit code. Every Ferry binary ends the
/// same way.
pub async fn run_main(
    service: &'static str,
    default_level: &str,
    body: impl Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let result = match init(service, default_level) {
        Ok(_guard) => body.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn otlp_provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    let instance = format!("{}-{}", hostname(), std::process::id());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

use tracing_subscriber::Layer as _;
