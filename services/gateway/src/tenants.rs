//! What the gateway remembers per tenant: its rate limiter and its apps'
//! release lists, in one cache entry (one lookup per request).
//!
//! Change notices correct an entry in place rather than dropping it: a
//! publish or deploy forgets that app's list, a new app forgets the names
//! remembered as missing, a resync forgets every list. The limiter
//! survives all of that, so invalidation never hands a tenant a fresh
//! burst; only a change of the tenant's limit (`admin set-limit`) starts a
//! new limiter. An entry is dropped only after staying unused for longer
//! than its limiter needs to refill completely, when dropping it loses
//! nothing.
//!
//! An app's list stays fresh for the release-cache TTL less up to a quarter
//! at random (lists loaded together, after a restart, do not all expire
//! together). Past that, the next request is answered from the list while
//! one background task re-reads it; a list that could not be re-read within
//! another TTL is dropped (then requests wait for the database, or fail
//! while it is away). A load that started before a change notice never
//! stores what it read (a generation count).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ferry_release::{ManifestId, Name, parse_version};
use ferry_store::{Meta, StoreError};
use moka::Expiry;

use crate::limits::{Rate, TenantLimiter};

/// Apps remembered per tenant (real apps are few; the cap bounds what
/// lookups of made-up names can add).
const MAX_CACHED_APPS_PER_TENANT: usize = 64;

pub(crate) struct TenantState {
    pub(crate) limiter: TenantLimiter,
    pub(crate) rate: Rate,
    /// When `rate` was last read or confirmed ([`millis`]); it is read
    /// again after the release-cache TTL (a lost notice is corrected that
    /// late at most), or at once after a resync (set to 0).
    rate_read_at: AtomicU64,
    /// How long the entry may sit unused before it is dropped.
    idle_lifetime: Duration,
    apps: RwLock<HashMap<Name, CachedApp>>,
    /// Bumped whenever lists are forgotten: a load that began before
    /// does not store what it read.
    generation: AtomicU64,
}

/// An app's release list as loaded (`None`: the app does not exist).
#[derive(Clone)]
pub(crate) struct CachedApp {
    pub(crate) view: Option<Arc<AppView>>,
    loaded_at: Instant,
    /// How long it is fresh (the TTL less a random part of up to a quarter).
    fresh_for: Duration,
    /// Set while a background re-read of it runs.
    refreshing: Arc<AtomicBool>,
}

/// What the cache has for an app.
pub(crate) enum Lookup {
    Fresh(Option<Arc<AppView>>),
    /// Past its freshness: answer with it; `refresh` is true for the one
    /// caller that should re-read it.
    Stale {
        view: Option<Arc<AppView>>,
        refresh: bool,
    },
    Missing,
}

/// An app's releases, newest first.
pub(crate) struct AppView {
    pub(crate) app_id: i64,
    /// How the app writes its versions: a client's must be of it.
    pub(crate) versioning: ferry_release::Versioning,
    pub(crate) deployed: Option<ferry_release::Version>,
    /// The id of the app's latest deploy (orders push notices).
    pub(crate) deployment_seq: i64,
    pub(crate) versions: Vec<VersionEntry>,
}

impl AppView {
    /// Refuses a client's version (parameter `param`) that is not of the
    /// app's scheme.
    pub(crate) fn conforms(
        &self,
        param: &str,
        version: &ferry_release::Version,
    ) -> Result<(), crate::error::GatewayError> {
        version.conforms(self.versioning).map_err(|e| {
            crate::error::GatewayError::invalid(param, format!("{e}: the app uses {} versioning", self.versioning))
        })
    }
}

pub(crate) struct VersionEntry {
    pub(crate) version: ferry_release::Version,
    pub(crate) manifest_id: ManifestId,
    /// The id of its files alone: what download lists are keyed by, so
    /// tenants running the same files share them.
    pub(crate) content_id: ManifestId,
    /// The tenant and app its manifest names (None: a format 1 manifest,
    /// which names none).
    pub(crate) owner: Option<(String, String)>,
    pub(crate) published_at: SystemTime,
    /// `version` and `manifest_id` as answers spell them, made once.
    pub(crate) version_text: String,
    pub(crate) manifest_hex: String,
    /// Client versions that still work with this release (not required to
    /// update); `None`: every other version must.
    pub(crate) compatible: Option<semver::VersionReq>,
    /// Where its files are (`None`: the registry's bucket).
    pub(crate) location: Option<Arc<ferry_store::Location>>,
    /// Withdrawn (`ferry-agent yank`): never listed nor a target, but a
    /// device running it still gets deltas from it, and must update.
    pub(crate) yanked: bool,
}

