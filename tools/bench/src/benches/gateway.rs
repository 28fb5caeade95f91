//! The gateway's hot path under load, next to its anchor: nginx (one
//! process, same core) serving the same answer body from a file to the very
//! same request stream, with the same load generator, in the same run.
//!
//! The orchestrator runs this benchmark pinned to core 0; wrk runs on core
//! 1, and so does PostgreSQL (it stands for a database on another machine
//! and only matters while caches fill). Every tenant has app `crm` with
//! 1.0.0 deployed (5 files, one platform-tagged) and a client key of its
//! own; wrk asks `upgrade` checks from 0.9.0 rotating over all tenants and
//! keys. The gateway runs on a single-threaded Tokio runtime, like nginx's
//! single process. Rate limits are lifted for the run.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ferry_e2e::{Release, Stack, publish_to};
use ferry_gateway::{GatewayConfig, Rate};
use ferry_store::{ApiKey, KeyRole};
use serde::{Deserialize, Serialize};

use crate::procs::{self, Guarded};
use crate::report::{Section, Table, Target, thousands};
use crate::stats::median;

const TARGET_RATIO: f64 = 0.7;
const TARGET_P99_MS: f64 = 5.0;
const TARGET_SCALE: f64 = 0.9;
const TARGET_RSS_MIB: f64 = 200.0 * 1e6 / (1024.0 * 1024.0);

/// The tenant counts compared: few, and many.
pub(crate) fn tenant_counts(quick: bool) -> Vec<u64> {
    if quick { vec![10, 1_000] } else { vec![10, 100_000] }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    tenants: u64,
    seconds: u64,
    rounds: usize,
    /// How long the warm-up took to read every tenant into the caches.
    #[serde(default)]
    warm_seconds: u64,
    body_bytes: usize,
    plain: Wrk,
    anchor: Vec<Wrk>,
    gateway: Vec<Wrk>,
    /// The check again, while reports arrive at about 1,000 a second.
    gateway_with_reports: Wrk,
    /// The rate reports actually arrived at, and their latency.
    reports: Wrk,
    rss_growth_mib: f64,
    nginx_version: String,
    wrk_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub(crate) async fn run(quick: bool, tenants: u64) -> anyhow::Result<Figures> {
    let (seconds, rounds) = if quick { (1, 1) } else { (10, 3) };
    let tenants = tenants.max(1);
    let dir = tempfile::tempdir()?;

    // One real release, published through the agent, then shared (same
    // manifest) by every other tenant, so every URL names a real object.
    let stack = Stack::start().await;
    let token = stack.tenant("t0").await;
    let release = Release::new(1_000_000, 7);
    publish_to(&stack.connection(&token), "t0", "1.0.0", &release.artifacts(), true).await?;
    populate(&stack, tenants, dir.path()).await?;
    move_postgres_to_core_1()?;
    let baseline = procs::rss_mib("self")?;

    let gateway = start_gateway(&stack)?;
    let (t0, key0) = first_key(dir.path())?;
    let query = "app=crm&version=0.9.0&platform=android";
    let body = ferry_testkit::http()
        .get(format!("{gateway}/v1/check?tenant={t0}&{query}"))
        .bearer_auth(&key0)
        .send()
        .await?
        .bytes()
        .await?;
    ensure!(body.starts_with(b"{\"action\":\"upgrade\""), "unexpected answer: {}", String::from_utf8_lossy(&body));
    std::fs::write(dir.path().join("check.json"), &body)?;

    let mut nginx = start_nginx(dir.path()).await?;
    let script = write_wrk_script(dir.path(), query)?;
    let nginx_root = format!("http://127.0.0.1:{}/", nginx.1);
    let plain = wrk(&format!("{nginx_root}check.json"), None, seconds)?;
    // Until every tenant's app has been read into the cache (the gateway
    // counts the loads), so no round meets a cold cache.
    let mut warm_seconds = 0;
    loop {
        let chunk = (tenants / 2000).clamp(seconds.min(5), 20);
        wrk(&format!("{gateway}/"), Some(&script), chunk)?;
        warm_seconds += chunk;
        let loads = app_loads(&gateway).await?;
        if loads >= tenants {
            break;
        }
        ensure!(warm_seconds < 600, "after {warm_seconds} s of warm-up only {loads} of {tenants} tenants are cached");
    }
    let (mut anchor, mut measured) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first, so neither always meets a warmer core.
        if round % 2 == 0 {
            anchor.push(wrk(&nginx_root, Some(&script), seconds)?);
            measured.push(wrk(&format!("{gateway}/"), Some(&script), seconds)?);
        } else {
            measured.push(wrk(&format!("{gateway}/"), Some(&script), seconds)?);
            anchor.push(wrk(&nginx_root, Some(&script), seconds)?);
        }
    }
    nginx.0.check_running()?;
    nginx.0.stop();

    // Checks while reports arrive (S4-3: ingesting must not slow checks):
    // a second wrk posts reports, paced to about 1,000 a second, for the
    // whole check run.
    let report_script = write_report_script(dir.path(), &t0, &key0)?;
    let reporting = wrk_command(&format!("{gateway}/v1/reports"), Some(&report_script), seconds + 2, 10)?.spawn()?;
    let reporting = procs::Guarded::from_child("wrk (reports)", reporting);
    let gateway_with_reports = wrk(&format!("{gateway}/"), Some(&script), seconds)?;
    let reports = parse_wrk(&reporting.wait_with_output()?, "reports")?;
    let rss_growth_mib = procs::rss_mib("self")? - baseline;
    Ok(Figures {
        tenants,
        seconds,
        rounds,
        warm_seconds,
        body_bytes: body.len(),
        plain,
        anchor,
        gateway: measured,
        gateway_with_reports,
        reports,
        rss_growth_mib,
        nginx_version: procs::version("nginx", "-v"),
        wrk_version: procs::version("wrk", "-v"),
    })
}

