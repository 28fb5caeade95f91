//! Change notifications from PostgreSQL (`LISTEN ferry_changes`), for
//! processes that cache what the database holds.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// Something cached may be stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A release of this app was published or its deployed version moved;
    /// the tenant is named when the database says (every notice since
    /// migration V5 does).
    App { app_id: i64, tenant_id: Option<i64> },
    /// This API key changed (revoked).
    Key(String),
    /// This tenant's rate limit changed.
    Limit(i64),
    /// This tenant gained an app: whatever was remembered as missing may
    /// exist now.
    Tenant(i64),
    /// Patches (or compressed files) were made: file lists built while they
    /// were being made may offer them now.
    Patches,
    /// The listening connection was (re)established: changes may have been
    /// missed, so everything cached is suspect.
    Resync,
}

impl Change {
    fn parse(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(':')?;
        match kind {
            "app" => {
                let (app, tenant) = match id.split_once(':') {
                    Some((app, tenant)) => (app, Some(tenant.parse().ok()?)),
                    None => (id, None),
                };
                app.parse().ok().map(|app_id| Change::App { app_id, tenant_id: tenant })
            }
            "key" => Some(Change::Key(id.to_owned())),
            "limit" => id.parse().ok().map(Change::Limit),
            "tenant" => id.parse().ok().map(Change::Tenant),
            "patches" => Some(Change::Patches),
            _ => None,
        }
    }
}

/// Listens for changes until the receiver is dropped, reconnecting with
/// back-off when the connection fails; each (re)connection first yields
/// [`Change::Resync`].
pub fn listen(database_url: &str) -> Result<mpsc::Receiver<Change>, crate::StoreError> {
    let mut notices = listen_channel(database_url, "ferry_changes")?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(notice) = notices.recv().await {
            let change = match notice {
                Notice::Connected => Some(Change::Resync),
                Notice::Payload(payload) => Change::parse(&payload),
            };
            if let Some(change) = change
                && tx.send(change).await.is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

/// What a listening connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The connection was (re)established and is listening: notices sent
    /// while it was away are lost.
    Connected,
    /// One notification's payload.
    Payload(String),
}

/// Listens on a PostgreSQL notification `channel` until the receiver is
/// dropped, reconnecting with back-off when the connection fails.
pub fn listen_channel(database_url: &str, channel: &'static str) -> Result<mpsc::Receiver<Notice>, crate::StoreError> {
    let (config, tls) = crate::pg_tls::parse(database_url)?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match config.connect(tls.clone()).await {
                Ok((client, mut connection)) => {
                    // A task drives the connection and hands notifications
                    // over; it ends when the connection does.
                    let (notes_tx, mut notes) = mpsc::unbounded_channel::<String>();
                    tokio::spawn(async move {
                        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(AsyncMessage::Notification(n)) => {
                                    if notes_tx.send(n.payload().to_owned()).is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(channel, error = %ferry_proto::error_chain(&e), "listener lost its connection");
                                    return;
                                }
                            }
                        }
                    });
                    match client.batch_execute(&format!("LISTEN {channel}")).await {
                        Ok(()) => {
                            if tx.send(Notice::Connected).await.is_err() {
                                return;
                            }
                            backoff = Duration::from_millis(200);
                            while let Some(payload) = notes.recv().await {
                                if tx.send(Notice::Payload(payload)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(channel, error = %ferry_proto::error_chain(&e), "listener cannot LISTEN")
                        }
                    }
                }
                Err(e) => tracing::warn!(channel, error = %ferry_proto::error_chain(&e), "listener cannot connect"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payloads() {
        assert_eq!(Change::parse("app:42"), Some(Change::App { app_id: 42, tenant_id: None }));
        assert_eq!(Change::parse("app:42:7"), Some(Change::App { app_id: 42, tenant_id: Some(7) }));
        assert_eq!(Change::parse("app:42:x"), None);
        assert_eq!(Change::parse("key:0123456789ab"), Some(Change::Key("0123456789ab".into())));
        assert_eq!(Change::parse("limit:7"), Some(Change::Limit(7)));
        assert_eq!(Change::parse("tenant:9"), Some(Change::Tenant(9)));
        assert_eq!(Change::parse("app:x"), None);
        assert_eq!(Change::parse("nonsense"), None);
    }
}
