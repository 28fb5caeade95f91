//! Who is calling: the API key in `Authorization: Bearer <key>`, looked up
//! with bounded cost.
//!
//! A well-formed key whose id is not cached costs a PostgreSQL query, so a
//! caller making up keys could otherwise keep the database busy. Lookups
//! are therefore cached both ways (found keys, and ids known to be missing,
//! in a bounded cache), and lookups that miss are limited: per source
//! address and overall. A source (or, past the global limit, everybody)
//! that made up too many keys has its uncached lookups refused for a while
//! without a query; keys already cached keep working.
//!
//! This crate says who a key belongs to; what it may do (its role, its
//! tenant) is decided by each service.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_store::{ApiKey, Authenticated, KeyRecord, KeyRole, Meta, PublisherRecord, StoreError};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How many ids known to be missing are remembered (bounded, whatever a
/// caller sends).
const MISSING_CAPACITY: u64 = 100_000;

/// Limits on lookups of keys that turn out not to exist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MissLimits {
    /// Misses per second allowed from one source address (and burst).
    pub per_source: (f64, u32),
    /// Misses per second allowed from everybody together (and burst).
    pub global: (f64, u32),
    /// How long found keys stay cached (`None`: looked up on every call),
    /// the longest a revoked key keeps working if its change notice is
    /// lost; a service that caches them applies key change notices with
    /// [`Keys::invalidate`].
    pub found_ttl: Option<Duration>,
    /// How long ids known to be missing are remembered.
    pub missing_ttl: Duration,
}

impl Default for MissLimits {
    fn default() -> Self {
        Self {
            per_source: (2.0, 20),
            global: (100.0, 500),
            found_ttl: Some(Duration::from_secs(120)),
            missing_ttl: Duration::from_secs(120),
        }
    }
}

/// The unknown-key limits every service takes, as flags and environment
/// variables (flattened into each service's configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct MissArgs {
    /// Lookups of unknown keys allowed per second from one address (then
    /// its new keys are refused for a while; known keys still work).
    #[arg(long, env = "FERRY_AUTH_MISS_RATE_PER_SOURCE", default_value_t = 2.0)]
    pub auth_miss_rate_per_source: f64,
    /// Burst of unknown-key lookups per address.
    #[arg(long, env = "FERRY_AUTH_MISS_BURST_PER_SOURCE", default_value_t = 20)]
    pub auth_miss_burst_per_source: u32,
    /// Lookups of unknown keys allowed per second from everybody.
    #[arg(long, env = "FERRY_AUTH_MISS_RATE", default_value_t = 100.0)]
    pub auth_miss_rate: f64,
    /// Burst of unknown-key lookups from everybody.
    #[arg(long, env = "FERRY_AUTH_MISS_BURST", default_value_t = 500)]
    pub auth_miss_burst: u32,
}

