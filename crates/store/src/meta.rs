//! Release metadata in PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ferry_release::{Hash, ManifestId, Name, Versioning};
use tokio_postgres::error::SqlState;

use crate::error::StoreError;
use crate::keys::{ApiKey, KeyRole};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// A PostgreSQL connection string: it may carry a password, so `Debug`
/// shows none of it (configuration structs print safely).
pub type DatabaseUrl = ferry_config::Secret;

/// Opens a pool for `database_url` (a libpq-style URL or key=value string).
/// Connections are made lazily; a database that is down shows up as
/// [`StoreError::Unavailable`] on first use.
pub fn connect(database_url: &str, max_connections: usize) -> Result<Meta, StoreError> {
    let (config, tls) = crate::pg_tls::parse(database_url)?;
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Backend { what: "building the postgresql pool", source: Box::new(e) })?;
    Ok(Meta { pool })
}

/// Handle on the metadata database. Cheap to clone.
#[derive(Clone)]
pub struct Meta {
    pool: Pool,
}

/// Who a valid key belongs to.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub key_id: String,
    pub tenant_id: i64,
    pub tenant: Name,
    pub role: KeyRole,
}

/// Who a live key of any role belongs to: a tenant, or none (`admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub role: KeyRole,
    pub tenant: Option<(i64, Name)>,
}

/// A live API key as stored.
#[derive(Clone)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: i64,
    pub tenant: Name,
    pub role: KeyRole,
    secret_hash: [u8; 32],
}

impl KeyRecord {
    /// Whether `key` is this key (same id, role and secret), in constant
    /// time for the secret.
    pub fn check(&self, key: &ApiKey) -> Option<Authenticated> {
        (key.id == self.key_id && key.role == self.role && key.matches(&self.secret_hash)).then(|| Authenticated {
            key_id: self.key_id.clone(),
            tenant_id: self.tenant_id,
            tenant: self.tenant.clone(),
            role: self.role,
        })
    }
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord").field("key_id", &self.key_id).field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

/// An app's releases.
#[derive(Debug, Clone)]
pub struct AppReleases {
    pub app_id: i64,
    /// How the app writes and orders its versions.
    pub versioning: Versioning,
    /// The deployed version, if any.
    pub deployed: Option<String>,
    /// The id of the app's latest deploy (rises with every deploy, rollback
    /// included): orders what watchers are told.
    pub deployment_seq: Option<i64>,
    /// In no particular order.
    pub releases: Vec<ReleaseRow>,
}

#[derive(Debug, Clone)]
pub struct ReleaseRow {
    pub version: String,
    pub manifest_id: ManifestId,
    /// The id of its files alone (the manifest without its owner), shared
    /// by every tenant publishing the same files.
    pub content_id: ManifestId,
    /// The tenant and app its manifest names (format 2 manifests).
    pub owner: Option<(String, String)>,
    pub published_at: std::time::SystemTime,
    /// The client versions that still work with it (a semver requirement).
    pub compatible: Option<String>,
    /// Where its files are (`None`: the registry's bucket).
    pub location: Option<crate::Location>,
    /// Withdrawn: never offered, but still what some devices run.
    pub yanked: bool,
}

/// How a release is committed, beyond what it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitOptions<'a> {
    /// Also record it as deployed.
    pub deploy: bool,
    /// The client versions that still work with it (a semver requirement,
    /// validated by the caller), when given.
    pub compatible: Option<&'a str>,
    /// The location its files were assembled at (`None`: the registry's
    /// bucket); recorded once, with the release.
    pub location_id: Option<i64>,
}

/// A manifest as the registry stores it.
pub struct SavedManifest<'a> {
    pub id: ManifestId,
    /// The id of the manifest without its owner.
    pub content_id: ManifestId,
    /// Whose release it says it is (format 2).
    pub owner: Option<ferry_release::Owner>,
    pub body: &'a [u8],
}

