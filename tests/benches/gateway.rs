//! The gateway's hot path under load, next to its anchor: nginx serving a
//! static JSON file of the same size, on the same core, with the same load
//! generator, in the same run.
//!
//!     taskset -c 0 cargo bench -p ferry-e2e --bench gateway
//!
//! `scripts/bench` runs it (with nginx and wrk from Debian's packages) for
//! 10 and for 100,000 tenants. Every tenant has app `crm` with version 1.0.0
//! deployed (5 files, one platform-tagged) and its own client key; wrk,
//! pinned to core 1, asks `upgrade` checks from 0.9.0 rotating over all
//! tenants and keys. The gateway runs on a single-threaded Tokio runtime on
//! core 0, like nginx's single worker process. The anchor is nginx answering
//! the very same request stream with the same body (so wrk's own cost of
//! rotating over many keys weighs on both sides alike); nginx serving one
//! fixed request is shown too. Rate limits are lifted for the run.

#![allow(clippy::print_stdout)]

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use ferry_e2e::{Release, Stack, publish_to};
use ferry_gateway::{GatewayConfig, Rate};
use ferry_store::{ApiKey, KeyRole};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

struct Wrk {
    rps: f64,
    p50: String,
    p99: String,
    non_2xx: u64,
}

fn wrk(url: &str, script: Option<&std::path::Path>, seconds: u64) -> Wrk {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "wrk", "-t1", "-c32", &format!("-d{seconds}s"), "--latency"]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd.arg(url).output().expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    if std::env::var_os("FERRY_BENCH_VERBOSE").is_some() || !text.contains("Requests/sec:") || text.contains("errors") {
        println!("wrk said:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.trim_start()[prefix.len()..].split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    Wrk {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: field("50%"),
        p99: field("99%"),
        non_2xx: field("Non-2xx or 3xx responses:").parse().unwrap_or(0),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tenants = env_usize("FERRY_BENCH_TENANTS", 10).max(1);
    let seconds = env_usize("FERRY_BENCH_SECONDS", 15) as u64;
    let dir = tempfile::tempdir().unwrap();

    // One real release, published through the agent, then shared (same
    // manifest) by every other tenant, so all URLs point at real objects.
    let stack = Stack::start().await;
    let token = stack.tenant("t0").await;
    let release = Release::new(1_000_000, 7);
    publish_to(&stack.connection(&token), "t0", "1.0.0", &release.artifacts(), true).await.unwrap();
    populate(&stack, tenants, dir.path()).await;
    // PostgreSQL stands in for a database on another machine: off the
    // gateway's core (it only matters while caches fill).
    let _ = Command::new("sh")
        .args(["-c", "for p in $(pgrep -f ferry-pg); do taskset -a -p -c 1 $p; done >/dev/null"])
        .status();
    let baseline = rss_mib();

    // The gateway on its own single-worker runtime and thread.
    let config = GatewayConfig {
        tenant_rate: Rate { per_second: 1e9, burst: 1_000_000_000 },
        device_rate: Rate { per_second: 1e9, burst: 1_000_000_000 },
        ..GatewayConfig::default()
    };
    // Fresh clients made on the gateway's own runtime: pooled connections
    // belong to the runtime that opened them.
    let database_url = stack.database_url.clone();
    let settings = ferry_store::S3Settings {
        endpoint: Some(stack.s3.endpoint.clone()),
        region: stack.s3.region.clone(),
        access_key_id: stack.s3.access_key_id.clone(),
        secret_access_key: stack.s3.secret_access_key.clone(),
        force_path_style: true,
    };
    let bucket = stack.blobs.bucket().to_owned();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let meta = ferry_store::connect(&database_url, 16).unwrap();
            let blobs = ferry_store::Blobs::from_settings(&settings, bucket);
            let gateway = ferry_gateway::Gateway::new(meta, blobs, config);
            gateway.follow(ferry_store::listen(&database_url).unwrap());
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(http.local_addr().unwrap()).unwrap();
            ferry_gateway::serve(gateway, http, grpc, std::future::pending()).await.unwrap();
        });
    });
    let gateway = format!("http://{}", addr_rx.recv().unwrap());

    // The anchor: nginx with one worker serving the same bytes.
    let key0 = std::fs::read_to_string(dir.path().join("keys.txt")).unwrap().lines().next().unwrap().to_owned();
    let (_, key) = key0.split_once(' ').unwrap();
    let query = "app=crm&version=0.9.0&platform=android";
    let body = reqwest::Client::new()
        .get(format!("{gateway}/v1/check?tenant=t0&{query}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body.starts_with(b"{\"action\":\"upgrade\""), "{}", String::from_utf8_lossy(&body));
    std::fs::write(dir.path().join("check.json"), &body).unwrap();
    let nginx_port = free_port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log; \
             events {{ worker_connections 1024; }} \
             http {{ access_log off; types {{ application/json json; }} \
               server {{ listen 127.0.0.1:{nginx_port}; root {d}; \
                 location / {{ default_type application/json; try_files /check.json =404; }} }} }}",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut nginx = Command::new("taskset")
        .args(["-c", "0", "nginx", "-c"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx-light)");
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/check.json");
    let ready = async {
        while reqwest::get(&nginx_url).await.is_err() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready).await.expect("nginx starts");

    // wrk script: rotate over every tenant and its key.
    let script = dir.path().join("check.lua");
    let mut lua = std::fs::File::create(&script).unwrap();
    write!(
        lua,
        r#"local tenants, keys = {{}}, {{}}
for line in io.lines("{keys}") do
  local t, k = line:match("(%S+) (%S+)")
  tenants[#tenants + 1] = t
  keys[#keys + 1] = "Bearer " .. k
end
local i = 0
request = function()
  i = i % #tenants + 1
  return wrk.format("GET", "/v1/check?tenant=" .. tenants[i] .. "&{query}", {{ ["Authorization"] = keys[i] }})
end
"#,
        keys = dir.path().join("keys.txt").display()
    )
    .unwrap();
    drop(lua);

    // The anchor gets the very same requests (nginx answers every path
    // with the file), so the load generator's own cost is the same on both
    // sides; the plain run shows what wrk does without the script.
    let plain = wrk(&nginx_url, None, seconds);
    let anchor = wrk(&format!("http://127.0.0.1:{nginx_port}/"), Some(&script), seconds);
    // Long enough to visit every tenant at least once while caches fill.
    let warm_seconds = (tenants as u64 / 2000).clamp(5, 100);
    let warm = wrk(&format!("{gateway}/"), Some(&script), warm_seconds);
    let measured = wrk(&format!("{gateway}/"), Some(&script), seconds);
    let _ = nginx.kill();
    let _ = nginx.wait();

    println!("tenants: {tenants}, response body: {} bytes, {seconds} s per run, wrk -t1 -c32 on core 1", body.len());
    println!("{:<42} {:>10} {:>9} {:>9} {:>8}", "", "req/s", "p50", "p99", "non-2xx");
    for (name, r) in [
        ("nginx static JSON, one fixed request", &plain),
        ("nginx static JSON, same requests (anchor)", &anchor),
        ("gateway warm-up (fills caches)", &warm),
        ("gateway upgrade check", &measured),
    ] {
        println!("{name:<42} {:>10.0} {:>9} {:>9} {:>8}", r.rps, r.p50, r.p99, r.non_2xx);
    }
    println!("gateway / nginx: {:.2}", measured.rps / anchor.rps);
    println!(
        "process RSS: {baseline:.0} MiB before the gateway, {:.0} MiB after (gateway + caches: {:.0} MiB)",
        rss_mib(),
        rss_mib() - baseline
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Adds tenants t1..tN-1 sharing t0's release, each with app crm (1.0.0
/// deployed) and a client key; writes `keys.txt` ("tenant key" per line).
async fn populate(stack: &Stack, tenants: usize, dir: &std::path::Path) {
    let (client, conn) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "INSERT INTO tenants (name) SELECT 't' || g FROM generate_series(1, {n}) g;
             INSERT INTO apps (tenant_id, name) SELECT id, 'crm' FROM tenants WHERE name <> 't0';
             INSERT INTO manifests (tenant_id, id, body)
               SELECT t.id, m.id, m.body FROM tenants t, manifests m
               WHERE t.name <> 't0' AND m.tenant_id = (SELECT id FROM tenants WHERE name = 't0');
             INSERT INTO releases (tenant_id, app_id, version, manifest_id)
               SELECT a.tenant_id, a.id, '1.0.0', m.id FROM apps a JOIN tenants t ON t.id = a.tenant_id
               JOIN manifests m ON m.tenant_id = a.tenant_id WHERE t.name <> 't0';
             UPDATE apps SET deployed_release_id = r.id FROM releases r WHERE r.app_id = apps.id;",
            n = tenants - 1
        ))
        .await
        .unwrap();
    let rows = client.query("SELECT id, name FROM tenants ORDER BY id", &[]).await.unwrap();
    let mut lines = String::new();
    for batch in rows.chunks(5000) {
        let (mut ids, mut tenant_ids, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
        for row in batch {
            let key = ApiKey::generate(KeyRole::Client);
            lines.push_str(&format!("{} {}\n", row.get::<_, &str>(1), key.token()));
            ids.push(key.id.clone());
            tenant_ids.push(row.get::<_, i64>(0));
            hashes.push(key.secret_hash().to_vec());
        }
        client
            .execute(
                "INSERT INTO api_keys (id, tenant_id, role, secret_hash)
                 SELECT i, t, 'client', h FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS x(i, t, h)",
                &[&ids, &tenant_ids, &hashes],
            )
            .await
            .unwrap();
    }
    // FERRY_BENCH_ROTATE=n: let wrk ask about only the first n tenants (a
    // diagnostic: a large database, a small working set).
    let rotate = env_usize("FERRY_BENCH_ROTATE", usize::MAX);
    let lines: String = lines.lines().take(rotate).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("keys.txt"), lines).unwrap();
}