/// "Read now", backdated by up to a quarter of `ttl` at random: rates read
/// together (after a restart) are not all read again together.
fn read_now(ttl: Duration) -> u64 {
    let backdate = (ttl.as_millis() as f64 / 4.0 * crate::watch::fastrand_fraction()) as u64;
    millis().saturating_sub(backdate).max(1)
}

/// Milliseconds since this process's first call (a monotonic clock that
/// fits an atomic). Starts at 1, so 0 can mean "long ago".
fn millis() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

impl TenantState {
    pub(crate) fn new(limiter: TenantLimiter, rate: Rate, cache_ttl: Duration) -> Self {
        Self {
            limiter,
            rate,
            rate_read_at: AtomicU64::new(read_now(cache_ttl)),
            idle_lifetime: rate.refill_time().max(cache_ttl),
            apps: RwLock::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether the rate should be read from the database again.
    pub(crate) fn rate_is_stale(&self, ttl: Duration) -> bool {
        millis().saturating_sub(self.rate_read_at.load(Ordering::Relaxed)) >= ttl.as_millis() as u64
    }

    /// The rate was read again and is unchanged: trust it for another TTL.
    pub(crate) fn confirm_rate(&self, ttl: Duration) {
        self.rate_read_at.store(read_now(ttl), Ordering::Relaxed);
    }

    /// What the cache has for `app` at `now`, given the cache TTL.
    pub(crate) fn lookup(&self, app: &Name, ttl: Duration, now: Instant) -> Lookup {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let Some(cached) = apps.get(app) else { return Lookup::Missing };
        let age = now.saturating_duration_since(cached.loaded_at);
        if age < cached.fresh_for {
            Lookup::Fresh(cached.view.clone())
        } else if age < cached.fresh_for + ttl {
            let refresh = !cached.refreshing.swap(true, Ordering::AcqRel);
            Lookup::Stale { view: cached.view.clone(), refresh }
        } else {
            Lookup::Missing
        }
    }

    /// The generation to pass to [`TenantState::remember`] after a load.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers `app`'s list, read at `generation` (nothing is stored if
    /// lists were forgotten since); names that do not exist only a few at a
    /// time (a client may ask for any name it likes). `fresh_for` is the TTL
    /// less its random part.
    pub(crate) fn remember(&self, app: &Name, view: Option<Arc<AppView>>, generation: u64, fresh_for: Duration) {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if view.is_some() || apps.len() < MAX_CACHED_APPS_PER_TENANT || apps.contains_key(app) {
            let refreshing = Arc::new(AtomicBool::new(false));
            apps.insert(app.clone(), CachedApp { view, loaded_at: Instant::now(), fresh_for, refreshing });
        }
    }

    /// A background re-read failed: the next request may try again.
    pub(crate) fn refresh_failed(&self, app: &Name) {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = apps.get(app) {
            cached.refreshing.store(false, Ordering::Release);
        }
    }

    /// Forgets the list of the app with this id (published or deployed).
    pub(crate) fn forget_app(&self, app_id: i64) -> bool {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        let before = apps.len();
        apps.retain(|_, a| a.view.as_ref().is_none_or(|v| v.app_id != app_id));
        apps.len() != before
    }

    /// Forgets every list (after a resync, or when the tenant gained an
    /// app that may have been remembered as missing), and with
    /// `rate_too` marks the rate for re-reading.
    pub(crate) fn forget_all(&self, rate_too: bool) {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        apps.clear();
        drop(apps);
        if rate_too {
            self.rate_read_at.store(0, Ordering::Relaxed);
        }
    }
}

/// Reads an app's releases (`None`: no such app).
pub(crate) async fn load_app_view(meta: &Meta, tenant_id: i64, app: &Name) -> Result<Option<Arc<AppView>>, StoreError> {
    let Some(rows) = meta.app_releases(tenant_id, app).await? else { return Ok(None) };
    let mut versions: Vec<VersionEntry> = rows
        .releases
        .into_iter()
        .filter_map(|r| {
            let version = parse_version(&r.version).ok()?;
            Some(VersionEntry {
                version_text: version.to_string(),
                manifest_hex: r.manifest_id.to_string(),
                // Stored canonical by the registry; one that no longer
                // parses counts as none (every other version required).
                compatible: r.compatible.as_deref().and_then(|c| semver::VersionReq::parse(c).ok()),
                version,
                manifest_id: r.manifest_id,
                content_id: r.content_id,
                owner: r.owner,
                published_at: r.published_at,
                location: r.location.map(Arc::new),
                yanked: r.yanked,
            })
        })
        .collect();
    versions.sort_by(|a, b| b.version.cmp_precedence(&a.version).then_with(|| b.version.cmp(&a.version)));
    let deployed = rows.deployed.and_then(|v| parse_version(&v).ok());
    Ok(Some(Arc::new(AppView {
        app_id: rows.app_id,
        versioning: rows.versioning,
        deployed,
        deployment_seq: rows.deployment_seq.unwrap_or(0),
        versions,
    })))
}

impl AppView {
    /// The deployed version's entry, if a version is deployed.
    pub(crate) fn deployed_entry(&self) -> Option<&VersionEntry> {
        let deployed = self.deployed.as_ref()?;
        self.versions.iter().find(|v| v.version == *deployed)
    }
}

impl VersionEntry {
    /// Whose release this is: what its manifest names, or for a format 1
    /// manifest the app it was published under.
    pub(crate) fn owner<'a>(&'a self, tenant: &'a Name, app: &'a Name) -> (&'a str, &'a str) {
        match &self.owner {
            Some((t, a)) => (t, a),
            None => (tenant.as_str(), app.as_str()),
        }
    }
}

/// Drops a tenant's entry only once it has been unused for longer than its
/// limiter takes to refill (and than the release-cache TTL).
pub(crate) struct IdleExpiry;

impl Expiry<i64, Arc<TenantState>> for IdleExpiry {
    fn expire_after_create(&self, _: &i64, state: &Arc<TenantState>, _: Instant) -> Option<Duration> {
        Some(state.idle_lifetime)
    }

