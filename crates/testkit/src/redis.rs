//! A real Redis (or Valkey) server for tests, on a Unix socket in a
//! temporary directory (no port to race for), without persistence. Ready
//! when it says so on stdout; killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running server; `url` is what `FERRY_REDIS_URL` takes.
pub struct RedisServer {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl RedisServer {
    /// Starts `redis-server` (or `valkey-server`), installed by
    /// `scripts/install-deps`.
    pub fn start() -> anyhow::Result<Self> {
        let binary = ["redis-server", "valkey-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
            .context("redis-server is not installed (run scripts/install-deps)")?;
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("redis.sock");
        let mut child = Command::new(binary)
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocketperm", "700"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in stdout.lines().map_while(Result::ok) {
                if line.to_ascii_lowercase().contains("ready to accept connections")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let server = Self { child, url: format!("redis+unix://{}", socket.display()), _dir: dir };
        ready_rx.recv_timeout(Duration::from_secs(30)).with_context(|| format!("{binary} did not become ready"))?;
        Ok(server)
    }

    /// Kills the server now (for tests of what happens without it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
