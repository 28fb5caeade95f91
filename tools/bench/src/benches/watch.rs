//! Push notices (S1-6): what an open watch costs the gateway, and how long
//! a deploy takes to reach every watcher.
//!
//! The gateway runs as a process of its own (`ferry-bench serve-gateway`),
//! so its resident memory is its own; the connections come from another
//! (`ferry-bench watchers`). Two gateway processes, one after the other:
//!
//! - the anchor: N plain keep-alive connections that each asked
//!   `/healthz` once and stay open, idle — what any HTTP server must hold
//!   per connection;
//! - the measured: N open watches (`GET /v1/watch`), each having received
//!   the current deployment.
//!
//! Memory per connection is the growth of the gateway's RSS divided by N.
//! Then a new version is deployed through the registry, and the time from
//! the deploy call to the last of the N watchers receiving its event is
//! measured, next to the same for one lone watcher (the anchor: change
//! notice, re-read and one event, with nobody else to tell).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use ferry_e2e::{Release, Stack, publish_to};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::Guarded;
use crate::report::{Section, Table, Target, thousands};

/// Memory an open watch may cost the gateway.
const TARGET_KIB_PER_WATCH: f64 = 16.0;
/// What a watch may cost next to an idle keep-alive connection: the stream
/// itself must add little to the connection any HTTP server holds.
const TARGET_IDLE_RATIO: f64 = 1.5;
/// A deploy reaches every watcher within this long (the words).
const TARGET_FANOUT_MS: f64 = 1000.0;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    watchers: u64,
    idle_kib_per_connection: f64,
    watch_kib_per_connection: f64,
    idle_rss_mib: f64,
    watch_rss_mib: f64,
    lone_ms: f64,
    all_ms: f64,
    first_ms: f64,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let n: u64 = if quick { 200 } else { 10_000 };
    let stack = Stack::start().await;
    let agent = stack.tenant("acme").await;
    let conn = stack.connection(&agent);
    let release = Release::new(100_000, 3);
    publish_to(&conn, "acme", "1.0.0", &release.artifacts(), true).await?;
    for (i, version) in ["1.1.0", "1.2.0"].into_iter().enumerate() {
        std::fs::write(&release.api, format!("{{\"v\":{i}}}"))?;
        publish_to(&conn, "acme", version, &release.artifacts(), false).await?;
    }
    let key = stack.client_key("acme").await;

    // The anchor: idle keep-alive connections; then one lone watcher.
    let mut gateway = GatewayProcess::start(&stack)?;
    let before = gateway.rss_mib()?;
    let mut idle = Watchers::start(&gateway.url, &key, n, "idle")?;
    idle.wait_for("READY")?;
    let idle_rss = gateway.rss_mib()? - before;
    idle.stop();
    let mut lone = Watchers::start(&gateway.url, &key, 1, "watch")?;
    lone.wait_for("READY")?;
    let started = SystemTime::now();
    ferry_agent::deploy_with(&conn, &name("acme"), &name("crm"), &"1.1.0".parse()?, None).await?;
    let (lone_last, _) = lone.done()?;
    let lone_ms = millis_between(started, lone_last);
    lone.stop();
    gateway.stop();

    // The measured: N watches on a fresh gateway process.
    let mut gateway = GatewayProcess::start(&stack)?;
    let before = gateway.rss_mib()?;
    let mut watchers = Watchers::start(&gateway.url, &key, n, "watch")?;
    watchers.wait_for("READY")?;
    let watch_rss = gateway.rss_mib()? - before;
    let started = SystemTime::now();
    ferry_agent::deploy_with(&conn, &name("acme"), &name("crm"), &"1.2.0".parse()?, None).await?;
    let (last, first) = watchers.done()?;
    watchers.stop();
    gateway.stop();

    let per = |mib: f64| mib * 1024.0 / n as f64;
    Ok(Figures {
        watchers: n,
        idle_kib_per_connection: per(idle_rss),
        watch_kib_per_connection: per(watch_rss),
        idle_rss_mib: idle_rss,
        watch_rss_mib: watch_rss,
        lone_ms,
        all_ms: millis_between(started, last),
        first_ms: millis_between(started, first),
    })
}

fn name(s: &str) -> ferry_release::Name {
    ferry_release::Name::parse("name", s).expect("a valid name")
}

