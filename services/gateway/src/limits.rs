//! Rate limits (S2-4): GCRA per tenant (`admin set-limit`, else a default)
//! and per device (`X-Ferry-Device`). Over a limit the answer is "retry
//! later" with a jittered `Retry-After`, never an error of the server's.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::core::GatewayConfig;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::shared_limits::Verdict;

/// Longest device identifier accepted.
const MAX_DEVICE_LEN: usize = 128;

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// How long an unused limiter takes to get its whole burst back (at
    /// most a day: longer idle entries are forgotten anyway).
    pub(crate) fn refill_time(self) -> Duration {
        let seconds = f64::from(self.burst.max(1)) / self.per_second.max(1e-6);
        Duration::from_secs_f64(seconds.min(86_400.0))
    }

    fn quota(self) -> Quota {
        let burst = NonZeroU32::new(self.burst.max(1)).expect("at least one");
        let period = Duration::from_secs_f64(1.0 / self.per_second.max(1e-6));
        Quota::with_period(period).unwrap_or_else(|| Quota::per_second(burst)).allow_burst(burst)
    }
}

/// Per-device limits, and the clock every tenant limiter shares (making a
/// clock calibrates it: once, not per tenant).
pub(crate) struct Limits {
    devices: Arc<DefaultKeyedRateLimiter<(i64, String)>>,
    clock: DefaultClock,
    device_rate: Rate,
    /// Limits shared by every replica, when configured; the local ones
    /// above are the fallback.
    shared: Option<Arc<crate::SharedLimits>>,
}

/// A tenant's limiter.
pub(crate) type TenantLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

impl Limits {
    pub(crate) fn new(config: &GatewayConfig) -> Self {
        let clock = DefaultClock::default();
        let devices = Arc::new(RateLimiter::keyed(config.device_rate.quota()));
        // Forget devices that have been quiet long enough to be back at a
        // full burst: the table stays as large as the active devices.
        let weak = Arc::downgrade(&devices);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(devices) = weak.upgrade() else { return };
                devices.retain_recent();
                devices.shrink_to_fit();
            }
        });
        Self { devices, clock, device_rate: config.device_rate, shared: config.shared_limits.clone() }
    }

    /// A limiter for a tenant's rate.
    pub(crate) fn tenant_limiter(&self, rate: Rate) -> TenantLimiter {
        RateLimiter::direct_with_clock(rate.quota(), self.clock.clone())
    }

    /// Admits one request of a tenant (and device), or says when to retry:
    /// by the limits shared between replicas when configured and
    /// answering, else by this replica's own.
    pub(crate) async fn admit(
        &self,
        tenant: &TenantLimiter,
        tenant_rate: Rate,
        tenant_id: i64,
        device: Option<&str>,
        metrics: &Metrics,
    ) -> Result<(), GatewayError> {
        let device = device.filter(|d| !d.is_empty());
        if let Some(device) = device
            && (device.len() > MAX_DEVICE_LEN || !device.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(GatewayError::invalid("X-Ferry-Device", "must be 1 to 128 visible ASCII characters"));
        }
        if let Some(shared) = &self.shared {
            match shared.check(tenant_id, tenant_rate, device.map(|d| (d, self.device_rate))).await {
                Ok(Verdict::Admitted) => return Ok(()),
                Ok(Verdict::Refused { scope, wait }) => {
                    metrics.shed(scope);
                    return Err(GatewayError::rate_limited(scope, retry_after(wait)));
                }
                Err(_) => metrics.limit_fallback(),
            }
        }
        if let Err(not_until) = tenant.check() {
            metrics.shed("tenant");
            return Err(GatewayError::rate_limited("tenant", retry_after(not_until.wait_time_from(self.clock.now()))));
        }
        if let Some(device) = device
            && let Err(not_until) = self.devices.check_key(&(tenant_id, device.to_owned()))
        {
            metrics.shed("device");
            return Err(GatewayError::rate_limited(
                "device",
                retry_after(not_until.wait_time_from(self.devices.clock().now())),
            ));
        }
        Ok(())
    }
}

/// Whole seconds to wait, plus up to half again (at least one second) of
/// random jitter, so clients refused together do not return together.
pub(crate) fn retry_after(wait: Duration) -> u64 {
    let base = wait.as_secs_f64().ceil().max(1.0) as u64;
    let spread = (base / 2).max(1);
    base + u64::from(getrandom::u32().unwrap_or(0)) % (spread + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_at_least_the_wait_and_jittered_within_bounds() {
        let (mut seen_low, mut seen_high) = (false, false);
        for _ in 0..200 {
            let s = retry_after(Duration::from_millis(2500));
            assert!((3..=4).contains(&s), "{s}");
            seen_low |= s == 3;
            seen_high |= s == 4;
            let s = retry_after(Duration::from_millis(10));
            assert!((1..=2).contains(&s), "{s}");
        }
        // Jittered: both ends show up (the chance that one never does in
        // 200 draws is 2^-199).
        assert!(seen_low && seen_high);
    }

    /// The quota refills at exactly the configured rate, after the burst:
    /// 2 per second is one request every 500 ms, on a clock the test moves.
    #[test]
    fn quota_allows_the_burst_then_refills_at_the_rate() {
        let clock = governor::clock::FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(Rate { per_second: 2.0, burst: 3 }.quota(), clock.clone());
        assert!((0..3).all(|_| limiter.check().is_ok()));
        let refused = limiter.check().unwrap_err();
        assert_eq!(refused.wait_time_from(clock.now()), Duration::from_millis(500));
        clock.advance(Duration::from_millis(499));
        assert!(limiter.check().is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
        // A long pause refills the burst, never more.
        clock.advance(Duration::from_secs(3600));
        assert!((0..3).all(|_| limiter.check().is_ok()));
        assert!(limiter.check().is_err());
    }
}
