//! Reports in PostgreSQL: written in batches by one task per process (many
//! concurrent reports become one transaction, so ingestion costs the
//! database little and never holds up checks), with each device's latest
//! failure kept beside them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use ferry_store::{Meta, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::model::{LastFailure, Outcome, Report};

/// Reports written in one transaction at most.
const MAX_BATCH: usize = 500;
/// Reports waiting for the writer at most; beyond, submitting waits.
const QUEUE: usize = 4096;

struct Pending {
    tenant_id: i64,
    app_id: i64,
    report: Report,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// Writes and reads reports. Cheap to clone.
#[derive(Clone)]
pub struct ReportStore {
    meta: Meta,
    queue: mpsc::Sender<Pending>,
}

impl ReportStore {
    /// A store writing through `meta`'s pool (give it a pool of its own, so
    /// writes never wait for connections reads hold). Call inside a Tokio
    /// runtime: it spawns the writer.
    pub fn new(meta: Meta) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(meta.clone(), rx));
        Self { meta, queue }
    }

    /// Stores a report of `tenant_id`'s app `app_id` once it is durable:
    /// `true` when new, `false` when a report with this id was stored
    /// before (a retry; nothing changes).
    pub async fn submit(&self, tenant_id: i64, app_id: i64, report: Report) -> Result<bool, StoreError> {
        let (done, result) = oneshot::channel();
        let gone = || StoreError::Unavailable { what: "report writer", source: "the writer stopped".into() };
        self.queue.send(Pending { tenant_id, app_id, report, done }).await.map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    /// The device's latest failure for the app, unless a later success
    /// cleared it.
    pub async fn last_failure(&self, app_id: i64, device_id: &str) -> Result<Option<LastFailure>, StoreError> {
        let client = self.meta.client().await?;
        let row = client
            .query_opt(
                "SELECT version, result, error_code, error_message, at FROM device_failures \
                 WHERE app_id = $1 AND device_id = $2",
                &[&app_id, &device_id],
            )
            .await?;
        row.map(|r| {
            Ok(LastFailure {
                version: r.get(0),
                outcome: Outcome::parse(r.get(1))
                    .ok_or_else(|| StoreError::Integrity("stored report result".into()))?,
                error_code: r.get(2),
                error_message: r.get(3),
                at: r.get(4),
            })
        })
        .transpose()
    }

    /// Deletes reports (and devices' failures) received more than
    /// `retention` ago; see [`delete_older_than`].
    pub async fn delete_older_than(&self, retention: Duration) -> Result<u64, StoreError> {
        delete_older_than(&self.meta, retention).await
    }
}

/// Deletes reports (and devices' failures, hourly counts and devices not
/// seen) older than `retention`, in batches; returns how many reports went.
pub async fn delete_older_than(meta: &Meta, retention: Duration) -> Result<u64, StoreError> {
    let client = meta.client().await?;
    let seconds = retention.as_secs_f64();
    let mut deleted = 0;
    loop {
        let n = client
            .execute(
                "DELETE FROM reports WHERE ctid IN (SELECT ctid FROM reports \
                 WHERE received_at < now() - make_interval(secs => $1) LIMIT 10000)",
                &[&seconds],
            )
            .await?;
        deleted += n;
        if n < 10_000 {
            break;
        }
    }
    client.execute("DELETE FROM device_failures WHERE at < now() - make_interval(secs => $1)", &[&seconds]).await?;
    // What the dashboard counts ages out with the reports it counts: hours
    // wholly before the cut-off, and devices neither checking nor reporting.
    client
        .execute(
            "DELETE FROM report_counts WHERE hour < now() - make_interval(secs => $1) - interval '1 hour'",
            &[&seconds],
        )
        .await?;
    client.execute("DELETE FROM devices WHERE seen_at < now() - make_interval(secs => $1)", &[&seconds]).await?;
    Ok(deleted)
}

/// The writer: takes whatever is queued (up to a batch) and writes it in one
/// transaction; reports wait only for the batch in flight.
async fn write_batches(meta: Meta, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let reports: Vec<(i64, i64, &Report)> = batch.iter().map(|p| (p.tenant_id, p.app_id, &p.report)).collect();
        match write(&meta, &reports).await {
            Ok(new) => {
                for (p, new) in batch.into_iter().zip(new) {
                    let _ = p.done.send(Ok(new));
                }
            }
            Err(e) => {
                tracing::warn!(error = %ferry_proto::error_chain(&e), reports = batch.len(), "storing reports failed");
                let message = e.to_string();
                for p in batch {
                    let _ = p
                        .done
                        .send(Err(StoreError::Unavailable { what: "postgresql", source: message.clone().into() }));
                }
            }
        }
    }
}

