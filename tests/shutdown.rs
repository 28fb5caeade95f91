//! SIGTERM to a gateway under a steady stream of checks loses no accepted
//! request: the gateway turns not-ready at once (`/readyz` answers 503)
//! while it keeps answering; a load balancer that sees that stops sending
//! it new requests; when the drain ends (here: at a second SIGTERM, so the
//! test does not depend on timing) the listeners close, a request still in
//! progress is answered, and the process exits cleanly. On the way, a check
//! carrying an app's `traceparent` is traced under the app's trace, and
//! the gateway's log never shows a key or a presigned URL.
//!
//! The gateway runs in a child process, the real `run_serve` of
//! `ferry-gateway serve` configured from the environment exactly as the
//! binary is: this very test binary, started again with
//! `FERRY_SHUTDOWN_CHILD` set (`harness = false`, like `crash.rs`).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_e2e::{Release, ServiceProcess, Stack, publish_to};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    if std::env::var_os("FERRY_SHUTDOWN_CHILD").is_some() {
        return child();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    rt.block_on(sigterm_under_load_loses_no_accepted_request());
    println!("test sigterm_under_load_loses_no_accepted_request ... ok ({:.1} s)", started.elapsed().as_secs_f64());
}

#[derive(Parser)]
struct ChildCli {
    #[command(flatten)]
    config: ferry_gateway::config::ServeConfig,
}

