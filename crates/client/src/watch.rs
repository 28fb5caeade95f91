//! Push notices (S1-6): `GET /v1/watch`, a Server-Sent Events stream,
//! followed for as long as the app likes. A cut stream is reopened with
//! `Last-Event-ID` (after a jittered backoff, or the gateway's
//! `Retry-After`), so a deploy made while the client was away arrives on
//! reconnect. A connection that stays silent longer than the client's read
//! timeout (60 s; the gateway sends heartbeats every 15 s) is taken for
//! dead and reopened.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::api::Action;
use crate::{Client, Error};

/// A deploy notice: the app's deployed version (or its `required` rule)
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub tenant: String,
    pub app: String,
    pub version: String,
    pub manifest_id: String,
    #[serde(default)]
    pub compatible: Option<String>,
    /// What this client should do (when it said which version it runs).
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub required: Option<bool>,
}

type Events = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// An open (or reopening) watch.
pub struct Watch {
    client: Client,
    version: Option<String>,
    last_event_id: Option<String>,
    events: Option<Events>,
    /// When the open stream was opened (a stream that lived long enough
    /// resets the backoff).
    opened: Option<tokio::time::Instant>,
    backoff: Duration,
}

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A stream that lived this long was healthy: the backoff starts over.
const HEALTHY: Duration = Duration::from_secs(30);

impl Client {
    /// Watches the app's deployment. `version` is the one the app runs
    /// (notices then carry `action` and `required`); `last_event_id` the id
    /// of the last notice seen, if the app kept it from an earlier run.
    pub fn watch(&self, version: Option<String>, last_event_id: Option<String>) -> Watch {
        Watch { client: self.clone(), version, last_event_id, events: None, opened: None, backoff: FIRST_BACKOFF }
    }
}

impl Watch {
    /// The next notice. Reconnects for as long as it takes (after a
    /// jittered, doubling wait, or the gateway's `Retry-After`); returns an
    /// error only when retrying cannot help (the key or the request is
    /// refused, or a notice names another tenant's app).
    pub async fn next(&mut self) -> Result<Notice, Error> {
        loop {
            let Some(events) = self.events.as_mut() else {
                match self.connect().await {
                    Ok(events) => {
                        self.events = Some(events);
                        self.opened = Some(tokio::time::Instant::now());
                    }
                    // An id this gateway cannot read: start afresh (the
                    // current deployment is sent again).
                    Err(Error::Gateway { status: 400, .. }) if self.last_event_id.is_some() => {
                        tracing::info!("watch: the gateway refused the last event id; watching afresh");
                        self.last_event_id = None;
                    }
                    Err(Error::Gateway { status: 408 | 429 | 500..=599, retry_after, .. }) => {
                        self.wait(retry_after).await;
                    }
                    Err(e @ Error::Gateway { .. }) => return Err(e),
                    Err(e) => {
                        tracing::info!(error = %e, "watch: cannot connect; trying again later");
                        self.wait(None).await;
                    }
                }
                continue;
            };
            match events.next().await {
                Some(Ok(event)) if event.event == "deployed" => {
                    let notice: Notice = serde_json::from_str(&event.data)
                        .map_err(|e| Error::BadAnswer(format!("a watch event is not a notice: {e}")))?;
                    let c = self.client.config();
                    if notice.tenant != c.tenant || notice.app != c.app {
                        return Err(Error::Foreign {
                            expected: format!("{}/{}", c.tenant, c.app),
                            got: format!("{}/{}", notice.tenant, notice.app),
                        });
                    }
                    if !event.id.is_empty() {
                        self.last_event_id = Some(event.id);
                    }
                    self.backoff = FIRST_BACKOFF;
                    return Ok(notice);
                }
                // Other event types are for newer clients.
                Some(Ok(_)) => {}
                // Broken, or closed by the gateway (shutting down, or the key
                // revoked: the reconnect says which).
                end => {
                    match end {
                        Some(Err(e)) => tracing::info!(error = %e, "watch: the stream broke; reconnecting"),
                        _ => tracing::info!("watch: the gateway ended the stream; reconnecting"),
                    }
                    self.events = None;
                    if self.opened.is_some_and(|at| at.elapsed() >= HEALTHY) {
                        self.backoff = FIRST_BACKOFF;
                    }
                    self.wait(None).await;
                }
            }
        }
    }

    /// Waits before reconnecting: `retry_after` if the gateway said, else
    /// the backoff; both with jitter. The backoff doubles.
    async fn wait(&mut self, retry_after: Option<Duration>) {
        let wait = crate::api::with_jitter(retry_after.unwrap_or(self.backoff));
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Changes the version notices are judged against (after an upgrade):
    /// from the next reconnection, or now if `reconnect`.
    pub fn set_version(&mut self, version: Option<String>, reconnect: bool) {
        self.version = version;
        if reconnect {
            self.events = None;
        }
    }

    /// The id of the last notice received (keep it to resume a watch
    /// after the app restarts).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    async fn connect(&self) -> Result<Events, Error> {
        let c = self.client.config();
        let mut query = vec![("tenant", c.tenant.as_str()), ("app", c.app.as_str())];
        if let Some(version) = &self.version {
            query.push(("version", version));
        }
        let url = self.client.url("/v1/watch");
        // One try: reconnecting (and its waits) is `next`'s job.
        let response = self
            .client
            .send_with(
                || {
                    let request = self.client.http.get(&url).query(&query).header("accept", "text/event-stream");
                    match &self.last_event_id {
                        Some(id) => request.header("last-event-id", id),
                        None => request,
                    }
                },
                1,
            )
            .await?;
        Ok(Box::pin(response.bytes_stream().eventsource()))
    }
}
