//! Delivering the outbox: webhooks (JSON, signed) and e-mail (SMTP).
//!
//! A sender claims due messages with a lease (`FOR UPDATE SKIP LOCKED`, then
//! `next_attempt_at` moved past the lease), so with several replicas each
//! message has one sender at a time; a replica that dies mid-send leaves
//! the lease to expire and another retries (receivers deduplicate on
//! `X-Ferry-Delivery`). A failed attempt is retried with exponential
//! backoff; after the last one the message is `failed`, with its error.

use std::time::{Duration, SystemTime};

use ferry_store::{Meta, StoreError};
use hmac::{KeyInit, Mac};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value;

use crate::fold::rfc3339;

/// Messages claimed per round.
const CLAIM: i64 = 20;
/// How long a claim lasts; longer than one send can take.
const LEASE: Duration = Duration::from_secs(120);

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// How long one webhook call may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// How alerts are sent.
#[derive(Clone)]
pub struct Delivery {
    http: HttpClient,
    mailer: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    max_attempts: i32,
    first_backoff: Duration,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("smtp", &self.mailer.is_some()).finish_non_exhaustive()
    }
}

/// An SMTP relay: `smtp://[user:password@]host[:port]` (STARTTLS required;
/// `?tls=none` for a relay on the same host only) or
/// `smtps://...` (TLS from the start).
#[derive(Clone)]
pub struct SmtpSettings {
    pub url: String,
    /// Overrides a password in the URL (`FERRY_SMTP_PASSWORD_FILE`).
    pub password: Option<String>,
    pub from: String,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings").field("from", &self.from).finish_non_exhaustive()
    }
}

/// Why the alert settings are not usable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("FERRY_SMTP_URL: {0}")]
    SmtpUrl(String),
    #[error("FERRY_ALERT_FROM: {0}")]
    From(String),
}

impl Delivery {
    /// `smtp: None` sends webhooks only (e-mail destinations then fail with
    /// a message saying so).
    pub fn new(smtp: Option<&SmtpSettings>, max_attempts: u32, first_backoff: Duration) -> Result<Self, SettingsError> {
        let mailer = smtp
            .map(|s| {
                let from: Mailbox = s.from.parse().map_err(|e| SettingsError::From(format!("{e}")))?;
                let url = lettre_url(&s.url);
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
                    .map_err(|e| SettingsError::SmtpUrl(e.to_string()))?
                    .timeout(Some(Duration::from_secs(20)));
                if let Some(password) = &s.password {
                    let user = url::user(&url);
                    builder = builder
                        .credentials(lettre::transport::smtp::authentication::Credentials::new(user, password.clone()));
                }
                Ok((builder.build(), from))
            })
            .transpose()?;
        Ok(Self { http: http_client(), mailer, max_attempts: max_attempts.max(1) as i32, first_backoff })
    }

    /// Sends the messages that are due; returns how many were delivered.
    pub async fn deliver(&self, meta: &Meta) -> Result<u64, StoreError> {
        let client = meta.client().await?;
        let lease = LEASE.as_secs_f64();
        let claimed = client
            .query(
                "WITH due AS (SELECT id FROM alert_outbox WHERE status = 'pending' AND next_attempt_at <= now() \
                              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED), \
                      claimed AS (UPDATE alert_outbox o SET next_attempt_at = now() + make_interval(secs => $1) \
                                  FROM due WHERE o.id = due.id \
                                  RETURNING o.id, o.tenant_id, o.channel, o.destination, o.payload, o.attempts) \
                 SELECT c.id, c.channel, c.destination, c.payload, c.attempts, t.webhook_secret \
                 FROM claimed c LEFT JOIN alert_targets t ON t.tenant_id = c.tenant_id ORDER BY c.id",
                &[&lease, &CLAIM],
            )
            .await?;
        let mut delivered = 0;
        for row in claimed {
            let (id, channel, destination): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            let payload: Value = row.get(3);
            let attempts: i32 = row.get(4);
            let secret: Option<String> = row.get(5);
            let sent = match channel.as_str() {
                "webhook" => self.webhook(id, &destination, payload, secret.as_deref()).await,
                _ => self.email(id, &destination, &payload).await,
            };
            match sent {
                Ok(()) => {
                    delivered += 1;
                    client
                        .execute(
                            "UPDATE alert_outbox SET status = 'delivered', delivered_at = now(), attempts = attempts + 1, \
                             last_error = NULL WHERE id = $1",
                            &[&id],
                        )
                        .await?;
                }
                Err(why) => {
                    let attempts = attempts + 1;
                    let backoff =
                        (self.first_backoff * 2u32.saturating_pow(attempts as u32 - 1)).min(Duration::from_secs(3600));
                    let status = if attempts >= self.max_attempts { "failed" } else { "pending" };
                    tracing::warn!(id, channel, attempts, error = %why, status, "alert not delivered");
                    client
                        .execute(
                            "UPDATE alert_outbox SET status = $2, attempts = $3, last_error = $4, \
                             next_attempt_at = now() + make_interval(secs => $5) WHERE id = $1",
                            &[&id, &status, &attempts, &why, &backoff.as_secs_f64()],
                        )
                        .await?;
                }
            }
        }
        Ok(delivered)
    }