impl<'a> SavedManifest<'a> {
    /// What to store of `manifest`, encoded as `body`.
    pub fn of(manifest: &ferry_release::Manifest, body: &'a [u8]) -> Self {
        Self {
            id: ManifestId(*blake3::hash(body).as_bytes()),
            content_id: manifest.content_id(),
            owner: manifest.owner.clone(),
            body,
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// False when the same release already existed.
    pub created: bool,
    pub deployed: bool,
}

/// What a deploy replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    pub previous: Option<String>,
}

/// The advisory lock key that serialises migrations ("ferry migrate").
const MIGRATION_LOCK: i64 = 0x6665_7272_795f_6d67;

/// Claims on chunks whose bytes are somewhere (their own object, or a
/// place in a file): a claim on a chunk whose bytes were lost counts as
/// missing, so the next publish sends it again and repairs it.
pub(crate) const HELD_CHUNKS: &str = "(SELECT t.tenant_id, t.hash FROM tenant_chunks t JOIN chunks c ON c.hash = t.hash \
     WHERE c.in_object OR EXISTS (SELECT 1 FROM chunk_places p WHERE p.hash = t.hash)) AS held";

impl Meta {
    /// Brings the schema up to date. Safe to run from several processes at
    /// once (replicas starting together, a migration job): they take turns
    /// under a PostgreSQL advisory lock, and each skips what is applied.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // A session lock: released below, or with the connection if this
        // process dies (the pooled connection is dropped on error).
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        let migrated = embedded::migrations::runner()
            .run_async(&mut **client)
            .await
            .map_err(|e| StoreError::Backend { what: "running migrations", source: Box::new(e) });
        if let Err(e) = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await {
            // Not handing a connection that holds the lock back to the pool.
            let _ = deadpool_postgres::Object::take(client);
            return Err(e.into());
        }
        migrated.map(|_| ())
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.client().await?.simple_query("SELECT 1").await?;
        crate::metrics::took("postgresql", "ping", started);
        Ok(())
    }

