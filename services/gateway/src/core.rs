//! The gateway's logic, shared by HTTP and gRPC: authenticate, rate-limit,
//! resolve the target release from memory, and hand out presigned URLs.
//!
//! Everything on the hot path is answered from caches: keys, per-app release
//! lists, release file lists and presigned URLs. Caches are dropped entry by
//! entry when PostgreSQL announces a change (`LISTEN ferry_changes`), and
//! expire anyway after a bounded time in case a notification is lost.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_release::{ArtifactKind, Hash, Manifest, ManifestId, Name, parse_version};
use ferry_store::{Authenticated, Blobs, Change, KeyRole, Location, Meta};
use moka::future::Cache;
use tokio::sync::mpsc;

use crate::error::GatewayError;
use crate::limits::{Limits, Rate};
use crate::metrics::Metrics;
use crate::model::{
    Action, ArtifactFile, CheckAnswer, CompressedOffer, DeletedFile, LastFailureBody, PatchOffer, ReportAccepted,
    VersionInfo, VersionList, listing_json, rfc3339,
};
use crate::tenants::{AppView, IdleExpiry, Lookup, TenantState};
use crate::urls::Urls;
use crate::watch::{Hub, Watcher};

/// The wall clock the gateway judges URL validity by (tests move it).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Tunables; defaults are what README documents.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Lifetime of presigned URLs (never more than the signing credentials').
    pub presign_lifetime: Duration,
    /// How long a key stays cached: the longest a revoked key can still be
    /// accepted if its change notification was lost.
    pub key_cache_ttl: Duration,
    /// How long release lists and limits stay cached without a notification.
    pub release_cache_ttl: Duration,
    /// Default rate per tenant (overridden by `admin set-limit`).
    pub tenant_rate: Rate,
    /// Rate per device (`X-Ferry-Device`).
    pub device_rate: Rate,
    /// Limits on lookups of keys that do not exist (both cache TTLs are
    /// `key_cache_ttl`).
    pub auth: ferry_auth::MissLimits,
    /// Timeouts and limits of both listeners.
    pub listener: ferry_net::Limits,
    /// How often an open watch with nothing new sends a heartbeat (and
    /// checks that its key is still valid).
    pub watch_heartbeat: Duration,
    /// Web origins allowed to call the HTTP API from browsers.
    pub cors: crate::cors::Origins,
    /// Watches open at once on this gateway; more get 503 with
    /// `Retry-After` (keep it below `listener.max_connections`, so checks
    /// always find a connection).
    pub max_watches: usize,
    /// How often which version each device runs is written (see
    /// [`ferry_reports::Census`]).
    pub device_flush: Duration,
    /// Rate limits shared by every replica (Redis or Valkey); `None`: each
    /// replica limits on its own.
    pub shared_limits: Option<Arc<crate::SharedLimits>>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            presign_lifetime: Duration::from_secs(15 * 60),
            key_cache_ttl: Duration::from_secs(120),
            release_cache_ttl: Duration::from_secs(120),
            tenant_rate: Rate { per_second: 1000.0, burst: 2000 },
            device_rate: Rate { per_second: 1.0, burst: 10 },
            auth: ferry_auth::MissLimits::default(),
            listener: ferry_net::Limits::default(),
            watch_heartbeat: Duration::from_secs(15),
            cors: crate::cors::Origins::None,
            max_watches: 8_000,
            device_flush: Duration::from_secs(15),
            shared_limits: None,
        }
    }
}

/// Who asks: credentials and where the request came from, unvalidated.
#[derive(Default, Clone)]
pub struct Caller {
    /// The `Authorization` header (`Bearer <client key>`).
    pub authorization: Option<String>,
    /// `X-Ferry-Device`.
    pub device: Option<String>,
    /// The peer address of the connection (per-source limits on unknown keys).
    pub source: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Authorization header holds a secret: never printed.
        f.debug_struct("Caller")
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("device", &self.device)
            .field("source", &self.source)
            .finish()
    }
}

