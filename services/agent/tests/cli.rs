//! The agent's command line on bad input: one clear error line naming the
//! problem, a non-zero exit, and nothing sent. None of these reach a
//! registry: the URL points at a port nobody listens on, so a test that
//! wrongly got past validation fails with "cannot reach" instead.

use std::path::Path;
use std::process::Command;

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Runs `ferry-agent publish` with `version` and `artifacts`; returns
/// (success, stderr).
fn publish(version: &str, artifacts: &[String]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-agent"));
    cmd.args(["publish", "--registry", &closed_port_url(), "--tenant", "acme", "--app", "crm", "--version", version])
        .args(["--retries", "0"])
        .env(
            "FERRY_AGENT_TOKEN",
            "ferry_agent_000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        )
        .env_remove("RUST_LOG");
    for a in artifacts {
        cmd.args(["--artifact", a]);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn assert_error(result: (bool, String), needle: &str) {
    let (ok, stderr) = result;
    assert!(!ok, "expected failure, stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

/// What is a version in no scheme is refused before anything is sent
/// (whether it is the app's scheme is the registry's call).
#[test]
fn version_that_is_no_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let api = file(dir.path(), "openapi.json", b"{}");
    assert_error(
        publish("latest", &[format!("api={api}")]),
        "invalid version \"latest\": expected semantic versioning",
    );
    assert_error(publish("2.4-rc", &[format!("api={api}")]), "an integer version code (42) or dotted numbers");
    assert_error(publish("v2.4.1", &[format!("api={api}")]), "drop the leading 'v'");
}

#[test]
fn empty_artifact_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let apk = file(dir.path(), "crm.apk", b"");
    assert_error(publish("1.0.0", &[format!("mobile={apk}")]), "artifact \"mobile\" is empty");
    let web = dir.path().join("web");
    std::fs::create_dir(&web).unwrap();
    assert_error(publish("1.0.0", &[format!("web={}", web.display())]), "is empty");
}

#[test]
fn unreadable_path_is_named() {
    assert_error(publish("1.0.0", &["mobile=/nonexistent/crm.apk".into()]), "cannot read /nonexistent/crm.apk");
}

#[test]
fn duplicate_artifact_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = file(dir.path(), "a.json", b"{}");
    let b = file(dir.path(), "b.json", b"{}");
    assert_error(
        publish("1.0.0", &[format!("api={a}"), format!("api={b}")]),
        "artifact \"api\" is given more than once",
    );
}

#[test]
fn symlink_escaping_a_directory_artifact_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    std::fs::create_dir(&web).unwrap();
    file(&web, "index.html", b"<html>");
    let secret = file(dir.path(), "secret.txt", b"do not ship");
    std::os::unix::fs::symlink(&secret, web.join("leak.txt")).unwrap();
    assert_error(publish("1.0.0", &[format!("web={}", web.display())]), "points outside the artifact directory");
}

#[test]
fn malformed_artifact_argument_is_refused() {
    assert_error(publish("1.0.0", &["mobile".into()]), "expected NAME[@PLATFORM,...]=PATH");
    assert_error(publish("1.0.0", &["Mobile=/x".into()]), "invalid artifact name");
}

#[test]
fn registry_that_is_down_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let api = file(dir.path(), "openapi.json", b"{}");
    assert_error(publish("1.0.0", &[format!("api={api}")]), "cannot reach the registry at http://127.0.0.1:");
}

#[test]
fn registry_url_without_scheme_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let api = file(dir.path(), "openapi.json", b"{}");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .args(["publish", "--registry", "registry:50051", "--token", "t", "--tenant", "acme", "--app", "crm"])
        .args(["--version", "1.0.0", "--artifact", &format!("api={api}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must start with http:// or https://"), "{stderr}");
}