/// How many app views the gateway has read from PostgreSQL so far.
async fn app_loads(gateway: &str) -> anyhow::Result<u64> {
    let metrics = ferry_testkit::http().get(format!("{gateway}/metrics")).send().await?.text().await?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ferry_gateway_cache_loads_total{") && l.contains("cache=\"apps\""))
        .context("no app cache loads in /metrics")?;
    Ok(line.rsplit(' ').next().context("a metric line")?.parse::<f64>()? as u64)
}

/// The gateway on a thread and single-threaded runtime of its own; returns
/// its HTTP base URL.
fn start_gateway(stack: &Stack) -> anyhow::Result<String> {
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
    std::thread::Builder::new().name("gateway".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("gateway runtime");
        let ready = addr_tx.clone();
        let result: anyhow::Result<()> = rt.block_on(async move {
            let meta = ferry_store::connect(&database_url, 16)?;
            let blobs = ferry_store::Blobs::from_settings(&settings, bucket);
            let gateway = ferry_gateway::Gateway::new(meta, blobs, config);
            gateway.follow(ferry_store::listen(&database_url)?);
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let _ = ready.send(Ok(http.local_addr()?));
            ferry_gateway::serve(gateway, http, grpc, std::future::pending()).await?;
            Ok(())
        });
        if let Err(e) = result {
            let _ = addr_tx.send(Err(e));
        }
    })?;
    let addr = addr_rx.recv().context("the gateway thread ended")??;
    Ok(format!("http://{addr}"))
}

