//! Rate limits shared by every gateway replica (`FERRY_REDIS_URL`): the
//! GCRA state of each tenant and device lives in Redis or Valkey, updated
//! by one Lua script per request (atomic, on the store's own clock), so N
//! replicas allow the configured rate once, not N times.
//!
//! When the store does not answer within [`CALL_TIMEOUT`] (or cannot be
//! reached, tried again at most every [`RECONNECT_EVERY`]), each replica
//! falls back to its own in-memory limits: requests are still limited, at
//! up to N times the rate, rather than refused or delayed. Falling back and
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
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1000)
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
    connection: tokio::sync::OnceCell<ConnectionManager>,
    next_attempt: Mutex<Option<Instant>>,
    script: redis::Script,
    degraded: AtomicBool,
}

impl SharedLimits {
    /// Parses the URL (`redis://`, `rediss://`, `redis+unix://`); connects
    /// on first use. The error names `FERRY_REDIS_URL`.
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("FERRY_REDIS_URL: {e}"))?;
        Ok(Self {
            client,
            connection: tokio::sync::OnceCell::new(),
            next_attempt: Mutex::new(None),
            script: redis::Script::new(GCRA),
            degraded: AtomicBool::new(false),
        })
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        if let Some(connection) = self.connection.get() {
            return Some(connection.clone());
        }
        {
            let mut next = self.next_attempt.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if next.is_some_and(|at| now < at) {
                return None;
            }
            *next = Some(now + RECONNECT_EVERY);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        match ConnectionManager::new_with_config(self.client.clone(), config).await {
            Ok(connection) => Some(self.connection.get_or_init(|| async { connection }).await.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "rate limits: cannot reach the shared store; each replica limits on its own meanwhile");
                None
            }
        }
    }

    /// Checks (and counts) one request of `tenant_id` (and `device`).
    /// `Err` when the store cannot answer: the caller falls back.
    pub(crate) async fn check(
        &self,
        tenant_id: i64,
        tenant: Rate,
        device: Option<(&str, Rate)>,
    ) -> Result<Verdict, String> {
        let result = async {
            let mut connection = self.connection().await.ok_or("no connection")?;
            let mut invocation = self.script.prepare_invoke();
            invocation.key(format!("ferry:rl:t:{tenant_id}")).arg(interval_us(tenant)).arg(tenant.burst.max(1));
            if let Some((device, rate)) = device {
                invocation
                    .key(format!("ferry:rl:d:{tenant_id}:{device}"))
                    .arg(interval_us(rate))
                    .arg(rate.burst.max(1));
            }
            let answer = tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async::<(i64, i64)>(&mut connection))
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
            Err(e) if !self.degraded.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %e, "rate limits: the shared store does not answer; each replica limits on its own meanwhile");
            }
            _ => {}
        }
        result
    }
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: not shown.
        f.debug_struct("SharedLimits").field("connected", &self.connection.initialized()).finish_non_exhaustive()
    }
}

/// Microseconds between two requests at `rate` (at least one).
fn interval_us(rate: Rate) -> u64 {
    (1_000_000.0 / rate.per_second.max(1e-6)).round().max(1.0) as u64
}
