//! A TCP relay between a client and a server (over TCP or a Unix socket)
//! that counts the bytes the client sends and injects faults for real: it
//! can cut every connection once a budget is spent, delay what it passes
//! on, or go down (resetting open connections and refusing new ones) and
//! come back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

/// Where the relay forwards to.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    /// A Unix socket, e.g. PostgreSQL's `<dir>/.s.PGSQL.5432`.
    Unix(PathBuf),
}

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Once clients have sent this many bytes in total, every connection is
    /// dropped and new ones are refused.
    pub cut_after: Option<u64>,
    /// Held before passing on each read, in both directions.
    pub delay: Option<Duration>,
    /// Damage done to what the server sends back, on the first few
    /// connections only (later ones pass untouched).
    pub downstream: Option<Downstream>,
}

/// A fault in the server-to-client direction of the first `connections`
/// connections, `after` bytes into each.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub connections: u64,
    pub after: u64,
    pub damage: Damage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The connection is dropped (a phone losing its network).
    Cut,
    /// One bit of the byte at that offset is flipped (a broken cache or
    /// middlebox): the transfer completes, with wrong content.
    Flip,
}

/// A running relay. Stops accepting when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    sent: Arc<AtomicU64>,
    down: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    sent: Arc<AtomicU64>,
    /// Connections accepted so far.
    connections: AtomicU64,
    faults: Faults,
    down: watch::Receiver<bool>,
    cut: AtomicBool,
}

impl Relay {
    /// Relays connections to `target` (TCP). With `cut_after = Some(n)`,
    /// once the clients have sent `n` bytes in total, every connection is
    /// dropped and new ones are refused.
    pub async fn start(target: SocketAddr, cut_after: Option<u64>) -> std::io::Result<Self> {
        Self::start_with(Target::Tcp(target), Faults { cut_after, ..Faults::default() }).await
    }

    pub async fn start_with(target: Target, faults: Faults) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(AtomicU64::new(0));
        let (down, down_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            sent: sent.clone(),
            connections: AtomicU64::new(0),
            faults,
            down: down_rx,
            cut: AtomicBool::new(false),
        });
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let refused = *shared.down.borrow() || shared.cut.load(Ordering::Relaxed);
                if refused {
                    continue; // dropped: the "network" is down
                }
                let (shared, target) = (shared.clone(), target.clone());
                tokio::spawn(async move {
                    let _ = match target {
                        Target::Tcp(addr) => match TcpStream::connect(addr).await {
                            Ok(server) => pipe(client, server, shared).await,
                            Err(e) => Err(e),
                        },
                        Target::Unix(path) => match UnixStream::connect(path).await {
                            Ok(server) => pipe(client, server, shared).await,
                            Err(e) => Err(e),
                        },
                    };
                });
            }
        });
        Ok(Self { addr, sent, down, task })
    }

    /// Bytes clients have sent through the relay so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Takes the "network" down (open connections are reset, new ones
    /// refused) or brings it back.
    pub fn set_down(&self, down: bool) {
        let _ = self.down.send(down);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe<S>(client: TcpStream, server: S, shared: Arc<Shared>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let number = shared.connections.fetch_add(1, Ordering::Relaxed);
    let fault = shared.faults.downstream.filter(|d| number < d.connections);
    let (client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = tokio::io::split(server);
    let upstream = forward(client_read, &mut server_write, &shared, true, None);
    let downstream = forward(server_read, &mut client_write, &shared, false, fault);
    let mut down = shared.down.clone();
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
        _ = down.wait_for(|down| *down) => {
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "relay went down"))
        }
    }
}

/// Copies `from` to `to`, counting (upstream) and delaying as the faults
/// say; an upstream copy past the byte budget cuts the connection.
async fn forward<R, W>(
    mut from: R,
    to: &mut W,
    shared: &Shared,
    upstream: bool,
    fault: Option<Downstream>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut passed = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if let Some(fault) = fault
            && n > 0
            && passed + n as u64 > fault.after
            && passed <= fault.after
        {
            let at = (fault.after - passed) as usize;
            match fault.damage {
                Damage::Cut => {
                    to.write_all(&buf[..at]).await?;
                    to.flush().await?;
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "relay cut the response"));
                }
                Damage::Flip => buf[at] ^= 0x01,
            }
        }
        passed += n as u64;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(delay) = shared.faults.delay {
            tokio::time::sleep(delay).await;
        }
        if upstream {
            let total = shared.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            if shared.faults.cut_after.is_some_and(|limit| total > limit) {
                shared.cut.store(true, Ordering::Relaxed);
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "relay cut the connection"));
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}