    async fn webhook(&self, id: i64, url: &str, mut payload: Value, secret: Option<&str>) -> Result<(), String> {
        let sent_at = rfc3339(SystemTime::now());
        if let Value::Object(map) = &mut payload {
            map.insert("delivery_id".into(), Value::from(id));
            map.insert("sent_at".into(), Value::from(sent_at.clone()));
        }
        let body = serde_json::to_vec(&payload).expect("payloads serialise");
        let mut request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "ferry-alerts")
            .header("x-ferry-delivery", id.to_string())
            .header("x-ferry-timestamp", &sent_at);
        if let Some(secret) = secret {
            request = request.header("x-ferry-signature", sign(secret, &body));
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("webhook {}: {e}", host_of(url)))?;
        // Redirects are not followed: a webhook answers where it was set.
        let response = tokio::time::timeout(WEBHOOK_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| format!("webhook {} did not answer within {} s", host_of(url), WEBHOOK_TIMEOUT.as_secs()))?
            .map_err(|e| format!("webhook {}: {}", host_of(url), ferry_proto::error_chain(&e)))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook {} answered {}", host_of(url), response.status()))
        }
    }

    async fn email(&self, id: i64, to: &str, payload: &Value) -> Result<(), String> {
        let Some((mailer, from)) = &self.mailer else {
            return Err("no SMTP relay is configured (FERRY_SMTP_URL)".into());
        };
        let to: Mailbox = to.parse().map_err(|e| format!("address {to}: {e}"))?;
        let (subject, text) = crate::text::email(payload);
        let message = lettre::Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<ferry-alert-{id}@ferry>")))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| format!("building the message: {e}"))?;
        mailer.send(message).await.map_err(|e| format!("smtp: {e}"))?;
        Ok(())
    }
}

/// An HTTP(S) client with aws-lc (the project's one crypto provider) and the
/// system's roots (Mozilla's when the system has none).
fn http_client() -> HttpClient {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!(error = %e, "no system root certificates; webhooks trust Mozilla's roots");
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .expect("aws-lc supports the default protocol versions")
        }
    };
    let https = builder.https_or_http().enable_http1().build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// Our URL convention in lettre's spelling: `smtp://` means STARTTLS
/// required (lettre's `tls=required`) unless the URL says `tls=none` (plain,
/// lettre's default) or `tls=opportunistic`; `smtps://` is TLS from the
/// start.
fn lettre_url(url: &str) -> String {
    if !url.starts_with("smtp://") {
        return url.to_owned();
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    if params.contains(&"tls=none") {
        params.retain(|p| *p != "tls=none");
    } else if !params.iter().any(|p| p.starts_with("tls=")) {
        params.push("tls=required");
    }
    if params.is_empty() { base.to_owned() } else { format!("{base}?{}", params.join("&")) }
}

/// `sha256=<hex>`: HMAC-SHA256 of the body with the tenant's webhook secret.
/// The body carries `sent_at` (also in `X-Ferry-Timestamp`), so the
/// signature covers the time: a receiver refuses old or repeated
/// deliveries by checking it and `delivery_id`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header against a body, in constant time.
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_mac) = header.strip_prefix("sha256=") else { return false };
    let Ok(expected) = hex::decode(hex_mac) else { return false };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The host of a URL, for errors and logs (a webhook URL may hold a token
/// in its path or query).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest).rsplit('@').next().unwrap_or(rest)
}

mod url {
    /// The user part of `scheme://user[:password]@host...`, unescaped as
    /// given ("" when there is none).
    pub(super) fn user(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        match authority.rsplit_once('@') {
            Some((userinfo, _)) => userinfo.split(':').next().unwrap_or("").to_owned(),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_catch_any_change() {
        let body = br#"{"kind":"failure","sent_at":"2026-11-23T10:00:00Z"}"#;
        let header = sign("s3cret", body);
        assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
        assert!(verify("s3cret", body, &header));
        assert!(!verify("other", body, &header));
        let mut changed = body.to_vec();
        changed[5] ^= 1;
        assert!(!verify("s3cret", &changed, &header));
        assert!(!verify("s3cret", body, "sha1=00"));
    }

    /// The example in README's "Verifying webhooks" is this computation.
    #[test]
    fn signature_matches_a_known_answer() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231 style vector.
        assert_eq!(
            sign("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn urls_are_shown_by_host_only() {
        assert_eq!(host_of("https://hooks.example.com/T0/B1?token=x"), "hooks.example.com");
        assert_eq!(host_of("https://user:pw@hooks.example.com:8443/x"), "hooks.example.com:8443");
        assert_eq!(url::user("smtp://alerts%40acme:pw@mail.example.com:587"), "alerts%40acme");
        assert_eq!(url::user("smtps://mail.example.com"), "");
    }
}
#[cfg(test)]
mod smtp_url_tests {
    use super::*;

    #[test]
    fn smtp_urls_mean_starttls_unless_they_say_otherwise() {
        assert_eq!(lettre_url("smtp://mail.example.com:587"), "smtp://mail.example.com:587?tls=required");
        assert_eq!(lettre_url("smtp://u:p@mail:587?tls=opportunistic"), "smtp://u:p@mail:587?tls=opportunistic");
        assert_eq!(lettre_url("smtp://127.0.0.1:2525?tls=none"), "smtp://127.0.0.1:2525");
        assert_eq!(lettre_url("smtps://mail.example.com"), "smtps://mail.example.com");
        for url in ["smtp://127.0.0.1:2525?tls=none", "smtp://mail.example.com", "smtps://u:p@mail.example.com:465"] {
            let s = SmtpSettings { url: url.into(), password: None, from: "Ferry <ferry@test>".into() };
            Delivery::new(Some(&s), 3, Duration::from_secs(1)).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let bad = SmtpSettings { url: "smtp://mail?tls=none".into(), password: None, from: "not an address".into() };
        assert!(matches!(Delivery::new(Some(&bad), 3, Duration::from_secs(1)), Err(SettingsError::From(_))));
    }
}