fn millis_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64() * 1000.0
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("watch");
    let n = thousands(f.watchers);
    s.setup.push(format!(
        "the gateway as a process of its own (2 worker threads); {n} connections from another process, to one app of one tenant"
    ));
    s.setup.push(
        "memory: growth of the gateway's resident set once every connection is open (a fresh gateway process each)"
            .into(),
    );
    s.setup.push(
        "fan-out: from just before the deploy call to the registry to the last watcher reading the event (wall clock, one machine)"
            .into(),
    );
    s.commands.push("ferry-bench serve-gateway …  |  ferry-bench watchers --mode idle|watch --count N …".into());
    let mut table = Table::new(&["connections", "per connection", "all of them"]);
    table.row(vec![
        format!("anchor: {n} idle keep-alive connections"),
        format!("{:.1} KiB", f.idle_kib_per_connection),
        format!("{:.1} MiB", f.idle_rss_mib),
    ]);
    table.row(vec![
        format!("**{n} open watches**"),
        format!("{:.1} KiB", f.watch_kib_per_connection),
        format!("{:.1} MiB", f.watch_rss_mib),
    ]);
    s.tables.push(table);
    let mut table = Table::new(&["a deploy reaches", "first", "last"]);
    table.row(vec!["anchor: one lone watcher".into(), format!("{:.0} ms", f.lone_ms), format!("{:.0} ms", f.lone_ms)]);
    table.row(vec![format!("**{n} watchers**"), format!("{:.0} ms", f.first_ms), format!("{:.0} ms", f.all_ms)]);
    s.tables.push(table);
    s.targets.push(Target::new(
        quick,
        &format!("memory per open watch ({n} open)"),
        &format!("≤ {TARGET_KIB_PER_WATCH} KiB"),
        format!(
            "{:.1} KiB ({:.1}× an idle connection)",
            f.watch_kib_per_connection,
            f.watch_kib_per_connection / f.idle_kib_per_connection.max(0.01)
        ),
        f.watch_kib_per_connection <= TARGET_KIB_PER_WATCH,
    ));
    s.targets.push(Target::new(
        quick,
        "memory per open watch, next to an idle keep-alive connection",
        &format!("≤ {TARGET_IDLE_RATIO}×"),
        format!("{:.2}×", f.watch_kib_per_connection / f.idle_kib_per_connection.max(0.01)),
        f.watch_kib_per_connection <= TARGET_IDLE_RATIO * f.idle_kib_per_connection,
    ));
    s.targets.push(Target::new(
        quick,
        &format!("a deploy reaches all {n} watchers"),
        &format!("< {TARGET_FANOUT_MS} ms"),
        format!("{:.0} ms (one lone watcher: {:.0} ms)", f.all_ms, f.lone_ms),
        f.all_ms < TARGET_FANOUT_MS,
    ));
    s
}

/// A gateway in a process of its own (`ferry-bench serve-gateway`).
struct GatewayProcess {
    process: Guarded,
    pid: u32,
    url: String,
}

impl GatewayProcess {
    fn start(stack: &Stack) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve-gateway")
            .envs(stack.child_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting the gateway process")?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let pid = child.id();
        let process = Guarded::from_child("gateway", child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line.trim().strip_prefix("LISTENING ").with_context(|| format!("gateway said {line:?}"))?;
        Ok(Self { process, pid, url: format!("http://{addr}") })
    }

    fn rss_mib(&self) -> anyhow::Result<f64> {
        crate::procs::rss_mib(&self.pid.to_string())
    }

    fn stop(&mut self) {
        self.process.stop();
    }
}

/// Connections from a process of its own (`ferry-bench watchers`).
struct Watchers {
    process: Guarded,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Watchers {
    fn start(url: &str, key: &str, count: u64, mode: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["watchers", "--url", url, "--count", &count.to_string(), "--mode", mode])
            .env("FERRY_CLIENT_KEY", key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the watchers process")?;
        let stdout = child.stdout.take().context("watchers stdout")?;
        Ok(Self { process: Guarded::from_child("watchers", child), lines: BufReader::new(stdout).lines() })
    }

    fn wait_for(&mut self, expected: &str) -> anyhow::Result<String> {
        let line = self.lines.next().context("the watchers process ended")??;
        ensure!(line.starts_with(expected), "watchers said {line:?}, expected {expected}");
        Ok(line)
    }

    /// When the last and the first watcher got the deploy.
    fn done(&mut self) -> anyhow::Result<(SystemTime, SystemTime)> {
        let line = self.wait_for("DONE")?;
        let mut parts = line.split_whitespace().skip(1).map(|p| p.parse::<u64>());
        let (Some(Ok(last)), Some(Ok(first))) = (parts.next(), parts.next()) else { bail!("bad DONE line {line:?}") };
        Ok((UNIX_EPOCH + Duration::from_nanos(last), UNIX_EPOCH + Duration::from_nanos(first)))
    }

    fn stop(&mut self) {
        self.process.stop();
    }
}

/// `ferry-bench serve-gateway`: a gateway on the stack the environment
/// names, prints `LISTENING <addr>`, serves until killed.
pub(crate) fn serve_gateway() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let stack = ferry_e2e::StackEnv::from_env().map_err(anyhow::Error::msg)?;
        let rate = ferry_gateway::Rate { per_second: 1e9, burst: 1_000_000_000 };
        let config = ferry_gateway::GatewayConfig {
            tenant_rate: rate,
            device_rate: rate,
            listener: ferry_net::Limits {
                max_connections: 50_000,
                // The anchor's idle keep-alive connections must stay open.
                header_timeout: Duration::from_secs(600),
                ..ferry_net::Limits::default()
            },
            max_watches: 40_000,
            ..ferry_gateway::GatewayConfig::default()
        };
        let meta = ferry_store::connect(&stack.database_url, 8)?;
        let blobs = stack.blobs();
        let gateway = ferry_gateway::Gateway::new(meta, blobs, config);
        let mut applied = gateway.applied();
        gateway.follow(ferry_store::listen(&stack.database_url)?);
        applied.recv().await?; // listening for changes: no deploy is missed
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        #[allow(clippy::print_stdout)]
        {
            println!("LISTENING {}", http.local_addr()?);
        }
        ferry_gateway::serve(gateway, http, grpc, std::future::pending()).await
    })
}

