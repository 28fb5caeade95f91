//! SIGTERM to a gateway under a steady stream of checks loses no accepted
//! request: the gateway turns not-ready at once (`/readyz` answers 503)
//! while it keeps answering; a load balancer that sees that stops sending
//! it new requests; when the drain ends (here: at a second SIGTERM, so the
//! test does not depend on timing) the listeners close, a request still in
//! progress is answered, and the process exits cleanly.
//!
//! The gateway runs in a child process, the real `run_serve` of
//! `ferry-gateway serve` configured from the environment exactly as the
//! binary is: this very test binary, started again with
//! `FERRY_SHUTDOWN_CHILD` set (`harness = false`, like `crash.rs`).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_e2e::{Release, Stack, publish_to};
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

/// The gateway child, killed if the test fails before it exits.
struct GatewayProcess {
    child: Child,
    http: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    fn signal_term(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
    }
}

fn spawn_gateway(stack: &Stack) -> GatewayProcess {
    let env = stack.child_env();
    let get = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env_clear()
        .env("FERRY_SHUTDOWN_CHILD", "1")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", get("DATABASE_URL"))
        .env("FERRY_S3_BUCKET", get("S3_BUCKET"))
        .env("AWS_ENDPOINT_URL_S3", get("S3_ENDPOINT"))
        .env("AWS_REGION", get("S3_REGION"))
        .env("AWS_ACCESS_KEY_ID", get("S3_KEY"))
        .env("AWS_SECRET_ACCESS_KEY", get("S3_SECRET"))
        .env("FERRY_LISTEN", "127.0.0.1:0")
        .env("FERRY_GRPC_LISTEN", "127.0.0.1:0")
        // Long enough never to end by itself in this test: the second
        // SIGTERM ends it.
        .env("FERRY_DRAIN_SECONDS", "3600")
        .env("FERRY_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the gateway child");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log until the listening line, then keeps draining it.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in stderr.lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if event["fields"]["message"] == "gateway listening"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(event["fields"]["http"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let http = rx.recv_timeout(Duration::from_secs(60)).expect("the gateway logs its address");
    GatewayProcess { child, http: format!("http://{http}") }
}

async fn sigterm_under_load_loses_no_accepted_request() {
    let stack = Stack::start().await;
    let token = stack.tenant("acme").await;
    let release = Release::new(50_000, 7);
    publish_to(&stack.connection(&token), "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    let key = stack.client_key("acme").await;
    let mut gateway = spawn_gateway(&stack);

    // Fresh connections for every request, as from many devices: no
    // request can be lost to a kept-alive connection the server closes.
    let http = ferry_testkit::http_builder().pool_max_idle_per_host(0).build().unwrap();
    let check_url = format!("{}/v1/check?tenant=acme&app=crm&version=0.9.0", gateway.http);
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
    assert_eq!(ready(format!("{}/readyz", gateway.http)).await, 200);

    gateway.signal_term();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(format!("{}/readyz", gateway.http)).await != 503 {
        assert!(Instant::now() < deadline, "/readyz still says ready after SIGTERM");
    }
    // Not ready, still serving: checks go on being answered.
    wait_for_answers(50).await;

    // A request in progress when the listeners close: its headers and half
    // its body are in; the rest comes after.
    let report = serde_json::json!({
        "report_id": "drain-1", "device_id": "phone-1", "tenant": "acme", "app": "crm",
        "from_version": "0.9.0", "to_version": "1.0.0", "result": "success"
    })
    .to_string();
    let addr = gateway.http.trim_start_matches("http://").to_owned();
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
    gateway.signal_term();
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = gateway.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit after its drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "gateway exited with {status}");
}
