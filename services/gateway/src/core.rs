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
use ferry_store::{ApiKey, Authenticated, Blobs, Change, KeyRecord, KeyRole, Meta};
use moka::future::Cache;
use tokio::sync::mpsc;

use crate::error::GatewayError;
use crate::limits::{Limits, Rate, TenantLimiter};
use crate::metrics::Metrics;
use crate::model::{Action, ArtifactFile, CheckAnswer, DeletedFile, VersionInfo, VersionList, listing_json, rfc3339};

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
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            presign_lifetime: Duration::from_secs(15 * 60),
            key_cache_ttl: Duration::from_secs(120),
            release_cache_ttl: Duration::from_secs(120),
            tenant_rate: Rate { per_second: 1000.0, burst: 2000 },
            device_rate: Rate { per_second: 1.0, burst: 10 },
        }
    }
}

/// What a client sends, unvalidated (query parameters or gRPC fields).
#[derive(Debug, Default, Clone)]
pub struct CheckParams {
    pub authorization: Option<String>,
    pub device: Option<String>,
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
    keys: moka::sync::Cache<String, Option<KeyRecord>>,
    /// Per tenant: its limiter and its apps' release lists, in one entry
    /// (one lookup per request, one cache entry's overhead per tenant).
    tenants: moka::sync::Cache<i64, Arc<TenantState>>,
    releases: Cache<ManifestId, Arc<ReleaseView>>,
    urls: Cache<Hash, PresignedUrl>,
    listings: Cache<ListingKey, Arc<Listing>>,
    limits: Limits,
    metrics: Metrics,
    /// Every change once applied, for whoever waits on invalidation.
    applied: tokio::sync::broadcast::Sender<Change>,
}

/// A presigned URL and its validity.
#[derive(Clone)]
struct PresignedUrl {
    url: Arc<str>,
    expires_at: SystemTime,
    /// Until when it may be handed out: while half its lifetime remains.
    fresh_until: SystemTime,
}

/// What a file list depends on. Manifests are content-addressed, so tenants
/// publishing identical releases share one list (and its memory); `have` is
/// only ever a release of the asking app (checked before), so no list can
/// reveal another tenant's files.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ListingKey {
    target: ManifestId,
    platform: Option<Name>,
    have: Option<ManifestId>,
}

/// The files of an answer, shared by every client asking the same thing.
struct Listing {
    artifacts: Arc<Vec<ArtifactFile>>,
    deleted: Arc<Vec<DeletedFile>>,
    delta: bool,
    json: Arc<str>,
    /// The earliest `fresh_until` of its URLs.
    fresh_until: SystemTime,
}

/// Apps remembered per tenant (real apps are few; the cap bounds what
/// lookups of made-up names can add).
const MAX_CACHED_APPS_PER_TENANT: usize = 64;

/// What the gateway keeps about a tenant.
struct TenantState {
    limiter: TenantLimiter,
    apps: std::sync::RwLock<HashMap<Name, Option<Arc<AppView>>>>,
}

impl TenantState {
    fn has_app(&self, app_id: i64) -> bool {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        apps.values().any(|a| a.as_ref().is_some_and(|a| a.app_id == app_id))
    }
}

/// An app's releases, newest first.
struct AppView {
    app_id: i64,
    deployed: Option<semver::Version>,
    versions: Vec<VersionEntry>,
}

