//! A TCP relay between a client and a server that counts the bytes the
//! client sends and can cut every connection once a budget is spent: the
//! network failing in the middle of an upload, for real.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running relay. Stops accepting when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays connections to `target`. With `cut_after = Some(n)`, once the
    /// clients have sent `n` bytes in total, every connection is dropped and
    /// new ones are refused.
    pub async fn start(target: SocketAddr, cut_after: Option<u64>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if cut_after.is_some_and(|n| counter.load(Ordering::Relaxed) >= n) {
                    continue; // dropped: the "network" is down
                }
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = pipe(client, server, counter, cut_after).await;
                    }
                });
            }
        });
        Ok(Self { addr, sent, task })
    }

    /// Bytes clients have sent through the relay so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    sent: Arc<AtomicU64>,
    cut_after: Option<u64>,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            let total = sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            if cut_after.is_some_and(|limit| total > limit) {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "relay cut the connection"));
            }
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        r = upstream => r,
        r = downstream => r.map(|_| ()),
    }
}
