//! The operator dashboard's first render at scale (issue 10: under 1 s
//! with 1,000,000 stored reports and 1,000 tenants). The dashboard is
//! served over HTTP as in production and fetched whole (overview page, the
//! busiest app's page, and their JSON), each request a first render: the
//! dashboard caches nothing. The anchor is the naive way to get the
//! overview's numbers, a GROUP BY over the raw reports and devices counted
//! from them, run on the same database in the same run.

use std::time::Instant;

use anyhow::ensure;
use ferry_dashboard::DashboardSettings;
use ferry_e2e::Stack;
use serde::{Deserialize, Serialize};

use crate::report::{Section, Table, Target};
use crate::stats::{Timings, measure_async};

const TARGET_SECONDS: f64 = 1.0;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    tenants: i64,
    reports: i64,
    devices: i64,
    runs: usize,
    load_seconds: f64,
    overview_page: Timings,
    overview_json: Timings,
    app_page: Timings,
    app_json: Timings,
    naive: Timings,
    postgres: String,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let (tenants, reports, runs) = if quick { (50_i64, 20_000_i64, 3) } else { (1_000, 1_000_000, 7) };
    let stack = Stack::start().await;
    let load = Instant::now();
    fill(&stack, tenants, reports).await?;
    let load_seconds = load.elapsed().as_secs_f64();

    let dashboard = stack.serve_dashboard(DashboardSettings::default()).await;
    let url = dashboard.url.clone();
    let admin = stack.meta.issue_admin_key().await?.token();
    let http = ferry_testkit::http();
    let fetch = |path: String| {
        let (http, admin, url) = (http.clone(), admin.clone(), url.clone());
        async move {
            let start = Instant::now();
            let resp = http.get(format!("{url}{path}")).bearer_auth(&admin).send().await?;
            ensure!(resp.status().is_success(), "{path}: {}", resp.status());
            let body = resp.bytes().await?;
            let elapsed = start.elapsed();
            ensure!(!body.is_empty(), "{path}: empty body");
            Ok((elapsed, body))
        }
    };
    // The overview lists every tenant.
    let (_, body) = fetch("/api/v1/overview".into()).await?;
    let overview: serde_json::Value = serde_json::from_slice(&body)?;
    let listed = overview["apps"].as_array().map_or(0, Vec::len) as i64;
    ensure!(listed == tenants, "the overview lists {listed} apps, not {tenants}");

    let overview_page = measure_async(runs, |_| async { Ok(fetch("/".into()).await?.0) }).await?;
    let overview_json = measure_async(runs, |_| async { Ok(fetch("/api/v1/overview".into()).await?.0) }).await?;
    // tenant-1 holds the most reports (see `fill`).
    let app_page = measure_async(runs, |_| async { Ok(fetch("/tenants/tenant-1/apps/crm".into()).await?.0) }).await?;
    let app_json =
        measure_async(runs, |_| async { Ok(fetch("/api/v1/tenants/tenant-1/apps/crm".into()).await?.0) }).await?;

    let client = stack.meta.pool().get().await?;
    let naive = measure_async(runs, |_| async {
        let start = Instant::now();
        let rows = client
            .query(
                "SELECT a.id, r.to_version, r.result, count(*), count(DISTINCT r.device_id) \
                 FROM apps a JOIN reports r ON r.app_id = a.id GROUP BY 1, 2, 3",
                &[],
            )
            .await?;
        ensure!(!rows.is_empty(), "the naive query found no reports");
        Ok(start.elapsed())
    })
    .await?;
    let devices: i64 = client.query_one("SELECT count(*) FROM devices", &[]).await?.get(0);
    let postgres: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    drop(client);
    drop(dashboard);
    Ok(Figures {
        tenants,
        reports,
        devices,
        runs,
        load_seconds,
        overview_page,
        overview_json,
        app_page,
        app_json,
        naive,
        postgres,
    })
}