/// nginx serving `check.json` for every path, one process on core 0; the
/// value stops it when dropped.
async fn start_nginx(dir: &Path) -> anyhow::Result<(Guarded, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = dir.join("nginx.conf");
    // master_process off: one process, so stopping it leaves no worker.
    std::fs::write(
        &conf,
        format!(
            "master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log; \
             events {{ worker_connections 1024; }} \
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; \
               fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d}; \
               server {{ listen 127.0.0.1:{port}; root {d}; \
                 location / {{ default_type application/json; try_files /check.json =404; }} }} }}",
            d = dir.display()
        ),
    )?;
    let mut cmd = procs::command("taskset")?;
    cmd.args(["-c", "0"]).arg(procs::program("nginx")?).arg("-c").arg(&conf).arg("-p").arg(dir);
    let mut nginx = Guarded::spawn("nginx", &mut cmd)?;
    let url = format!("http://127.0.0.1:{port}/check.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if ferry_testkit::http().get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok((nginx, port));
        }
        if let Err(e) = nginx.check_running() {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            bail!("{e:#}: {log}");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nginx did not answer on port {port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves this benchmark's PostgreSQL (the postmaster and its backends) to
/// core 1, away from the gateway. Backends forked later inherit it.
fn move_postgres_to_core_1() -> anyhow::Result<()> {
    let pg = ferry_testkit::Postgres::shared()?;
    let pid_file = pg.socket_dir().join("data/postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let postmaster: u32 = text.lines().next().context("empty postmaster.pid")?.trim().parse()?;
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(postmaster)
            && let Ok(pid) = entry.file_name().to_string_lossy().parse()
        {
            pids.push(pid);
        }
    }
    for pid in pids {
        // A backend may exit in between: that is fine.
        let _ = procs::command("taskset")?.args(["-a", "-p", "-c", "1", &pid.to_string()]).output();
    }
    Ok(())
}

fn first_key(dir: &Path) -> anyhow::Result<(String, String)> {
    let keys = std::fs::read_to_string(dir.join("keys.txt"))?;
    let (tenant, key) = keys.lines().next().and_then(|l| l.split_once(' ')).context("no keys written")?;
    Ok((tenant.to_owned(), key.to_owned()))
}

/// A wrk script rotating over every tenant and its key.
fn write_wrk_script(dir: &Path, query: &str) -> anyhow::Result<std::path::PathBuf> {
    let script = dir.join("check.lua");
    let mut lua = std::fs::File::create(&script)?;
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
        keys = dir.join("keys.txt").display()
    )?;
    Ok(script)
}

/// wrk on core 1 against `url` with `connections` connections.
fn wrk_command(
    url: &str,
    script: Option<&Path>,
    seconds: u64,
    connections: u32,
) -> anyhow::Result<std::process::Command> {
    let mut cmd = procs::command("taskset")?;
    cmd.args(["-c", "1"]).arg(procs::program("wrk")?).args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Ok(cmd)
}

/// Runs wrk on core 1 against `url`; any error or non-2xx answer fails the
/// benchmark (a fast 429 or 401 is not a fast check).
fn wrk(url: &str, script: Option<&Path>, seconds: u64) -> anyhow::Result<Wrk> {
    let out = procs::run(&mut wrk_command(url, script, seconds, 32)?)?;
    parse_wrk(&out, url)
}

fn parse_wrk(out: &std::process::Output, what: &str) -> anyhow::Result<Wrk> {
    ensure!(out.status.success(), "wrk for {what} failed: {}", String::from_utf8_lossy(&out.stderr));
    let url = what;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        !text.contains("Non-2xx or 3xx responses") && !text.contains("Socket errors"),
        "wrk against {url} saw failures:\n{text}"
    );
    let field = |prefix: &str| -> anyhow::Result<&str> {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("wrk printed no `{prefix}`:\n{text}"))
    };
    let rps: f64 = field("Requests/sec:")?.parse()?;
    ensure!(rps > 0.0, "wrk measured no requests:\n{text}");
    Ok(Wrk { rps, p50_ms: millis(field("50%")?)?, p99_ms: millis(field("99%")?)? })
}

