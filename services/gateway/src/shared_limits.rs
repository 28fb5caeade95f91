//! Rate limits shared by every gateway replica (`FERRY_REDIS_URL`): the
//! GCRA state of each tenant and device lives in Redis or Valkey, updated
//! by one Lua script per request (atomic, on the store's own clock), so N
//! replicas allow the configured rate once, not N times.
//!
//! When the store does not answer within [`CALL_TIMEOUT`], each replica
//! falls back to its own in-memory limits and asks the store again only
//! after [`RECONNECT_EVERY`]: requests are still limited, at up to N times
//! the rate, rather than refused, and no request waits longer than
//! [`CALL_TIMEOUT`] for the store. Falling back and
//! recovering are logged once each and counted
//! (`ferry_gateway_rate_limit_fallbacks_total`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::limits::Rate;

/// Longest a limit check waits for the store before falling back.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a replica that has no connection tries to make one.
pub(crate) const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// GCRA over every key at once, in microseconds of the store's clock:
/// each key's theoretical arrival time (TAT) advances by its interval; a
/// request is refused when any key's TAT would run more than its burst
/// ahead of now. Nothing is written unless every key admits the request.
/// Returns `{0, 0}` when admitted, else `{index of the refusing key, wait
/// in microseconds}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local wait = tat + interval - burst * interval - now
  if wait > 0 then return {i, wait} end
  tats[i] = tat + interval
end
for i, key in ipairs(KEYS) do
  -- At most a day, as long as the local limiter remembers a quiet key.
  local ttl = math.min(math.floor((tats[i] - now) / 1000) + 1000, 86400000)
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl)
end
return {0, 0}
";

/// What the shared store said about one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admitted,
    Refused { scope: &'static str, wait: Duration },
}

/// A connection (made on first use) to the store of shared rate limits.
pub struct SharedLimits {
    client: redis::Client,
    connection: std::sync::OnceLock<Result<ConnectionManager, String>>,
    /// After a failure the store is not asked again before this instant:
    /// while it is away, requests do not each wait for it.
    skip_until: Mutex<Option<Instant>>,
    script: redis::Script,
    degraded: AtomicBool,
    call_timeout: Duration,
}

impl SharedLimits {
    /// Parses the URL (`redis://`, `redis+unix://`); connects on first use.
    /// The error names `FERRY_REDIS_URL`.
    pub fn new(url: &str) -> Result<Self, String> {
        if url.starts_with("rediss://") {
            return Err("FERRY_REDIS_URL: rediss:// (TLS) is not supported; reach Redis over a private network or a TLS sidecar".into());
        }
        let client = redis::Client::open(url).map_err(|e| format!("FERRY_REDIS_URL: {e}"))?;
        Ok(Self {
            client,
            connection: std::sync::OnceLock::new(),
            skip_until: Mutex::new(None),
            script: redis::Script::new(GCRA),
            degraded: AtomicBool::new(false),
            call_timeout: CALL_TIMEOUT,
        })
    }

    /// The same, waiting up to `timeout` for each answer instead of
    /// [`CALL_TIMEOUT`] (tests on slow machines).
    pub fn with_call_timeout(self, timeout: Duration) -> Self {
        Self { call_timeout: timeout, ..self }
    }

    /// The connection manager: made once, without waiting (it connects,
    /// and reconnects, in the background of the calls made on it).
    fn connection(&self) -> Result<ConnectionManager, String> {
        self.connection
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(self.call_timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config).map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Checks (and counts) one request of `tenant_id` (and `device`).
    /// `Err` when the store does not answer within [`CALL_TIMEOUT`], or
    /// failed less than [`RECONNECT_EVERY`] ago: the caller falls back.
    pub(crate) async fn check(
        &self,
        tenant_id: i64,
        tenant: Rate,
        device: Option<(&str, Rate)>,
    ) -> Result<Verdict, String> {
        if self.skip_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|until| Instant::now() < until) {
            return Err("the shared store failed recently".into());
        }
        let result = async {
            let mut connection = self.connection()?;
            let mut invocation = self.script.prepare_invoke();
            invocation.key(format!("ferry:rl:t:{tenant_id}")).arg(interval_us(tenant)).arg(tenant.burst.max(1));
            if let Some((device, rate)) = device {
                invocation
                    .key(format!("ferry:rl:d:{tenant_id}:{device}"))
                    .arg(interval_us(rate))
                    .arg(rate.burst.max(1));
            }
            let answer =
                tokio::time::timeout(self.call_timeout, invocation.invoke_async::<(i64, i64)>(&mut connection))
                    .await
                    .map_err(|_| "timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
            Ok::<_, String>(match answer {
                (0, _) => Verdict::Admitted,
                (index, wait) => Verdict::Refused {
                    scope: if index == 1 { "tenant" } else { "device" },
                    wait: Duration::from_micros(wait.max(0) as u64),
                },
            })
        }
        .await;
        match &result {
            Ok(_) if self.degraded.swap(false, Ordering::Relaxed) => {
                tracing::info!("rate limits: the shared store answers again");
            }
            Err(e) => {
                *self.skip_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + RECONNECT_EVERY);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "rate limits: the shared store does not answer; each replica limits on its own meanwhile");
                }
            }
            _ => {}
        }
        result
    }
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: not shown.
        f.debug_struct("SharedLimits").field("degraded", &self.degraded.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

/// Microseconds between two requests at `rate` (at least one).
fn interval_us(rate: Rate) -> u64 {
    (1_000_000.0 / rate.per_second.max(1e-6)).round().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_it_cannot_use_are_refused_naming_the_setting() {
        for url in ["rediss://cache.example:6380", "http://cache.example", "not a url"] {
            let error = SharedLimits::new(url).unwrap_err();
            assert!(error.starts_with("FERRY_REDIS_URL: "), "{url}: {error}");
        }
        assert!(SharedLimits::new("redis://cache.example:6379/0").is_ok());
        assert!(SharedLimits::new("redis+unix:///run/redis.sock").is_ok());
    }
}
