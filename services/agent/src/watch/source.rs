//! Reading the private system's deployed version from where the
//! configuration says: an HTTP endpoint, a file, or a command's output;
//! the whole text, or one string of a JSON answer.
//!
//! Every read is bounded in time and size, and every failure names the
//! source and what was wrong with what it gave.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_release::{Quoted, parse_version};
use tokio::io::AsyncReadExt;

use super::config::VersionSource;

/// The most a source may answer: a version, or a small JSON document.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads versions from one source.
pub(crate) struct Reader {
    source: VersionSource,
    timeout: Duration,
    http: Option<reqwest::Client>,
}

impl Reader {
    /// A reader of `source`, each read taking at most `timeout`. The error
    /// names a CA file that cannot be read.
    pub(crate) fn new(source: VersionSource, timeout: Duration) -> Result<Self, String> {
        let http = match &source {
            VersionSource::Http { ca_cert, .. } => Some(http_client(ca_cert.as_deref(), timeout)?),
            _ => None,
        };
        Ok(Self { source, timeout, http })
    }

    /// What the source is, for messages and logs.
    pub(crate) fn describe(&self) -> String {
        self.source.to_string()
    }

    /// The version the source gives now.
    pub(crate) async fn read(&self) -> Result<ferry_release::Version, String> {
        let fail = |why: String| format!("version source {}: {why}", self.describe());
        let (text, pointer) = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(result) => result.map_err(fail)?,
            Err(_) => return Err(fail(format!("no answer within {} s", self.timeout.as_secs_f64()))),
        };
        extract(&text, pointer).map_err(fail)
    }

    async fn fetch(&self) -> Result<(String, Option<&str>), String> {
        match &self.source {
            VersionSource::Http { url, pointer, .. } => {
                let client = self.http.as_ref().expect("made with the reader");
                let mut response = client.get(url).send().await.map_err(|e| crate::error::chain(&e))?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| crate::error::chain(&e))? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_ANSWER_BYTES {
                        return Err(format!("answered more than {MAX_ANSWER_BYTES} bytes"));
                    }
                }
                Ok((utf8(body)?, pointer.as_deref()))
            }
            VersionSource::File { path, pointer } => Ok((read_file(path).await?, pointer.as_deref())),
            VersionSource::Command { argv, pointer } => Ok((run(argv).await?, pointer.as_deref())),
        }
    }
}

fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| "the answer is not UTF-8".to_owned())
}

async fn read_file(path: &Path) -> Result<String, String> {
    let file = tokio::fs::File::open(path).await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_ANSWER_BYTES as u64 + 1).read_to_end(&mut bytes).await.map_err(|e| e.to_string())?;
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(format!("is larger than {MAX_ANSWER_BYTES} bytes"));
    }
    utf8(bytes)
}

