//! `ferry-agent watch`: the agent as a long-lived process that keeps the
//! registry's deployed version equal to the private system's (S0-1: "on
//! every upgrade of the private system").
//!
//! Every `interval` it reads the version the private system runs
//! ([`VersionSource`]). When that is not what it last published and
//! deployed, it asks the registry: a version already deployed is only
//! recorded, one already published is deployed, and any other is packed
//! from the configured artifact paths (with `{version}` substituted),
//! published and deployed. Every `reconcile` it also asks the registry
//! while nothing changed, and undoes a deploy made by hand.
//!
//! A failed round (source unreachable, artifacts not there yet, registry
//! down, a refused deploy) is retried after 1 s, 2 s, 4 s … up to
//! `backoff_max`. What completed is recorded in the state directory, so a
//! restart does no work twice. Publishing and deploying are idempotent in
//! the registry, so an agent that dies mid-round, or two agents watching
//! the same app, publish nothing twice and deploy the same version.
//!
//! [`Watcher::router`] serves `/healthz`, `/status` (JSON) and `/metrics`.

mod config;
mod ops;
mod source;
mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_release::parse_version;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

pub use self::config::{ArtifactTemplate, DEFAULT_STATE_DIR, VersionSource, WatchConfig, load};
use self::ops::Metrics;
use self::source::Reader;
use self::state::{Done, StateDir};
use crate::{Progress, PublishRequest};

/// Where a watcher is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No round has completed yet.
    Starting,
    /// The registry deploys what the private system runs.
    UpToDate,
    /// A new version was read: waiting until it holds for
    /// `stable_reads` reads, or for its `ready_file`.
    Waiting,
    /// Packing, publishing or deploying a version.
    Publishing,
    /// The last round failed; it is retried after a back-off.
    Failing,
}

/// What a watcher has seen and done (`/status` answers exactly this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub tenant: String,
    pub app: String,
    pub phase: Phase,
    /// The version the private system runs, as last read.
    pub observed_version: Option<String>,
    /// The version this agent last saw deployed in the registry.
    pub deployed_version: Option<String>,
    /// Why the last round failed, while it is failing.
    pub last_error: Option<String>,
    /// Rounds completed, successful or not.
    pub rounds: u64,
    /// Releases this agent packed and published.
    pub published: u64,
    /// Deploys this agent recorded (including those of new releases).
    pub deployed: u64,
    /// Rounds that failed, and how many of the latest did in a row.
    pub failures: u64,
    pub consecutive_failures: u32,
}

/// What one successful round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Nothing to do.
    UpToDate,
    /// A new version, not acted on yet.
    Waiting,
    /// The registry already had the version: deployed.
    Deployed,
    /// Packed, published and deployed.
    Published { bytes_sent: u64 },
}

/// What `watch --check` checks beyond the file: the version source's CA,
/// and that the state directory can be made (without locking it: an agent
/// may be running).
pub fn check(config: &WatchConfig) -> Result<(), String> {
    Reader::new(config.source.clone(), config.timeout)?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| format!("state_dir {}: cannot create: {e}", config.state_dir.display()))
}

/// A configured watcher, its state directory locked.
pub struct Watcher {
    config: WatchConfig,
    reader: Reader,
    state: StateDir,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
}

impl Watcher {
    /// Opens the state directory and prepares the version source; the
    /// error names the setting at fault.
    pub fn new(config: WatchConfig) -> Result<Self, String> {
        let reader = Reader::new(config.source.clone(), config.timeout)?;
        let state = StateDir::open(&config.state_dir, config.tenant.as_str(), config.app.as_str())?;
        let status = watch::Sender::new(Status {
            tenant: config.tenant.to_string(),
            app: config.app.to_string(),
            phase: Phase::Starting,
            observed_version: None,
            deployed_version: None,
            last_error: None,
            rounds: 0,
            published: 0,
            deployed: 0,
            failures: 0,
            consecutive_failures: 0,
        });
        Ok(Self { config, reader, state, status, metrics: Arc::new(Metrics::default()) })
    }

    /// The status, updated after every round (tests wait on it).
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// `/healthz`, `/status` and `/metrics` over this watcher.
    pub fn router(&self) -> axum::Router {
        ops::router(self.status.subscribe(), self.metrics.clone())
    }

