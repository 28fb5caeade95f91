//! Download locations (S1-9): where a tenant's files are assembled and
//! what endpoint their presigned URLs name. Spreading tenants over buckets
//! (or over CDN host names in front of them) keeps any one location's load,
//! and any third party's throttling of it, down.
//!
//! By default every tenant shares the registry's bucket (`files/<hash>`).
//! A tenant placed on a location gets `<prefix>files/<hash>` in the
//! location's bucket for the releases published from then on; each release
//! remembers its location, so moving a tenant never breaks a link already
//! handed out. A location in the registry's own bucket without a prefix
//! only names another host in URLs: its files are the registry's own.
//! Prefixes never start with `files/` or `chunks/`, so a location's objects
//! never mix with the registry's (which garbage collection sweeps).

use std::collections::HashSet;

use ferry_release::{Hash, Name};

use crate::error::StoreError;
use crate::meta::Meta;

/// A bucket, a key prefix in it, and the endpoint phones reach it by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub id: i64,
    pub bucket: String,
    /// Prepended to `files/<hash>`; empty or ending in `/`.
    pub prefix: String,
    /// Scheme and host (and port) put in presigned URLs instead of the
    /// registry's public endpoint; `None`: that one.
    pub public_endpoint: Option<String>,
}

/// Why a location's settings are refused: each names the flag.
pub fn validate_location(bucket: &str, prefix: &str, public_endpoint: Option<&str>) -> Result<(), String> {
    // S3's bucket naming rules, which every S3-compatible store accepts.
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if !bucket_ok {
        return Err(format!(
            "--bucket: {bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
        ));
    }
    if !prefix.is_empty() {
        let segments_ok = prefix.strip_suffix('/').is_some_and(|p| {
            p.split('/').all(|s| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
        });
        if prefix.starts_with("files/") || prefix.starts_with("chunks/") {
            return Err(format!(
                "--prefix: {prefix:?} would mix a tenant's files with the registry's own files/ and chunks/; \
                 choose another (e.g. tenants/acme/)"
            ));
        }
        if !segments_ok || prefix.len() > 200 {
            return Err(format!(
                "--prefix: {prefix:?} must be path segments of letters, digits, '-', '_' and '.', ending in '/' \
                 (e.g. tenants/acme/)"
            ));
        }
    }
    if let Some(endpoint) = public_endpoint {
        validate_endpoint(endpoint).map_err(|e| format!("--public-endpoint: {e}"))?;
    }
    Ok(())
}

/// A public endpoint: `https://host[:port]` (or `http://` for local use),
/// with no path, query or user.
pub fn validate_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("https" | "http"));
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if !scheme_ok || authority.is_empty() || authority.contains('@') {
        return Err(format!("{endpoint:?} must be https://host[:port] (or http:// for local use)"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{endpoint:?} must have no path or query (objects are addressed path-style under it)"));
    }
    Ok(())
}

impl Meta {
    /// Places `tenant`'s new releases on a location (created if new); the
    /// releases it has keep theirs.
    pub async fn set_location(
        &self,
        tenant: &Name,
        bucket: &str,
        prefix: &str,
        public_endpoint: Option<&str>,
    ) -> Result<Location, StoreError> {
        validate_location(bucket, prefix, public_endpoint).map_err(StoreError::Mismatch)?;
        let tenant_id = self.tenant_id(tenant).await?;
        let endpoint = public_endpoint.unwrap_or_default().trim_end_matches('/');
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO locations (bucket, prefix, public_endpoint) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&bucket, &prefix, &endpoint],
        )
        .await?;
        let id: i64 = tx
            .query_one(
                "SELECT id FROM locations WHERE bucket = $1 AND prefix = $2 AND public_endpoint = $3",
                &[&bucket, &prefix, &endpoint],
            )
            .await?
            .get(0);
        tx.execute("UPDATE tenants SET location_id = $2 WHERE id = $1", &[&tenant_id, &id]).await?;
        tx.commit().await?;
        Ok(Location {
            id,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            public_endpoint: Some(endpoint.to_owned()).filter(|e| !e.is_empty()),
        })
    }

    /// Puts `tenant`'s new releases back in the registry's bucket.
    pub async fn clear_location(&self, tenant: &Name) -> Result<(), StoreError> {
        let tenant_id = self.tenant_id(tenant).await?;
        let client = self.client().await?;
        client.execute("UPDATE tenants SET location_id = NULL WHERE id = $1", &[&tenant_id]).await?;
        Ok(())
    }

    /// Where `tenant_id`'s new releases go (`None`: the registry's bucket).
    pub async fn tenant_location(&self, tenant_id: i64) -> Result<Option<Location>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT l.id, l.bucket, l.prefix, l.public_endpoint FROM tenants t \
                 JOIN locations l ON l.id = t.location_id WHERE t.id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(row.map(|r| location(&r, 0)))
    }

    /// Which of `hashes` are assembled at `location` (by anyone), and which
    /// `tenant_id` proved it can rebuild there.
    pub async fn location_files(
        &self,
        location_id: i64,
        tenant_id: i64,
        hashes: &[Hash],
    ) -> Result<(HashSet<Hash>, HashSet<Hash>), StoreError> {
        let client = self.client().await?;
        let (mut stored, mut proved) = (HashSet::new(), HashSet::new());
        for batch in hashes.chunks(10_000) {
            let keys: Vec<&[u8]> = batch.iter().map(|h| h.as_bytes().as_slice()).collect();
            let rows = client
                .query(
                    "SELECT hash, bool_or(tenant_id = $2) FROM location_files \
                     WHERE location_id = $1 AND hash = ANY($3) GROUP BY hash",
                    &[&location_id, &tenant_id, &keys],
                )
                .await?;
            for row in rows {
                let Ok(bytes) = <[u8; 32]>::try_from(row.get::<_, &[u8]>(0)) else { continue };
                let hash = Hash::from_bytes(bytes);
                stored.insert(hash);
                if row.get::<_, bool>(1) {
                    proved.insert(hash);
                }
            }
        }
        Ok((stored, proved))
    }

    /// Records that a file is assembled at `location_id` and that
    /// `tenant_id`'s chunks rebuild it.
    pub async fn record_location_file(
        &self,
        location_id: i64,
        tenant_id: i64,
        hash: &Hash,
        size: u64,
    ) -> Result<(), StoreError> {
        let size = i64::try_from(size).map_err(|_| StoreError::Integrity("file size overflows".into()))?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO location_files (location_id, tenant_id, hash, size) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&location_id, &tenant_id, &hash.as_bytes().as_slice(), &size],
            )
            .await?;
        Ok(())
    }
}