/// Inserts the reports (a report id seen before is skipped) and updates the
/// devices' latest failures from the new ones; returns, per report, whether
/// it was new.
async fn write(meta: &Meta, reports: &[(i64, i64, &Report)]) -> Result<Vec<bool>, StoreError> {
    let mut client = meta.client().await?;
    let tx = client.transaction().await?;
    let col = |f: fn(&Report) -> String| reports.iter().map(|r| f(r.2)).collect::<Vec<String>>();
    let opt = |f: fn(&Report) -> Option<String>| reports.iter().map(|r| f(r.2)).collect::<Vec<Option<String>>>();
    let tenants: Vec<i64> = reports.iter().map(|r| r.0).collect();
    let apps: Vec<i64> = reports.iter().map(|r| r.1).collect();
    let ids = col(|r| r.report_id.clone());
    let devices = col(|r| r.device_id.clone());
    let froms = col(|r| r.from_version.to_string());
    let tos = col(|r| r.to_version.to_string());
    let results = col(|r| r.outcome.as_str().to_owned());
    let codes = opt(|r| r.error_code.clone());
    let messages = opt(|r| r.error_message.clone());
    let platforms = opt(|r| r.platform.as_ref().map(ToString::to_string));
    let durations: Vec<Option<i64>> =
        reports.iter().map(|r| r.2.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX))).collect();
    let inserted = tx
        .query(
            "INSERT INTO reports (tenant_id, app_id, report_id, device_id, from_version, to_version, result, \
                                  error_code, error_message, duration_ms, platform) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[]) \
             ON CONFLICT (tenant_id, report_id) DO NOTHING \
             RETURNING tenant_id, report_id, received_at",
            &[&tenants, &apps, &ids, &devices, &froms, &tos, &results, &codes, &messages, &durations, &platforms],
        )
        .await?;
    let new: HashMap<(i64, String), SystemTime> =
        inserted.iter().map(|row| ((row.get(0), row.get(1)), row.get(2))).collect();

    // The last new report of each device decides its state (a batch may
    // hold several of one device). In key order, so gateways writing
    // batches at once lock devices' rows in the same order (no deadlock).
    let mut latest: BTreeMap<(i64, &str), (&Report, SystemTime)> = BTreeMap::new();
    for (tenant, app, report) in reports {
        if let Some(at) = new.get(&(*tenant, report.report_id.clone())) {
            latest.insert((*app, report.device_id.as_str()), (report, *at));
        }
    }
    let (mut failed, mut cleared) = (Vec::new(), Vec::new());
    for ((app, device), (report, at)) in latest {
        if report.outcome == Outcome::Success {
            cleared.push((app, device.to_owned(), at));
        } else {
            failed.push((app, device.to_owned(), report, at));
        }
    }
    if !failed.is_empty() {
        let apps: Vec<i64> = failed.iter().map(|f| f.0).collect();
        let devices: Vec<String> = failed.iter().map(|f| f.1.clone()).collect();
        let versions: Vec<String> = failed.iter().map(|f| f.2.to_version.to_string()).collect();
        let results: Vec<String> = failed.iter().map(|f| f.2.outcome.as_str().to_owned()).collect();
        let codes: Vec<Option<String>> = failed.iter().map(|f| f.2.error_code.clone()).collect();
        let messages: Vec<Option<String>> = failed.iter().map(|f| f.2.error_message.clone()).collect();
        let ats: Vec<SystemTime> = failed.iter().map(|f| f.3).collect();
        tx.execute(
            "INSERT INTO device_failures (app_id, device_id, version, result, error_code, error_message, at) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::timestamptz[]) \
             ON CONFLICT (app_id, device_id) DO UPDATE SET version = EXCLUDED.version, result = EXCLUDED.result, \
                 error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message, at = EXCLUDED.at \
             WHERE device_failures.at <= EXCLUDED.at",
            &[&apps, &devices, &versions, &results, &codes, &messages, &ats],
        )
        .await?;
    }
    if !cleared.is_empty() {
        let apps: Vec<i64> = cleared.iter().map(|c| c.0).collect();
        let devices: Vec<String> = cleared.iter().map(|c| c.1.clone()).collect();
        let ats: Vec<SystemTime> = cleared.iter().map(|c| c.2).collect();
        tx.execute(
            "DELETE FROM device_failures d USING UNNEST($1::bigint[], $2::text[], $3::timestamptz[]) AS s(app, device, at) \
             WHERE d.app_id = s.app AND d.device_id = s.device AND d.at <= s.at",
            &[&apps, &devices, &ats],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(reports.iter().map(|(tenant, _, report)| new.contains_key(&(*tenant, report.report_id.clone()))).collect())
}