/// `tenants` tenants with app `crm`, 1.0.0 and 1.1.0 published, 1.1.0
/// deployed a day ago; `reports` reports over the last week (a tenth of
/// them failures or rollbacks), half of them for tenant-1 and the rest
/// spread evenly, from up to 997 devices per app. Inserted in bulk, so the
/// reports trigger fills the counts and devices as ingestion would.
async fn fill(stack: &Stack, tenants: i64, reports: i64) -> anyhow::Result<()> {
    let client = stack.meta.pool().get().await?;
    client
        .execute("INSERT INTO tenants (name) SELECT 'tenant-' || i FROM generate_series(1, $1::bigint) i", &[&tenants])
        .await?;
    client
        .batch_execute(
            "INSERT INTO apps (tenant_id, name) SELECT id, 'crm' FROM tenants;
         INSERT INTO manifests (tenant_id, id, body)
             SELECT t.id, decode(lpad(to_hex(t.id * 2 + v), 64, '0'), 'hex'), '\\x00'::bytea
             FROM tenants t, generate_series(0, 1) v;
         INSERT INTO releases (tenant_id, app_id, version, precedence, manifest_id, created_at)
             SELECT a.tenant_id, a.id, '1.' || v || '.0', '1.' || v || '.0',
                    decode(lpad(to_hex(a.tenant_id * 2 + v), 64, '0'), 'hex'),
                    now() - interval '8 days' + v * interval '6 days'
             FROM apps a, generate_series(0, 1) v;
         INSERT INTO deployments (app_id, release_id, deployed_at)
             SELECT app_id, id, created_at FROM releases ORDER BY id;
         UPDATE apps a SET deployed_release_id = r.id FROM releases r WHERE r.app_id = a.id AND r.version = '1.1.0';",
        )
        .await?;
    client
        .execute(
            "WITH a AS (SELECT a.id, a.tenant_id, row_number() OVER (ORDER BY t.id) - 1 AS n \
                        FROM apps a JOIN tenants t ON t.id = a.tenant_id) \
             INSERT INTO reports (tenant_id, app_id, report_id, device_id, from_version, to_version, result, \
                                  error_code, error_message, duration_ms, platform, received_at) \
             SELECT a.tenant_id, a.id, 'r' || i, 'device-' || (i % 997), '1.0.0', \
                    CASE WHEN i % 3 = 0 THEN '1.0.0' ELSE '1.1.0' END, \
                    CASE WHEN i % 10 = 0 THEN 'failure' WHEN i % 10 = 5 THEN 'rolled_back' ELSE 'success' END, \
                    CASE WHEN i % 5 = 0 THEN 'E_DISK' END, CASE WHEN i % 5 = 0 THEN 'no space left' END, \
                    1000, 'android', now() - (i % 10080) * interval '1 minute' \
             FROM generate_series(1, $1::bigint) i \
             JOIN a ON a.n = CASE WHEN i % 2 = 0 THEN 0 ELSE (i / 2) % $2::bigint END",
            &[&reports, &tenants],
        )
        .await?;
    client.batch_execute("ANALYZE").await?;
    Ok(())
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("dashboard");
    s.tools.push(format!("PostgreSQL {}", f.postgres));
    s.setup.push(format!(
        "{} tenants with one app each, {} reports over 7 days (half for one app, 10 % failures and rollbacks), {} devices; loaded in {:.1} s through the reports trigger",
        crate::report::thousands(f.tenants as u64),
        crate::report::thousands(f.reports as u64),
        crate::report::thousands(f.devices as u64),
        f.load_seconds
    ));
    s.setup.push(format!(
        "each request a first render over HTTP with an admin key (the dashboard caches nothing); {} runs, medians",
        f.runs
    ));
    s.commands.push(
        "psql -c \"SELECT a.id, r.to_version, r.result, count(*), count(DISTINCT r.device_id) FROM apps a JOIN reports r ON r.app_id = a.id GROUP BY 1, 2, 3\"".into(),
    );
    let mut table = Table::new(&["what", "median", "fastest", "slowest"]);
    for (who, t) in [
        ("**overview page** (every tenant)", &f.overview_page),
        ("overview JSON", &f.overview_json),
        ("**app page** (the busiest app)", &f.app_page),
        ("app JSON", &f.app_json),
        ("anchor: the overview's numbers from raw reports", &f.naive),
    ] {
        table.row([vec![who.into()], t.cells().into()].concat());
    }
    s.tables.push(table);
    let worst = f.overview_page.median().max(f.app_page.median());
    s.targets.push(Target::new(
        quick,
        &format!(
            "first render with {} reports and {} tenants",
            crate::report::thousands(f.reports as u64),
            crate::report::thousands(f.tenants as u64)
        ),
        &format!("< {TARGET_SECONDS} s"),
        format!(
            "overview {:.3} s, app {:.3} s (the naive query alone: {:.3} s)",
            f.overview_page.median(),
            f.app_page.median(),
            f.naive.median()
        ),
        worst < TARGET_SECONDS,
    ));
    s
}