/// What a client sends, unvalidated (query parameters or gRPC fields).
#[derive(Debug, Default, Clone)]
pub struct CheckParams {
    pub caller: Caller,
    pub tenant: Option<String>,
    pub app: Option<String>,
    pub version: Option<String>,
    pub platform: Option<String>,
    pub want: Option<String>,
    pub have: Option<String>,
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Meta,
    blobs: Blobs,
    config: GatewayConfig,
    keys: ferry_auth::Keys,
    /// Per tenant: its limiter and its apps' release lists, in one entry
    /// (one lookup per request, one cache entry's overhead per tenant).
    tenants: moka::sync::Cache<i64, Arc<TenantState>>,
    releases: Cache<ManifestId, Arc<ReleaseView>>,
    urls: Urls,
    listings: Cache<ListingKey, Arc<Listing>>,
    limits: Limits,
    clock: Clock,
    /// Where reports go (with the census below, the gateway's one write
    /// path).
    reports: ferry_reports::ReportStore,
    /// Which version devices run, from checks, until the next flush.
    census: Arc<ferry_reports::Census>,
    /// The pool reports (and the census) are written with.
    writer: Meta,
    /// Devices' latest failures per (app, device), also when there is none:
    /// a report through this gateway updates it at once, one through
    /// another gateway within `DEVICE_FAILURE_TTL`.
    device_failures: Cache<(i64, String), Option<Arc<ferry_reports::LastFailure>>>,
    metrics: Metrics,
    /// Every change once applied, for whoever waits on invalidation.
    applied: tokio::sync::broadcast::Sender<Change>,
    /// Open watches' deployments (push notices).
    hub: Arc<Hub>,
    /// Serving, draining or stopping: what readiness reports.
    lifecycle: ferry_net::Lifecycle,
}

/// How soon a file list is built again while patches for it are still
/// being made.
const PATCH_RECHECK: Duration = Duration::from_secs(20);

/// What a file list depends on: content ids (manifests without their
/// owner), so tenants publishing identical files share one list (and its
/// memory); `have` is only ever a release of the asking app (checked
/// before), so no list can reveal another tenant's files.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ListingKey {
    target: ManifestId,
    platform: Option<Name>,
    have: Option<ManifestId>,
    /// Where the target's files are: the same files at another location
    /// (another tenant's bucket or CDN host) get other URLs.
    location: Option<Arc<Location>>,
}

/// The releases a list is made from, by manifest id (to load them as the
/// asking tenant's).
struct ListingSource {
    target: ManifestId,
    have: Option<ManifestId>,
}

/// The files of an answer, shared by every client asking the same thing.
struct Listing {
    artifacts: Arc<Vec<ArtifactFile>>,
    deleted: Arc<Vec<DeletedFile>>,
    delta: bool,
    json: bytes::Bytes,
    /// Until when every URL in it still has the guaranteed validity left.
    fresh_until: SystemTime,
    /// Some of its patches or compressed files were still being made: it
    /// is built again on the next `Change::Patches` (or within
    /// `PATCH_RECHECK`).
    awaiting_patches: bool,
}

/// A release's files without chunk lists: what answers need.
struct ReleaseView {
    artifacts: Vec<ArtifactView>,
}

struct ArtifactView {
    name: Name,
    kind: ArtifactKind,
    platforms: Vec<Name>,
    files: Vec<FileView>,
}

struct FileView {
    path: String,
    size: u64,
    hash: Hash,
}

impl From<Manifest> for ReleaseView {
    fn from(m: Manifest) -> Self {
        let artifacts = m
            .artifacts
            .into_iter()
            .map(|a| ArtifactView {
                name: a.name,
                kind: a.kind,
                platforms: a.platforms,
                files: a
                    .files
                    .into_iter()
                    .map(|f| FileView { path: f.path.as_str().to_owned(), size: f.size, hash: f.hash })
                    .collect(),
            })
            .collect();
        Self { artifacts }
    }
}

/// How long a device's latest failure (or its absence) is remembered.
pub const DEVICE_FAILURE_TTL: Duration = Duration::from_secs(30);

impl Gateway {
    /// A gateway writing reports through `meta`'s pool too.
    pub fn new(meta: Meta, blobs: Blobs, config: GatewayConfig) -> Self {
        Self::with_clock(meta, blobs, config, Arc::new(SystemTime::now))
    }

    /// A gateway judging URL validity by `clock` (tests move time on).
    pub fn with_clock(meta: Meta, blobs: Blobs, config: GatewayConfig, clock: Clock) -> Self {
        let reports = meta.clone();
        Self::build(meta, reports, blobs, config, clock)
    }