/// Child mode: `ferry-gateway serve`, settings from the environment.
fn child() {
    let cli: ChildCli = ferry_config::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let code = rt.block_on(ferry_telemetry::run_main("ferry-gateway", "info", ferry_gateway::run_serve(cli.config)));
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

fn spawn_gateway(stack: &Stack, otlp: &str) -> ServiceProcess {
    let mut env = stack.service_env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), otlp.to_owned()));
    env.extend(
        [
            ("FERRY_SHUTDOWN_CHILD", "1"),
            ("FERRY_LISTEN", "127.0.0.1:0"),
            ("FERRY_GRPC_LISTEN", "127.0.0.1:0"),
            // Long enough never to end by itself in this test: the second
            // SIGTERM ends it.
            ("FERRY_DRAIN_SECONDS", "3600"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    ServiceProcess::spawn(&env, "gateway listening")
}

async fn sigterm_under_load_loses_no_accepted_request() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(50_000, 7);
    publish_to(&stack.connection(&token), "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    let key = stack.client_key("acme").await;
    let receiver = ferry_testkit::OtlpReceiver::start().await.unwrap();
    let mut gateway = spawn_gateway(&stack, &receiver.endpoint);
    let http_base = format!("http://{}", gateway.field("http"));

    // Fresh connections for every request, as from many devices: no
    // request can be lost to a kept-alive connection the server closes.
    let http = ferry_testkit::http_builder().pool_max_idle_per_host(0).build().unwrap();
    let check_url = format!("{}/v1/check?tenant=acme&app=crm&version=0.9.0", http_base);
    let stop_sending = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (http, url, key) = (http.clone(), check_url.clone(), key.clone());
        let (stop_sending, answered) = (stop_sending.clone(), answered.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop_sending.load(Ordering::SeqCst) {
                match http.get(&url).bearer_auth(&key).send().await {
                    Ok(r) if r.status() == 200 => {
                        r.bytes().await.expect("a whole answer");
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            failures
        }));
    }
    let wait_for_answers = |n: usize| {
        let answered = answered.clone();
        async move {
            let target = answered.load(Ordering::SeqCst) + n;
            let deadline = Instant::now() + Duration::from_secs(60);
            while answered.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "checks stopped being answered");
                tokio::task::yield_now().await;
            }
        }
    };
    wait_for_answers(50).await;
    let ready = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(format!("{}/readyz", http_base)).await, 200);

    // An app's trace context: the gateway's span for the check joins it.
    let (trace_id, parent_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traced = http
        .get(&check_url)
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 200);
    assert!(traced.headers().get("connection").is_none(), "no Connection: close while serving");
    // And over gRPC, in the call's metadata.
    let (grpc_trace, grpc_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut grpc =
        ferry_proto::gateway::v1::gateway_client::GatewayClient::connect(format!("http://{}", gateway.field("grpc")))
            .await
            .unwrap();
    let mut request = tonic::Request::new(ferry_proto::gateway::v1::CheckRequest {
        tenant: "acme".into(),
        app: "crm".into(),
        version: "0.9.0".into(),
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request.metadata_mut().insert("traceparent", format!("00-{grpc_trace}-{grpc_parent}-01").parse().unwrap());
    grpc.check(request).await.unwrap();

    gateway.terminate();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(format!("{}/readyz", http_base)).await != 503 {
        assert!(Instant::now() < deadline, "/readyz still says ready after SIGTERM");
    }
    // gRPC health says the same, for the server as a whole ("", what
    // Kubernetes' grpc probes ask) and for the service.
    for service in ["", "ferry.gateway.v1.Gateway"] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.field("grpc")))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
        // Set by a task of its own as the drain begins: asked until it shows.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
            if health.check(request).await.unwrap().into_inner().status == not_serving {
                break;
            }
            assert!(Instant::now() < deadline, "grpc health of {service:?} still SERVING while draining");
            tokio::task::yield_now().await;
        }
    }
    // Not ready, still serving: checks go on being answered.
    wait_for_answers(50).await;
    // ...and tell HTTP/1.1 clients to move on: kept-alive connections are
    // closed after their answer.
    let during = http.get(&check_url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(during.status(), 200);
    assert_eq!(during.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));

    // A request in progress when the listeners close: its headers and half
    // its body are in; the rest comes after.
    let report = serde_json::json!({
        "report_id": "drain-1", "device_id": "phone-1", "tenant": "acme", "app": "crm",
        "from_version": "0.9.0", "to_version": "1.0.0", "result": "success"
    })
    .to_string();
    let addr = http_base.trim_start_matches("http://").to_owned();
    let mut in_flight = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        report.len()
    );
    let (first, rest) = report.as_bytes().split_at(report.len() / 2);
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(first).await.unwrap();
    in_flight.flush().await.unwrap();

    // The load balancer has taken the gateway out: no new requests.
    stop_sending.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    assert!(failures.is_empty(), "requests lost while draining: {failures:?}");

    // The second signal ends the drain: new connections are refused...
    gateway.terminate();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener still accepts after the drain");
        tokio::task::yield_now().await;
    }
    // ...and the request in progress is answered.
    in_flight.write_all(rest).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), in_flight.read_to_end(&mut answer))
        .await
        .expect("the answer arrives")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains("\"report_id\":\"drain-1\""), "{answer}");

    // Then the process exits, successfully.
    let status = gateway.exited().await;
    assert!(status.success(), "gateway exited with {status}");

    // It exported the span of the traced check (at exit at the latest),
    // under the app's trace.
    let spans = receiver.spans();
    let joined = spans.iter().find(|s| s.service == "ferry-gateway" && hex(&s.trace_id) == trace_id);
    let joined = joined.unwrap_or_else(|| panic!("no gateway span in the app's trace: {spans:#?}"));
    assert_eq!((joined.name.as_str(), hex(&joined.parent_span_id)), ("http", parent_id.to_owned()));
    let joined = spans.iter().find(|s| s.service == "ferry-gateway" && hex(&s.trace_id) == grpc_trace);
    let joined = joined.unwrap_or_else(|| panic!("no gateway span in the gRPC caller's trace: {spans:#?}"));
    assert_eq!((joined.name.as_str(), hex(&joined.parent_span_id)), ("grpc", grpc_parent.to_owned()));

    // Its log names neither keys nor presigned URLs, though it answered
    // thousands of checks carrying both.
    let logs = gateway.logs().join("\n");
    assert!(logs.contains("drained"), "the log tells the drain: {logs}");
    for secret in [key.as_str(), "X-Amz-Signature", "X-Amz-Credential"] {
        assert!(!logs.contains(secret), "the gateway logged {secret}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
