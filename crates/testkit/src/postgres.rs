//! A throwaway PostgreSQL cluster, reachable over a Unix socket only.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};

/// A running cluster. Dropping the value (or the process exiting, even when
/// killed) stops it and deletes its files: a detached watchdog waits on a
/// pipe from this process.
pub struct Postgres {
    socket_dir: PathBuf,
    /// The TCP port of a cluster started with TLS.
    tcp_port: Option<u16>,
    watchdog: Mutex<Option<Child>>,
}

impl Postgres {
    /// Starts a new cluster in a fresh directory under the system temp dir.
    /// Runs the server as user `postgres` when this process is root, since
    /// PostgreSQL refuses to run as root.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// A cluster that also listens on 127.0.0.1 (PostgreSQL speaks TLS
    /// over TCP only) with TLS on, serving this PEM certificate and key.
    /// PostgreSQL cannot listen on port 0: a free port is picked, and
    /// another one tried should it be taken meanwhile.
    pub fn start_with_tls(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            match Self::start_with(Some((cert_pem, key_pem))) {
                Ok(pg) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// `postgres://postgres@localhost:PORT/dbname` of a cluster started with
    /// TLS, with `params` (e.g. `sslmode=require`) appended.
    pub fn tcp_url(&self, dbname: &str, params: &str) -> String {
        let port = self.tcp_port.expect("a cluster started with TLS");
        // The name `localhost` for the certificate, the address the server
        // listens on for the connection (not ::1, which it does not).
        format!("postgres://postgres@localhost:{port}/{dbname}?hostaddr=127.0.0.1&{params}")
    }

    fn start_with(tls: Option<(&[u8], &[u8])>) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let dir = std::env::temp_dir().join(format!("ferry-pg-{}", crate::random_suffix(6)));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if as_root {
            run(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
        }
        let data = dir.join("data");
        let cmd = |tool: &str| {
            let mut c = if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
                c
            } else {
                Command::new(bin.join(tool))
            };
            c.current_dir(&dir);
            c
        };
        run(cmd("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
            .arg(&data))?;
        let (listen, tcp_port) = match tls {
            None => (String::new(), None),
            Some((cert_pem, key_pem)) => {
                let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
                std::fs::write(&cert, cert_pem)?;
                std::fs::write(&key, key_pem)?;
                std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                if as_root {
                    run(Command::new("chown").args(["postgres:postgres"]).arg(&cert).arg(&key))?;
                }
                let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let listen = format!(
                    "-c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    cert.display(),
                    key.display()
                );
                (listen, Some(port))
            }
        };
        let listen = if listen.is_empty() { "-c listen_addresses=''".to_owned() } else { listen };
        // Durability is pointless for a throwaway cluster; speed is not.
        let options = format!(
            "{listen} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300",
            dir.display()
        );
        if tcp_port.is_some() {
            // Over TCP, TLS or nothing: a plain connection is refused.
            let hba = data.join("pg_hba.conf");
            let rules = std::fs::read_to_string(&hba)?;
            std::fs::write(&hba, format!("hostnossl all all 0.0.0.0/0 reject\n{rules}"))?;
        }
        let started = run(cmd("pg_ctl")
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(dir.join("log"))
            .arg("-D")
            .arg(&data)
            .arg("start"));
        if let Err(e) = started {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let stop = format!(
            "{prefix}{pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            prefix = if as_root { "runuser -u postgres -- " } else { "" },
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        let watchdog = Command::new("setsid")
            .args(["sh", "-c", &format!("cat >/dev/null; {stop}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the postgresql watchdog (setsid, sh)")?;
        Ok(Self { socket_dir: dir, tcp_port, watchdog: Mutex::new(Some(watchdog)) })
    }

    /// The cluster shared by every test of this process, started on first use.
    pub fn shared() -> anyhow::Result<&'static Postgres> {
        static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Postgres::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A connection string for `dbname` as the superuser.
    pub fn url(&self, dbname: &str) -> String {
        format!("host={} user=postgres dbname={dbname}", self.socket_dir.display())
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Creates an empty database and returns its connection string.
    pub async fn create_database(&self) -> anyhow::Result<String> {
        let name = format!("ferry_{}", crate::random_suffix(6));
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the test postgresql")?;
        let conn = tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.context("creating a test database")?;
        drop(client);
        let _ = conn.await;
        Ok(self.url(&name))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing the pipe lets the watchdog stop the server.
        if let Some(mut child) = self.watchdog.lock().ok().and_then(|mut w| w.take()) {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// A new database in this process's shared cluster.
pub async fn fresh_database() -> anyhow::Result<String> {
    let pg = tokio::task::spawn_blocking(|| Postgres::shared().map(|_| ())).await?;
    pg?;
    Postgres::shared()?.create_database().await
}

/// Where PostgreSQL's server binaries are: `FERRY_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else `pg_config --bindir`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRY_PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    bail!(
        "PostgreSQL server binaries not found: install Debian's postgresql-15 (scripts/install-deps) or set FERRY_PG_BIN"
    )
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
