//! A real SMTP server for tests (mailin-embedded: the SMTP protocol over
//! TCP, on a thread pool), on a port-0 listener, collecting every message
//! it accepts. Its threads end with the test process (the crate has no
//! stop); put a [`crate::Relay`] in front to take it down and back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use mailin_embedded::{Handler, Response, Server, response};
use tokio::sync::mpsc;

/// A message as the server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body, as sent.
    pub data: String,
}

impl Mail {
    /// The value of a header (the first of that name).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

#[derive(Clone)]
struct Collector {
    sink: mpsc::UnboundedSender<Mail>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Collector {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail = Mail {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
        };
        let _ = self.sink.send(mail);
        response::OK
    }
}

/// A running SMTP server on `127.0.0.1:<random port>`.
pub struct SmtpServer {
    pub addr: SocketAddr,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Mail>>,
}

impl SmtpServer {
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the smtp server")?;
        let addr = listener.local_addr()?;
        let (sink, received) = mpsc::unbounded_channel();
        let handler = Collector { sink, from: String::new(), to: Vec::new(), data: Vec::new() };
        let mut server = Server::new(handler);
        server.with_name("ferry-test-smtp").with_num_threads(4).with_tcp_listener(listener);
        std::thread::Builder::new().name("ferry-smtp".into()).spawn(move || {
            if let Err(e) = server.serve() {
                tracing::warn!(error = %e, "test smtp server stopped");
            }
        })?;
        Ok(Self { addr, received: tokio::sync::Mutex::new(received) })
    }

    /// `smtp://` URL for this server (plain: it offers no STARTTLS).
    pub fn url(&self) -> String {
        format!("smtp://{}?tls=none", self.addr)
    }

    /// The next message received, waiting at most `timeout`.
    pub async fn next(&self, timeout: Duration) -> Option<Mail> {
        let mut received = self.received.lock().await;
        tokio::time::timeout(timeout, received.recv()).await.ok().flatten()
    }
}