    /// The full constructor: `reports` is the pool (and database role)
    /// reports are written with, apart from `meta`'s reads.
    pub fn build(meta: Meta, reports: Meta, blobs: Blobs, config: GatewayConfig, clock: Clock) -> Self {
        // Plain (non-async) caches for the two per-request lookups: a hit is
        // a function call, not a future.
        let keys = ferry_auth::Keys::new(
            meta.clone(),
            ferry_auth::MissLimits {
                found_ttl: Some(config.key_cache_ttl),
                missing_ttl: config.key_cache_ttl,
                ..config.auth
            },
        );
        let tenants = moka::sync::Cache::builder().max_capacity(1_000_000).expire_after(IdleExpiry).build();
        // Releases are immutable: kept until memory pressure evicts them,
        // weighed by their number of files.
        let releases = Cache::builder()
            .max_capacity(500_000)
            .weigher(|_, r: &Arc<ReleaseView>| r.artifacts.iter().map(|a| a.files.len() as u32 + 1).sum())
            .build();
        let urls = Urls::new(blobs.clone(), config.presign_lifetime, clock.clone());
        // Weighed in bytes: `platform` is the client's to choose, so the
        // number of distinct lists is not; their memory is (64 MiB).
        let listings = Cache::builder()
            .max_capacity(64 * 1024 * 1024)
            .weigher(|_, l: &Arc<Listing>| u32::try_from(2 * l.json.len() + 256).unwrap_or(u32::MAX))
            .time_to_live(config.presign_lifetime / 2)
            .build();
        let limits = Limits::new(&config);
        let device_failures = Cache::builder().max_capacity(1_000_000).time_to_live(DEVICE_FAILURE_TTL).build();
        let writer = reports.clone();
        let reports = ferry_reports::ReportStore::new(reports);
        let hub = Hub::new(meta.clone(), config.release_cache_ttl);
        Self {
            inner: Arc::new(Inner {
                meta,
                blobs,
                config,
                keys,
                tenants,
                releases,
                urls,
                listings,
                limits,
                clock,
                reports,
                census: Arc::default(),
                writer,
                device_failures,
                metrics: Metrics::default(),
                applied: tokio::sync::broadcast::channel(64).0,
                hub,
                lifecycle: ferry_net::Lifecycle::new(),
            }),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Serving, draining or stopping: what readiness reports.
    pub fn lifecycle(&self) -> &ferry_net::Lifecycle {
        &self.inner.lifecycle
    }

    /// Writes which version devices run every `config.device_flush` until
    /// `stop`, then once more (`serve` runs it).
    pub async fn run_census(&self, stop: impl std::future::Future<Output = ()>) {
        self.inner.census.run(self.inner.writer.clone(), self.inner.config.device_flush, stop).await;
    }

    /// Writes which version devices run now (tests and tools).
    pub async fn flush_census(&self) -> Result<usize, ferry_store::StoreError> {
        self.inner.census.flush(&self.inner.writer).await
    }

    /// Applies change notifications until the channel closes.
    pub fn follow(&self, mut changes: mpsc::Receiver<Change>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                this.apply(change).await;
            }
        })
    }

    /// Changes as they are applied to the caches (tests and tools wait on
    /// these instead of guessing how long invalidation takes).
    pub fn applied(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.applied.subscribe()
    }

    /// Drops what a change makes stale.
    pub async fn apply(&self, change: Change) {
        let inner = &self.inner;
        tracing::debug!(?change, "cache invalidation");
        // Tenant entries are corrected in place: their limiters survive.
        match change.clone() {
            Change::App { app_id, tenant_id: Some(tenant_id) } => {
                if let Some(state) = inner.tenants.get(&tenant_id) {
                    state.forget_app(app_id);
                }
            }
            Change::App { app_id, tenant_id: None } => {
                for (_, state) in inner.tenants.iter() {
                    state.forget_app(app_id);
                }
            }
            Change::Tenant(tenant_id) => {
                if let Some(state) = inner.tenants.get(&tenant_id) {
                    state.forget_all(false);
                }
            }
            Change::Key(id) => inner.keys.invalidate(&id),
            // A new limit starts a new limiter (with a full burst).
            Change::Limit(tenant_id) => inner.tenants.invalidate(&tenant_id),
            // Lists still waiting for patches are built again when asked.
            Change::Patches => self.forget_lists_awaiting_patches().await,
            Change::Resync => {
                for (_, state) in inner.tenants.iter() {
                    state.forget_all(true);
                }
                inner.keys.invalidate_all();
                self.forget_lists_awaiting_patches().await;
            }
        }
        inner.hub.changed(&change);
        let _ = inner.applied.send(change);
    }

    /// Drops the file lists built while some of their patches were still
    /// being made: they are built again when next asked for.
    async fn forget_lists_awaiting_patches(&self) {
        for (key, listing) in self.inner.listings.iter() {
            if listing.awaiting_patches {
                self.inner.listings.invalidate(&*key).await;
            }
        }
    }

    /// Checks the database and S3 answer.
    pub async fn ready(&self) -> Result<(), String> {
        if !self.inner.lifecycle.is_ready() {
            return Err("shutting down".into());
        }
        let check = async {
            self.inner.meta.ping().await.map_err(|e| format!("postgresql: {e}"))?;
            self.inner.blobs.ping().await.map_err(|e| format!("s3: {e}"))
        };
        tokio::time::timeout(Duration::from_secs(3), check).await.map_err(|_| "timed out".to_owned())?
    }

    /// "You run X; your private cloud runs Y; here is Y" (S0-3, S0-4, S1-3,
    /// S2-3, S2-5).
    pub async fn check(&self, p: &CheckParams) -> Result<CheckAnswer, GatewayError> {
        let (auth, state, tenant, app) = self.admit(&p.caller, &p.tenant, &p.app).await?;
        let current_str = required("version", &p.version)?;
        let current = parse_version(current_str).map_err(|e| GatewayError::invalid("version", e))?;
        let platform = optional(&p.platform)
            .map(|s| Name::parse("platform", s))
            .transpose()
            .map_err(|e| GatewayError::invalid("platform", e))?;
        let want = optional(&p.want).map(parse_version).transpose().map_err(|e| GatewayError::invalid("want", e))?;
        let have = optional(&p.have).map(parse_manifest_id).transpose()?;

        let view = self.app_view(&auth, &state, &tenant, &app).await?;
        view.conforms("version", &current)?;
        if let Some(want) = &want {
            view.conforms("want", want)?;
        }
        let target = match (&want, &view.deployed) {
            (Some(want), _) => view
                .versions
                .iter()
                .find(|v| !v.yanked && v.version.cmp_precedence(want) == Ordering::Equal && v.version == *want)
                .ok_or_else(|| GatewayError::version_not_published(tenant.as_str(), app.as_str(), want))?,
            (None, Some(_)) => {
                view.deployed_entry().ok_or_else(|| GatewayError::internal("deployed version has no release"))?
            }
            (None, None) => return Err(GatewayError::not_deployed(tenant.as_str(), app.as_str())),
        };
        let action = Action::between(&current, &target.version);
        // Required unless the target declares the client's version
        // compatible (semver requirements match pre-releases only when they
        // name one of the same major.minor.patch).
        // A device on a withdrawn release must always move.
        let current_yanked = view.versions.iter().any(|v| v.yanked && v.version == current);
        let required = action != Action::None
            && (current_yanked || target.compatible.as_ref().is_none_or(|req| !current.satisfies(req)));
        let last_failure = match p.caller.device.as_deref().filter(|d| !d.is_empty()) {
            Some(device) => {
                self.inner.census.record(view.app_id, device, current_str, (self.inner.clock)());
                self.last_failure(view.app_id, device).await?.as_deref().map(LastFailureBody::from)
            }
            None => None,
        };
        let mut answer = CheckAnswer {
            action,
            current: current_str.to_owned(),
            target: target.version_text.clone(),
            manifest_id: target.manifest_hex.clone(),
            tenant: target.owner(&tenant, &app).0.to_owned(),
            app: target.owner(&tenant, &app).1.to_owned(),
            required,
            last_failure,
            artifacts: Arc::default(),
            deleted: Arc::default(),
            delta: false,
            listing_json: None,
        };
        if action == Action::None {
            return Ok(answer);
        }
        // A delta only against a release of this very app: anything else
        // (unknown, foreign, or the target itself) gets the full list.
        let have = have
            .and_then(|h| view.versions.iter().find(|v| v.manifest_id == h))
            .filter(|v| v.content_id != target.content_id);
        let key = ListingKey {
            target: target.content_id,
            platform,
            have: have.map(|v| v.content_id),
            location: target.location.clone(),
        };
        let listing = match self.inner.listings.get(&key).await {
            Some(listing) if listing.fresh_until > (self.inner.clock)() => listing,
            _ => {
                let source = ListingSource { target: target.manifest_id, have: have.map(|v| v.manifest_id) };
                let listing = Arc::new(self.listing(auth.tenant_id, &key, &source).await?);
                self.inner.listings.insert(key, listing.clone()).await;
                listing
            }
        };
        answer.artifacts = listing.artifacts.clone();
        answer.deleted = listing.deleted.clone();
        answer.delta = listing.delta;
        answer.listing_json = Some(listing.json.clone());
        Ok(answer)
    }

    /// Builds the file list for `key`: the target's files for the platform,
    /// minus unchanged files of directory artifacts when `have` is known.
    async fn listing(&self, tenant_id: i64, key: &ListingKey, source: &ListingSource) -> Result<Listing, GatewayError> {
        let release = self.release(tenant_id, key.target, source.target).await?;
        let previous = match (key.have, source.have) {
            (Some(content_id), Some(id)) => Some(self.release(tenant_id, content_id, id).await?),
            _ => None,
        };
        let mut deleted = Vec::new();
        let mut wanted = Vec::new();
        let for_platform =
            |a: &ArtifactView| a.platforms.is_empty() || key.platform.as_ref().is_some_and(|p| a.platforms.contains(p));
        // What the client holds of `have` and the target no longer has (an
        // artifact dropped, or turned from a file into a directory or back)
        // is deleted whole, so the client can rebuild the target's full
        // list from its own and the delta.
        if let Some(previous) = &previous {
            for before in previous.artifacts.iter().filter(|a| for_platform(a)) {
                let after = release
                    .artifacts
                    .iter()
                    .find(|a| a.name == before.name && a.kind == before.kind && for_platform(a));
                match (after, before.kind) {
                    // Directories' removed files come from `diff` below.
                    (Some(_), ArtifactKind::Directory) => {}
                    // A single file renamed (crm-2.3.apk to crm-2.4.apk).
                    (Some(after), ArtifactKind::File) => deleted.extend(
                        before
                            .files
                            .iter()
                            .filter(|f| after.files.iter().all(|g| g.path != f.path))
                            .map(|f| DeletedFile { kind: before.name.to_string(), path: f.path.clone() }),
                    ),
                    (None, _) => deleted.extend(
                        before
                            .files
                            .iter()
                            .map(|f| DeletedFile { kind: before.name.to_string(), path: f.path.clone() }),
                    ),
                }
            }
        }
        for artifact in &release.artifacts {
            if !for_platform(artifact) {
                continue;
            }
            // Only what the client holds of `have`: its platform's artifacts.
            let before = previous.as_ref().and_then(|prev| {
                prev.artifacts
                    .iter()
                    .find(|a| a.name == artifact.name && a.kind == ArtifactKind::Directory && for_platform(a))
            });
            let (unchanged, gone) = match (artifact.kind, before) {
                (ArtifactKind::Directory, Some(before)) => diff(before, artifact),
                _ => (HashSet::new(), Vec::new()),
            };
            deleted.extend(gone.into_iter().map(|path| DeletedFile { kind: artifact.name.to_string(), path }));
            wanted
                .extend(artifact.files.iter().filter(|f| !unchanged.contains(f.path.as_str())).map(|f| (artifact, f)));
        }
        // With `have`: the file each one can be patched from (issue 13).
        let bases: Vec<Option<Hash>> = wanted
            .iter()
            .map(|(artifact, file)| {
                // Of the artifacts the client holds: its platform's.
                let before = previous
                    .as_ref()?
                    .artifacts
                    .iter()
                    .find(|a| a.name == artifact.name && a.kind == artifact.kind && for_platform(a))?;
                let single = artifact.kind == ArtifactKind::File;
                let base = ferry_patch::counterpart(single, &file.path, &before.files, |f| f.path.as_str())?;
                (base.hash != file.hash).then_some(base.hash)
            })
            .collect();
        let mut pairs: Vec<(Hash, Hash)> =
            wanted.iter().zip(&bases).filter_map(|((_, file), base)| Some(((*base)?, file.hash))).collect();
        // Text-like files stored compressed: patches from the empty file.
        let empty = ferry_store::empty_file();
        pairs.extend(
            wanted
                .iter()
                .filter(|(_, file)| ferry_patch::compressible(&file.path) && file.size >= ferry_patch::MIN_FILE_BYTES)
                .map(|(_, file)| (empty, file.hash)),
        );
        let (patches, pending) = self.inner.meta.patches_for(&pairs).await?;
        let mut artifacts = Vec::with_capacity(wanted.len());
        let min_remaining = self.inner.urls.min_remaining();
        let now = (self.inner.clock)();
        let mut fresh_until = now + self.inner.config.presign_lifetime;
        if pending > 0 {
            // Patches still being made: look again soon.
            fresh_until = fresh_until.min(now + PATCH_RECHECK);
        }
        for ((artifact, file), base) in wanted.into_iter().zip(bases) {
            let url = self.inner.urls.get(&file.hash, key.location.as_deref()).await?;
            fresh_until = fresh_until.min(url.expires_at - min_remaining);
            let patch = match base.and_then(|base| Some((base, patches.get(&(base, file.hash))?))) {
                Some((base, row)) => {
                    let url = self.inner.urls.patch(&row.hash).await?;
                    fresh_until = fresh_until.min(url.expires_at - min_remaining);
                    Some(PatchOffer {
                        algorithm: row.algorithm.clone(),
                        base_blake3: base.to_hex().to_string(),
                        size: row.size,
                        blake3: row.hash.to_hex().to_string(),
                        url: url.url.to_string(),
                        expires_at: rfc3339(url.expires_at),
                    })
                }
                None => None,
            };
            let compressed = match patches.get(&(empty, file.hash)) {
                Some(row) => {
                    let url = self.inner.urls.patch(&row.hash).await?;
                    fresh_until = fresh_until.min(url.expires_at - min_remaining);
                    Some(CompressedOffer {
                        encoding: "zstd".into(),
                        size: row.size,
                        blake3: row.hash.to_hex().to_string(),
                        url: url.url.to_string(),
                        expires_at: rfc3339(url.expires_at),
                    })
                }
                None => None,
            };
            artifacts.push(ArtifactFile {
                kind: artifact.name.to_string(),
                path: file.path.clone(),
                size: file.size,
                blake3: file.hash.to_hex().to_string(),
                url: url.url.to_string(),
                expires_at: rfc3339(url.expires_at),
                patch,
                compressed,
            });
        }
        let delta = previous.is_some();
        let json = listing_json(&artifacts, &deleted, delta);
        Ok(Listing {
            artifacts: Arc::new(artifacts),
            deleted: Arc::new(deleted),
            delta,
            json,
            fresh_until,
            awaiting_patches: pending > 0,
        })
    }

    /// A device's latest failure, from the cache or the database.
    async fn last_failure(
        &self,
        app_id: i64,
        device: &str,
    ) -> Result<Option<Arc<ferry_reports::LastFailure>>, GatewayError> {
        let reports = self.inner.reports.clone();
        let device_owned = device.to_owned();
        let found = self
            .inner
            .device_failures
            .try_get_with((app_id, device.to_owned()), async move {
                Ok::<_, ferry_store::StoreError>(reports.last_failure(app_id, &device_owned).await?.map(Arc::new))
            })
            .await?;
        Ok(found)
    }

    /// Stores a report of how an upgrade went (S4-3), with the same
    /// authentication, tenancy and rate limits as a check; answers whether
    /// it was a retry.
    pub async fn report(
        &self,
        caller: &Caller,
        input: &ferry_reports::ReportInput,
    ) -> Result<ReportAccepted, GatewayError> {
        // The device's own limit applies, named by the header or the report.
        let caller = Caller { device: caller.device.clone().or_else(|| input.device_id.clone()), ..caller.clone() };
        let (auth, state, tenant, app) = self.admit(&caller, &input.tenant, &input.app).await?;
        let report =
            ferry_reports::Report::validate(input).map_err(|e| GatewayError::invalid_field(e.field, e.reason))?;
        let view = self.app_view(&auth, &state, &tenant, &app).await?;
        for (field, version) in [("from_version", &report.from_version), ("to_version", &report.to_version)] {
            version.conforms(view.versioning).map_err(|e| {
                GatewayError::invalid_field(field, format!("{e}: the app uses {} versioning", view.versioning))
            })?;
        }
        let (device, outcome) = (report.device_id.clone(), report.outcome);
        let failure = (outcome != ferry_reports::Outcome::Success).then(|| {
            Arc::new(ferry_reports::LastFailure {
                version: report.to_version.to_string(),
                outcome,
                error_code: report.error_code.clone(),
                error_message: report.error_message.clone(),
                at: SystemTime::now(),
            })
        });
        let report_id = report.report_id.clone();
        let new = self.inner.reports.submit(auth.tenant_id, view.app_id, report).await?;
        if new {
            // This gateway's next check of the device shows it at once.
            self.inner.device_failures.insert((view.app_id, device), failure).await;
            self.inner.metrics.report(outcome.as_str());
        }
        Ok(ReportAccepted { report_id, duplicate: !new })
    }

    /// Opens a watch of an app's deployment (S1-6): the same key, tenancy
    /// and rate limits as a check. `version` (optional) is the client's, to
    /// tell it what to do; `last_event_id` the id of the last event it saw,
    /// if it reconnects (one this gateway cannot read is ignored: the
    /// client is then sent the current deployment).
    pub async fn watch(
        &self,
        caller: &Caller,
        tenant: &Option<String>,
        app: &Option<String>,
        version: &Option<String>,
        last_event_id: Option<String>,
    ) -> Result<Watcher, GatewayError> {
        let (auth, state, tenant, app) = self.admit(caller, tenant, app).await?;
        let current =
            optional(version).map(parse_version).transpose().map_err(|e| GatewayError::invalid("version", e))?;
        let (last_id, last_seq) = match last_event_id.as_deref().map(|id| (id, crate::watch::event_seq(id))) {
            Some((id, Some(seq))) => (Some(id.to_owned()), seq),
            _ => (None, 0),
        };
        let view = self.app_view(&auth, &state, &tenant, &app).await?;
        // The first watch of an app starts from the database, not from a
        // cached view that may lag behind what the client saw elsewhere.
        let view = match self.inner.hub.is_watched(view.app_id) {
            true => view,
            false => self.load_app_view(auth.tenant_id, &app).await?.unwrap_or(view),
        };
        if let Some(current) = &current {
            view.conforms("version", current)?;
        }
        if !self.inner.hub.admit(self.inner.config.max_watches) {
            self.inner.metrics.shed("watches");
            let wait = 5 + (crate::watch::fastrand_fraction() * 25.0) as u64;
            return Err(GatewayError::watches_full(wait));
        }
        let receiver = self.inner.hub.subscribe(auth.tenant_id, &tenant, &app, &view);
        self.inner.metrics.watch_started();
        Ok(Watcher {
            gateway: self.clone(),
            receiver,
            current,
            last_id,
            last_seq,
            authorization: caller.authorization.clone(),
            heartbeat: self.inner.config.watch_heartbeat,
            unconfirmed: 0,
        })
    }

    /// Whether a watch's key is still a valid client key, from the key
    /// cache (a revocation shows within its TTL); `None` when that cannot
    /// be told now (lookups throttled, or the database away).
    pub(crate) async fn key_status(&self, authorization: Option<&str>) -> Option<bool> {
        match self.inner.keys.authenticate_header(authorization, None).await {
            Ok(auth) => Some(auth.role == KeyRole::Client),
            Err(ferry_auth::AuthError::Unauthenticated(_)) => Some(false),
            Err(_) => None,
        }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Ends every open watch: their clients reconnect elsewhere (shutdown).
    pub fn close_watches(&self) {
        self.inner.hub.close();
    }

    /// The published versions, newest first (S2-3).
    pub async fn versions(
        &self,
        caller: &Caller,
        tenant: &Option<String>,
        app: &Option<String>,
    ) -> Result<VersionList, GatewayError> {
        let (auth, state, tenant, app) = self.admit(caller, tenant, app).await?;
        let view = self.app_view(&auth, &state, &tenant, &app).await?;
        Ok(VersionList {
            deployed: view.deployed.as_ref().map(ToString::to_string),
            versions: view
                .versions
                .iter()
                .filter(|v| !v.yanked)
                .map(|v| VersionInfo {
                    version: v.version_text.clone(),
                    manifest_id: v.manifest_hex.clone(),
                    published_at: rfc3339(v.published_at),
                    deployed: view.deployed.as_ref() == Some(&v.version),
                })
                .collect(),
        })
    }

    /// Authenticates the client key, applies rate limits, and checks the
    /// key's tenant is the one asked about (S1-4).
    async fn admit(
        &self,
        caller: &Caller,
        tenant: &Option<String>,
        app: &Option<String>,
    ) -> Result<(Authenticated, Arc<TenantState>, Name, Name), GatewayError> {
        let auth = self.authenticate(caller).await?;
        let state = self.tenant(auth.tenant_id).await?;
        self.inner
            .limits
            .admit(&state.limiter, state.rate, auth.tenant_id, caller.device.as_deref(), &self.inner.metrics)
            .await?;
        let tenant_str = required("tenant", tenant)?;
        let app_str = required("app", app)?;
        let tenant = Name::parse("tenant", tenant_str).map_err(|e| GatewayError::invalid("tenant", e))?;
        let app = Name::parse("app", app_str).map_err(|e| GatewayError::invalid("app", e))?;
        if auth.tenant != tenant {
            return Err(GatewayError::app_not_found(tenant.as_str(), app.as_str()));
        }
        Ok((auth, state, tenant, app))
    }

    /// The tenant's cached state, loading its rate limit on a miss and
    /// reading it again once it may be stale. The limiter is kept unless
    /// the rate really changed.
    async fn tenant(&self, tenant_id: i64) -> Result<Arc<TenantState>, GatewayError> {
        let ttl = self.inner.config.release_cache_ttl;
        let cached = self.inner.tenants.get(&tenant_id);
        if let Some(state) = &cached
            && !state.rate_is_stale(ttl)
        {
            return Ok(state.clone());
        }
        let default = self.inner.config.tenant_rate;
        let rate = self
            .inner
            .meta
            .tenant_limit(tenant_id)
            .await?
            .map_or(default, |(per_second, burst)| Rate { per_second, burst });
        if let Some(state) = cached
            && state.rate == rate
        {
            state.confirm_rate(ttl);
            return Ok(state);
        }
        let state = Arc::new(TenantState::new(self.inner.limits.tenant_limiter(rate), rate, ttl));
        // Two requests racing keep whichever entry for this rate landed
        // first, so neither hands out a second burst.
        let entry = self.inner.tenants.entry(tenant_id).and_upsert_with(|existing| match existing {
            Some(existing) if existing.value().rate == rate => existing.into_value(),
            _ => state,
        });
        Ok(entry.into_value())
    }

    async fn authenticate(&self, caller: &Caller) -> Result<Authenticated, GatewayError> {
        let auth = match self.inner.keys.authenticate_header(caller.authorization.as_deref(), caller.source).await {
            Ok(auth) => auth,
            Err(ferry_auth::AuthError::Unauthenticated(why)) => return Err(GatewayError::unauthenticated(why)),
            Err(ferry_auth::AuthError::Throttled { retry_after }) => {
                self.inner.metrics.shed("source");
                return Err(GatewayError::rate_limited("source", crate::limits::retry_after(retry_after)));
            }
            Err(ferry_auth::AuthError::Store(e)) => return Err(e.into()),
        };
        if auth.role != KeyRole::Client {
            return Err(GatewayError::unauthenticated("not a client key"));
        }
        Ok(auth)
    }

    async fn app_view(
        &self,
        auth: &Authenticated,
        state: &Arc<TenantState>,
        tenant: &Name,
        app: &Name,
    ) -> Result<Arc<AppView>, GatewayError> {
        let ttl = self.inner.config.release_cache_ttl;
        let view = match state.lookup(app, ttl, std::time::Instant::now()) {
            Lookup::Fresh(view) => view,
            Lookup::Stale { view, refresh } => {
                if refresh {
                    self.refresh_app(auth.tenant_id, state.clone(), app.clone());
                }
                view
            }
            Lookup::Missing => {
                let generation = state.generation();
                let view = self.load_app_view(auth.tenant_id, app).await?;
                self.inner.metrics.cache_load("apps");
                state.remember(app, view.clone(), generation, self.fresh_for());
                view
            }
        };
        view.ok_or_else(|| GatewayError::app_not_found(tenant.as_str(), app.as_str()))
    }

    /// Re-reads an app's list in the background; requests meanwhile get
    /// the one cached.
    fn refresh_app(&self, tenant_id: i64, state: Arc<TenantState>, app: Name) {
        let this = self.clone();
        tokio::spawn(async move {
            let generation = state.generation();
            match this.load_app_view(tenant_id, &app).await {
                Ok(view) => {
                    this.inner.metrics.cache_load("apps");
                    state.remember(&app, view, generation, this.fresh_for());
                }
                Err(e) => {
                    tracing::warn!(tenant_id, app = %app, error = %e.message, "re-reading an app's releases failed");
                    state.refresh_failed(&app);
                }
            }
        });
    }

    /// How long a list just read stays fresh: the TTL less up to a quarter
    /// at random, so lists read together are not all re-read together.
    fn fresh_for(&self) -> Duration {
        let ttl = self.inner.config.release_cache_ttl;
        ttl.saturating_sub((ttl / 4).mul_f64(crate::watch::fastrand_fraction()))
    }

    async fn load_app_view(&self, tenant_id: i64, app: &Name) -> Result<Option<Arc<AppView>>, GatewayError> {
        Ok(crate::tenants::load_app_view(&self.inner.meta, tenant_id, app).await?)
    }

    /// A release's file list. `id` must be a release of `tenant_id`'s (it
    /// comes from its app view), `content_id` its content id: the cache is
    /// shared by content.
    async fn release(
        &self,
        tenant_id: i64,
        content_id: ManifestId,
        id: ManifestId,
    ) -> Result<Arc<ReleaseView>, GatewayError> {
        let meta = self.inner.meta.clone();
        let release = self
            .inner
            .releases
            .try_get_with(content_id, async move {
                let body = meta.load_manifest(tenant_id, id).await?.ok_or_else(|| {
                    ferry_store::StoreError::Integrity(format!("manifest {id} of a release is missing"))
                })?;
                let manifest = Manifest::decode(&body)
                    .map_err(|e| ferry_store::StoreError::Integrity(format!("manifest {id}: {e}")))?;
                Ok::<_, ferry_store::StoreError>(Arc::new(ReleaseView::from(manifest)))
            })
            .await?;
        Ok(release)
    }
}