/// A wrk script posting reports of tenant `tenant` with `key`, each with a
/// fresh id, paced by `delay` (9 ms, plus the answer's own time) to about
/// 100 a second per connection (10 connections: about 1,000 a second); one
/// in ten is a failure.
fn write_report_script(dir: &Path, tenant: &str, key: &str) -> anyhow::Result<std::path::PathBuf> {
    let script = dir.join("reports.lua");
    std::fs::write(
        &script,
        format!(
            r#"local n = 0
local prefix = tostring(math.random(1, 1000000000))
delay = function() return 9 end
request = function()
  n = n + 1
  local result = (n % 10 == 0) and "failure" or "success"
  local body = string.format('{{"report_id":"b-%s-%d","device_id":"dev-%d","tenant":"{tenant}","app":"crm",' ..
    '"from_version":"0.9.0","to_version":"1.0.0","result":"%s","error_code":"E_BENCH","duration_ms":900}}',
    prefix, n, n % 5000, result)
  return wrk.format("POST", nil, {{ ["Authorization"] = "Bearer {key}", ["Content-Type"] = "application/json" }}, body)
end
"#
        ),
    )?;
    Ok(script)
}

/// wrk's latency ("812.00us", "1.53ms", "2.01s") in milliseconds.
fn millis(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("unknown latency unit in {text:?}")
    };
    Ok(number.parse::<f64>().with_context(|| format!("latency {text:?}"))? * scale)
}

/// Adds tenants t1..tN-1 sharing t0's release, each with app crm (1.0.0
/// deployed) and a client key; writes `keys.txt` ("tenant key" per line).
async fn populate(stack: &Stack, tenants: u64, dir: &Path) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "INSERT INTO tenants (name) SELECT 't' || g FROM generate_series(1, {n}) g;
             INSERT INTO apps (tenant_id, name) SELECT id, 'crm' FROM tenants WHERE name <> 't0';
             INSERT INTO manifests (tenant_id, id, body)
               SELECT t.id, m.id, m.body FROM tenants t, manifests m
               WHERE t.name <> 't0' AND m.tenant_id = (SELECT id FROM tenants WHERE name = 't0');
             INSERT INTO releases (tenant_id, app_id, version, manifest_id, precedence)
               SELECT a.tenant_id, a.id, '1.0.0', m.id, '1.0.0' FROM apps a JOIN tenants t ON t.id = a.tenant_id
               JOIN manifests m ON m.tenant_id = a.tenant_id WHERE t.name <> 't0';
             UPDATE apps SET deployed_release_id = r.id FROM releases r WHERE r.app_id = apps.id;",
            n = tenants - 1
        ))
        .await?;
    let rows = client.query("SELECT id, name FROM tenants ORDER BY id", &[]).await?;
    ensure!(rows.len() as u64 == tenants, "{} tenants made, {tenants} wanted", rows.len());
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
            .await?;
    }
    drop(client);
    let _ = conn.await;
    std::fs::write(dir.join("keys.txt"), lines)?;
    Ok(())
}

