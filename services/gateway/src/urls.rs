//! Presigned download URLs, made once per file and handed out while they
//! have at least half the configured lifetime left, judged against each
//! URL's own expiry (which presigning shortens to the signing credentials'
//! expiry). Presigning costs ~30 µs; reuse keeps the hot path cheap. A
//! file is signed per location (S1-9): the same bytes in another tenant's
//! bucket, or behind another CDN host name, get their own URL.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_release::Hash;
use ferry_store::{Blobs, Location};
use moka::future::Cache;

use crate::core::Clock;
use crate::error::GatewayError;

/// A presigned URL and when S3 stops honouring it.
#[derive(Clone)]
pub(crate) struct PresignedUrl {
    pub(crate) url: Arc<str>,
    pub(crate) expires_at: SystemTime,
}

/// What a URL is for: a file at a location, or a patch (always in the
/// registry's bucket).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Object {
    File(Option<i64>, Hash),
    Patch(Hash),
}

pub(crate) struct Urls {
    cache: Cache<Object, PresignedUrl>,
    blobs: Blobs,
    lifetime: Duration,
    /// The least validity a URL handed out has left: half the lifetime.
    min_remaining: Duration,
    clock: Clock,
}

impl Urls {
    pub(crate) fn new(blobs: Blobs, lifetime: Duration, clock: Clock) -> Self {
        // Entries stop being useful once less than half their lifetime
        // remains; the TTL only bounds memory, `get` judges validity.
        let cache = Cache::builder().max_capacity(1_000_000).time_to_live(lifetime / 2).build();
        Self { cache, blobs, lifetime, min_remaining: lifetime / 2, clock }
    }

    /// The least validity every URL handed out still has.
    pub(crate) fn min_remaining(&self) -> Duration {
        self.min_remaining
    }

    /// A URL for `hash` that stays valid for at least [`Urls::min_remaining`]
    /// from now: the cached one while it does, else a freshly signed one,
    /// at `location` (`None`: the registry's bucket).
    pub(crate) async fn get(&self, hash: &Hash, location: Option<&Location>) -> Result<PresignedUrl, GatewayError> {
        self.url(Object::File(location.map(|l| l.id), *hash), location).await
    }

    /// A URL for the patch named `hash`, as [`Urls::get`].
    pub(crate) async fn patch(&self, hash: &Hash) -> Result<PresignedUrl, GatewayError> {
        self.url(Object::Patch(*hash), None).await
    }

    async fn url(&self, key: Object, location: Option<&Location>) -> Result<PresignedUrl, GatewayError> {
        let now = (self.clock)();
        if let Some(url) = self.cache.get(&key).await
            && url.expires_at >= now + self.min_remaining
        {
            return Ok(url);
        }
        let (url, expires_at) = match key {
            Object::File(_, hash) if location.is_some() => {
                self.blobs.at(location).presign_file_from(&hash, now, self.lifetime).await?
            }
            Object::File(_, hash) => self.blobs.presign_file_from(&hash, now, self.lifetime).await?,
            Object::Patch(hash) => self.blobs.presign_patch_from(&hash, now, self.lifetime).await?,
        };
        if expires_at < now + self.min_remaining {
            tracing::warn!(
                left_seconds = expires_at.duration_since(now).unwrap_or_default().as_secs(),
                "s3 signing credentials expire too soon for a presigned url"
            );
            return Err(GatewayError::unavailable(
                "download links cannot be signed for long enough right now (the signing credentials expire too soon); retry later",
            ));
        }
        let url = PresignedUrl { url: Arc::from(url), expires_at };
        self.cache.insert(key, url.clone()).await;
        Ok(url)
    }
}
