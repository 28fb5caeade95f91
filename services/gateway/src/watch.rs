//! Push notices (S1-6): an app watching its deployment is told at once when
//! the deployed version, or its `required` rule, changes.
//!
//! One `tokio::sync::watch` channel per watched app holds the app's current
//! deployment; every open watch is a receiver of it, so an idle watch costs
//! a receiver, a heartbeat timer and its connection. The change notices
//! that invalidate the caches (`LISTEN ferry_changes`) mark an app for
//! re-reading; one task per gateway re-reads marked apps from PostgreSQL
//! (one query per change and replica, however many watch) and re-reads
//! every watched app each release-cache TTL in case a notice was lost.
//!
//! An event's id is the app's deploy sequence number and a digest of the
//! deployment, the same on every replica: a client reconnecting with
//! `Last-Event-ID`, to any replica, is sent the deployment at once if it
//! changed while it was away, nothing if not, and never an older one (a
//! replica that lags behind waits until it catches up). Newer states replace
//! older ones whatever order re-reads finish in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ferry_release::Name;
use ferry_store::Meta;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::model::{Action, DeployNotice};
use crate::tenants::{AppView, load_app_view};

/// Re-reads of watched apps run this many at a time.
const REREADS_AT_ONCE: usize = 8;
/// A re-read that takes longer is given up (and retried next round).
const REREAD_TIMEOUT: Duration = Duration::from_secs(5);
/// On shutdown, watches end at random within this long, so their clients
/// do not all reconnect (to the other replicas) at the same moment.
pub(crate) const CLOSING_SPREAD: Duration = Duration::from_secs(5);

/// What is deployed for a watched app.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Deployment {
    /// The id of the app's latest deploy: rises with every deploy (rollback
    /// included), so an older state never replaces a newer one.
    pub(crate) seq: i64,
    /// The event id: `<seq>-<digest of the fields below>`.
    pub(crate) id: String,
    pub(crate) version: ferry_release::Version,
    pub(crate) version_text: String,
    pub(crate) manifest_id: String,
    pub(crate) compatible: Option<semver::VersionReq>,
    /// The tenant and app the release's manifest names.
    pub(crate) owner: (String, String),
}