/// Runs the command without a shell, in a process group of its own; its
/// stdout is the answer. When the read ends early (a timeout drops this
/// future, or the output is too large) the whole group is killed, so
/// children of a wrapper script do not linger. The agent's token is not
/// passed on.
async fn run(argv: &[String]) -> Result<String, String> {
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_remove("FERRY_AGENT_TOKEN")
        .env_remove("FERRY_AGENT_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let group = KillGroup(child.id());
    let mut stdout = child.stdout.take().expect("piped").take(MAX_ANSWER_BYTES as u64 + 1);
    let stderr = tokio::spawn(tail(child.stderr.take().expect("piped"), 4096));
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    if out.len() > MAX_ANSWER_BYTES {
        return Err(format!("printed more than {MAX_ANSWER_BYTES} bytes"));
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let err = stderr.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    // The command is done; what it left behind goes with the group.
    drop(group);
    if !status.success() {
        let said = String::from_utf8_lossy(&err);
        let last = said.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        let said = if last.is_empty() { String::new() } else { format!(": {}", Quoted(last)) };
        return Err(format!("exited with {status}{said}"));
    }
    utf8(out)
}

/// Kills a process group when dropped.
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            // Gone already is fine.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The last `keep` bytes of a stream read to its end (a chatty command
/// must not block on a full pipe).
async fn tail(mut from: impl tokio::io::AsyncRead + Unpin, keep: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > keep {
            kept.drain(..kept.len() - keep);
        }
    }
}

/// The version in an answer: the whole text (one line, surrounding blanks
/// ignored), or the string at `pointer` of a JSON answer.
fn extract(text: &str, pointer: Option<&str>) -> Result<ferry_release::Version, String> {
    let version = match pointer {
        None => {
            let trimmed = text.trim();
            if trimmed.contains('\n') {
                return Err(format!(
                    "expected one line holding the version, got {} lines (set version.json_pointer for JSON)",
                    trimmed.lines().count()
                ));
            }
            trimmed.to_owned()
        }
        Some(pointer) => {
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
            match json.pointer(pointer) {
                Some(serde_json::Value::String(s)) => s.trim().to_owned(),
                // A version code (`"versionCode": 42`).
                Some(serde_json::Value::Number(n)) if n.is_u64() => n.to_string(),
                Some(other) => return Err(format!("{} is not a string or version code but {other}", Quoted(pointer))),
                None => return Err(format!("the answer has nothing at {}", Quoted(pointer))),
            }
        }
    };
    parse_version(&version).map_err(|e| e.to_string())
}

/// An HTTP client for the version endpoint: system roots plus `ca_cert`;
/// the proxy variables are honoured as for any HTTP client (`NO_PROXY`
/// should name internal hosts).
fn http_client(ca_cert: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_cert {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("version.ca_cert: cannot read {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("version.ca_cert: {} holds no certificate", path.display()));
        }
        roots.add_parsable_certificates(certs);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("ferry-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_text_or_a_json_string_is_the_version() {
        assert_eq!(extract(" 2.4.1\n", None).unwrap(), "2.4.1".parse::<ferry_release::Version>().unwrap());
        assert_eq!(
            extract(r#"{"app":{"version":"3.0.0-rc.1"}}"#, Some("/app/version")).unwrap().to_string(),
            "3.0.0-rc.1"
        );
        let e = extract("2.4.1\n2.4.2\n", None).unwrap_err();
        assert!(e.contains("one line") && e.contains("json_pointer"), "{e}");
        assert_eq!(extract(r#"{"versionCode":241}"#, Some("/versionCode")).unwrap().to_string(), "241");
        let e = extract(r#"{"version":2.41}"#, Some("/version")).unwrap_err();
        assert!(e.contains("not a string or version code but 2.41"), "{e}");
        let e = extract(r#"{"v":"1.0.0"}"#, Some("/version")).unwrap_err();
        assert!(e.contains("nothing at"), "{e}");
        let e = extract("latest", None).unwrap_err();
        assert!(e.contains("invalid version"), "{e}");
    }

    fn reader(source: VersionSource, timeout_ms: u64) -> Reader {
        Reader::new(source, Duration::from_millis(timeout_ms)).unwrap()
    }

    #[tokio::test]
    async fn a_file_is_read_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("VERSION");
        std::fs::write(&path, "1.2.3\n").unwrap();
        let r = reader(VersionSource::File { path: path.clone(), pointer: None }, 5000);
        assert_eq!(r.read().await.unwrap(), "1.2.3".parse::<ferry_release::Version>().unwrap());
        std::fs::write(&path, vec![b'1'; MAX_ANSWER_BYTES + 1]).unwrap();
        let e = r.read().await.unwrap_err();
        assert!(e.contains("larger than 65536 bytes"), "{e}");
        let r = reader(VersionSource::File { path: dir.path().join("none"), pointer: None }, 5000);
        let e = r.read().await.unwrap_err();
        assert!(e.starts_with(&format!("version source file {}/none: ", dir.path().display())), "{e}");
    }

    #[tokio::test]
    async fn a_command_prints_the_version_and_failures_say_why() {
        let sh = |script: &str| VersionSource::Command {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            pointer: None,
        };
        let r = reader(sh("echo 4.5.6"), 5000);
        assert_eq!(r.read().await.unwrap(), "4.5.6".parse::<ferry_release::Version>().unwrap());
        let e =
            reader(sh("head -c 100000 /dev/zero >&2; echo >&2; echo boom >&2; exit 3"), 5000).read().await.unwrap_err();
        assert!(e.contains("exited with exit status: 3: \"boom\""), "{e}");
        // A wrapper whose child would outlive it: the whole group goes.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let e = reader(sh(&script), 300).read().await.unwrap_err();
        assert!(e.contains("no answer within 0.3 s"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Killed: gone, or a zombie until init reaps it (it is not our child).
        let alive = || {
            let zombie = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
                .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')));
            rustix::process::test_kill_process(pid).is_ok() && !zombie
        };
        while alive() {
            assert!(std::time::Instant::now() < deadline, "the wrapper's child outlived the timeout");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let e = reader(sh("yes 1.0.0"), 5000).read().await.unwrap_err();
        assert!(e.contains("printed more than 65536 bytes"), "{e}");
        let missing = VersionSource::Command { argv: vec!["/nonexistent/crm".into()], pointer: None };
        let e = reader(missing, 5000).read().await.unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
    }
}
