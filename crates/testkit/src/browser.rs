//! Headless Chromium driven through ChromeDriver (Debian's `chromium` and
//! `chromium-driver`, installed by scripts/install-deps), for tests of
//! pages in a real browser. ChromeDriver picks its own port (`--port=0`)
//! and runs in a process group of its own: dropping [`Browser`] kills the
//! group, browser included, even when the test fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A WebDriver session in a fresh headless Chromium profile.
pub struct Browser {
    client: Option<fantoccini::Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a browser session.
    pub async fn start() -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromedriver (scripts/install-deps installs chromium-driver)")?;
        let stdout = driver.stdout.take().expect("piped");
        // "ChromeDriver was started successfully on port N."
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) =
                    line.split("on port ").nth(1).and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
                    && line.contains("started successfully")
                {
                    let _ = tx.send(port);
                }
            }
        });
        let guard = Killer(driver.id());
        let port = match tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await? {
            Ok(port) => port,
            Err(_) => bail!("chromedriver did not say which port it listens on within 30 s"),
        };
        let profile = tempfile::tempdir()?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1024",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("opening a Chromium session through chromedriver")?;
        std::mem::forget(guard);
        Ok(Self { client: Some(client), driver, _profile: profile })
    }

    /// The WebDriver session.
    pub fn client(&self) -> &fantoccini::Client {
        self.client.as_ref().expect("open until close")
    }

    /// Saves a screenshot of the page as `target/screenshots/<name>.png`
    /// (a test artifact) and returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, self.client().screenshot().await?)?;
        Ok(path)
    }

    /// Ends the session and ChromeDriver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        crate::kill_process_group(self.driver.id());
        let _ = self.driver.wait();
    }
}

/// Kills ChromeDriver's process group if start-up fails half-way.
struct Killer(u32);

impl Drop for Killer {
    fn drop(&mut self) {
        crate::kill_process_group(self.0);
    }
}