/// For a directory artifact: the paths whose content is unchanged since
/// `before`, and the paths `before` had that `after` does not.
fn diff(before: &ArtifactView, after: &ArtifactView) -> (HashSet<String>, Vec<String>) {
    let old: HashMap<&str, &Hash> = before.files.iter().map(|f| (f.path.as_str(), &f.hash)).collect();
    let new: HashSet<&str> = after.files.iter().map(|f| f.path.as_str()).collect();
    let unchanged =
        after.files.iter().filter(|f| old.get(f.path.as_str()) == Some(&&f.hash)).map(|f| f.path.clone()).collect();
    let gone = before.files.iter().filter(|f| !new.contains(f.path.as_str())).map(|f| f.path.clone()).collect();
    (unchanged, gone)
}

fn optional(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn required<'a>(param: &str, value: &'a Option<String>) -> Result<&'a str, GatewayError> {
    optional(value).ok_or_else(|| GatewayError::invalid(param, "is required"))
}

fn parse_manifest_id(hex_id: &str) -> Result<ManifestId, GatewayError> {
    let bytes =
        hex::decode(hex_id).map_err(|_| GatewayError::invalid("have", "must be 64 hex digits (a manifest id)"))?;
    ManifestId::from_slice(&bytes).ok_or_else(|| GatewayError::invalid("have", "must be 64 hex digits (a manifest id)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_never_prints_its_key() {
        let caller = Caller {
            authorization: Some("Bearer ferry_client_0123456789ab_secretsecret".into()),
            device: Some("phone-1".into()),
            source: None,
        };
        let shown = format!("{:?}", CheckParams { caller, ..Default::default() });
        assert!(!shown.contains("secretsecret") && shown.contains("phone-1"), "{shown}");
    }
}
