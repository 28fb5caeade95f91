//! Failed upgrades told to a tenant's administrators (S4-4), by webhook and
//! e-mail, without floods and without losing any.
//!
//! Failure reports (ferry-reports) are folded into messages ([`fold`]): the
//! first failure of an app's target version after a quiet interval at once,
//! the rest into one digest per interval. Messages go through an outbox in
//! PostgreSQL and are delivered with retries ([`Delivery`]): signed JSON
//! webhooks, and e-mail through the operator's SMTP relay. The registry runs
//! both ([`run`]); any number of replicas may, and each message is still
//! made once and sent by one of them at a time.

mod deliver;
mod fold;
mod text;

use std::time::{Duration, SystemTime};

use ferry_release::Name;
use ferry_store::{Meta, StoreError};

pub use deliver::{Delivery, SettingsError, SmtpSettings, sign, verify};
pub use fold::{FoldReport, fold};

/// How alerts are folded and sent.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// At most one digest per (tenant, app, version) per interval
    /// (`FERRY_ALERT_DIGEST_SECONDS`).
    pub digest_interval: Duration,
    pub smtp: Option<SmtpSettings>,
    /// Attempts before a message is given up as failed.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled each time, at most an
    /// hour.
    pub first_backoff: Duration,
    /// How often the outbox and new failures are looked at.
    pub tick: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            digest_interval: Duration::from_secs(300),
            smtp: None,
            max_attempts: 12,
            first_backoff: Duration::from_secs(10),
            tick: Duration::from_secs(1),
        }
    }
}

/// Folds and delivers every `settings.tick`, in a task of its own (abort
/// it to stop).
pub fn run(meta: Meta, settings: AlertSettings) -> Result<tokio::task::JoinHandle<()>, SettingsError> {
    let delivery = Delivery::new(settings.smtp.as_ref(), settings.max_attempts, settings.first_backoff)?;
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = fold(&meta, settings.digest_interval).await {
                tracing::warn!(error = %ferry_proto::error_chain(&e), "folding failures into alerts failed; trying again");
            }
            // Deliver until nothing due is left (a backlog drains quickly).
            loop {
                match delivery.deliver(&meta).await {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %ferry_proto::error_chain(&e), "delivering alerts failed; trying again");
                        break;
                    }
                }
            }
        }
    }))
}

/// Checks a webhook URL: http(s), a host, at most 2,048 bytes.
pub fn validate_webhook_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        _ if url.len() > 2048 => Err("longer than 2048 bytes".into()),
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !url.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(format!("{} is not an http(s):// URL", ferry_release::Quoted(url))),
    }
}

/// Checks an e-mail address.
pub fn validate_email(address: &str) -> Result<(), String> {
    address
        .parse::<lettre::Address>()
        .map(drop)
        .map_err(|e| format!("{} is not an e-mail address: {e}", ferry_release::Quoted(address)))
}

/// Where a tenant's alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub webhook_url: Option<String>,
    pub emails: Vec<String>,
}

/// Sets (or with `clear`, removes) a tenant's alert destinations; returns
/// the webhook signing secret when a webhook is set (a new one each time:
/// it is shown once).
pub async fn set_targets(
    meta: &Meta,
    tenant: &Name,
    webhook_url: Option<&str>,
    emails: &[String],
    clear: bool,
) -> Result<Option<String>, StoreError> {
    let tenant_id = meta.tenant_id(tenant).await?;
    let client = meta.client().await?;
    if clear {
        client.execute("DELETE FROM alert_targets WHERE tenant_id = $1", &[&tenant_id]).await?;
        return Ok(None);
    }
    let secret = webhook_url.map(|_| {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("operating system random source");
        format!("whsec_{}", hex::encode(bytes))
    });
    client
        .execute(
            "INSERT INTO alert_targets (tenant_id, webhook_url, webhook_secret, emails) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id) DO UPDATE SET webhook_url = EXCLUDED.webhook_url, \
               webhook_secret = EXCLUDED.webhook_secret, emails = EXCLUDED.emails, updated_at = now()",
            &[&tenant_id, &webhook_url, &secret, &emails],
        )
        .await?;
    Ok(secret)
}

/// A message's delivery state, for `admin alerts` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    pub id: i64,
    pub app: String,
    pub version: String,
    pub kind: String,
    pub channel: String,
    pub destination: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: SystemTime,
    pub delivered_at: Option<SystemTime>,
}

/// The tenant's most recent alert messages, newest first.
pub async fn deliveries(meta: &Meta, tenant: &Name, limit: i64) -> Result<Vec<DeliveryState>, StoreError> {
    let tenant_id = meta.tenant_id(tenant).await?;
    let client = meta.client().await?;
    let rows = client
        .query(
            "SELECT o.id, a.name, o.version, o.kind, o.channel, o.destination, o.status, o.attempts, o.last_error, \
                    o.created_at, o.delivered_at \
             FROM alert_outbox o JOIN apps a ON a.id = o.app_id WHERE o.tenant_id = $1 \
             ORDER BY o.created_at DESC, o.id DESC LIMIT $2",
            &[&tenant_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeliveryState {
            id: r.get(0),
            app: r.get(1),
            version: r.get(2),
            kind: r.get(3),
            channel: r.get(4),
            destination: r.get(5),
            status: r.get(6),
            attempts: r.get(7),
            last_error: r.get(8),
            created_at: r.get(9),
            delivered_at: r.get(10),
        })
        .collect())
}