impl Deployment {
    /// The deployment an app view shows, if any.
    pub(crate) fn of(view: &AppView, tenant: &Name, app: &Name) -> Option<Self> {
        let entry = view.deployed_entry()?;
        let compatible = entry.compatible.as_ref().map(ToString::to_string);
        let mut digest = blake3::Hasher::new();
        for part in [entry.version_text.as_str(), entry.manifest_hex.as_str(), compatible.as_deref().unwrap_or("")] {
            digest.update(&(part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
        let seq = view.deployment_seq;
        let (owner_tenant, owner_app) = entry.owner(tenant, app);
        Some(Self {
            seq,
            id: format!("{seq}-{}", &digest.finalize().to_hex()[..16]),
            version: entry.version.clone(),
            version_text: entry.version_text.clone(),
            manifest_id: entry.manifest_hex.clone(),
            compatible: entry.compatible.clone(),
            owner: (owner_tenant.to_owned(), owner_app.to_owned()),
        })
    }

    /// Whether this state should replace `current` for watchers.
    fn supersedes(&self, current: Option<&Deployment>) -> bool {
        match current {
            None => true,
            Some(current) => self.seq > current.seq || (self.seq == current.seq && self.id != current.id),
        }
    }

    /// The notice for a client running `current` (if it said).
    pub(crate) fn notice(&self, current: Option<&ferry_release::Version>) -> DeployNotice {
        let (action, required) = match current {
            Some(current) => {
                let action = Action::between(current, &self.version);
                let required =
                    action != Action::None && self.compatible.as_ref().is_none_or(|req| !current.satisfies(req));
                (Some(action), Some(required))
            }
            None => (None, None),
        };
        DeployNotice {
            tenant: self.owner.0.clone(),
            app: self.owner.1.clone(),
            version: self.version_text.clone(),
            manifest_id: self.manifest_id.clone(),
            compatible: self.compatible.as_ref().map(ToString::to_string),
            action,
            required,
        }
    }
}

/// The sequence number an event id carries (`<seq>-<digest>`).
pub(crate) fn event_seq(id: &str) -> Option<i64> {
    let (seq, digest) = id.split_once('-')?;
    (digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    seq.parse().ok().filter(|s| *s >= 0)
}

type State = Option<Arc<Deployment>>;

/// Every watched app's deployment, kept current.
pub(crate) struct Hub {
    meta: Meta,
    apps: Mutex<HashMap<i64, Watched>>,
    /// Apps to re-read (`None`: all of them).
    marks: mpsc::UnboundedSender<Option<i64>>,
    /// The refresher's end of `marks`, until the first watch starts it.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Option<i64>>>>,
    /// Cancelled when the gateway shuts down: every watch ends (and its
    /// client reconnects to another replica).
    closing: CancellationToken,
    /// How often every watched app is re-read anyway.
    period: Duration,
    /// Watches open now (capped by the gateway's `max_watches`).
    open: AtomicUsize,
}

struct Watched {
    tenant_id: i64,
    tenant: Name,
    app: Name,
    sender: watch::Sender<State>,
}

impl Hub {
    pub(crate) fn new(meta: Meta, period: Duration) -> Arc<Self> {
        let (marks, pending) = mpsc::unbounded_channel();
        Arc::new(Self {
            meta,
            apps: Mutex::default(),
            marks,
            pending: Mutex::new(Some(pending)),
            closing: CancellationToken::new(),
            period,
            open: AtomicUsize::new(0),
        })
    }

    /// Counts a watch in, unless `max` are open already.
    pub(crate) fn admit(&self, max: usize) -> bool {
        self.open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).is_ok()
    }

    pub(crate) fn release(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn is_watched(&self, app_id: i64) -> bool {
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&app_id)
    }

    /// A receiver of the app's deployment, starting from what `view` shows
    /// (the caller reads a fresh view for an app nobody watches yet).
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        tenant_id: i64,
        tenant: &Name,
        app: &Name,
        view: &AppView,
    ) -> watch::Receiver<State> {
        self.start();
        let state = Deployment::of(view, tenant, app).map(Arc::new);
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(watched) = apps.get(&view.app_id) {
            let receiver = watched.sender.subscribe();
            if let Some(state) = state {
                publish_to(&watched.sender, state);
            }
            return receiver;
        }
        let (sender, receiver) = watch::channel(state);
        apps.insert(view.app_id, Watched { tenant_id, tenant: tenant.clone(), app: app.clone(), sender });
        receiver
    }

    /// Marks what a change may have changed for re-reading.
    pub(crate) fn changed(&self, change: &ferry_store::Change) {
        use ferry_store::Change;
        let mark = match change {
            Change::App { app_id, .. } => Some(*app_id),
            Change::Resync => None,
            Change::Tenant(_) | Change::Key(_) | Change::Limit(_) | Change::Patches => return,
        };
        if let Some(app_id) = mark
            && !self.is_watched(app_id)
        {
            return;
        }
        let _ = self.marks.send(mark);
    }

    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Ends every watch (shutdown).
    pub(crate) fn close(&self) {
        self.closing.cancel();
    }

    /// Starts the refresher on the first watch (a runtime exists then).
    fn start(self: &Arc<Self>) {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(marks) = pending {
            tokio::spawn(refresher(Arc::downgrade(self), marks, self.period));
        }
    }

    /// Publishes `app_id`'s deployment to its watchers if it is newer.
    fn publish(&self, app_id: i64, state: Arc<Deployment>) {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(watched) = apps.get(&app_id) {
            publish_to(&watched.sender, state);
        }
    }

    /// Forgets apps nobody watches any more; returns what is left to re-read.
    fn sweep(&self, marked: Option<&HashSet<i64>>) -> Vec<(i64, i64, Name, Name)> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.retain(|_, w| w.sender.receiver_count() > 0);
        apps.iter()
            .filter(|(id, _)| marked.is_none_or(|m| m.contains(id)))
            .map(|(id, w)| (*id, w.tenant_id, w.tenant.clone(), w.app.clone()))
            .collect()
    }

    /// Re-reads `apps` from PostgreSQL, a few at a time, each within a
    /// deadline, and publishes what changed.
    async fn reread(&self, apps: Vec<(i64, i64, Name, Name)>) {
        futures::stream::iter(apps)
            .for_each_concurrent(REREADS_AT_ONCE, |(app_id, tenant_id, tenant, app)| async move {
                match tokio::time::timeout(REREAD_TIMEOUT, load_app_view(&self.meta, tenant_id, &app)).await {
                    Ok(Ok(Some(view))) => {
                        if let Some(state) = Deployment::of(&view, &tenant, &app) {
                            self.publish(app_id, Arc::new(state));
                        }
                    }
                    // The app is gone: its watchers keep the last deployment.
                    Ok(Ok(None)) => {}
                    // Kept as it was; the next full round reads it again.
                    Ok(Err(e)) => tracing::warn!(app_id, error = %e, "a watched app could not be re-read"),
                    Err(_) => tracing::warn!(app_id, "re-reading a watched app timed out"),
                }
            })
            .await;
    }
}

/// Replaces the channel's state with `state` if it is newer.
fn publish_to(sender: &watch::Sender<State>, state: Arc<Deployment>) {
    sender.send_if_modified(|current| {
        let newer = state.supersedes(current.as_deref());
        if newer {
            *current = Some(state);
        }
        newer
    });
}

/// Re-reads marked apps as marks arrive, and every watched app each
/// `period` (in a task of its own, so a long round never holds a deploy's
/// notice back), until the hub is dropped.
async fn refresher(hub: Weak<Hub>, mut marks: mpsc::UnboundedReceiver<Option<i64>>, period: Duration) {
    let mut next_full = tokio::time::Instant::now() + period;
    loop {
        let mut marked: HashSet<i64> = HashSet::new();
        let mut full = false;
        tokio::select! {
            mark = marks.recv() => match mark {
                Some(Some(app_id)) => { marked.insert(app_id); }
                Some(None) => full = true,
                None => return,
            },
            () = tokio::time::sleep_until(next_full) => full = true,
        }
        while let Ok(mark) = marks.try_recv() {
            match mark {
                Some(app_id) => {
                    marked.insert(app_id);
                }
                None => full = true,
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        if full {
            next_full = tokio::time::Instant::now() + period;
            let apps = hub.sweep(None);
            // Newer states win whatever order reads finish in.
            tokio::spawn(async move { hub.reread(apps).await });
        } else {
            let apps = hub.sweep(Some(&marked));
            hub.reread(apps).await;
        }
    }
}

/// What a watch yields next.
#[derive(Debug)]
pub enum WatchItem {
    /// A deployment the client has not seen, with its event id.
    Deployed { id: String, notice: DeployNotice },
    /// Nothing new: a heartbeat keeps the connection (and proxies) from
    /// timing out.
    Heartbeat,
}

/// One open watch. Yields deployments the client has not seen and
/// heartbeats; ends when the gateway shuts down or the key is revoked.
pub struct Watcher {
    pub(crate) gateway: crate::core::Gateway,
    pub(crate) receiver: watch::Receiver<State>,
    pub(crate) current: Option<ferry_release::Version>,
    /// The last event the client has seen, and its deploy sequence number:
    /// nothing older is sent (another replica may lag behind the one the
    /// client came from).
    pub(crate) last_id: Option<String>,
    pub(crate) last_seq: i64,
    pub(crate) authorization: Option<String>,
    pub(crate) heartbeat: Duration,
    /// Heartbeats in a row at which the key could not be confirmed.
    pub(crate) unconfirmed: u32,
}

/// Heartbeats in a row without confirming the key (the key lookup
/// throttled or the database away) after which a watch ends.
const MAX_UNCONFIRMED: u32 = 4;

impl Watcher {
    /// The next item, or `None` when the watch is over.
    pub async fn next(&mut self) -> Option<WatchItem> {
        loop {
            let state = self.receiver.borrow_and_update().clone();
            if let Some(deployment) = state
                && self.last_id.as_deref() != Some(deployment.id.as_str())
                && deployment.seq >= self.last_seq
            {
                self.last_id = Some(deployment.id.clone());
                self.last_seq = deployment.seq;
                let notice = deployment.notice(self.current.as_ref());
                return Some(WatchItem::Deployed { id: deployment.id.clone(), notice });
            }
            let closing = self.gateway.hub().closing().clone();
            tokio::select! {
                changed = self.receiver.changed() => if changed.is_err() { return None },
                () = closing.cancelled() => {
                    tokio::time::sleep(CLOSING_SPREAD.mul_f64(fastrand_fraction())).await;
                    return None;
                }
                () = tokio::time::sleep(self.heartbeat) => {
                    // A revoked key's watch ends within a key-cache TTL.
                    match self.gateway.key_status(self.authorization.as_deref()).await {
                        Some(true) => self.unconfirmed = 0,
                        Some(false) => return None,
                        None => {
                            self.unconfirmed += 1;
                            if self.unconfirmed >= MAX_UNCONFIRMED {
                                return None;
                            }
                        }
                    }
                    return Some(WatchItem::Heartbeat);
                }
            }
        }
    }
}

/// A number in [0, 1) from the operating system's randomness.
pub(crate) fn fastrand_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.gateway.hub().release();
        self.gateway.metrics().watch_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_their_sequence() {
        assert_eq!(event_seq("42-0123456789abcdef"), Some(42));
        for bad in
            ["42", "-0123456789abcdef", "x-0123456789abcdef", "42-0123", "-1-0123456789abcdef", "42-zz23456789abcdef"]
        {
            assert_eq!(event_seq(bad), None, "{bad}");
        }
    }

    fn deployment(seq: i64, id: &str) -> Deployment {
        Deployment {
            seq,
            id: id.into(),
            version: "1.0.0".parse().unwrap(),
            version_text: "1.0.0".into(),
            manifest_id: String::new(),
            compatible: None,
            owner: ("acme".into(), "crm".into()),
        }
    }

    #[test]
    fn an_older_deployment_never_replaces_a_newer_one() {
        let (sender, _receiver) = watch::channel(Some(Arc::new(deployment(5, "5-a"))));
        publish_to(&sender, Arc::new(deployment(4, "4-b")));
        assert_eq!(sender.borrow().as_ref().unwrap().id, "5-a");
        // The same deploy with a changed rule (a new digest) does.
        publish_to(&sender, Arc::new(deployment(5, "5-c")));
        assert_eq!(sender.borrow().as_ref().unwrap().id, "5-c");
        publish_to(&sender, Arc::new(deployment(6, "6-d")));
        assert_eq!(sender.borrow().as_ref().unwrap().id, "6-d");
    }
}