    pub async fn create_tenant(&self, tenant: &Name) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("INSERT INTO tenants (name) VALUES ($1)", &[&tenant.as_str()])
            .await
            .map_err(|e| unique_violation(e, || format!("tenant {tenant} already exists")))?;
        Ok(())
    }

    pub async fn create_app(&self, tenant: &Name, app: &Name) -> Result<(), StoreError> {
        self.create_app_with(tenant, app, Versioning::Semver).await
    }

    /// Creates an app whose versions are written in `versioning` (for
    /// good: an app never mixes schemes).
    pub async fn create_app_with(&self, tenant: &Name, app: &Name, versioning: Versioning) -> Result<(), StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO apps (tenant_id, name, versioning) VALUES ($1, $2, $3)",
                &[&tenant_id, &app.as_str(), &versioning.as_str()],
            )
            .await
            .map_err(|e| unique_violation(e, || format!("app {tenant}/{app} already exists")))?;
        Ok(())
    }

    pub async fn tenant_id(&self, tenant: &Name) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT id FROM tenants WHERE name = $1", &[&tenant.as_str()]).await?;
        row.map(|r| r.get(0)).ok_or_else(|| StoreError::NotFound(format!("tenant {tenant} does not exist")))
    }

    /// The app's id, if the tenant has such an app.
    pub async fn app_id(&self, tenant_id: i64, app: &Name) -> Result<Option<i64>, StoreError> {
        Ok(self.app(tenant_id, app).await?.map(|(id, _)| id))
    }

    /// The app's id and version scheme, if the tenant has such an app.
    pub async fn app(&self, tenant_id: i64, app: &Name) -> Result<Option<(i64, Versioning)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, versioning FROM apps WHERE tenant_id = $1 AND name = $2",
                &[&tenant_id, &app.as_str()],
            )
            .await?;
        row.map(|r| Ok((r.get(0), versioning(r.get(1))?))).transpose()
    }

    /// Creates a key and returns it; the secret is not stored.
    pub async fn issue_key(&self, tenant: &Name, role: KeyRole) -> Result<ApiKey, StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let key = ApiKey::generate(role);
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO api_keys (id, tenant_id, role, secret_hash) VALUES ($1, $2, $3, $4)",
                &[&key.id, &tenant_id, &role.as_str(), &key.secret_hash().as_slice()],
            )
            .await?;
        Ok(key)
    }

    /// Creates an `admin` key (every tenant, on the dashboard).
    pub async fn issue_admin_key(&self) -> Result<ApiKey, StoreError> {
        let key = ApiKey::generate(KeyRole::Admin);
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO api_keys (id, role, secret_hash) VALUES ($1, 'admin', $2)",
                &[&key.id, &key.secret_hash().as_slice()],
            )
            .await?;
        Ok(key)
    }

    /// Who a live key of any role is, tenant-less keys (`admin`) included;
    /// `None` when it is unknown, revoked or its secret is wrong.
    pub async fn principal(&self, key: &ApiKey) -> Result<Option<Principal>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT k.tenant_id, t.name, k.role, k.secret_hash FROM api_keys k \
                 LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1 AND k.revoked_at IS NULL",
                &[&key.id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        if row.get::<_, &str>(2) != key.role.as_str() || !key.matches(row.get::<_, &[u8]>(3)) {
            return Ok(None);
        }
        let tenant = match (row.get::<_, Option<i64>>(0), row.get::<_, Option<&str>>(1)) {
            (Some(id), Some(name)) => Some((
                id,
                Name::parse("tenant", name).map_err(|e| StoreError::Integrity(format!("stored tenant name: {e}")))?,
            )),
            _ => None,
        };
        Ok(Some(Principal { key_id: key.id.clone(), role: key.role, tenant }))
    }

    /// Revokes a key by id; revoking twice is not an error.
    pub async fn revoke_key(&self, key_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let n = client
            .execute("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1", &[&key_id])
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("api key {key_id} does not exist")));
        }
        Ok(())
    }

    /// Looks a key up; `None` when it is unknown, revoked or its secret is
    /// wrong (callers cannot tell which, on purpose).
    pub async fn authenticate(&self, key: &ApiKey) -> Result<Option<Authenticated>, StoreError> {
        Ok(self.key_record(&key.id).await?.and_then(|record| record.check(key)))
    }

    /// The live (not revoked) key with this id, for callers that cache keys
    /// and check secrets themselves.
    pub async fn key_record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT k.tenant_id, t.name, k.role, k.secret_hash FROM api_keys k \
                 JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1 AND k.revoked_at IS NULL",
                &[&key_id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let secret_hash = <[u8; 32]>::try_from(row.get::<_, &[u8]>(3))
            .map_err(|_| StoreError::Integrity("stored key hash is not 32 bytes".into()))?;
        let role = KeyRole::parse(row.get(2)).ok_or_else(|| StoreError::Integrity("stored key role".into()))?;
        let tenant =
            Name::parse("tenant", row.get(1)).map_err(|e| StoreError::Integrity(format!("stored tenant name: {e}")))?;
        Ok(Some(KeyRecord { key_id: key_id.to_owned(), tenant_id: row.get(0), tenant, role, secret_hash }))
    }

    /// Sets a tenant's request rate limit (used by gateways).
    pub async fn set_limit(&self, tenant: &Name, per_second: f64, burst: u32) -> Result<(), StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO tenant_limits (tenant_id, per_second, burst) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id) DO UPDATE SET per_second = $2, burst = $3, updated_at = now()",
                &[&tenant_id, &per_second, &(burst as i32)],
            )
            .await?;
        Ok(())
    }

    /// A tenant's rate limit, if one was set: (requests per second, burst).
    pub async fn tenant_limit(&self, tenant_id: i64) -> Result<Option<(f64, u32)>, StoreError> {
        let client = self.client().await?;
        let row =
            client.query_opt("SELECT per_second, burst FROM tenant_limits WHERE tenant_id = $1", &[&tenant_id]).await?;
        Ok(row.map(|r| (r.get(0), r.get::<_, i32>(1) as u32)))
    }

    /// An app's published releases and deployed version, as the gateway
    /// needs them.
    pub async fn app_releases(&self, tenant_id: i64, app: &Name) -> Result<Option<AppReleases>, StoreError> {
        let client = self.client().await?;
        // One round trip: the app, its deployed version, and every release
        // (no rows: no such app; one row of NULLs: no release yet).
        let rows = client
            .query(
                "SELECT a.id, d.version, r.version, r.manifest_id, r.created_at, r.compatible, m.content_id, \
                 m.owner_tenant, m.owner_app, \
                 (SELECT max(id) FROM deployments WHERE app_id = a.id), \
                 l.id, l.bucket, l.prefix, l.public_endpoint, r.yanked_at IS NOT NULL, a.versioning FROM apps a \
                 LEFT JOIN releases d ON d.id = a.deployed_release_id \
                 LEFT JOIN releases r ON r.app_id = a.id \
                 LEFT JOIN manifests m ON m.tenant_id = r.tenant_id AND m.id = r.manifest_id \
                 LEFT JOIN locations l ON l.id = r.location_id \
                 WHERE a.tenant_id = $1 AND a.name = $2",
                &[&tenant_id, &app.as_str()],
            )
            .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let (app_id, deployed): (i64, Option<String>) = (first.get(0), first.get(1));
        let deployment_seq: Option<i64> = first.get(9);
        let versioning = versioning(first.get(15))?;
        let mut releases = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(version) = row.get::<_, Option<String>>(2) else { continue };
            let id = stored_manifest_id(row.get(3))?;
            let content_id = stored_manifest_id(row.get(6))?;
            releases.push(ReleaseRow {
                version,
                manifest_id: id,
                content_id,
                owner: match (row.get::<_, Option<String>>(7), row.get::<_, Option<String>>(8)) {
                    (Some(tenant), Some(app)) => Some((tenant, app)),
                    _ => None,
                },
                published_at: row.get(4),
                compatible: row.get(5),
                location: row.get::<_, Option<i64>>(10).map(|_| crate::locations::location(row, 10)),
                yanked: row.get::<_, Option<bool>>(14).unwrap_or(false),
            });
        }
        Ok(Some(AppReleases { app_id, versioning, deployed, deployment_seq, releases }))
    }

    /// The published release of `app_id` whose version has the same
    /// precedence as `version` (the same version, or one that differs only
    /// in build metadata), with its version and manifest id.
    pub async fn release_like(
        &self,
        app_id: i64,
        version: &ferry_release::Version,
    ) -> Result<Option<(String, ManifestId)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version, manifest_id FROM releases WHERE app_id = $1 AND precedence = $2",
                &[&app_id, &precedence(version)],
            )
            .await?;
        row.map(|r| Ok((r.get(0), stored_manifest_id(r.get(1))?))).transpose()
    }

    /// The manifest id of a published version, if there is one.
    pub async fn release_manifest(&self, app_id: i64, version: &str) -> Result<Option<ManifestId>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT manifest_id FROM releases WHERE app_id = $1 AND version = $2", &[&app_id, &version])
            .await?;
        row.map(|r| {
            let id: &[u8] = r.get(0);
            ManifestId::from_slice(id).ok_or_else(|| StoreError::Integrity("stored manifest id is not 32 bytes".into()))
        })
        .transpose()
    }

    /// Stores a prepared manifest, or marks it used again (a publish in
    /// progress keeps its manifest and chunks from garbage collection).
    pub async fn save_manifest(&self, tenant_id: i64, manifest: &SavedManifest<'_>) -> Result<(), StoreError> {
        let client = self.client().await?;
        let owner = manifest.owner.as_ref();
        client
            .execute(
                "INSERT INTO manifests (tenant_id, id, content_id, owner_tenant, owner_app, body) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, id) DO UPDATE SET touched_at = now()",
                &[
                    &tenant_id,
                    &manifest.id.0.as_slice(),
                    &manifest.content_id.0.as_slice(),
                    &owner.map(|o| o.tenant.as_str()),
                    &owner.map(|o| o.app.as_str()),
                    &manifest.body,
                ],
            )
            .await?;
        Ok(())
    }

    /// Marks a prepared manifest used now (a commit is working on it).
    pub async fn touch_manifest(&self, tenant_id: i64, id: ManifestId) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE manifests SET touched_at = now() WHERE tenant_id = $1 AND id = $2",
                &[&tenant_id, &id.0.as_slice()],
            )
            .await?;
        Ok(())
    }

    /// The connection pool, for the domain crates (reports, alerts) that
    /// own their queries on tables this crate's migrations create.
    /// A pooled connection; how long it took to get one (a wait for a free
    /// connection, or a new connection) is recorded as PostgreSQL's
    /// `acquire` latency.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let started = std::time::Instant::now();
        let client = self.pool.get().await?;
        crate::metrics::took("postgresql", "acquire", started);
        Ok(client)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub async fn load_manifest(&self, tenant_id: i64, id: ManifestId) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT body FROM manifests WHERE tenant_id = $1 AND id = $2", &[&tenant_id, &id.0.as_slice()])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Which of `hashes` this tenant already holds.
    pub async fn tenant_chunks(&self, tenant_id: i64, hashes: &[Hash]) -> Result<HashSet<Hash>, StoreError> {
        self.hashes_present(HELD_CHUNKS, Some(&[tenant_id]), hashes).await
    }

    /// The lengths of those of `hashes` the tenant holds with their bytes
    /// somewhere (as [`Meta::tenant_chunks`] counts them).
    pub async fn held_chunk_lens(&self, tenant_id: i64, hashes: &[Hash]) -> Result<HashMap<Hash, u32>, StoreError> {
        let client = self.client().await?;
        let keys: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
        let rows = client
            .query(
                &format!(
                    "SELECT c.hash, c.size FROM chunks c JOIN {HELD_CHUNKS} ON held.hash = c.hash \
                     WHERE held.tenant_id = $1 AND c.hash = ANY($2)"
                ),
                &[&tenant_id, &keys],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let hash: &[u8] = r.get(0);
                let hash = <[u8; 32]>::try_from(hash)
                    .map_err(|_| StoreError::Integrity("stored chunk hash is not 32 bytes".into()))?;
                Ok((Hash::from_bytes(hash), r.get::<_, i32>(1) as u32))
            })
            .collect()
    }

    /// Which of `hashes` are rows of `table` (of any of `tenants`, if
    /// given). `table` is one of this crate's constants (a table, or
    /// [`HELD_CHUNKS`]), never input.
    pub(crate) async fn hashes_present(
        &self,
        table: &'static str,
        tenants: Option<&[i64]>,
        hashes: &[Hash],
    ) -> Result<HashSet<Hash>, StoreError> {
        let client = self.client().await?;
        let mut present = HashSet::new();
        // Batches keep each statement's parameter small on huge manifests.
        for batch in hashes.chunks(10_000) {
            let keys: Vec<&[u8]> = batch.iter().map(|h| h.as_bytes().as_slice()).collect();
            let rows = match tenants {
                Some(tenants) => {
                    let sql = format!("SELECT hash FROM {table} WHERE tenant_id = ANY($1) AND hash = ANY($2)");
                    client.query(&sql, &[&tenants, &keys]).await?
                }
                None => client.query(&format!("SELECT hash FROM {table} WHERE hash = ANY($1)"), &[&keys]).await?,
            };
            present.extend(
                rows.iter().filter_map(|r| <[u8; 32]>::try_from(r.get::<_, &[u8]>(0)).ok()).map(Hash::from_bytes),
            );
        }
        Ok(present)
    }

    /// Records that a chunk is in S3 and that the tenant holds it. Returns
    /// whether the tenant did not hold it before.
    pub async fn record_chunk(&self, tenant_id: i64, hash: &Hash, size: u32) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let key = hash.as_bytes().as_slice();
        // Its object is needed again unless its bytes are in a file (then
        // the object just written is left for garbage collection).
        tx.execute(
            "INSERT INTO chunks (hash, size) VALUES ($1, $2) ON CONFLICT (hash) DO UPDATE SET in_object = true \
             WHERE NOT chunks.in_object AND NOT EXISTS (SELECT 1 FROM chunk_places p WHERE p.hash = chunks.hash)",
            &[&key, &(size as i32)],
        )
        .await?;
        let n = tx
            .execute(
                "INSERT INTO tenant_chunks (tenant_id, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&tenant_id, &key],
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Which of `hashes` are assembled in S3 as whole files (by anyone).
    pub async fn files_stored(&self, hashes: &[Hash]) -> Result<HashSet<Hash>, StoreError> {
        self.hashes_present("files", None, hashes).await
    }

    /// Which of `hashes` this tenant has proved it can rebuild.
    pub async fn tenant_files(&self, tenant_id: i64, hashes: &[Hash]) -> Result<HashSet<Hash>, StoreError> {
        self.hashes_present("tenant_files", Some(&[tenant_id]), hashes).await
    }

    /// Records that a whole file is assembled in S3 and that the tenant's
    /// chunks rebuild it.
    pub async fn record_file(&self, tenant_id: i64, hash: &Hash, size: u64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let size = i64::try_from(size).map_err(|_| StoreError::Integrity("file size overflows".into()))?;
        let key = hash.as_bytes().as_slice();
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO files (hash, size) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&key, &size]).await?;
        tx.execute(
            "INSERT INTO tenant_files (tenant_id, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&tenant_id, &key],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Publishes a release (and deploys it if asked), atomically. Publishing
    /// the same manifest under the same version again is a no-op; anything
    /// else under a version of the same precedence (the same version, or
    /// one differing only in build metadata) is a [`StoreError::Conflict`]
    /// naming the release already there.
    ///
    /// See [`CommitOptions`] for the rest.
    pub async fn commit_release(
        &self,
        tenant_id: i64,
        app_id: i64,
        version: &ferry_release::Version,
        manifest: ManifestId,
        options: CommitOptions<'_>,
    ) -> Result<CommitOutcome, StoreError> {
        let CommitOptions { deploy, compatible, location_id } = options;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let text = version.to_string();
        // Any unique conflict (same version, or same precedence) leaves the
        // row that won; it is then read and judged below. The unique index
        // makes a concurrent insert wait for the winner's commit.
        let inserted = tx
            .query_opt(
                "INSERT INTO releases (tenant_id, app_id, version, manifest_id, location_id, precedence) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
                &[&tenant_id, &app_id, &text, &manifest.0.as_slice(), &location_id, &precedence(version)],
            )
            .await?;
        let created = inserted.is_some();
        let release_id: i64 = match inserted {
            Some(row) => row.get(0),
            None => {
                let row = tx
                    .query_one(
                        "SELECT id, version, manifest_id FROM releases WHERE app_id = $1 AND precedence = $2",
                        &[&app_id, &precedence(version)],
                    )
                    .await?;
                let existing = (row.get::<_, String>(1), stored_manifest_id(row.get(2))?);
                ensure_same_release(&existing, version, manifest)?;
                row.get(0)
            }
        };
        if let Some(compatible) = compatible {
            set_compatible(&tx, release_id, compatible).await?;
        }
        if deploy {
            record_deploy(&tx, app_id, release_id).await?;
        }
        tx.commit().await?;
        Ok(CommitOutcome { created, deployed: deploy })
    }

    /// Records `version` (already published) as deployed, and with
    /// `compatible` sets its compatible client versions.
    pub async fn deploy(
        &self,
        app_id: i64,
        version: &str,
        compatible: Option<&str>,
    ) -> Result<DeployOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The app row first, as a yank takes it, before the release row
        // (`set_compatible`): the two never wait on each other in turn.
        tx.execute("SELECT 1 FROM apps WHERE id = $1 FOR NO KEY UPDATE", &[&app_id]).await?;
        let row =
            tx.query_opt("SELECT id FROM releases WHERE app_id = $1 AND version = $2", &[&app_id, &version]).await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!(
                "version {version} is not published; publish it before deploying"
            )));
        };
        if let Some(compatible) = compatible {
            set_compatible(&tx, row.get(0), compatible).await?;
        }
        let previous = record_deploy(&tx, app_id, row.get(0)).await?;
        tx.commit().await?;
        Ok(DeployOutcome { previous })
    }

    /// The version deployed now, if any.
    pub async fn deployed_version(&self, app_id: i64) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT r.version FROM apps a JOIN releases r ON r.id = a.deployed_release_id WHERE a.id = $1",
                &[&app_id],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// Sets a release's compatible client versions (only when they change, so
