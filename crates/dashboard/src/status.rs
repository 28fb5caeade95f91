//! What the dashboard shows, as data: the same structs render the pages
//! and are served as JSON. Every query reads an index or a pre-aggregated
//! table (`report_counts` per app, target version, hour and result;
//! `devices`, one row per device), never a scan of the raw reports.

use std::cmp::Ordering;

use ferry_store::{Meta, StoreError};
use serde::Serialize;

/// Hours of history the charts cover.
pub(crate) const CHART_HOURS: i64 = 7 * 24;
/// Target versions charted one by one (the most reported in the window).
const CHART_VERSIONS: usize = 4;
const RECENT_FAILURES: i64 = 20;
const RECENT_ALERTS: i64 = 20;
const HISTORY: i64 = 50;

/// Time stamps as RFC 3339 in UTC, made by PostgreSQL.
const RFC3339: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS"Z"'"#;

fn ts(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', {RFC3339})")
}

/// Reports counted by result, and the share that did not succeed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcomes {
    pub success: i64,
    pub failure: i64,
    pub rolled_back: i64,
    pub total: i64,
    /// (failure + rolled_back) / total; `null` without reports.
    pub failure_rate: Option<f64>,
}

impl Outcomes {
    fn new(success: i64, failure: i64, rolled_back: i64) -> Self {
        let total = success + failure + rolled_back;
        let failure_rate = (total > 0).then(|| (failure + rolled_back) as f64 / total as f64);
        Self { success, failure, rolled_back, total, failure_rate }
    }

    fn add(&mut self, result: &str, n: i64) {
        let (s, f, r) = (self.success, self.failure, self.rolled_back);
        *self = match result {
            "success" => Self::new(s + n, f, r),
            "failure" => Self::new(s, f + n, r),
            _ => Self::new(s, f, r + n),
        };
    }
}

/// One row of the overview.
#[derive(Debug, Clone, Serialize)]
pub struct AppSummary {
    pub tenant: String,
    pub app: String,
    pub deployed_version: Option<String>,
    pub deployed_at: Option<String>,
    /// Devices seen (by checks or success reports) within the retention.
    pub devices: i64,
    pub devices_on_deployed: i64,
    /// devices_on_deployed / devices; `null` without devices.
    pub share_on_deployed: Option<f64>,
    /// Reports about the deployed version since it was last deployed.
    pub rollout: Outcomes,
    pub alerts_pending: i64,
    pub alerts_failed: i64,
    /// Failures in the current rollout, or alerts not delivered.
    pub problem: bool,
}

/// Every app the viewer may see, problems first.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub apps: Vec<AppSummary>,
}

pub(crate) async fn overview(meta: &Meta, tenant: Option<i64>) -> Result<Overview, StoreError> {
    let client = meta.client().await?;
    let sql = format!(
        "SELECT t.name, a.name, r.version, {deployed_at}, \
           (SELECT count(*) FROM devices dv WHERE dv.app_id = a.id), \
           (SELECT count(*) FROM devices dv WHERE dv.app_id = a.id AND dv.version = r.version), \
           coalesce(rc.success, 0), coalesce(rc.failure, 0), coalesce(rc.rolled_back, 0), \
           (SELECT count(*) FROM alert_outbox o WHERE o.app_id = a.id AND o.status = 'pending'), \
           (SELECT count(*) FROM alert_outbox o WHERE o.app_id = a.id AND o.status = 'failed' \
              AND o.created_at > now() - interval '7 days') \
         FROM apps a JOIN tenants t ON t.id = a.tenant_id \
         LEFT JOIN releases r ON r.id = a.deployed_release_id \
         LEFT JOIN LATERAL (SELECT deployed_at FROM deployments d WHERE d.app_id = a.id \
                            ORDER BY d.id DESC LIMIT 1) dep ON true \
         LEFT JOIN LATERAL (SELECT (sum(reports) FILTER (WHERE result = 'success'))::bigint AS success, \
                                   (sum(reports) FILTER (WHERE result = 'failure'))::bigint AS failure, \
                                   (sum(reports) FILTER (WHERE result = 'rolled_back'))::bigint AS rolled_back \
                            FROM report_counts c WHERE c.app_id = a.id AND c.to_version = r.version \
                            AND c.hour >= date_bin('1 hour', dep.deployed_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')) rc ON true \
         WHERE $1::bigint IS NULL OR t.id = $1",
        deployed_at = ts("dep.deployed_at"),
    );
    let rows = client.query(&sql, &[&tenant]).await?;
    let mut apps: Vec<AppSummary> = rows
        .iter()
        .map(|row| {
            let (devices, on): (i64, i64) = (row.get(4), row.get(5));
            let rollout = Outcomes::new(row.get(6), row.get(7), row.get(8));
            let (alerts_pending, alerts_failed): (i64, i64) = (row.get(9), row.get(10));
            AppSummary {
                tenant: row.get(0),
                app: row.get(1),
                deployed_version: row.get(2),
                deployed_at: row.get(3),
                devices,
                devices_on_deployed: on,
                share_on_deployed: (devices > 0).then(|| on as f64 / devices as f64),
                problem: rollout.failure + rollout.rolled_back > 0 || alerts_pending + alerts_failed > 0,
                rollout,
                alerts_pending,
                alerts_failed,
            }
        })
        .collect();
    apps.sort_by(problems_first);
    Ok(Overview { apps })
}

