//! Folding failure reports into messages: the first failure of a (tenant,
//! app, target version) after a quiet interval is a message of its own, at
//! once; the failures after it are counted into one digest per interval.
//! 10,000 failures in a minute make two messages per destination, not
//! 10,000. Messages are written to the outbox in the same transaction that
//! marks their reports folded, so none is lost or made twice; one folder
//! runs at a time across replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_store::{Meta, StoreError};
use serde_json::{Value, json};

/// The advisory lock key that serialises folders ("ferry alerts").
const FOLD_LOCK: i64 = 0x6665_7272_7961_6c00;
/// Failures folded per transaction.
const BATCH: i64 = 5000;
/// Sample failures a digest carries.
const SAMPLES: usize = 5;

/// What one fold did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// False when another replica was folding.
    pub ran: bool,
    pub failures: u64,
    pub messages: u64,
}

struct Failure {
    seq: i64,
    tenant_id: i64,
    app_id: i64,
    tenant: String,
    app: String,
    version: String,
    device_id: String,
    from_version: String,
    result: String,
    error_code: Option<String>,
    error_message: Option<String>,
    at: std::time::SystemTime,
}

impl Failure {
    fn sample(&self) -> Value {
        json!({
            "device_id": self.device_id,
            "from_version": self.from_version,
            "result": self.result,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "at": rfc3339(self.at),
        })
    }
}

pub(crate) use ferry_store::rfc3339;

