//! The gateway's HTTP API as an app sees it: the answer to a check, a
//! report, and the calls themselves, with rate limits honoured.
//!
//! Everything the gateway sends is checked before it is used: names,
//! paths, hashes and ids are validated, and an answer for another tenant
//! or app is refused (S1-8).

use std::time::Duration;

use ferry_release::{Name, RelPath};
use serde::{Deserialize, Serialize};

use crate::{Client, Error};

/// What the client should do (the answer's `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    None,
    Upgrade,
    Downgrade,
}

/// The answer to a check, validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub action: Action,
    pub current: String,
    pub target: String,
    pub manifest_id: String,
    pub tenant: String,
    pub app: String,
    /// The client must update before it can be used: show "update to
    /// continue" rather than offering to update later.
    pub required: bool,
    /// This device's latest failed or rolled-back upgrade, until a success
    /// clears it: show it to the user.
    #[serde(default)]
    pub last_failure: Option<LastFailure>,
    pub artifacts: Vec<ArtifactFile>,
    #[serde(default)]
    pub deleted: Vec<DeletedFile>,
    #[serde(default)]
    pub delta: bool,
}

/// One file of the target release and where to download it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactFile {
    pub kind: String,
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub url: String,
    pub expires_at: String,
    /// A binary patch from a file the client holds (with `have`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchOffer>,
    /// The same file compressed (text-like files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<CompressedOffer>,
}

/// A file offered compressed: `encoding` `zstd` is one zstd frame holding
/// the file (a patch from the empty file, for `ferry_patch`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressedOffer {
    pub encoding: String,
    pub size: u64,
    pub blake3: String,
    pub url: String,
    pub expires_at: String,
}

/// A binary patch offered for a file (see `ferry_patch` for the format).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchOffer {
    pub algorithm: String,
    pub base_blake3: String,
    pub size: u64,
    pub blake3: String,
    pub url: String,
    pub expires_at: String,
}

/// A file of the release the client runs that the target no longer has.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedFile {
    pub kind: String,
    pub path: String,
}

/// A device's latest failed upgrade, as the gateway remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFailure {
    pub version: String,
    /// `failure` or `rolled_back`.
    pub result: String,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    pub at: String,
}

/// How an upgrade went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    RolledBack,
}

/// A report of how an upgrade went (`POST /v1/reports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Unique per tenant; sending the same report again changes nothing.
    pub report_id: String,
    pub device_id: String,
    pub tenant: String,
    pub app: String,
    pub from_version: String,
    pub to_version: String,
    pub result: Outcome,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub platform: Option<String>,
}

impl Report {
    /// A fresh report id: 128 random bits, hex.
    pub fn new_id() -> String {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system provides randomness");
        hex::encode(bytes)
    }
}

/// The gateway's answer to a report.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportAccepted {
    pub report_id: String,
    /// The report had been stored before (a retry).
    pub duplicate: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

/// How many times a call refused with 429 or 503 is tried before giving up.
const ATTEMPTS: u32 = 5;