/// Problems first, the worst failure rate first among them; then by name.
fn problems_first(a: &AppSummary, b: &AppSummary) -> Ordering {
    let rate = |s: &AppSummary| s.rollout.failure_rate.unwrap_or(0.0);
    b.problem
        .cmp(&a.problem)
        .then_with(|| rate(b).total_cmp(&rate(a)))
        .then_with(|| b.alerts_failed.cmp(&a.alerts_failed))
        .then_with(|| (&a.tenant, &a.app).cmp(&(&b.tenant, &b.app)))
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub version: String,
    pub deployed_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub version: String,
    pub published_at: String,
    pub deployed: bool,
    /// Why it was withdrawn (`ferry-agent yank`), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yanked: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionDevices {
    pub version: String,
    pub devices: i64,
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Devices {
    pub total: i64,
    /// Newest version first.
    pub versions: Vec<VersionDevices>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetOutcomes {
    pub to_version: String,
    #[serde(flatten)]
    pub outcomes: Outcomes,
}

/// Reports per hour for the charts: `hours` are Unix seconds, every other
/// array has one entry per hour.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub hours: Vec<i64>,
    pub success: Vec<i64>,
    pub failure: Vec<i64>,
    pub rolled_back: Vec<i64>,
    pub versions: Vec<VersionSeries>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionSeries {
    pub to_version: String,
    /// Reports about this target version per hour.
    pub reports: Vec<i64>,
    /// Failure rate per hour; `null` in hours without reports.
    pub failure_rate: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub device_id: String,
    pub from_version: String,
    pub to_version: String,
    pub result: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub kind: String,
    pub channel: String,
    pub destination: String,
    pub version: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alerts {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
    pub recent: Vec<Alert>,
}

/// One app in depth.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub tenant: String,
    pub app: String,
    pub deployed_version: Option<String>,
    pub deployed_at: Option<String>,
    /// Newest first.
    pub deployments: Vec<Deployment>,
    /// Highest version first.
    pub published: Vec<Published>,
    pub devices: Devices,
    /// Per target version, highest first.
    pub outcomes: Vec<TargetOutcomes>,
    pub series: Series,
    pub recent_failures: Vec<Failure>,
    pub alerts: Alerts,
}

/// An app as the viewer addressed it.
pub(crate) struct AppRef {
    pub(crate) app_id: i64,
    pub(crate) tenant_id: i64,
}

pub(crate) async fn find_app(meta: &Meta, tenant: &str, app: &str) -> Result<Option<AppRef>, StoreError> {
    let client = meta.client().await?;
    let row = client
        .query_opt(
            "SELECT a.id, t.id FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE t.name = $1 AND a.name = $2",
            &[&tenant, &app],
        )
        .await?;
    Ok(row.map(|r| AppRef { app_id: r.get(0), tenant_id: r.get(1) }))
}

/// Orders version strings newest first (semver; what does not parse last).
pub(crate) fn by_version_desc(a: &str, b: &str) -> Ordering {
    match (ferry_release::Version::parse_any(a), ferry_release::Version::parse_any(b)) {
        (Ok(a), Ok(b)) => b.cmp(&a),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

pub(crate) async fn app_status(meta: &Meta, tenant: &str, app: &str, at: &AppRef) -> Result<AppStatus, StoreError> {
    let client = meta.client().await?;
    let id = at.app_id;
    let head = client
        .query_one(
            &format!(
                "SELECT r.version, (SELECT {} FROM deployments d WHERE d.app_id = a.id ORDER BY d.id DESC LIMIT 1) \
                 FROM apps a LEFT JOIN releases r ON r.id = a.deployed_release_id WHERE a.id = $1",
                ts("d.deployed_at")
            ),
            &[&id],
        )
        .await?;
    let deployed_version: Option<String> = head.get(0);
    let deployments = client
        .query(
            &format!(
                "SELECT r.version, {} FROM deployments d JOIN releases r ON r.id = d.release_id \
                 WHERE d.app_id = $1 ORDER BY d.id DESC LIMIT $2",
                ts("d.deployed_at")
            ),
            &[&id, &HISTORY],
        )
        .await?
        .iter()
        .map(|r| Deployment { version: r.get(0), deployed_at: r.get(1) })
        .collect();
    let mut published: Vec<Published> = client
        .query(&format!("SELECT version, {}, yank_reason FROM releases WHERE app_id = $1", ts("created_at")), &[&id])
        .await?
        .iter()
        .map(|r| {
            let version: String = r.get(0);
            Published {
                deployed: deployed_version.as_deref() == Some(version.as_str()),
                version,
                published_at: r.get(1),
                yanked: r.get(2),
            }
        })
        .collect();
    published.sort_by(|a, b| by_version_desc(&a.version, &b.version));

    let mut versions: Vec<VersionDevices> = client
        .query("SELECT version, count(*) FROM devices WHERE app_id = $1 GROUP BY version", &[&id])
        .await?
        .iter()
        .map(|r| VersionDevices { version: r.get(0), devices: r.get(1), share: 0.0 })
        .collect();
    let total: i64 = versions.iter().map(|v| v.devices).sum();
    for v in &mut versions {
        v.share = if total > 0 { v.devices as f64 / total as f64 } else { 0.0 };
    }
    versions.sort_by(|a, b| by_version_desc(&a.version, &b.version));

    let mut outcomes: Vec<TargetOutcomes> = Vec::new();
    for r in client
        .query(
            "SELECT to_version, result, sum(reports)::bigint FROM report_counts WHERE app_id = $1 GROUP BY 1, 2",
            &[&id],
        )
        .await?
    {
        let version: String = r.get(0);
        let i = match outcomes.iter().position(|o| o.to_version == version) {
            Some(i) => i,
            None => {
                outcomes.push(TargetOutcomes { to_version: version, outcomes: Outcomes::default() });
                outcomes.len() - 1
            }
        };
        outcomes[i].outcomes.add(r.get(1), r.get(2));
    }
    outcomes.sort_by(|a, b| by_version_desc(&a.to_version, &b.to_version));

    let counts = client
        .query(
            "SELECT to_version, extract(epoch FROM hour)::bigint, result, reports FROM report_counts \
             WHERE app_id = $1 AND hour >= date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-01 00:00:00+00') - make_interval(hours => $2) ORDER BY hour",
            &[&id, &((CHART_HOURS - 1) as i32)],
        )
        .await?;
    let now_hour = client
        .query_one(
            "SELECT extract(epoch FROM date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-01 00:00:00+00'))::bigint",
            &[],
        )
        .await?;
    let series = series(
        now_hour.get(0),
        counts.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, String>(2), r.get::<_, i64>(3))),
    );

    let recent_failures = client
        .query(
            &format!(
                "SELECT device_id, from_version, to_version, result, error_code, error_message, {} \
                 FROM reports WHERE app_id = $1 AND result <> 'success' ORDER BY seq DESC LIMIT $2",
                ts("received_at")
            ),
            &[&id, &RECENT_FAILURES],
        )
        .await?
        .iter()
        .map(|r| Failure {
            device_id: r.get(0),
            from_version: r.get(1),
            to_version: r.get(2),
            result: r.get(3),
            error_code: r.get(4),
            error_message: r.get(5),
            at: r.get(6),
        })
        .collect();

    let mut alerts = Alerts { pending: 0, delivered: 0, failed: 0, recent: Vec::new() };
    for r in client.query("SELECT status, count(*) FROM alert_outbox WHERE app_id = $1 GROUP BY 1", &[&id]).await? {
        let n: i64 = r.get(1);
        match r.get::<_, &str>(0) {
            "pending" => alerts.pending = n,
            "delivered" => alerts.delivered = n,
            _ => alerts.failed = n,
        }
    }
    alerts.recent = client
        .query(
            &format!(
                "SELECT kind, channel, destination, version, status, attempts, last_error, {}, {} \
                 FROM alert_outbox WHERE app_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
                ts("created_at"),
                ts("delivered_at")
            ),
            &[&id, &RECENT_ALERTS],
        )
        .await?
        .iter()
        .map(|r| Alert {
            kind: r.get(0),
            channel: r.get(1),
            destination: r.get(2),
            version: r.get(3),
            status: r.get(4),
            attempts: r.get(5),
            last_error: r.get(6),
            created_at: r.get(7),
            delivered_at: r.get(8),
        })
        .collect();

    Ok(AppStatus {
        tenant: tenant.to_owned(),
        app: app.to_owned(),
        deployed_version,
        deployed_at: head.get(1),
        deployments,
        published,
        devices: Devices { total, versions },
        outcomes,
        series,
        recent_failures,
        alerts,
    })
}

/// Dense hourly arrays over the chart window ending at `now_hour` (Unix
/// seconds), from sparse (target version, hour, result, reports) rows.
fn series(now_hour: i64, rows: impl Iterator<Item = (String, i64, String, i64)>) -> Series {
    let first = now_hour - (CHART_HOURS - 1) * 3600;
    let hours: Vec<i64> = (0..CHART_HOURS).map(|i| first + i * 3600).collect();
    let n = hours.len();
    let (mut success, mut failure, mut rolled_back) = (vec![0; n], vec![0; n], vec![0; n]);
    // Per version: (reports, not successful) per hour.
    let mut per_version: Vec<(String, Vec<i64>, Vec<i64>)> = Vec::new();
    for (version, hour, result, reports) in rows {
        let Some(i) = usize::try_from((hour - first) / 3600).ok().filter(|&i| i < n && hour >= first) else {
            continue;
        };
        match result.as_str() {
            "success" => success[i] += reports,
            "failure" => failure[i] += reports,
            _ => rolled_back[i] += reports,
        }
        let v = match per_version.iter().position(|(v, _, _)| *v == version) {
            Some(v) => v,
            None => {
                per_version.push((version, vec![0; n], vec![0; n]));
                per_version.len() - 1
            }
        };
        per_version[v].1[i] += reports;
        if result != "success" {
            per_version[v].2[i] += reports;
        }
    }
    // The most reported versions, drawn newest first.
    per_version.sort_by_key(|(_, reports, _)| std::cmp::Reverse(reports.iter().sum::<i64>()));
    per_version.truncate(CHART_VERSIONS);
    per_version.sort_by(|a, b| by_version_desc(&a.0, &b.0));
    let versions = per_version
        .into_iter()
        .map(|(to_version, reports, failed)| VersionSeries {
            failure_rate: reports.iter().zip(&failed).map(|(&r, &f)| (r > 0).then(|| f as f64 / r as f64)).collect(),
            reports,
            to_version,
        })
        .collect();
    Series { hours, success, failure, rolled_back, versions }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_rollbacks_as_failed_upgrades() {
        let mut o = Outcomes::default();
        assert_eq!(o.failure_rate, None);
        o.add("success", 6);
        o.add("failure", 3);
        o.add("rolled_back", 1);
        assert_eq!((o.total, o.failure_rate), (10, Some(0.4)));
    }

    #[test]
    fn versions_sort_newest_first_by_semver() {
        let mut v = vec!["1.10.0", "1.9.0", "2.0.0-rc.1", "2.0.0", "junk"];
        v.sort_by(|a, b| by_version_desc(a, b));
        assert_eq!(v, ["2.0.0", "2.0.0-rc.1", "1.10.0", "1.9.0", "junk"]);
    }

    #[test]
    fn series_are_dense_and_keep_the_most_reported_versions() {
        let now = 1_000 * 3600;
        let first = now - (CHART_HOURS - 1) * 3600;
        let rows = vec![
            ("1.0.0".to_owned(), first, "success".to_owned(), 4),
            ("1.0.0".to_owned(), first, "failure".to_owned(), 1),
            ("1.1.0".to_owned(), now, "rolled_back".to_owned(), 2),
            ("1.2.0".to_owned(), now, "success".to_owned(), 1),
            ("1.3.0".to_owned(), now, "success".to_owned(), 1),
            ("0.9.0".to_owned(), now, "success".to_owned(), 1),
            // Outside the window: ignored.
            ("1.0.0".to_owned(), first - 3600, "failure".to_owned(), 99),
        ];
        let s = series(now, rows.into_iter());
        assert_eq!(s.hours.len() as i64, CHART_HOURS);
        assert_eq!((s.hours[0], *s.hours.last().unwrap()), (first, now));
        assert_eq!((s.success[0], s.failure[0], s.rolled_back[0]), (4, 1, 0));
        assert_eq!(*s.rolled_back.last().unwrap(), 2);
        let names: Vec<_> = s.versions.iter().map(|v| v.to_version.as_str()).collect();
        // Four of five: ties keep the first seen, so 0.9.0 is left out.
        assert_eq!(names, ["1.3.0", "1.2.0", "1.1.0", "1.0.0"]);
        let v100 = s.versions.iter().find(|v| v.to_version == "1.0.0").unwrap();
        assert_eq!((v100.reports[0], v100.failure_rate[0], v100.failure_rate[1]), (5, Some(0.2), None));
        let v110 = s.versions.iter().find(|v| v.to_version == "1.1.0").unwrap();
        assert_eq!(*v110.failure_rate.last().unwrap(), Some(1.0));
    }
}