/// `ferry-bench watchers`: opens `count` connections to the gateway at
/// `url`: idle ones (one `/healthz` each, then silence) or watches. Prints
/// `READY` once all are open (watches: each has its first event); watches
/// then wait for the next event and print `DONE <last> <first>` (arrival
/// times, nanoseconds since the epoch).
pub(crate) fn watchers(url: &str, count: u64, mode: &str) -> anyhow::Result<()> {
    let key = std::env::var("FERRY_CLIENT_KEY").context("FERRY_CLIENT_KEY is not set")?;
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
    let watch = match mode {
        "idle" => false,
        "watch" => true,
        _ => bail!("--mode is idle or watch"),
    };
    let request = if watch {
        format!(
            "GET /v1/watch?tenant=acme&app=crm HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
        )
    } else {
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n")
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let request: Arc<[u8]> = request.into_bytes().into();
        let ready = Arc::new(AtomicUsize::new(0));
        let all_ready = Arc::new(tokio::sync::Notify::new());
        let (first, last) = (Arc::new(AtomicU64::new(u64::MAX)), Arc::new(AtomicU64::new(0)));
        let done = Arc::new(AtomicUsize::new(0));
        let all_done = Arc::new(tokio::sync::Notify::new());
        // Connects a few hundred at a time: the listen backlog is finite.
        let connecting = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let (request, ready, all_ready, connecting) =
                (request.clone(), ready.clone(), all_ready.clone(), connecting.clone());
            let (first, last, done, all_done) = (first.clone(), last.clone(), done.clone(), all_done.clone());
            tasks.spawn(async move {
                let permit = connecting.acquire_owned().await?;
                let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
                    anyhow::anyhow!("connecting: {e} (10,000 connections need `ulimit -n` above 10,100)")
                })?;
                stream.write_all(&request).await?;
                let marker: &[u8] = if watch { b"event: deployed" } else { b"\r\n\r\nok" };
                read_until(&mut stream, marker).await?;
                drop(permit);
                if ready.fetch_add(1, Ordering::SeqCst) + 1 == count as usize {
                    all_ready.notify_one();
                }
                if !watch {
                    std::future::pending::<()>().await;
                }
                read_until(&mut stream, marker).await?;
                let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
                first.fetch_min(at, Ordering::SeqCst);
                last.fetch_max(at, Ordering::SeqCst);
                if done.fetch_add(1, Ordering::SeqCst) + 1 == count as usize {
                    all_done.notify_one();
                }
                std::future::pending::<()>().await;
                Ok::<(), anyhow::Error>(())
            });
        }
        // A connection that fails fails the run, with its reason.
        let failed = async {
            while let Some(result) = tasks.join_next().await {
                result??;
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::pin!(failed);
        tokio::select! {
            () = all_ready.notified() => {}
            r = &mut failed => { r?; bail!("every connection ended"); }
        }
        #[allow(clippy::print_stdout)]
        {
            println!("READY {count}");
        }
        if !watch {
            failed.await?;
            return Ok(());
        }
        tokio::select! {
            () = all_done.notified() => {}
            r = &mut failed => { r?; bail!("every connection ended"); }
        }
        #[allow(clippy::print_stdout)]
        {
            println!("DONE {} {}", last.load(Ordering::SeqCst), first.load(Ordering::SeqCst));
        }
        failed.await
    })
}

/// Reads until `marker` has gone by (also when split across reads).
async fn read_until(stream: &mut tokio::net::TcpStream, marker: &[u8]) -> anyhow::Result<()> {
    let mut window: Vec<u8> = Vec::with_capacity(4096 + marker.len());
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        ensure!(n > 0, "the gateway closed the connection");
        window.extend_from_slice(&buf[..n]);
        if window.windows(marker.len()).any(|w| w == marker) {
            return Ok(());
        }
        let keep = window.len().min(marker.len() - 1);
        window.drain(..window.len() - keep);
    }
}