impl Answer {
    /// Checks the answer names this client's tenant and app (S1-8) and
    /// that every name, path, hash and id in it is well formed.
    pub(crate) fn validate(&self, tenant: &str, app: &str) -> Result<(), Error> {
        if self.tenant != tenant || self.app != app {
            return Err(Error::Foreign {
                expected: format!("{tenant}/{app}"),
                got: format!("{}/{}", self.tenant, self.app),
            });
        }
        let bad = |what: String| Err(Error::BadAnswer(what));
        if !is_hex_id(&self.manifest_id) {
            return bad(format!("manifest_id {:?} is not 64 hex digits", self.manifest_id));
        }
        ferry_release::parse_version(&self.target).map_err(|e| Error::BadAnswer(format!("target: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        // Paths equal but for case land on one file on macOS and Windows.
        let mut folded = std::collections::HashSet::new();
        for f in &self.artifacts {
            Name::parse("artifact", &f.kind).map_err(|e| Error::BadAnswer(e.to_string()))?;
            RelPath::parse(&f.path).map_err(|e| Error::BadAnswer(e.to_string()))?;
            if !is_hex_id(&f.blake3) {
                return bad(format!("{}/{}: blake3 {:?} is not 64 hex digits", f.kind, f.path, f.blake3));
            }
            if !(f.url.starts_with("https://") || f.url.starts_with("http://")) {
                return bad(format!("{}/{}: the URL is not http(s)", f.kind, f.path));
            }
            if let Some(p) = &f.patch
                && (!is_hex_id(&p.base_blake3)
                    || !is_hex_id(&p.blake3)
                    || !(p.url.starts_with("https://") || p.url.starts_with("http://")))
            {
                return bad(format!("{}/{}: its patch has a malformed hash or URL", f.kind, f.path));
            }
            if let Some(c) = &f.compressed
                && (!is_hex_id(&c.blake3) || !(c.url.starts_with("https://") || c.url.starts_with("http://")))
            {
                return bad(format!("{}/{}: its compressed copy has a malformed hash or URL", f.kind, f.path));
            }
            if !seen.insert((f.kind.as_str(), f.path.as_str())) {
                return bad(format!("{}/{} is listed twice", f.kind, f.path));
            }
            if !folded.insert((f.kind.as_str(), f.path.to_lowercase())) {
                return bad(format!("{}/{} differs from another file only in case", f.kind, f.path));
            }
        }
        for d in &self.deleted {
            Name::parse("artifact", &d.kind).map_err(|e| Error::BadAnswer(e.to_string()))?;
            RelPath::parse(&d.path).map_err(|e| Error::BadAnswer(e.to_string()))?;
        }
        Ok(())
    }
}

pub(crate) fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Client {
    /// Asks which version to run (`GET /v1/check`). `current` is the
    /// version the app runs; `have` the manifest id of the release it
    /// holds (only changed files are listed then).
    pub async fn check(&self, current: &str, have: Option<&str>) -> Result<Answer, Error> {
        let answer = self.check_unvalidated(current, have).await?;
        if answer.delta && have.is_none() {
            return Err(Error::BadAnswer("a delta answer to a check that sent no `have`".into()));
        }
        Ok(answer)
    }

    async fn check_unvalidated(&self, current: &str, have: Option<&str>) -> Result<Answer, Error> {
        let c = &self.config;
        let mut query = vec![("tenant", c.tenant.as_str()), ("app", c.app.as_str()), ("version", current)];
        if let Some(platform) = &c.platform {
            query.push(("platform", platform));
        }
        if let Some(have) = have {
            query.push(("have", have));
        }
        let url = self.url("/v1/check");
        let response = self.send(|| self.http.get(&url).query(&query)).await?;
        let answer: Answer = read_json(response).await?;
        answer.validate(&c.tenant, &c.app)?;
        Ok(answer)
    }

    /// Sends a report (`POST /v1/reports`); safe to repeat. Waits out
    /// `429`s like any call; see [`Client::submit_report`] for one that is
    /// kept on disk until the gateway has it.
    pub async fn report(&self, report: &Report) -> Result<ReportAccepted, Error> {
        let url = self.url("/v1/reports");
        let response = self.send(|| self.http.post(&url).json(report)).await?;
        read_json(response).await
    }

    /// Sends a report once, without waiting out rate limits.
    pub(crate) async fn report_once(&self, report: &Report) -> Result<ReportAccepted, Error> {
        let url = self.url("/v1/reports");
        let response = self.send_with(|| self.http.post(&url).json(report), 1).await?;
        read_json(response).await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.gateway_url.trim_end_matches('/'))
    }

    /// Sends a request with the key and device, retrying after `429` (as
    /// long as `Retry-After` says, plus jitter) and `503` (with backoff).
    pub(crate) async fn send(&self, request: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        self.send_with(request, ATTEMPTS).await
    }

    /// [`Client::send`] with at most `attempts` tries: a connection that
    /// fails, `502`, `503` and `504` are retried with backoff, `429` after
    /// `Retry-After`.
    pub(crate) async fn send_with(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        attempts: u32,
    ) -> Result<reqwest::Response, Error> {
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=attempts {
            let mut builder = request().bearer_auth(&self.config.key);
            if let Some(device) = &self.config.device_id {
                builder = builder.header("x-ferry-device", device);
            }
            let (error, wait) = match builder.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = retry_after(&response);
                    let error = gateway_error(response).await;
                    let wait = match status {
                        429 => retry_after.unwrap_or(Duration::from_secs(1)),
                        502..=504 => retry_after.unwrap_or(backoff),
                        _ => return Err(error),
                    };
                    (error, wait)
                }
                Err(e) if e.is_connect() || e.is_timeout() => (Error::Unreachable(e), backoff),
                Err(e) => return Err(Error::Unreachable(e)),
            };
            if attempt == attempts || wait > self.config.max_retry_wait {
                return Err(error);
            }
            let wait = with_jitter(wait);
            tracing::info!(error = %error, wait_ms = wait.as_millis() as u64, "retrying the gateway later");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        unreachable!("the last attempt returns")
    }
}

/// `wait` plus up to half of it again (at least up to a second), so that
/// clients refused together do not come back together.
pub(crate) fn with_jitter(wait: Duration) -> Duration {
    let spread = (wait / 2).max(Duration::from_secs(1));
    wait + spread.mul_f64(fastrand::f64())
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(3600)))
}

