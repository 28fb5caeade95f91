//! How a service stops (Kubernetes' and Compose's SIGTERM, or Ctrl-C):
//! it turns not-ready at once but keeps serving for a drain period, so
//! load balancers that poll readiness take it out of rotation before it
//! stops accepting connections; then its listeners stop and the requests
//! in progress finish (within [`crate::Limits::shutdown_grace`]). A second
//! signal during the drain ends the drain at once.

use std::time::Duration;

use tokio::sync::watch;

/// Where a service is in its life: serving, draining, or stopping.
#[derive(Clone)]
pub struct Lifecycle {
    state: watch::Sender<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    Draining,
    Stopping,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { state: watch::Sender::new(Phase::Serving) }
    }
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lifecycle").field(&*self.state.borrow()).finish()
    }
}

impl Lifecycle {
    /// A service that is serving.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the service should take new work: false from the start of
    /// the drain on (what `/readyz` and grpc.health.v1 report).
    pub fn is_ready(&self) -> bool {
        *self.state.borrow() == Phase::Serving
    }

    /// Turns not-ready; the listeners keep serving.
    pub fn start_draining(&self) {
        self.advance(Phase::Draining);
    }

    /// Stops the listeners (requests in progress still finish).
    pub fn stop(&self) {
        self.advance(Phase::Stopping);
    }

    fn advance(&self, to: Phase) {
        self.state.send_if_modified(|phase| {
            let moved = *phase < to;
            *phase = (*phase).max(to);
            moved
        });
    }

    /// Completes when the drain has begun (or the service is stopping).
    pub async fn draining(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Completes when the listeners are to stop.
    pub async fn stopping(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Stopping).await;
    }

    /// Drives the life of a service from OS signals: the first SIGTERM or
    /// Ctrl-C starts the drain, which lasts `drain` (or until a second
    /// signal), then the listeners stop. Spawn it.
    pub async fn on_signals(self, drain: Duration) {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            tracing::error!("cannot handle SIGTERM; stopping at once");
            self.stop();
            return;
        };
        let mut signal = async move || {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        signal().await;
        self.drain_then_stop(drain, signal()).await;
    }

    /// The drain itself: not-ready now, stopping after `drain` or when
    /// `cut_short` completes, whichever is first.
    pub async fn drain_then_stop(&self, drain: Duration, cut_short: impl Future<Output = ()>) {
        tracing::info!(drain_seconds = drain.as_secs_f64(), "shutting down: not ready any more, still serving");
        self.start_draining();
        tokio::select! {
            () = tokio::time::sleep(drain) => {},
            () = cut_short => tracing::info!("second signal: ending the drain now"),
        }
        tracing::info!("drained: stopping the listeners");
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drains_for_the_period_then_stops() {
        let life = Lifecycle::new();
        assert!(life.is_ready());
        let driver = tokio::spawn({
            let life = life.clone();
            async move { life.drain_then_stop(Duration::from_secs(5), std::future::pending()).await }
        });
        life.draining().await;
        assert!(!life.is_ready());
        let start = tokio::time::Instant::now();
        life.stopping().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        driver.await.unwrap();
        // Never goes back.
        life.start_draining();
        assert!(!life.is_ready());
        tokio::time::timeout(Duration::from_millis(1), life.stopping()).await.expect("still stopping");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_cuts_the_drain_short() {
        let life = Lifecycle::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let driver = tokio::spawn({
            let life = life.clone();
            async move {
                life.drain_then_stop(Duration::from_secs(3600), async {
                    let _ = rx.await;
                })
                .await
            }
        });
        life.draining().await;
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(()).unwrap();
        life.stopping().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        driver.await.unwrap();
    }
}