pub(crate) fn render(runs: &[Figures], quick: bool) -> anyhow::Result<Section> {
    let (Some(few), Some(many)) = (runs.first(), runs.last()) else { bail!("no gateway figures") };
    let mut s = Section::new("gateway");
    s.tools.push(few.nginx_version.clone());
    s.tools.push(few.wrk_version.clone());
    s.setup.push(format!(
        "every tenant has app `crm` with 1.0.0 deployed (5 files) and a client key; the same {}-byte `upgrade` answer for every request",
        few.body_bytes
    ));
    s.setup.push(format!(
        "gateway (single-threaded Tokio runtime) and nginx (one process) on core 0, wrk and PostgreSQL on core 1; {} round(s) of {} s per contender, alternating, after a warm-up that lasts until every tenant is cached ({} s for {} tenants); medians",
        few.rounds, few.seconds, many.warm_seconds, thousands(many.tenants)
    ));
    s.setup.push("the anchor gets the very same request stream (wrk rotating over every tenant and key; nginx answers every path with the file), so the load generator's own cost weighs on both sides alike".into());
    s.commands.push("taskset -c 1 wrk -t1 -c32 -dSECONDSs --latency -s check.lua URL".into());
    s.commands.push("taskset -c 0 nginx -c nginx.conf   # master_process off; try_files /check.json".into());

    let mut table = Table::new(&[
        "tenants",
        "nginx, same requests (anchor)",
        "**gateway check**",
        "ratio",
        "gateway p50 / p99",
        "anchor p99",
        "gateway memory (RSS growth)",
    ]);
    let med = |w: &[Wrk], f: fn(&Wrk) -> f64| median(&w.iter().map(f).collect::<Vec<_>>());
    for r in runs {
        let (a, g) = (med(&r.anchor, |w| w.rps), med(&r.gateway, |w| w.rps));
        table.row(vec![
            thousands(r.tenants),
            format!("{} req/s", thousands(a as u64)),
            format!("**{} req/s**", thousands(g as u64)),
            format!("**{:.2}**", g / a),
            format!("{:.2} ms / {:.2} ms", med(&r.gateway, |w| w.p50_ms), med(&r.gateway, |w| w.p99_ms)),
            format!("{:.2} ms", med(&r.anchor, |w| w.p99_ms)),
            format!("{:.0} MiB", r.rss_growth_mib),
        ]);
    }
    s.tables.push(table);

    let mut with_reports = Table::new(&[
        "tenants",
        "reports arriving (wrk, paced)",
        "report p50 / p99",
        "**check while reports arrive**",
        "check p50 / p99",
        "vs checks alone",
    ]);
    for r in runs {
        let alone = med(&r.gateway, |w| w.rps);
        with_reports.row(vec![
            thousands(r.tenants),
            format!("{} reports/s", thousands(r.reports.rps as u64)),
            format!("{:.2} ms / {:.2} ms", r.reports.p50_ms, r.reports.p99_ms),
            format!("**{} req/s**", thousands(r.gateway_with_reports.rps as u64)),
            format!("{:.2} ms / {:.2} ms", r.gateway_with_reports.p50_ms, r.gateway_with_reports.p99_ms),
            format!("{:.2}", r.gateway_with_reports.rps / alone),
        ]);
    }
    s.tables.push(with_reports);
    s.setup.push(format!(
        "for scale: nginx serving one fixed request without the script: {} req/s",
        thousands(few.plain.rps as u64)
    ));

    let ratio = |r: &Figures| med(&r.gateway, |w| w.rps) / med(&r.anchor, |w| w.rps);
    for r in runs {
        s.targets.push(Target::new(
            quick,
            &format!("throughput, {} tenants", thousands(r.tenants)),
            &format!("≥ {TARGET_RATIO}× nginx"),
            format!("{:.2}×", ratio(r)),
            ratio(r) >= TARGET_RATIO,
        ));
        let p99 = med(&r.gateway, |w| w.p99_ms);
        s.targets.push(Target::new(
            quick,
            &format!("p99 latency, {} tenants", thousands(r.tenants)),
            &format!("< {TARGET_P99_MS} ms"),
            format!("{p99:.2} ms"),
            p99 < TARGET_P99_MS,
        ));
    }
    s.targets.push(Target::new(
        quick,
        &format!("p99 of checks while ~1,000 reports/s arrive, {} tenants", thousands(few.tenants)),
        &format!("< {TARGET_P99_MS} ms"),
        format!("{:.2} ms", few.gateway_with_reports.p99_ms),
        few.gateway_with_reports.p99_ms < TARGET_P99_MS,
    ));
    let scale = ratio(many) / ratio(few);
    s.targets.push(Target::new(
        quick,
        &format!("{} tenants vs {}", thousands(many.tenants), thousands(few.tenants)),
        &format!("ratio to nginx within {:.0}%", (1.0 - TARGET_SCALE) * 100.0),
        format!("{:.2} vs {:.2}", ratio(many), ratio(few)),
        scale >= TARGET_SCALE,
    ));
    s.targets.push(Target::new(
        quick,
        &format!("memory with {} tenants", thousands(many.tenants)),
        "< 200 MB",
        format!("{:.0} MiB", many.rss_growth_mib),
        many.rss_growth_mib < TARGET_RSS_MIB,
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies_in_milliseconds() {
        for (text, ms) in [("812.00us", 0.812), ("1.53ms", 1.53), ("2.01s", 2010.0)] {
            assert!((millis(text).unwrap() - ms).abs() < 1e-9, "{text}");
        }
        assert!(millis("3min").is_err());
    }
}