/// A location from columns `at..at + 4` (id, bucket, prefix, endpoint).
pub(crate) fn location(row: &tokio_postgres::Row, at: usize) -> Location {
    let endpoint: String = row.get(at + 3);
    Location {
        id: row.get(at),
        bucket: row.get(at + 1),
        prefix: row.get(at + 2),
        public_endpoint: Some(endpoint).filter(|e| !e.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_validated_naming_the_flag() {
        assert!(validate_location("ferry-acme", "", None).is_ok());
        assert!(validate_location("ferry-acme", "tenants/acme/", Some("https://cdn-1.example.com")).is_ok());
        assert!(validate_location("ferry", "", Some("http://127.0.0.1:9000/")).is_ok());
        for (bucket, prefix, endpoint, flag) in [
            ("Ferry", "", None, "--bucket"),
            ("ab", "", None, "--bucket"),
            ("-ferry", "", None, "--bucket"),
            ("fe..rry", "", None, "--bucket"),
            ("ferry", "acme", None, "--prefix"),
            ("ferry", "/acme/", None, "--prefix"),
            ("ferry", "a/../b/", None, "--prefix"),
            ("ferry", "a b/", None, "--prefix"),
            ("ferry", "files/acme/", None, "--prefix"),
            ("ferry", "chunks/", None, "--prefix"),
            ("ferry", "", Some("cdn.example.com"), "--public-endpoint"),
            ("ferry", "", Some("ftp://cdn.example.com"), "--public-endpoint"),
            ("ferry", "", Some("https://cdn.example.com/files"), "--public-endpoint"),
            ("ferry", "", Some("https://user@cdn.example.com"), "--public-endpoint"),
            ("ferry", "", Some("https://cdn.example.com/?a=b"), "--public-endpoint"),
        ] {
            let err = validate_location(bucket, prefix, endpoint).unwrap_err();
            assert!(err.starts_with(flag), "{bucket} {prefix} {endpoint:?}: {err}");
        }
    }
}