async fn gateway_error(response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let retry_after = retry_after(&response);
    let body = response.bytes().await.unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => (e.error, e.message),
        Err(_) => ("http_error".to_owned(), String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()),
    };
    Error::Gateway { status, code, message, retry_after }
}

/// The largest answer read (a release of 100,000 files lists in ~40 MB).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

async fn read_json<T: serde::de::DeserializeOwned>(mut response: reqwest::Response) -> Result<T, Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Error::Unreachable)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Error::BadAnswer(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| Error::BadAnswer(format!("not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            action: Action::Upgrade,
            current: "1.0.0".into(),
            target: "1.1.0".into(),
            manifest_id: "ab".repeat(32),
            tenant: "acme".into(),
            app: "crm".into(),
            required: false,
            last_failure: None,
            artifacts: vec![ArtifactFile {
                kind: "web".into(),
                path: "index.html".into(),
                size: 3,
                blake3: "cd".repeat(32),
                url: "https://s3.example/x".into(),
                expires_at: "2026-11-22T10:15:00Z".into(),
                patch: None,
                compressed: None,
            }],
            deleted: vec![],
            delta: false,
        }
    }

    #[test]
    fn an_answer_for_another_tenant_or_app_is_refused() {
        assert!(answer().validate("acme", "crm").is_ok());
        let err = answer().validate("globex", "crm").unwrap_err();
        assert!(matches!(&err, Error::Foreign { expected, got } if expected == "globex/crm" && got == "acme/crm"));
        assert!(matches!(answer().validate("acme", "erp"), Err(Error::Foreign { .. })));
    }

    #[test]
    fn unsafe_paths_and_malformed_fields_are_refused() {
        type Mutation = fn(&mut Answer);
        let cases: Vec<(Mutation, &str)> = vec![
            (|a| a.artifacts[0].path = "../../etc/passwd".into(), "'..'"),
            (|a| a.artifacts[0].path = "/etc/passwd".into(), "leading"),
            (|a| a.artifacts[0].kind = "../x".into(), "artifact"),
            (|a| a.artifacts[0].blake3 = "zz".into(), "blake3"),
            (|a| a.artifacts[0].url = "file:///etc/passwd".into(), "http(s)"),
            (|a| a.manifest_id = "../x".into(), "manifest_id"),
            (|a| a.target = "latest".into(), "target"),
            (|a| a.artifacts.push(a.artifacts[0].clone()), "twice"),
            (
                |a| {
                    let mut upper = a.artifacts[0].clone();
                    upper.path = "Index.html".into();
                    a.artifacts.push(upper);
                },
                "only in case",
            ),
            (|a| a.deleted.push(DeletedFile { kind: "web".into(), path: "a/../../b".into() }), "'..'"),
        ];
        for (mutate, expected) in cases {
            let mut a = answer();
            mutate(&mut a);
            let err = a.validate("acme", "crm").unwrap_err().to_string();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }

    #[test]
    fn jitter_stays_within_half_again_or_a_second() {
        for _ in 0..1000 {
            let w = with_jitter(Duration::from_secs(10));
            assert!(w >= Duration::from_secs(10) && w <= Duration::from_secs(15), "{w:?}");
            let w = with_jitter(Duration::from_millis(100));
            assert!(w >= Duration::from_millis(100) && w <= Duration::from_millis(1100), "{w:?}");
        }
    }
}