    /// Watches until `stopping` completes. A round in progress is dropped
    /// then: nothing half-published becomes visible, and the next start
    /// resumes the upload.
    pub async fn run(self, stopping: impl Future<Output = ()>) {
        info!(source = %self.reader.describe(), tenant = %self.config.tenant, app = %self.config.app, "watching");
        let mut stopping = std::pin::pin!(stopping);
        let url = self.config.connection.url.clone();
        let (tenant, app) = (self.config.tenant.to_string(), self.config.app.to_string());
        let mut done = self.state.load().filter(|d| d.registry == url && d.tenant == tenant && d.app == app);
        // A recent record spares the registry a question at start.
        let mut checked_at = done.as_ref().and_then(|d| {
            let age = Duration::from_secs((unix_now() as u64).saturating_sub(d.checked_at_unix));
            (age < self.config.reconcile).then(|| Instant::now().checked_sub(age)).flatten()
        });
        let mut settling = Settling::default();
        loop {
            let round = self.round(&mut done, &mut checked_at, &mut settling);
            let result = tokio::select! {
                result = round => result,
                () = &mut stopping => break,
            };
            if result.is_err() {
                // Whatever failed, the next round asks the registry again.
                checked_at = None;
            }
            let wait = self.record(result);
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                () = &mut stopping => break,
            }
        }
        info!("stopped watching");
    }

    /// Records a round's result in the status and metrics; how long to
    /// wait before the next.
    fn record(&self, result: Result<Outcome, String>) -> Duration {
        let mut wait = self.config.interval;
        self.status.send_modify(|s| {
            s.rounds += 1;
            match &result {
                Ok(Outcome::Waiting) => {
                    s.phase = Phase::Waiting;
                    s.last_error = None;
                    s.consecutive_failures = 0;
                }
                Ok(outcome) => {
                    // A round succeeds when the registry deploys what it read.
                    s.deployed_version.clone_from(&s.observed_version);
                    s.phase = Phase::UpToDate;
                    s.last_error = None;
                    s.consecutive_failures = 0;
                    match outcome {
                        Outcome::UpToDate | Outcome::Waiting => {}
                        Outcome::Deployed => s.deployed += 1,
                        Outcome::Published { .. } => {
                            s.published += 1;
                            s.deployed += 1;
                        }
                    }
                }
                Err(e) => {
                    s.phase = Phase::Failing;
                    s.last_error = Some(e.clone());
                    s.failures += 1;
                    s.consecutive_failures += 1;
                    wait = backoff(s.consecutive_failures, self.config.backoff_max);
                    warn!(error = %e, retry_in_seconds = wait.as_secs_f64(), "round failed");
                }
            }
        });
        self.metrics.record(&result.map(|o| o.label_and_bytes()), &self.status.borrow());
        wait
    }

    /// One round: read the version, and bring the registry to it.
    async fn round(
        &self,
        done: &mut Option<Done>,
        checked_at: &mut Option<Instant>,
        settling: &mut Settling,
    ) -> Result<Outcome, String> {
        let version = self.reader.read().await?;
        let observed = version.to_string();
        self.status.send_modify(|s| s.observed_version = Some(observed.clone()));
        let recorded = done.as_ref().is_some_and(|d| d.version == observed);
        if recorded {
            *settling = Settling::default();
        } else if !settling.read(&observed, self.config.stable_reads) {
            info!(version = %observed, "the product runs another version; waiting for it to hold");
            return Ok(Outcome::Waiting);
        }
        let fresh = checked_at.is_some_and(|at| at.elapsed() < self.config.reconcile);
        if recorded && fresh {
            return Ok(Outcome::UpToDate);
        }
        let c = &self.config;
        let conn = &c.connection;
        let releases = tokio::time::timeout(RPC_TIMEOUT, crate::releases(conn, &c.tenant, &c.app))
            .await
            .map_err(|_| format!("the registry did not list the releases within {} s", RPC_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let remember = |manifest_id: String, done: &mut Option<Done>, checked_at: &mut Option<Instant>| {
            let d = Done {
                registry: conn.url.clone(),
                tenant: c.tenant.to_string(),
                app: c.app.to_string(),
                version: observed.clone(),
                manifest_id,
                checked_at_unix: unix_now() as u64,
            };
            // The registry knows what is deployed: a record that cannot be
            // written costs a question to it after a restart, nothing more.
            if let Err(e) = self.state.save(&d) {
                warn!(error = %e, "cannot record the round; the next start asks the registry");
            }
            *done = Some(d);
            *checked_at = Some(Instant::now());
        };
        let published = releases.releases.iter().find(|r| parse_version(&r.version).ok().as_ref() == Some(&version));
        if releases.deployed_version.as_deref().and_then(|v| parse_version(v).ok()).as_ref() == Some(&version) {
            let manifest_id = published.map(|r| r.manifest_id.clone()).unwrap_or_default();
            remember(manifest_id, done, checked_at);
            return Ok(Outcome::UpToDate);
        }
        self.status.send_modify(|s| s.phase = Phase::Publishing);
        if let Some(release) = published {
            match &releases.deployed_version {
                Some(other) if recorded => {
                    warn!(deployed = %other, runs = %observed, "the registry deploys another version than the private system runs; deploying it again");
                }
                Some(other) => {
                    info!(from = %other, to = %observed, "deploying the published version the private system now runs")
                }
                None => info!(version = %observed, "deploying the published version the private system runs"),
            }
            // Only deployed: the release keeps the compatible versions it
            // was published with.
            // As the registry spells it (a dotted 1.0 is the published 1.0.0).
            let published = parse_version(&release.version).map_err(|e| e.to_string())?;
            crate::deploy(conn, &c.tenant, &c.app, &published).await.map_err(|e| e.to_string())?;
            remember(release.manifest_id.clone(), done, checked_at);
            return Ok(Outcome::Deployed);
        }
        if let Some(ready) = &c.ready_file {
            let ready = config::substitute(ready, &version);
            if !ready.exists() {
                info!(version = %observed, ready_file = %ready.display(), "waiting for the release files to be complete");
                self.status.send_modify(|s| s.phase = Phase::Waiting);
                return Ok(Outcome::Waiting);
            }
        }
        info!(version = %observed, "the private system runs a new version; publishing it");
        let req = PublishRequest {
            tenant: c.tenant.clone(),
            app: c.app.clone(),
            version: version.clone(),
            artifacts: c.artifacts.iter().map(|a| a.spec(&version)).collect(),
            deploy: true,
            retries: c.retries,
            compatible: c.compatible.clone(),
            state_dir: Some(c.state_dir.clone()),
        };
        let summary = crate::publish(conn, &req, &Progress::hidden()).await.map_err(|e| e.to_string())?;
        info!(
            version = %observed,
            bytes_total = summary.bytes_total,
            bytes_sent = summary.bytes_sent,
            "published and deployed"
        );
        remember(summary.manifest_id.clone(), done, checked_at);
        Ok(Outcome::Published { bytes_sent: summary.bytes_sent })
    }
}

/// How long a listing of the releases may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// A version read that is not yet acted on, and how many reads in a row
/// gave it.
#[derive(Debug, Default)]
struct Settling {
    version: Option<String>,
    reads: u32,
}

impl Settling {
    /// Counts a read of `version`; whether it has now held for `needed`
    /// reads in a row.
    fn read(&mut self, version: &str, needed: u32) -> bool {
        if self.version.as_deref() == Some(version) {
            self.reads = self.reads.saturating_add(1);
        } else {
            self.version = Some(version.to_owned());
            self.reads = 1;
        }
        self.reads >= needed
    }
}

impl Outcome {
    fn label_and_bytes(self) -> (&'static str, u64) {
        match self {
            Outcome::UpToDate => ("up_to_date", 0),
            Outcome::Waiting => ("waiting", 0),
            Outcome::Deployed => ("deployed", 0),
            Outcome::Published { bytes_sent } => ("published", bytes_sent),
        }
    }
}

/// The wait after `failures` failed rounds in a row: 1 s, 2 s, 4 s … at
/// most `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(20)).min(max)
}

/// The time now, for `/metrics`.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_acts_once_it_holds() {
        let mut s = Settling::default();
        assert!(!s.read("2.0.0", 2));
        assert!(!s.read("1.0.0", 2), "a flap starts the count again");
        assert!(!s.read("2.0.0", 2));
        assert!(s.read("2.0.0", 2));
        assert!(s.read("3.0.0", 1));
    }

    #[test]
    fn back_off_doubles_up_to_the_limit() {
        let max = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