/// an unchanged retry announces nothing).
async fn set_compatible(
    tx: &deadpool_postgres::Transaction<'_>,
    release_id: i64,
    compatible: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE releases SET compatible = $2 WHERE id = $1 AND compatible IS DISTINCT FROM $2",
        &[&release_id, &compatible],
    )
    .await?;
    Ok(())
}

/// Points the app at a release and appends to its deploy history; returns
/// the version deployed before.
async fn record_deploy(
    tx: &deadpool_postgres::Transaction<'_>,
    app_id: i64,
    release_id: i64,
) -> Result<Option<String>, StoreError> {
    // The row lock serialises concurrent deploys of one app, so "previous"
    // is exact and the history order matches the pointer. NO KEY UPDATE:
    // inserting a release holds KEY SHARE on the app row, which a plain
    // FOR UPDATE would deadlock against.
    let previous = tx
        .query_one(
            "SELECT r.version FROM apps a LEFT JOIN releases r ON r.id = a.deployed_release_id \
             WHERE a.id = $1 FOR NO KEY UPDATE OF a",
            &[&app_id],
        )
        .await?
        .get::<_, Option<String>>(0);
    // Under the app row's lock, as a yank checks the deployed release.
    let yanked = tx.query_one("SELECT version, yank_reason FROM releases WHERE id = $1", &[&release_id]).await?;
    if let Some(reason) = yanked.get::<_, Option<String>>(1) {
        return Err(StoreError::Precondition(format!(
            "version {} was yanked ({reason}); it cannot be deployed: publish a new version",
            yanked.get::<_, String>(0)
        )));
    }
    tx.execute("UPDATE apps SET deployed_release_id = $2 WHERE id = $1", &[&app_id, &release_id]).await?;
    tx.execute("INSERT INTO deployments (app_id, release_id) VALUES ($1, $2)", &[&app_id, &release_id]).await?;
    Ok(previous)
}