/// Folds the failures not folded yet, and sends the digests that are due.
pub async fn fold(meta: &Meta, interval: Duration) -> Result<FoldReport, StoreError> {
    let mut client = meta.client().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&FOLD_LOCK]).await?.get(0);
    if !locked {
        return Ok(FoldReport::default());
    }
    let mut report = FoldReport { ran: true, ..FoldReport::default() };
    let seconds = interval.as_secs_f64();
    let rows = tx
        .query(
            "SELECT r.seq, r.tenant_id, r.app_id, t.name, a.name, r.to_version, r.device_id, r.from_version, \
                    r.result, r.error_code, r.error_message, r.received_at \
             FROM reports r JOIN tenants t ON t.id = r.tenant_id JOIN apps a ON a.id = r.app_id \
             WHERE r.result <> 'success' AND NOT r.folded ORDER BY r.seq LIMIT $1",
            &[&BATCH],
        )
        .await?;
    let failures: Vec<Failure> = rows
        .iter()
        .map(|r| Failure {
            seq: r.get(0),
            tenant_id: r.get(1),
            app_id: r.get(2),
            tenant: r.get(3),
            app: r.get(4),
            version: r.get(5),
            device_id: r.get(6),
            from_version: r.get(7),
            result: r.get(8),
            error_code: r.get(9),
            error_message: r.get(10),
            at: r.get(11),
        })
        .collect();
    report.failures = failures.len() as u64;

    let mut groups: BTreeMap<(i64, i64, String), Vec<&Failure>> = BTreeMap::new();
    for f in &failures {
        groups.entry((f.tenant_id, f.app_id, f.version.clone())).or_default().push(f);
    }
    for ((tenant_id, app_id, version), group) in groups {
        // Quiet for a whole interval (or never heard of): the first failure
        // goes out at once.
        let state = tx
            .query_opt(
                "SELECT last_sent_at > now() - make_interval(secs => $4) FROM alert_groups \
                 WHERE tenant_id = $1 AND app_id = $2 AND version = $3 FOR UPDATE",
                &[&tenant_id, &app_id, &version, &seconds],
            )
            .await?;
        let recent = state.as_ref().is_some_and(|row| row.get::<_, bool>(0));
        let (first, rest) = if recent { (None, &group[..]) } else { (Some(group[0]), &group[1..]) };
        if let Some(first) = first {
            let payload = json!({
                "kind": "failure",
                "tenant": first.tenant,
                "app": first.app,
                "version": version,
                "failure": first.sample(),
            });
            report.messages += enqueue(&tx, tenant_id, app_id, &version, "failure", &payload).await?;
            tx.execute(
                "INSERT INTO alert_groups (tenant_id, app_id, version, last_sent_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (tenant_id, app_id, version) DO UPDATE SET last_sent_at = now()",
                &[&tenant_id, &app_id, &version],
            )
            .await?;
        }
        if !rest.is_empty() {
            let mut codes: BTreeMap<String, i64> = BTreeMap::new();
            for f in rest {
                *codes.entry(f.error_code.clone().unwrap_or_default()).or_default() += 1;
            }
            let samples: Vec<Value> = rest.iter().take(SAMPLES).map(|f| f.sample()).collect();
            tx.execute(
                "INSERT INTO alert_groups (tenant_id, app_id, version, last_sent_at, pending, pending_codes, pending_samples) \
                 VALUES ($1, $2, $3, now(), $4, $5, $6) \
                 ON CONFLICT (tenant_id, app_id, version) DO UPDATE SET \
                   pending = alert_groups.pending + EXCLUDED.pending, \
                   pending_codes = (SELECT coalesce(jsonb_object_agg(k, v), '{}') FROM ( \
                       SELECT k, sum(v::bigint) AS v FROM ( \
                         SELECT key AS k, value AS v FROM jsonb_each_text(alert_groups.pending_codes) \
                         UNION ALL SELECT key, value FROM jsonb_each_text(EXCLUDED.pending_codes)) u GROUP BY k) s), \
                   pending_samples = CASE WHEN jsonb_array_length(alert_groups.pending_samples) >= $7 \
                                          THEN alert_groups.pending_samples \
                                          ELSE alert_groups.pending_samples || EXCLUDED.pending_samples END",
                &[
                    &tenant_id,
                    &app_id,
                    &version,
                    &(rest.len() as i64),
                    &serde_json::to_value(&codes).expect("counts serialise"),
                    &Value::Array(samples),
                    &(SAMPLES as i32),
                ],
            )
            .await?;
        }
    }
    let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
    tx.execute("UPDATE reports SET folded = true WHERE seq = ANY($1)", &[&seqs]).await?;

    // Digests that are due: something is pending and the last message is
    // an interval old.
    let due = tx
        .query(
            "SELECT g.tenant_id, g.app_id, g.version, g.pending, g.pending_codes, g.pending_samples, t.name, a.name, \
                    g.last_sent_at \
             FROM alert_groups g JOIN tenants t ON t.id = g.tenant_id JOIN apps a ON a.id = g.app_id \
             WHERE g.pending > 0 AND g.last_sent_at <= now() - make_interval(secs => $1) FOR UPDATE OF g",
            &[&seconds],
        )
        .await?;
    for row in due {
        let (tenant_id, app_id, version): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        let payload = json!({
            "kind": "digest",
            "tenant": row.get::<_, String>(6),
            "app": row.get::<_, String>(7),
            "version": version,
            "digest": {
                "failures": row.get::<_, i64>(3),
                "by_error_code": row.get::<_, Value>(4),
                "samples": row.get::<_, Value>(5),
                "since": rfc3339(row.get(8)),
            },
        });
        report.messages += enqueue(&tx, tenant_id, app_id, &version, "digest", &payload).await?;
        tx.execute(
            "UPDATE alert_groups SET pending = 0, pending_codes = '{}', pending_samples = '[]', last_sent_at = now() \
             WHERE tenant_id = $1 AND app_id = $2 AND version = $3",
            &[&tenant_id, &app_id, &version],
        )
        .await?;
    }
    tx.commit().await?;
    if report.messages > 0 {
        tracing::info!(failures = report.failures, messages = report.messages, "failures folded into alerts");
    }
    Ok(report)
}

/// Puts a message in the outbox once per destination the tenant set up;
/// returns how many rows.
async fn enqueue(
    tx: &tokio_postgres::Transaction<'_>,
    tenant_id: i64,
    app_id: i64,
    version: &str,
    kind: &str,
    payload: &Value,
) -> Result<u64, StoreError> {
    Ok(tx
        .execute(
            "INSERT INTO alert_outbox (tenant_id, app_id, version, kind, channel, destination, payload) \
             SELECT $1, $2, $3, $4, d.channel, d.destination, $5 FROM alert_targets t, LATERAL ( \
                 SELECT 'webhook' AS channel, t.webhook_url AS destination WHERE t.webhook_url IS NOT NULL \
                 UNION ALL SELECT 'email', e FROM unnest(t.emails) e) d \
             WHERE t.tenant_id = $1",
            &[&tenant_id, &app_id, &version, &kind, payload],
        )
        .await?)
}
