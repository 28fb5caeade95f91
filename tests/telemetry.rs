//! One publish is one trace across processes: the agent's `publish` span
//! and the registry's spans for each call it makes share a trace id, the
//! registry's spans being children of the agent's (W3C trace context in
//! the gRPC metadata), as a real OTLP receiver sees them. Neither process
//! logs the agent key, the S3 secret or the database password.
//!
//! The registry and the agent run as child processes, each exporting
//! under its own `service.name` like the binaries: this test binary,
//! started again with `FERRY_TELEMETRY_CHILD` set (`harness = false`).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use clap::Parser;
use ferry_e2e::{Release, ServiceProcess, Stack, specs};

fn main() {
    match std::env::var("FERRY_TELEMETRY_CHILD").as_deref() {
        Ok("registry") => return registry_child(),
        Ok("agent") => return agent_child(),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    rt.block_on(one_publish_is_one_trace_across_agent_and_registry());
    println!(
        "test one_publish_is_one_trace_across_agent_and_registry ... ok ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

#[derive(Parser)]
struct RegistryCli {
    #[command(flatten)]
    config: ferry_registry::config::ServeConfig,
}

/// `ferry-registry serve`, settings from the environment.
fn registry_child() {
    let cli: RegistryCli = ferry_config::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let code = rt.block_on(ferry_telemetry::run_main(
        "ferry-registry",
        "info",
        Box::pin(ferry_registry::run_serve(cli.config)),
    ));
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

/// `ferry-agent publish`, as the binary runs it.
fn agent_child() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let code = rt.block_on(ferry_telemetry::run_main("ferry-agent", "info", async {
        let conn = ferry_agent::Connection {
            url: env("FERRY_REGISTRY_URL"),
            token: env("FERRY_AGENT_TOKEN"),
            ca_cert: None,
            proxy: ferry_agent::Proxy::none(),
        };
        let dir = std::path::PathBuf::from(env("RELEASE_DIR"));
        let request = ferry_agent::PublishRequest {
            tenant: ferry_release::Name::parse("tenant", "acme")?,
            app: ferry_release::Name::parse("app", "crm")?,
            version: "1.0.0".parse()?,
            artifacts: specs(&[("mobile", &dir.join("crm.apk")), ("web", &dir.join("web"))]),
            deploy: true,
            retries: 0,
            compatible: None,
            state_dir: None,
        };
        let summary = ferry_agent::publish(&conn, &request, &ferry_agent::Progress::hidden()).await?;
        tracing::info!(version = %summary.version, "published");
        Ok(())
    }));
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

async fn one_publish_is_one_trace_across_agent_and_registry() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(200_000, 11);
    let receiver = ferry_testkit::OtlpReceiver::start().await.unwrap();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), receiver.endpoint.clone()),
        // Export at once rather than every 5 s; the exit flushes anyway.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];

    // A password in the connection string (the test server trusts local
    // connections and ignores it): it must not reach the log either.
    let password = "pw-that-must-not-be-logged";
    let mut env: Vec<(String, String)> = stack
        .service_env()
        .into_iter()
        .map(|(k, v)| if k == "DATABASE_URL" { (k, format!("{v} password={password}")) } else { (k, v) })
        .collect();
    env.extend(otel.iter().cloned());
    env.extend(
        [
            ("FERRY_TELEMETRY_CHILD", "registry"),
            ("FERRY_LISTEN", "127.0.0.1:0"),
            ("FERRY_METRICS_LISTEN", "127.0.0.1:0"),
            ("FERRY_DRAIN_SECONDS", "0"),
            ("FERRY_GC_INTERVAL_SECONDS", "0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut registry = ServiceProcess::spawn(&env, "registry listening");
    let registry_url = format!("http://{}", registry.field("addr"));

    let mut env = otel.to_vec();
    env.extend(
        [
            ("FERRY_TELEMETRY_CHILD", "agent"),
            ("FERRY_REGISTRY_URL", registry_url.as_str()),
            ("FERRY_AGENT_TOKEN", token.as_str()),
            ("RELEASE_DIR", release.dir.path().to_str().unwrap()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut agent = ServiceProcess::spawn(&env, "published");
    assert!(agent.exited().await.success(), "the agent failed:\n{}", agent.logs().join("\n"));
    registry.terminate();
    assert!(registry.exited().await.success(), "the registry failed:\n{}", registry.logs().join("\n"));

    // Both processes flushed their spans before exiting.
    let spans = receiver.spans();
    let publish: Vec<_> = spans.iter().filter(|s| s.service == "ferry-agent" && s.name == "publish").collect();
    assert_eq!(publish.len(), 1, "{spans:#?}");
    let trace = &publish[0].trace_id;
    let registry_calls: Vec<&str> = spans
        .iter()
        .filter(|s| s.service == "ferry-registry" && &s.trace_id == trace)
        .map(|s| s.name.as_str())
        .collect();
    for call in ["prepare_release", "upload_chunks", "commit_release"] {
        assert!(registry_calls.contains(&call), "{call} not in the agent's trace: {registry_calls:?}\n{spans:#?}");
    }
    // The registry's call spans hang under the agent's spans: their parents
    // are spans the agent sent.
    let agent_span_ids: Vec<&Vec<u8>> =
        spans.iter().filter(|s| s.service == "ferry-agent").map(|s| &s.span_id).collect();
    for span in spans.iter().filter(|s| s.service == "ferry-registry" && s.name == "prepare_release") {
        assert!(agent_span_ids.contains(&&span.parent_span_id), "{span:?} is not a child of an agent span");
    }
    // No trace of the registry's spans outside the agent's.
    assert!(
        spans
            .iter()
            .filter(|s| s.service == "ferry-registry" && s.name == "commit_release")
            .all(|s| &s.trace_id == trace)
    );

    // Logs: neither the agent key, the S3 secret nor the database password.
    let secret = stack.s3.secret_access_key.clone();
    for (who, logs) in [("agent", agent.logs()), ("registry", registry.logs())] {
        let logs = logs.join("\n");
        assert!(!logs.is_empty(), "{who} logged nothing");
        for needle in [token.as_str(), secret.as_str(), password] {
            assert!(!logs.contains(needle), "the {who} logged a secret");
        }
    }
}