/// What orders a version, without build metadata (semver item 11; `1.0`
/// and `1.0.0` of a dotted app are one version), as the
/// `releases.precedence` column holds it.
fn precedence(version: &ferry_release::Version) -> String {
    version.precedence()
}

/// A stored version scheme (the column's CHECK keeps it one of three).
fn versioning(stored: &str) -> Result<Versioning, StoreError> {
    stored.parse().map_err(StoreError::Integrity)
}

fn stored_manifest_id(bytes: &[u8]) -> Result<ManifestId, StoreError> {
    ManifestId::from_slice(bytes).ok_or_else(|| StoreError::Integrity("stored manifest id is not 32 bytes".into()))
}

/// Judges a release already published with the same precedence as
/// `version`: fine when it is this very release (publishing again is a
/// no-op), a [`StoreError::Conflict`] naming it otherwise (versions are
/// immutable, and build metadata does not tell versions apart).
pub fn ensure_same_release(
    (existing_version, existing_manifest): &(String, ManifestId),
    version: &ferry_release::Version,
    manifest: ManifestId,
) -> Result<(), StoreError> {
    if *existing_version != version.to_string() {
        return Err(StoreError::Conflict(format!(
            "version {version} has the same precedence as the published version {existing_version} (build metadata \
             does not order versions, nor do trailing zeros of dotted versions, so clients could not tell them \
             apart); publish a new version instead"
        )));
    }
    if *existing_manifest != manifest {
        return Err(StoreError::Conflict(format!(
            "version {version} is already published with different content (manifest {existing_manifest}); \
             versions are immutable, publish a new version instead"
        )));
    }
    Ok(())
}

fn unique_violation(e: tokio_postgres::Error, message: impl FnOnce() -> String) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) { StoreError::Conflict(message()) } else { e.into() }
}