struct VersionEntry {
    version: semver::Version,
    manifest_id: ManifestId,
    published_at: SystemTime,
    /// `version` and `manifest_id` as answers spell them, made once.
    version_text: String,
    manifest_hex: String,
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

impl Gateway {
    pub fn new(meta: Meta, blobs: Blobs, config: GatewayConfig) -> Self {
        // Plain (non-async) caches for the two per-request lookups: a hit is
        // a function call, not a future.
        let keys = moka::sync::Cache::builder().max_capacity(1_000_000).time_to_live(config.key_cache_ttl).build();
        let tenants = moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(config.release_cache_ttl)
            .support_invalidation_closures()
            .build();
        // Releases are immutable: kept until memory pressure evicts them,
        // weighed by their number of files.
        let releases = Cache::builder()
            .max_capacity(500_000)
            .weigher(|_, r: &Arc<ReleaseView>| r.artifacts.iter().map(|a| a.files.len() as u32 + 1).sum())
            .build();
        // A URL is handed out only while at least half its lifetime remains.
        let urls = Cache::builder().max_capacity(1_000_000).time_to_live(config.presign_lifetime / 2).build();
        // Weighed in bytes: `platform` is the client's to choose, so the
        // number of distinct lists is not; their memory is (64 MiB).
        let listings = Cache::builder()
            .max_capacity(64 * 1024 * 1024)
            .weigher(|_, l: &Arc<Listing>| u32::try_from(2 * l.json.len() + 256).unwrap_or(u32::MAX))
            .time_to_live(config.presign_lifetime / 2)
            .build();
        let limits = Limits::new(&config);
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
                metrics: Metrics::default(),
                applied: tokio::sync::broadcast::channel(64).0,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
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
        match change.clone() {
            Change::App(app_id) => {
                let _ = inner.tenants.invalidate_entries_if(move |_, t| t.has_app(app_id));
            }
            Change::Key(id) => inner.keys.invalidate(&id),
            Change::Limit(tenant_id) => inner.tenants.invalidate(&tenant_id),
            Change::Resync => {
                inner.tenants.invalidate_all();
                inner.keys.invalidate_all();
            }
        }
        let _ = inner.applied.send(change);
    }

    /// Checks the database and S3 answer.
    pub async fn ready(&self) -> Result<(), String> {
        let check = async {
            self.inner.meta.ping().await.map_err(|e| format!("postgresql: {e}"))?;
            self.inner.blobs.ping().await.map_err(|e| format!("s3: {e}"))
        };
        tokio::time::timeout(Duration::from_secs(3), check).await.map_err(|_| "timed out".to_owned())?
    }

