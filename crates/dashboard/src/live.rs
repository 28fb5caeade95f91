//! Live updates (S4-6 "updates without a reload", S4-4 "pop-up"). Each
//! batch of reports notifies `ferry_reports` (from the reports trigger,
//! with the number of failures in it); each publish or deploy notifies
//! `ferry_changes`. One listening connection per registry process turns
//! them into [`LiveEvent`]s, and every open page gets those of the tenants
//! its viewer may see, as server-sent events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use ferry_store::{Meta, Notice};
use futures::Stream;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::Dashboard;
use crate::access::Viewer;

/// Something changed for one app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveEvent {
    #[serde(skip)]
    pub tenant_id: i64,
    pub tenant: String,
    pub app: String,
    /// `reports` (new reports arrived) or `deployed` (a publish or deploy).
    pub kind: &'static str,
    /// Failures and rollbacks among the new reports.
    pub failures: i64,
}

/// What is fanned out to open pages.
#[derive(Debug, Clone, PartialEq)]
enum Update {
    /// Something happened to one app.
    App(LiveEvent),
    /// Events may have been missed (the listener reconnected), or this
    /// tenant gained an app: pages that may show it reload their data.
    Resync { tenant_id: Option<i64> },
}

/// The fan-out of live events; cheap to clone.
#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<Update>,
}

impl Default for Live {
    fn default() -> Self {
        Self { tx: broadcast::channel(1024).0 }
    }
}

impl Live {
    /// Listens to the database at `database_url` (reconnecting as needed)
    /// for as long as the process runs; returns once it is listening.
    pub async fn listen(database_url: &str, meta: Meta) -> Result<Self, ferry_store::StoreError> {
        let live = Self::default();
        let mut reports = ferry_store::listen_channel(database_url, "ferry_reports")?;
        let mut changes = ferry_store::listen_channel(database_url, "ferry_changes")?;
        // Each channel's first notice says it is listening.
        let _ = reports.recv().await;
        let _ = changes.recv().await;
        let tx = live.tx.clone();
        tokio::spawn(async move {
            let names = Names::default();
            loop {
                let (payload, from_reports) = tokio::select! {
                    n = reports.recv() => match n { Some(n) => (n, true), None => return },
                    n = changes.recv() => match n { Some(n) => (n, false), None => return },
                };
                let payload = match payload {
                    Notice::Payload(payload) => payload,
                    // Reconnected: whatever was sent meanwhile is lost.
                    Notice::Connected => {
                        let _ = tx.send(Update::Resync { tenant_id: None });
                        continue;
                    }
                };
                if let Some(tenant_id) = payload.strip_prefix("tenant:").and_then(|t| t.parse().ok()) {
                    let _ = tx.send(Update::Resync { tenant_id: Some(tenant_id) });
                    continue;
                }
                let parsed = if from_reports { parse_reports(&payload) } else { parse_change(&payload) };
                let Some((app_id, failures, kind)) = parsed else { continue };
                match names.of(&meta, app_id).await {
                    Ok(Some((tenant_id, tenant, app))) => {
                        let _ = tx.send(Update::App(LiveEvent { tenant_id, tenant, app, kind, failures }));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %ferry_proto::error_chain(&e), "dashboard: cannot name app {app_id}")
                    }
                }
            }
        });
        Ok(live)
    }

    /// Sends an event to every open page (what the listener does).
    pub fn send(&self, event: LiveEvent) {
        let _ = self.tx.send(Update::App(event));
    }
}

/// `tenant_id:app_id:failures` from the reports trigger.
fn parse_reports(payload: &str) -> Option<(i64, i64, &'static str)> {
    let mut parts = payload.split(':');
    let (_tenant, app, failures) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    parts.next().is_none().then_some((app, failures, "reports"))
}

/// `app:app_id[:tenant_id]` from the change trigger; other changes are not
/// the dashboard's.
fn parse_change(payload: &str) -> Option<(i64, i64, &'static str)> {
    let rest = payload.strip_prefix("app:")?;
    let app = rest.split(':').next()?.parse().ok()?;
    Some((app, 0, "deployed"))
}

/// App ids to (tenant id, tenant, app): names never change.
#[derive(Default)]
struct Names(Mutex<HashMap<i64, (i64, String, String)>>);

impl Names {
    async fn of(&self, meta: &Meta, app_id: i64) -> Result<Option<(i64, String, String)>, ferry_store::StoreError> {
        if let Some(known) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&app_id) {
            return Ok(Some(known.clone()));
        }
        let client = meta.client().await?;
        let row = client
            .query_opt(
                "SELECT t.id, t.name, a.name FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = $1",
                &[&app_id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let named: (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() > 100_000 {
            known.clear();
        }
        known.insert(app_id, named.clone());
        Ok(Some(named))
    }
}

/// `GET /events`: the viewer's live events. Event `reports` or `deployed`
/// with `{"tenant", "app", "kind", "failures"}`; `resync` when events may
/// have been missed or a tenant the viewer sees gained an app (the page
/// reloads its data).
pub(crate) async fn events(
    State(dashboard): State<Dashboard>,
    viewer: Viewer,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // The stream ends when the viewer's key is revoked or the session is
    // signed out or expires, checked every `recheck`.
    let (meta, credential, recheck) =
        (dashboard.inner.meta.clone(), viewer.credential.clone(), dashboard.inner.settings.recheck);
    let ended = async move {
        loop {
            tokio::time::sleep(recheck).await;
            match credential.still_valid(&meta).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %ferry_proto::error_chain(&e), "dashboard: cannot re-check a live viewer")
                }
            }
        }
    };
    let resync = || Some(Ok(Event::default().event("resync").data("{}")));
    let stream = BroadcastStream::new(dashboard.inner.live.tx.subscribe()).filter_map(move |item| match item {
        Ok(Update::App(event)) if viewer.sees(event.tenant_id) => {
            Some(Ok(Event::default().event(event.kind).data(serde_json::to_string(&event).unwrap_or_default())))
        }
        Ok(Update::Resync { tenant_id }) if tenant_id.is_none_or(|t| viewer.sees(t)) => resync(),
        Ok(_) => None,
        Err(BroadcastStreamRecvError::Lagged(_)) => resync(),
    });
    let stream = futures::StreamExt::take_until(stream, ended);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notices() {
        assert_eq!(parse_reports("3:17:2"), Some((17, 2, "reports")));
        assert_eq!(parse_reports("3:17"), None);
        assert_eq!(parse_reports("3:17:2:9"), None);
        assert_eq!(parse_change("app:17:3"), Some((17, 0, "deployed")));
        assert_eq!(parse_change("app:17"), Some((17, 0, "deployed")));
        assert_eq!(parse_change("key:0123"), None);
    }
}
