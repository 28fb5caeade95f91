//! `publisher` keys: the vendor's build pipeline publishes variants for a
//! set of tenants with one key (S1-2, S1-5). What is missing is answered
//! across the set, and what one tenant of the set holds is claimed for
//! another at prepare and commit, so the bytes are sent and stored once.
//!
//! The trust this takes: a publisher key is trusted with everything its
//! tenants hold, including what their own agent keys uploaded (it can learn
//! whether any of them holds a chunk, and use it in another's release). Issue
//! one only for tenants whose releases its holder builds, as the vendor's
//! pipeline does; a tenant that publishes content of its own that the
//! vendor must not see is left out of every publisher key.

use std::collections::HashSet;

use ferry_release::{Hash, Name};

use crate::error::StoreError;
use crate::keys::{ApiKey, KeyRole};
use crate::meta::Meta;

/// A live publisher key and the tenants it may publish for.
#[derive(Clone)]
pub struct PublisherRecord {
    pub key_id: String,
    /// (id, name), ordered by name.
    pub tenants: Vec<(i64, Name)>,
    secret_hash: [u8; 32],
}

impl std::fmt::Debug for PublisherRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherRecord")
            .field("key_id", &self.key_id)
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

impl PublisherRecord {
    /// Whether `key` is this key (same id, role and secret), in constant
    /// time for the secret.
    pub fn matches(&self, key: &ApiKey) -> bool {
        key.id == self.key_id && key.role == KeyRole::Publisher && key.matches(&self.secret_hash)
    }

    /// The id of `tenant`, if this key may publish for it.
    pub fn tenant_id(&self, tenant: &Name) -> Option<i64> {
        self.tenants.iter().find(|(_, name)| name == tenant).map(|(id, _)| *id)
    }

    pub fn tenant_ids(&self) -> Vec<i64> {
        self.tenants.iter().map(|(id, _)| *id).collect()
    }
}

impl Meta {
    /// Creates a `publisher` key for exactly `tenants` (each must exist).
    pub async fn issue_publisher_key(&self, tenants: &[Name]) -> Result<ApiKey, StoreError> {
        if tenants.is_empty() {
            return Err(StoreError::Mismatch("a publisher key needs at least one tenant".into()));
        }
        let key = ApiKey::generate(KeyRole::Publisher);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let names: Vec<&str> = tenants.iter().map(Name::as_str).collect();
        let found: Vec<String> = tx
            .query("SELECT name FROM tenants WHERE name = ANY($1)", &[&names])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(unknown) = names.iter().find(|n| !found.iter().any(|f| f == *n)) {
            return Err(StoreError::NotFound(format!("tenant {unknown} does not exist")));
        }
        tx.execute(
            "INSERT INTO api_keys (id, role, secret_hash) VALUES ($1, 'publisher', $2)",
            &[&key.id, &key.secret_hash().as_slice()],
        )
        .await?;
        tx.execute(
            "INSERT INTO key_tenants (key_id, tenant_id) SELECT $1, id FROM tenants WHERE name = ANY($2)",
            &[&key.id, &names],
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The live publisher key with this id and its tenants.
    pub async fn publisher_record(&self, key_id: &str) -> Result<Option<PublisherRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT k.secret_hash, t.id, t.name FROM api_keys k \
                 JOIN key_tenants kt ON kt.key_id = k.id JOIN tenants t ON t.id = kt.tenant_id \
                 WHERE k.id = $1 AND k.role = 'publisher' AND k.revoked_at IS NULL ORDER BY t.name",
                &[&key_id],
            )
            .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let secret_hash = <[u8; 32]>::try_from(first.get::<_, &[u8]>(0))
            .map_err(|_| StoreError::Integrity("stored key hash is not 32 bytes".into()))?;
        let mut tenants = Vec::with_capacity(rows.len());
        for row in &rows {
            let name = Name::parse("tenant", row.get(2))
                .map_err(|e| StoreError::Integrity(format!("stored tenant name: {e}")))?;
            tenants.push((row.get(1), name));
        }
        Ok(Some(PublisherRecord { key_id: key_id.to_owned(), tenants, secret_hash }))
    }

    /// Which of `hashes` any tenant of `scope` holds; those `tenant_id`
    /// (one of `scope`) did not hold yet are claimed for it, so its commit
    /// finds them as if it had uploaded them itself. One statement claims,
    /// so a chunk collected meanwhile is simply not claimed (and is sent).
    pub async fn claim_chunks(
        &self,
        tenant_id: i64,
        scope: &[i64],
        hashes: &[Hash],
    ) -> Result<HashSet<Hash>, StoreError> {
        let client = self.client().await?;
        for batch in hashes.chunks(10_000) {
            let keys: Vec<&[u8]> = batch.iter().map(|h| h.as_bytes().as_slice()).collect();
            client
                .execute(
                    "INSERT INTO tenant_chunks (tenant_id, hash) \
                     SELECT DISTINCT $1::bigint, hash FROM tenant_chunks WHERE tenant_id = ANY($2) AND hash = ANY($3) \
                     ON CONFLICT DO NOTHING",
                    &[&tenant_id, &scope, &keys],
                )
                .await?;
        }
        self.tenant_chunks(tenant_id, hashes).await
    }

    /// Which of `hashes` any tenant of `scope` proved it can rebuild in the
    /// registry's bucket.
    pub async fn scope_files(&self, scope: &[i64], hashes: &[Hash]) -> Result<HashSet<Hash>, StoreError> {
        self.hashes_present("tenant_files", Some(scope), hashes).await
    }
}