impl MissArgs {
    /// The validated limits, with found keys cached for `found_ttl` and
    /// missing ids remembered for `missing_ttl`; the error names the
    /// setting.
    pub fn limits(&self, found_ttl: Option<Duration>, missing_ttl: Duration) -> Result<MissLimits, String> {
        for (name, rate, burst) in [
            (
                "FERRY_AUTH_MISS_RATE_PER_SOURCE/FERRY_AUTH_MISS_BURST_PER_SOURCE",
                self.auth_miss_rate_per_source,
                self.auth_miss_burst_per_source,
            ),
            ("FERRY_AUTH_MISS_RATE/FERRY_AUTH_MISS_BURST", self.auth_miss_rate, self.auth_miss_burst),
        ] {
            if !(rate.is_finite() && rate > 0.0) || burst == 0 {
                return Err(format!("{name} must be a positive rate and a burst of at least 1"));
            }
        }
        Ok(MissLimits {
            per_source: (self.auth_miss_rate_per_source, self.auth_miss_burst_per_source),
            global: (self.auth_miss_rate, self.auth_miss_burst),
            found_ttl,
            missing_ttl,
        })
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No usable credential: missing, malformed, unknown, revoked, or a
    /// wrong secret (callers cannot tell which, on purpose).
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many made-up keys from this source (or overall): retry later.
    #[error("too many requests with unknown keys; retry later")]
    Throttled { retry_after: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Key lookups for one service. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Meta,
    found: Option<moka::sync::Cache<String, KeyRecord>>,
    /// By role and id: a made-up token of another role under a real key's
    /// id must not make that key look missing.
    missing: moka::sync::Cache<(KeyRole, String), ()>,
    per_source: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
    clock: DefaultClock,
    /// Sources refused until (milliseconds since `start`).
    blocked_sources: moka::sync::Cache<IpAddr, u64>,
    /// Everybody's uncached lookups refused until then.
    blocked_all_until: AtomicU64,
    start: Instant,
}

/// Found keys expire after the TTL less up to a quarter at random: keys read
/// together (after a restart) are not all read again at the same moment.
struct Jittered(Duration);

impl moka::Expiry<String, KeyRecord> for Jittered {
    fn expire_after_create(&self, key: &String, _: &KeyRecord, _: std::time::Instant) -> Option<Duration> {
        use std::hash::BuildHasher;
        // A freshly seeded hasher per call: a cheap random fraction.
        let fraction = std::collections::hash_map::RandomState::new().hash_one(key) as f64 / u64::MAX as f64;
        Some(self.0.saturating_sub((self.0 / 4).mul_f64(fraction)))
    }
}

fn quota((per_second, burst): (f64, u32)) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).expect("at least one");
    Quota::with_period(Duration::from_secs_f64(1.0 / per_second.max(1e-6)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

impl Keys {
    /// Must be created inside a Tokio runtime (a task forgets quiet
    /// sources).
    pub fn new(meta: Meta, limits: MissLimits) -> Self {
        let per_source = RateLimiter::keyed(quota(limits.per_source));
        let inner = Arc::new(Inner {
            meta,
            found: limits
                .found_ttl
                .map(|ttl| moka::sync::Cache::builder().max_capacity(1_000_000).expire_after(Jittered(ttl)).build()),
            missing: moka::sync::Cache::builder()
                .max_capacity(MISSING_CAPACITY)
                .time_to_live(limits.missing_ttl)
                .build(),
            per_source,
            global: RateLimiter::direct(quota(limits.global)),
            clock: DefaultClock::default(),
            blocked_sources: moka::sync::Cache::builder()
                .max_capacity(MISSING_CAPACITY)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            blocked_all_until: AtomicU64::new(0),
            start: Instant::now(),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.per_source.retain_recent();
                inner.per_source.shrink_to_fit();
            }
        });
        Self { inner }
    }

    /// The owner of the key in an `Authorization` header value (`Bearer
    /// <key>`), asked from `source`.
    pub async fn authenticate_header(
        &self,
        authorization: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<Authenticated, AuthError> {
        let key = parse_bearer(authorization)?;
        self.authenticate(&key, source).await
    }

    /// The caller in an `Authorization` header value: a key of one tenant,
    /// or a `publisher` key and its tenants (the registry takes both).
    pub async fn authenticate_caller(
        &self,
        authorization: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        let key = parse_bearer(authorization)?;
        if key.role == KeyRole::Publisher {
            return self.authenticate_publisher(&key, source).await.map(Caller::Publisher);
        }
        self.authenticate(&key, source).await.map(Caller::Tenant)
    }

    /// The tenants a `publisher` key may publish for, asked from `source`;
    /// unknown keys count against the same limits as any other. Publisher
    /// keys are never cached: they are used by few, rarely.
    pub async fn authenticate_publisher(
        &self,
        key: &ApiKey,
        source: Option<IpAddr>,
    ) -> Result<PublisherRecord, AuthError> {
        let unknown = || AuthError::Unauthenticated("unknown or revoked api key".into());
        let Some(now) = self.admit(key, source)? else { return Err(unknown()) };
        match self.inner.meta.publisher_record(&key.id).await? {
            Some(record) if record.matches(key) => Ok(record),
            Some(_) => Err(unknown()),
            None => {
                self.inner.missing.insert((key.role, key.id.clone()), ());
                self.count_miss(source, now);
                Err(unknown())
            }
        }
    }

    /// Whether an uncached lookup of `key` may go to the database: the
    /// time now (for [`Keys::count_miss`]), or `None` when the id is known
    /// to be missing; an error while its source (or everybody) is blocked.
    fn admit(&self, key: &ApiKey, source: Option<IpAddr>) -> Result<Option<u64>, AuthError> {
        let inner = &self.inner;
        if inner.missing.contains_key(&(key.role, key.id.clone())) {
            return Ok(None);
        }
        let now = inner.start.elapsed().as_millis() as u64;
        let blocked_until = inner.blocked_all_until.load(Ordering::Relaxed);
        let source_until = source.and_then(|s| inner.blocked_sources.get(&s)).unwrap_or(0);
        let until = blocked_until.max(source_until);
        if until > now {
            return Err(AuthError::Throttled { retry_after: Duration::from_millis(until - now) });
        }
        Ok(Some(now))
    }

    /// The owner of `key`, asked from `source`.
    pub async fn authenticate(&self, key: &ApiKey, source: Option<IpAddr>) -> Result<Authenticated, AuthError> {
        let record = self.record(key, source).await?;
        record.and_then(|r| r.check(key)).ok_or_else(|| AuthError::Unauthenticated("unknown or revoked api key".into()))
    }

    async fn record(&self, key: &ApiKey, source: Option<IpAddr>) -> Result<Option<KeyRecord>, AuthError> {
        let inner = &self.inner;
        let key_id = key.id.as_str();
        if let Some(record) = inner.found.as_ref().and_then(|f| f.get(key_id)) {
            return Ok(Some(record));
        }
        let Some(now) = self.admit(key, source)? else { return Ok(None) };
        match inner.meta.key_record(key_id).await? {
            Some(record) => {
                if let Some(found) = &inner.found {
                    found.insert(key_id.to_owned(), record.clone());
                }
                Ok(Some(record))
            }
            None => {
                inner.missing.insert((key.role, key_id.to_owned()), ());
                self.count_miss(source, now);
                Ok(None)
            }
        }
    }

    /// Charges a miss to its source and to everybody; the miss that finds a
    /// budget spent makes further uncached lookups (from that source, or
    /// from everybody) refused until the budget allows one again.
    fn count_miss(&self, source: Option<IpAddr>, now: u64) {
        let inner = &self.inner;
        if let Some(source) = source
            && let Err(not_until) = inner.per_source.check_key(&source)
        {
            let wait = not_until.wait_time_from(inner.clock.now());
            inner.blocked_sources.insert(source, now + wait.as_millis() as u64 + 1);
            tracing::warn!(%source, "too many unknown api keys from one source; refusing its new keys for a while");
        }
        if let Err(not_until) = inner.global.check() {
            let wait = not_until.wait_time_from(inner.clock.now());
            inner.blocked_all_until.store(now + wait.as_millis() as u64 + 1, Ordering::Relaxed);
            tracing::warn!("too many unknown api keys overall; refusing new keys for a while");
        }
    }

    /// Forgets one key (its change notice arrived).
    pub fn invalidate(&self, key_id: &str) {
        if let Some(found) = &self.inner.found {
            found.invalidate(key_id);
        }
        for role in KeyRole::ALL {
            self.inner.missing.invalidate(&(role, key_id.to_owned()));
        }
    }

    /// Forgets every key (notices may have been missed).
    pub fn invalidate_all(&self) {
        if let Some(found) = &self.inner.found {
            found.invalidate_all();
        }
        self.inner.missing.invalidate_all();
    }
}

/// Who is calling the registry.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A key of one tenant (its role says what it may do).
    Tenant(Authenticated),
    /// A `publisher` key: publishes for each of its tenants.
    Publisher(PublisherRecord),
}

/// The key in an `Authorization` header value.
pub fn parse_bearer(authorization: Option<&str>) -> Result<ApiKey, AuthError> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| AuthError::Unauthenticated("missing or malformed Authorization header (Bearer <key>)".into()))?;
    ApiKey::parse(token.trim()).map_err(|e| AuthError::Unauthenticated(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn miss_limits_name_the_setting_at_fault() {
        let args = MissArgs {
            auth_miss_rate_per_source: 2.0,
            auth_miss_burst_per_source: 20,
            auth_miss_rate: 100.0,
            auth_miss_burst: 500,
        };
        let limits = args.limits(None, Duration::from_secs(7)).unwrap();
        assert_eq!((limits.per_source, limits.global, limits.found_ttl), ((2.0, 20), (100.0, 500), None));
        let err = MissArgs { auth_miss_rate: f64::NAN, ..args.clone() }.limits(None, Duration::ZERO).unwrap_err();
        assert!(err.starts_with("FERRY_AUTH_MISS_RATE/"), "{err}");
        let err = MissArgs { auth_miss_burst_per_source: 0, ..args }.limits(None, Duration::ZERO).unwrap_err();
        assert!(err.starts_with("FERRY_AUTH_MISS_RATE_PER_SOURCE/"), "{err}");
    }

    use ferry_release::Name;
    use ferry_store::KeyRole;

    use super::*;

    async fn meta() -> Meta {
        let url = ferry_testkit::fresh_database().await.unwrap();
        let meta = ferry_store::connect(&url, 2).unwrap();
        meta.migrate().await.unwrap();
        meta
    }

    #[tokio::test]
    async fn made_up_keys_from_one_source_are_refused_without_queries() {
        let meta = meta().await;
        let tenant = Name::parse("tenant", "acme").unwrap();
        meta.create_tenant(&tenant).await.unwrap();
        let real = meta.issue_key(&tenant, KeyRole::Client).await.unwrap();
        let limits = MissLimits { per_source: (0.001, 3), global: (1000.0, 1000), ..MissLimits::default() };
        let keys = Keys::new(meta, limits);
        let (attacker, neighbour): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());

        // The burst of 3 misses, then one more that finds the budget spent.
        for _ in 0..4 {
            let made_up = ApiKey::generate(KeyRole::Client);
            assert!(matches!(keys.authenticate(&made_up, Some(attacker)).await, Err(AuthError::Unauthenticated(_))));
        }
        // From then on made-up keys are refused without a query...
        let made_up = ApiKey::generate(KeyRole::Client);
        let err = keys.authenticate(&made_up, Some(attacker)).await.unwrap_err();
        assert!(matches!(err, AuthError::Throttled { retry_after } if retry_after > Duration::from_secs(900)), "{err}");
        // ...while a real key from there, once cached, still works, and
        // another source is not affected.
        assert!(keys.authenticate(&real, Some(neighbour)).await.is_ok());
        assert!(keys.authenticate(&real, Some(attacker)).await.is_ok());
        let other = ApiKey::generate(KeyRole::Client);
        assert!(matches!(keys.authenticate(&other, Some(neighbour)).await, Err(AuthError::Unauthenticated(_))));
    }

    #[tokio::test]
    async fn past_the_global_limit_everybody_waits_for_uncached_keys() {
        let meta = meta().await;
        let limits = MissLimits { per_source: (1000.0, 1000), global: (0.001, 2), ..MissLimits::default() };
        let keys = Keys::new(meta, limits);
        for i in 0..3u8 {
            let source = IpAddr::from([198, 51, 100, i]);
            let made_up = ApiKey::generate(KeyRole::Client);
            assert!(matches!(keys.authenticate(&made_up, Some(source)).await, Err(AuthError::Unauthenticated(_))));
        }
        let fresh_source = IpAddr::from([198, 51, 100, 99]);
        let made_up = ApiKey::generate(KeyRole::Client);
        assert!(matches!(keys.authenticate(&made_up, Some(fresh_source)).await, Err(AuthError::Throttled { .. })));
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_a_known_missing_id_costs_nothing() {
        let meta = meta().await;
        let tenant = Name::parse("tenant", "acme").unwrap();
        meta.create_tenant(&tenant).await.unwrap();
        let real = meta.issue_key(&tenant, KeyRole::Agent).await.unwrap();
        let keys = Keys::new(meta, MissLimits::default());
        let forged = ApiKey::parse(&format!("ferry_agent_{}_{}", real.id, "0".repeat(64))).unwrap();
        assert!(matches!(keys.authenticate(&forged, None).await, Err(AuthError::Unauthenticated(_))));
        assert_eq!(keys.authenticate(&real, None).await.unwrap().tenant, tenant);
        assert!(matches!(parse_bearer(Some("Basic abc")), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(parse_bearer(None), Err(AuthError::Unauthenticated(_))));
    }
}