    /// "You run X; your private cloud runs Y; here is Y" (S0-3, S0-4, S1-3,
    /// S2-3, S2-5).
    pub async fn check(&self, p: &CheckParams) -> Result<CheckAnswer, GatewayError> {
        let (auth, state, tenant, app) =
            self.admit(p.authorization.as_deref(), p.device.as_deref(), &p.tenant, &p.app).await?;
        let current_str = required("version", &p.version)?;
        let current = parse_version(current_str).map_err(|e| GatewayError::invalid("version", e))?;
        let platform = optional(&p.platform)
            .map(|s| Name::parse("platform", s))
            .transpose()
            .map_err(|e| GatewayError::invalid("platform", e))?;
        let want = optional(&p.want).map(parse_version).transpose().map_err(|e| GatewayError::invalid("want", e))?;
        let have = optional(&p.have).map(parse_manifest_id).transpose()?;

        let view = self.app_view(&auth, &state, &tenant, &app).await?;
        let target = match (&want, &view.deployed) {
            (Some(want), _) => view
                .versions
                .iter()
                .find(|v| v.version.cmp_precedence(want) == Ordering::Equal && v.version == *want)
                .ok_or_else(|| GatewayError::version_not_published(tenant.as_str(), app.as_str(), want))?,
            (None, Some(deployed)) => view
                .versions
                .iter()
                .find(|v| v.version == *deployed)
                .ok_or_else(|| GatewayError::internal("deployed version has no release"))?,
            (None, None) => return Err(GatewayError::not_deployed(tenant.as_str(), app.as_str())),
        };
        let action = match current.cmp_precedence(&target.version) {
            Ordering::Equal => Action::None,
            Ordering::Less => Action::Upgrade,
            Ordering::Greater => Action::Downgrade,
        };
        let mut answer = CheckAnswer {
            action,
            current: current_str.to_owned(),
            target: target.version_text.clone(),
            manifest_id: target.manifest_hex.clone(),
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
        let have = have.filter(|h| *h != target.manifest_id && view.versions.iter().any(|v| v.manifest_id == *h));
        let key = ListingKey { target: target.manifest_id, platform, have };
        let listing = match self.inner.listings.get(&key).await {
            Some(listing) if listing.fresh_until > SystemTime::now() => listing,
            _ => {
                let listing = Arc::new(self.listing(auth.tenant_id, &key).await?);
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
    async fn listing(&self, tenant_id: i64, key: &ListingKey) -> Result<Listing, GatewayError> {
        let release = self.release(tenant_id, key.target).await?;
        let previous = match key.have {
            Some(id) => Some(self.release(tenant_id, id).await?),
            None => None,
        };
        let mut deleted = Vec::new();
        let mut wanted = Vec::new();
        for artifact in &release.artifacts {
            if !artifact.platforms.is_empty() && !key.platform.as_ref().is_some_and(|p| artifact.platforms.contains(p))
            {
                continue;
            }
            let before = previous.as_ref().and_then(|prev| {
                prev.artifacts.iter().find(|a| a.name == artifact.name && a.kind == ArtifactKind::Directory)
            });
            let (unchanged, gone) = match (artifact.kind, before) {
                (ArtifactKind::Directory, Some(before)) => diff(before, artifact),
                _ => (HashSet::new(), Vec::new()),
            };
            deleted.extend(gone.into_iter().map(|path| DeletedFile { kind: artifact.name.to_string(), path }));
            wanted
                .extend(artifact.files.iter().filter(|f| !unchanged.contains(f.path.as_str())).map(|f| (artifact, f)));
        }
        let mut artifacts = Vec::with_capacity(wanted.len());
        let mut fresh_until = SystemTime::now() + self.inner.config.presign_lifetime;
        for (artifact, file) in wanted {
            let url = self.url(&file.hash).await?;
            fresh_until = fresh_until.min(url.fresh_until);
            artifacts.push(ArtifactFile {
                kind: artifact.name.to_string(),
                path: file.path.clone(),
                size: file.size,
                blake3: file.hash.to_hex().to_string(),
                url: url.url.to_string(),
                expires_at: rfc3339(url.expires_at),
            });
        }
        let delta = previous.is_some();
        let json = listing_json(&artifacts, &deleted, delta).into();
        Ok(Listing { artifacts: Arc::new(artifacts), deleted: Arc::new(deleted), delta, json, fresh_until })
    }

    /// The published versions, newest first (S2-3).
    pub async fn versions(
        &self,
        authorization: Option<&str>,
        device: Option<&str>,
        tenant: &Option<String>,
        app: &Option<String>,
    ) -> Result<VersionList, GatewayError> {
        let (auth, state, tenant, app) = self.admit(authorization, device, tenant, app).await?;
        let view = self.app_view(&auth, &state, &tenant, &app).await?;
        Ok(VersionList {
            deployed: view.deployed.as_ref().map(ToString::to_string),
            versions: view
                .versions
                .iter()
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
        authorization: Option<&str>,
        device: Option<&str>,
        tenant: &Option<String>,
        app: &Option<String>,
    ) -> Result<(Authenticated, Arc<TenantState>, Name, Name), GatewayError> {
        let auth = self.authenticate(authorization).await?;
        let state = self.tenant(auth.tenant_id).await?;
        self.inner.limits.admit(&state.limiter, auth.tenant_id, device, &self.inner.metrics)?;
        let tenant_str = required("tenant", tenant)?;
        let app_str = required("app", app)?;
        let tenant = Name::parse("tenant", tenant_str).map_err(|e| GatewayError::invalid("tenant", e))?;
        let app = Name::parse("app", app_str).map_err(|e| GatewayError::invalid("app", e))?;
        if auth.tenant != tenant {
            return Err(GatewayError::app_not_found(tenant.as_str(), app.as_str()));
        }
        Ok((auth, state, tenant, app))
    }

    /// The tenant's cached state, loading its rate limit on a miss.
    async fn tenant(&self, tenant_id: i64) -> Result<Arc<TenantState>, GatewayError> {
        if let Some(state) = self.inner.tenants.get(&tenant_id) {
            return Ok(state);
        }
        let default = self.inner.config.tenant_rate;
        let rate = self
            .inner
            .meta
            .tenant_limit(tenant_id)
            .await?
            .map_or(default, |(per_second, burst)| Rate { per_second, burst });
        let state = Arc::new(TenantState { limiter: self.inner.limits.tenant_limiter(rate), apps: Default::default() });
        // Two requests racing on a miss keep whichever entry landed first.
        Ok(self.inner.tenants.entry(tenant_id).or_insert(state).into_value())
    }

    async fn authenticate(&self, authorization: Option<&str>) -> Result<Authenticated, GatewayError> {
        let token = authorization.and_then(|h| h.strip_prefix("Bearer ")).ok_or_else(|| {
            GatewayError::unauthenticated("missing or malformed Authorization header (Bearer <client key>)")
        })?;
        let key = ApiKey::parse(token).map_err(|e| GatewayError::unauthenticated(e.to_string()))?;
        if key.role != KeyRole::Client {
            return Err(GatewayError::unauthenticated("not a client key"));
        }
        let record = match self.inner.keys.get(&key.id) {
            Some(record) => record,
            None => {
                let record = self.inner.meta.key_record(&key.id).await?;
                self.inner.keys.insert(key.id.clone(), record.clone());
                record
            }
        };
        record.and_then(|r| r.check(&key)).ok_or_else(|| GatewayError::unauthenticated("unknown or revoked client key"))
    }

    async fn app_view(
        &self,
        auth: &Authenticated,
        state: &TenantState,
        tenant: &Name,
        app: &Name,
    ) -> Result<Arc<AppView>, GatewayError> {
        let cached = state.apps.read().unwrap_or_else(|e| e.into_inner()).get(app).cloned();
        let view = match cached {
            Some(view) => view,
            None => {
                let view = self.load_app_view(auth.tenant_id, app).await?;
                let mut apps = state.apps.write().unwrap_or_else(|e| e.into_inner());
                // Names that do not exist are remembered only a few at a
                // time: a client may ask for any name it likes.
                if view.is_some() || apps.len() < MAX_CACHED_APPS_PER_TENANT {
                    apps.insert(app.clone(), view.clone());
                }
                view
            }
        };
        view.ok_or_else(|| GatewayError::app_not_found(tenant.as_str(), app.as_str()))
    }

    async fn load_app_view(&self, tenant_id: i64, app: &Name) -> Result<Option<Arc<AppView>>, GatewayError> {
        let Some(rows) = self.inner.meta.app_releases(tenant_id, app).await? else { return Ok(None) };
        let mut versions: Vec<VersionEntry> = rows
            .releases
            .into_iter()
            .filter_map(|r| {
                let version = parse_version(&r.version).ok()?;
                Some(VersionEntry {
                    version_text: version.to_string(),
                    manifest_hex: r.manifest_id.to_string(),
                    version,
                    manifest_id: r.manifest_id,
                    published_at: r.published_at,
                })
            })
            .collect();
        versions.sort_by(|a, b| b.version.cmp_precedence(&a.version).then_with(|| b.version.cmp(&a.version)));
        let deployed = rows.deployed.and_then(|v| parse_version(&v).ok());
        Ok(Some(Arc::new(AppView { app_id: rows.app_id, deployed, versions })))
    }

    /// A release's file list. `id` must be a release of `tenant_id`'s (it
    /// comes from its app view); the cache is shared by content.
    async fn release(&self, tenant_id: i64, id: ManifestId) -> Result<Arc<ReleaseView>, GatewayError> {
        let meta = self.inner.meta.clone();
        let release = self
            .inner
            .releases
            .try_get_with(id, async move {
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

    /// A presigned URL for a file, reused while at least half its lifetime
    /// remains (presigning costs ~30 µs; reuse keeps the hot path cheap).
    async fn url(&self, hash: &Hash) -> Result<PresignedUrl, GatewayError> {
        let (blobs, lifetime, hash_owned) = (self.inner.blobs.clone(), self.inner.config.presign_lifetime, *hash);
        let entry = self
            .inner
            .urls
            .try_get_with(*hash, async move {
                let now = SystemTime::now();
                let (url, expires_at) = blobs.presign_file_from(&hash_owned, now, lifetime).await?;
                let half = expires_at.duration_since(now).unwrap_or_default() / 2;
                Ok::<_, ferry_store::StoreError>(PresignedUrl {
                    url: Arc::from(url),
                    expires_at,
                    fresh_until: now + half,
                })
            })
            .await?;
        Ok(entry)
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