    fn expire_after_read(
        &self,
        _: &i64,
        state: &Arc<TenantState>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(state.idle_lifetime)
    }

    fn expire_after_update(
        &self,
        _: &i64,
        state: &Arc<TenantState>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(state.idle_lifetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::GatewayConfig;
    use crate::limits::Limits;

    fn state(ttl: Duration) -> TenantState {
        let rate = Rate { per_second: 10.0, burst: 10 };
        TenantState::new(Limits::new(&GatewayConfig::default()).tenant_limiter(rate), rate, ttl)
    }

    fn view(app_id: i64) -> Option<Arc<AppView>> {
        Some(Arc::new(AppView {
            app_id,
            versioning: ferry_release::Versioning::Semver,
            deployed: None,
            deployment_seq: 0,
            versions: Vec::new(),
        }))
    }

    fn id(lookup: Lookup) -> (&'static str, Option<i64>, bool) {
        match lookup {
            Lookup::Fresh(v) => ("fresh", v.map(|v| v.app_id), false),
            Lookup::Stale { view, refresh } => ("stale", view.map(|v| v.app_id), refresh),
            Lookup::Missing => ("missing", None, false),
        }
    }

    // Limits need a runtime (their device table is swept by a task).
    #[tokio::test]
    async fn a_stale_list_is_served_while_one_caller_refreshes_it_then_dropped() {
        let ttl = Duration::from_secs(100);
        let state = state(ttl);
        let crm = Name::parse("app", "crm").unwrap();
        let now = Instant::now();
        assert_eq!(id(state.lookup(&crm, ttl, now)), ("missing", None, false));
        state.remember(&crm, view(1), state.generation(), Duration::from_secs(80));
        assert_eq!(id(state.lookup(&crm, ttl, now + Duration::from_secs(79))), ("fresh", Some(1), false));
        // Past its freshness: served, and exactly one caller refreshes.
        assert_eq!(id(state.lookup(&crm, ttl, now + Duration::from_secs(81))), ("stale", Some(1), true));
        assert_eq!(id(state.lookup(&crm, ttl, now + Duration::from_secs(82))), ("stale", Some(1), false));
        // The refresh failed: the next caller tries again.
        state.refresh_failed(&crm);
        assert_eq!(id(state.lookup(&crm, ttl, now + Duration::from_secs(83))), ("stale", Some(1), true));
        // Not refreshed within another TTL: gone.
        assert_eq!(id(state.lookup(&crm, ttl, now + Duration::from_secs(181))), ("missing", None, false));
    }

    #[tokio::test]
    async fn a_load_that_began_before_a_change_notice_is_not_stored() {
        let ttl = Duration::from_secs(100);
        let state = state(ttl);
        let crm = Name::parse("app", "crm").unwrap();
        state.remember(&crm, view(1), state.generation(), ttl);
        let before = state.generation();
        // A deploy's notice arrives while a re-read (begun before) runs.
        assert!(state.forget_app(1));
        state.remember(&crm, view(1), before, ttl);
        assert_eq!(id(state.lookup(&crm, ttl, Instant::now())), ("missing", None, false));
        state.remember(&crm, view(2), state.generation(), ttl);
        assert_eq!(id(state.lookup(&crm, ttl, Instant::now())), ("fresh", Some(2), false));
    }
}
