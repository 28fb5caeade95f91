//! The watch configuration file (`ferry-agent watch --config
//! /etc/ferry/agent.toml`): its shape as serde types with spans, and the
//! checks that turn it into a [`WatchConfig`]. Every problem names the key
//! and its line; all of them are reported at once.
//!
//! ```toml
//! tenant = "acme"
//! app = "crm"
//! state_dir = "/var/lib/ferry-agent"     # optional (this default)
//! listen = "127.0.0.1:9464"              # optional: /healthz, /status, /metrics
//!
//! [registry]
//! url = "https://registry.example.com:443"
//! token_file = "/etc/ferry/agent-token"  # optional: else FERRY_AGENT_TOKEN(_FILE)
//! ca_cert = "/etc/ferry/registry-ca.pem" # optional
//!
//! [version]                              # exactly one of url, file, command
//! url = "http://crm.internal:8080/version"
//! # file = "/opt/crm/VERSION"
//! # command = ["/opt/crm/bin/crm", "--version"]
//! json_pointer = "/version"              # optional: the answer is JSON
//! stable_reads = 2                       # optional: act once read this many times in a row
//! interval_seconds = 30                  # optional (this default)
//! timeout_seconds = 10                   # optional (this default)
//! ca_cert = "/etc/ferry/internal-ca.pem" # optional, for an https:// url
//!
//! [publish]                              # optional
//! retries = 5                            # attempts within one publish
//! backoff_max_seconds = 300              # longest wait between failed rounds
//! reconcile_seconds = 300                # how often the registry is re-checked
//! compatible = ">=2.4.0, <2.5.0"         # client versions that need not update (new releases)
//! ready_file = "/opt/crm/releases/{version}/.complete"  # optional: pack only once it exists
//!
//! [[artifacts]]                          # one per artifact; {version} is substituted
//! name = "api"
//! path = "/opt/crm/releases/{version}/openapi.json"
//! [[artifacts]]
//! name = "mobile"
//! path = "/opt/crm/releases/{version}/crm.apk"
//! platforms = ["android"]
//! ```
//!
//! Relative paths are relative to the configuration file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_release::{ArtifactSpec, Name};
use serde::Deserialize;
use toml::Spanned;

use crate::located::{Locator, Problem};
use crate::{Connection, Proxy};

pub use crate::manifests::DEFAULT_STATE_DIR;

/// How a watching agent is configured, checked.
#[derive(Clone)]
pub struct WatchConfig {
    /// The file it was read from (in messages).
    pub file: PathBuf,
    pub connection: Connection,
    pub tenant: Name,
    pub app: Name,
    pub source: VersionSource,
    /// Between two reads of the version.
    pub interval: Duration,
    /// For one read of the version.
    pub timeout: Duration,
    /// A new version is acted on once it was read this many times in a
    /// row (a rolling upgrade of the product may answer old and new).
    pub stable_reads: u32,
    /// A file (with `{version}`) that must exist before a new version is
    /// packed: the product's installer writes it once the files are whole.
    pub ready_file: Option<String>,
    pub artifacts: Vec<ArtifactTemplate>,
    /// Attempts after a retryable failure within one publish.
    pub retries: u32,
    /// Failed rounds are retried after 1 s, 2 s, 4 s … up to this.
    pub backoff_max: Duration,
    /// How often the registry's deployed version is compared with the
    /// private system's, to undo a deploy made by hand.
    pub reconcile: Duration,
    pub compatible: Option<semver::VersionReq>,
    pub state_dir: PathBuf,
    /// Where `/healthz`, `/status` and `/metrics` are served, if anywhere.
    pub listen: Option<SocketAddr>,
}

impl std::fmt::Debug for WatchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the token.
        f.debug_struct("WatchConfig")
            .field("file", &self.file)
            .field("registry", &self.connection.url)
            .field("tenant", &self.tenant)
            .field("app", &self.app)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where the private system's deployed version is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The body of a GET (`http://` or `https://`).
    Http { url: String, ca_cert: Option<PathBuf>, pointer: Option<String> },
    /// A file's content.
    File { path: PathBuf, pointer: Option<String> },
    /// What a command prints on stdout (run without a shell).
    Command { argv: Vec<String>, pointer: Option<String> },
}

impl std::fmt::Display for VersionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (source, pointer) = match self {
            Self::Http { url, pointer, .. } => (format!("GET {}", redacted(url)), pointer),
            Self::File { path, pointer } => (format!("file {}", path.display()), pointer),
            Self::Command { argv, pointer } => (format!("command {}", ferry_release::Quoted(&argv.join(" "))), pointer),
        };
        match pointer {
            Some(p) => write!(f, "{source} (JSON at {p})"),
            None => f.write_str(&source),
        }
    }
}

/// A URL without the credentials it may carry (for logs and messages).
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// An artifact whose path names the version as `{version}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactTemplate {
    pub name: Name,
    pub platforms: Vec<Name>,
    pub path: String,
}

impl ArtifactTemplate {
    /// The artifact of `version`.
    pub fn spec(&self, version: &ferry_release::Version) -> ArtifactSpec {
        ArtifactSpec {
            name: self.name.clone(),
            platforms: self.platforms.clone(),
            path: substitute(&self.path, version),
        }
    }
}

const PLACEHOLDER: &str = "{version}";

/// A path template with the version substituted.
pub(crate) fn substitute(template: &str, version: &ferry_release::Version) -> PathBuf {
    PathBuf::from(template.replace(PLACEHOLDER, &version.to_string()))
}

/// Reads and checks the configuration at `path`. The token is read now
/// (from `registry.token_file`, else `FERRY_AGENT_TOKEN` or
/// `FERRY_AGENT_TOKEN_FILE`), so that a wrong path shows at start.
pub fn load(path: &Path) -> Result<WatchConfig, Vec<Problem>> {
    let at_start = |message: String| vec![Problem { file: path.to_owned(), line: 1, column: 1, message }];
    let bytes = std::fs::read(path).map_err(|e| at_start(format!("cannot read the configuration: {e}")))?;
    let text = crate::located::utf8_text(path, bytes).map_err(|p| vec![p])?;
    parse(path, &text, &|name| ferry_config::secret(name))
}

/// A secret setting from the environment (`NAME` or `NAME_FILE`).
type EnvSecret<'a> = &'a dyn Fn(&str) -> Result<Option<String>, String>;

/// Parses and checks `text`, read from `path`.
pub(crate) fn parse(path: &Path, text: &str, env: EnvSecret<'_>) -> Result<WatchConfig, Vec<Problem>> {
    let locator = Locator::new(text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, column) = locator.locate(e.span().map_or(0, |s| s.start));
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        vec![Problem { file: path.to_owned(), line, column, message }]
    })?;
    let dir = path.parent().map(Path::to_owned).unwrap_or_default();
    let mut c = Checker { file: path, locator, dir, problems: Vec::new() };
    let config = c.check(raw, env);
    match config {
        Some(config) if c.problems.is_empty() => Ok(config),
        _ => {
            c.problems.sort_by_key(|p| (p.line, p.column));
            Err(c.problems)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tenant: Spanned<String>,
    app: Spanned<String>,
    state_dir: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    registry: Spanned<RawRegistry>,
    version: Spanned<RawVersion>,
    publish: Option<Spanned<RawPublish>>,
    artifacts: Spanned<Vec<Spanned<RawArtifact>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    url: Spanned<String>,
    token_file: Option<Spanned<String>>,
    ca_cert: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    url: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    json_pointer: Option<Spanned<String>>,
    stable_reads: Option<Spanned<i64>>,
    interval_seconds: Option<Spanned<i64>>,
    timeout_seconds: Option<Spanned<i64>>,
    ca_cert: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    retries: Option<Spanned<i64>>,
    backoff_max_seconds: Option<Spanned<i64>>,
    reconcile_seconds: Option<Spanned<i64>>,
    compatible: Option<Spanned<String>>,
    ready_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: Spanned<String>,
    path: Spanned<String>,
    platforms: Option<Spanned<Vec<Spanned<String>>>>,
}

struct Checker<'a> {
    file: &'a Path,
    locator: Locator<'a>,
    dir: PathBuf,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem<T>(&mut self, span: &Spanned<T>, key: &str, message: impl std::fmt::Display) {
        let (line, column) = self.locator.locate(span.span().start);
        self.problems.push(Problem { file: self.file.to_owned(), line, column, message: format!("{key}: {message}") });
    }

    fn name(&mut self, what: &'static str, key: &str, value: &Spanned<String>) -> Option<Name> {
        Name::parse(what, value.get_ref()).map_err(|e| self.problem(value, key, e)).ok()
    }

    fn path(&mut self, key: &str, value: &Spanned<String>) -> Option<PathBuf> {
        if value.get_ref().is_empty() {
            self.problem(value, key, "is empty");
            return None;
        }
        Some(self.dir.join(value.get_ref()))
    }

    /// A path that names the version as `{version}` (and no other
    /// placeholder), relative to the file's directory.
    fn template(&mut self, key: &str, value: &Spanned<String>) -> Option<String> {
        let raw = value.get_ref();
        let rest = raw.replace(PLACEHOLDER, "");
        if rest.contains('{') || rest.contains('}') {
            self.problem(value, key, "the only placeholder is {version}");
            return None;
        }
        let path = self.path(key, value)?;
        match path.to_str() {
            Some(text) => Some(text.to_owned()),
            None => {
                self.problem(value, key, "is not UTF-8");
                None
            }
        }
    }

    /// An integer setting within `range`, or `default`.
    fn number(&mut self, key: &str, value: Option<&Spanned<i64>>, range: (i64, i64), default: i64) -> u64 {
        let Some(value) = value else { return default as u64 };
        let n = *value.get_ref();
        if n < range.0 || n > range.1 {
            self.problem(value, key, format!("must be from {} to {}, got {n}", range.0, range.1));
            return default as u64;
        }
        n as u64
    }

    fn check(&mut self, raw: RawConfig, env: EnvSecret<'_>) -> Option<WatchConfig> {
        let tenant = self.name("tenant", "tenant", &raw.tenant);
        let app = self.name("app", "app", &raw.app);
        let state_dir = match &raw.state_dir {
            Some(dir) => self.path("state_dir", dir),
            None => Some(PathBuf::from(DEFAULT_STATE_DIR)),
        };
        let listen = raw.listen.as_ref().and_then(|l| {
            l.get_ref()
                .parse::<SocketAddr>()
                .map_err(|_| self.problem(l, "listen", "expected an address and port such as 127.0.0.1:9464"))
                .ok()
        });
        let connection = self.registry(&raw.registry, env);
        let (source, interval, timeout) = self.version(&raw.version);
        let stable_reads =
            self.number("version.stable_reads", raw.version.get_ref().stable_reads.as_ref(), (1, 100), 2) as u32;
        let publish = raw.publish.as_ref().map(Spanned::get_ref);
        let retries = self.number("publish.retries", publish.and_then(|p| p.retries.as_ref()), (0, 100), 5) as u32;
        let backoff_max = self.number(
            "publish.backoff_max_seconds",
            publish.and_then(|p| p.backoff_max_seconds.as_ref()),
            (1, 86_400),
            300,
        );
        let reconcile = self.number(
            "publish.reconcile_seconds",
            publish.and_then(|p| p.reconcile_seconds.as_ref()),
            (1, 86_400),
            300,
        );
        let compatible = publish.and_then(|p| p.compatible.as_ref()).and_then(|c| {
            semver::VersionReq::parse(c.get_ref())
                .map_err(|e| {
                    self.problem(
                        c,
                        "publish.compatible",
                        format!("not a semver requirement such as \">=2.4.0, <2.5.0\": {e}"),
                    )
                })
                .ok()
        });
        let ready_file =
            publish.and_then(|p| p.ready_file.as_ref()).and_then(|r| self.template("publish.ready_file", r));
        let artifacts = self.artifacts(&raw.artifacts);
        Some(WatchConfig {
            file: self.file.to_owned(),
            connection: connection?,
            tenant: tenant?,
            app: app?,
            source: source?,
            interval,
            timeout,
            stable_reads,
            ready_file,
            artifacts,
            retries,
            backoff_max: Duration::from_secs(backoff_max),
            reconcile: Duration::from_secs(reconcile),
            compatible,
            state_dir: state_dir?,
            listen,
        })
    }

    fn registry(&mut self, raw: &Spanned<RawRegistry>, env: EnvSecret<'_>) -> Option<Connection> {
        let r = raw.get_ref();
        let url = r.url.get_ref();
        let parsed = reqwest::Url::parse(url).ok().filter(|u| u.host_str().is_some_and(|h| !h.is_empty()));
        if !(url.starts_with("https://") || url.starts_with("http://")) || parsed.is_none() {
            self.problem(&r.url, "registry.url", "expected https://host:port (or http://host:port for local use)");
        }
        let token = match &r.token_file {
            Some(file) => {
                self.path("registry.token_file", file).and_then(|path| match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                    Ok(_) => {
                        self.problem(file, "registry.token_file", format!("{} is empty", path.display()));
                        None
                    }
                    Err(e) => {
                        self.problem(file, "registry.token_file", format!("cannot read {}: {e}", path.display()));
                        None
                    }
                })
            }
            None => match env("FERRY_AGENT_TOKEN") {
                Ok(Some(token)) => Some(token),
                Ok(None) => {
                    self.problem(
                        raw,
                        "registry",
                        "no token: set token_file, or FERRY_AGENT_TOKEN or FERRY_AGENT_TOKEN_FILE",
                    );
                    None
                }
                Err(e) => {
                    self.problem(raw, "registry", e);
                    None
                }
            },
        };
        let ca_cert = r.ca_cert.as_ref().and_then(|c| {
            let path = self.path("registry.ca_cert", c)?;
            match std::fs::File::open(&path) {
                Ok(_) => Some(path),
                Err(e) => {
                    self.problem(c, "registry.ca_cert", format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        });
        Some(Connection { url: url.clone(), token: token?, ca_cert, proxy: Proxy::from_env() })
    }

    fn version(&mut self, raw: &Spanned<RawVersion>) -> (Option<VersionSource>, Duration, Duration) {
        let v = raw.get_ref();
        let interval = self.number("version.interval_seconds", v.interval_seconds.as_ref(), (1, 86_400), 30);
        let timeout = self.number("version.timeout_seconds", v.timeout_seconds.as_ref(), (1, 3600), 10);
        let pointer = v.json_pointer.as_ref().and_then(|p| {
            let text = p.get_ref();
            if text.is_empty() || text.starts_with('/') {
                Some(text.clone())
            } else {
                self.problem(p, "version.json_pointer", "a JSON pointer starts with '/' (RFC 6901), e.g. \"/version\"");
                None
            }
        });
        if timeout > interval {
            let at = v.timeout_seconds.as_ref().map_or(raw.span().start, |t| t.span().start);
            let (line, column) = self.locator.locate(at);
            let message = format!("version.timeout_seconds: must not exceed interval_seconds ({interval})");
            self.problems.push(Problem { file: self.file.to_owned(), line, column, message });
        }
        let given = [v.url.is_some(), v.file.is_some(), v.command.is_some()].iter().filter(|g| **g).count();
        if given != 1 {
            self.problem(raw, "version", "set exactly one of url, file or command");
            return (None, Duration::from_secs(interval), Duration::from_secs(timeout));
        }
        if let Some(ca) = &v.ca_cert
            && !v.url.as_ref().is_some_and(|u| u.get_ref().starts_with("https://"))
        {
            self.problem(ca, "version.ca_cert", "is only used with an https:// url");
        }
        let source = if let Some(url) = &v.url {
            let text = url.get_ref();
            if !(text.starts_with("http://") || text.starts_with("https://")) || reqwest::Url::parse(text).is_err() {
                self.problem(url, "version.url", "expected an http:// or https:// URL");
                None
            } else {
                let ca_cert = v.ca_cert.as_ref().and_then(|c| self.path("version.ca_cert", c));
                Some(VersionSource::Http { url: text.clone(), ca_cert, pointer })
            }
        } else if let Some(file) = &v.file {
            self.path("version.file", file).map(|path| VersionSource::File { path, pointer })
        } else {
            let command = v.command.as_ref().expect("one of the three is set");
            let argv: Vec<String> = command.get_ref().iter().map(|a| a.get_ref().clone()).collect();
            if argv.first().is_none_or(String::is_empty) {
                self.problem(command, "version.command", "name the program: [\"/path/to/program\", \"arg\", ...]");
                None
            } else {
                Some(VersionSource::Command { argv, pointer })
            }
        };
        (source, Duration::from_secs(interval), Duration::from_secs(timeout))
    }

    fn artifacts(&mut self, raw: &Spanned<Vec<Spanned<RawArtifact>>>) -> Vec<ArtifactTemplate> {
        if raw.get_ref().is_empty() {
            self.problem(raw, "artifacts", "name at least one artifact ([[artifacts]] with name and path)");
        }
        let mut out: Vec<ArtifactTemplate> = Vec::new();
        let mut names = Vec::new();
        for (i, a) in raw.get_ref().iter().enumerate() {
            let a = a.get_ref();
            let key = |field: &str| format!("artifacts[{i}].{field}");
            let name = self.name("artifact", &key("name"), &a.name);
            if let Some(name) = &name {
                if names.contains(name) {
                    self.problem(&a.name, &key("name"), format!("artifact {name} is named twice"));
                }
                names.push(name.clone());
            }
            let mut platforms = Vec::new();
            for p in a.platforms.iter().flat_map(|p| p.get_ref()) {
                platforms.extend(self.name("platform", &key("platforms"), p));
            }
            platforms.sort();
            platforms.dedup();
            let path = self.template(&key("path"), &a.path);
            if path.as_ref().is_some_and(|p| !p.contains(PLACEHOLDER)) {
                tracing::warn!(
                    artifact = %a.name.get_ref(),
                    "{}: artifacts[{i}].path has no {{version}}: what is there when a new version is read is \
                     published as that version; prefer a path per version, or set publish.ready_file",
                    self.file.display()
                );
            }
            if let (Some(name), Some(path)) = (name, path) {
                out.push(ArtifactTemplate { name, platforms, path });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Result<Option<String>, String> {
        Ok(None)
    }

    fn token_env(name: &str) -> Result<Option<String>, String> {
        Ok((name == "FERRY_AGENT_TOKEN").then(|| "ferry_agent_x".to_owned()))
    }

    const GOOD: &str = r#"
tenant = "acme"
app = "crm"
state_dir = "state"

[registry]
url = "https://registry.example.com:443"

[version]
url = "http://crm.internal:8080/version"
json_pointer = "/version"
interval_seconds = 20

[publish]
compatible = ">=2.4.0, <2.5.0"

[[artifacts]]
name = "api"
path = "releases/{version}/openapi.json"

[[artifacts]]
name = "mobile"
path = "/opt/crm/{version}/crm.apk"
platforms = ["android", "android"]
"#;

    #[test]
    fn a_good_file_is_resolved_relative_to_its_directory() {
        let c = parse(Path::new("/etc/ferry/agent.toml"), GOOD, &token_env).unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert_eq!(c.connection.token, "ferry_agent_x");
        assert_eq!(c.state_dir, Path::new("/etc/ferry/state"));
        assert_eq!(c.interval, Duration::from_secs(20));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(
            c.source,
            VersionSource::Http {
                url: "http://crm.internal:8080/version".into(),
                ca_cert: None,
                pointer: Some("/version".into())
            }
        );
        let v = "2.4.1".parse::<ferry_release::Version>().unwrap();
        assert_eq!(c.artifacts[0].spec(&v).path, Path::new("/etc/ferry/releases/2.4.1/openapi.json"));
        assert_eq!(c.artifacts[1].spec(&v).path, Path::new("/opt/crm/2.4.1/crm.apk"));
        assert_eq!(c.artifacts[1].platforms.len(), 1);
        assert!(c.compatible.is_some());
    }

    fn problems(text: &str) -> Vec<String> {
        parse(Path::new("agent.toml"), text, &no_env).unwrap_err().iter().map(Problem::to_string).collect()
    }

    #[test]
    fn every_problem_names_its_key_and_line() {
        let text = r#"tenant = "Acme!"
app = "crm"
listen = "everywhere"
[registry]
url = "ftp://x"
[version]
url = "http://a/v"
file = "/v"
[publish]
retries = -1
compatible = "newest"
[[artifacts]]
name = "api"
path = "x/{ver}/a.json"
[[artifacts]]
name = "api"
path = "b"
"#;
        let got = problems(text);
        let expect = [
            "agent.toml:1:10: tenant: ",
            "agent.toml:3:10: listen: ",
            "agent.toml:4:1: registry: no token",
            "agent.toml:5:7: registry.url: ",
            "agent.toml:6:1: version: set exactly one of url, file or command",
            "agent.toml:10:11: publish.retries: must be from 0 to 100, got -1",
            "agent.toml:11:14: publish.compatible: ",
            "agent.toml:14:8: artifacts[0].path: the only placeholder is {version}",
            "agent.toml:16:8: artifacts[1].name: artifact api is named twice",
        ];
        assert_eq!(got.len(), expect.len(), "{got:#?}");
        for (g, e) in got.iter().zip(expect) {
            assert!(g.starts_with(e), "{g:?} does not start with {e:?}\nall: {got:#?}");
        }
    }

    #[test]
    fn unknown_keys_and_missing_ones_are_named() {
        let got = problems(
            "tenant = \"a\"\napp = \"b\"\nregistry = { url = \"http://r:1\" }\nversion = { file = \"v\" }\nartifact = []\n",
        );
        assert!(got[0].contains("unknown field `artifact`"), "{got:?}");
        let got = problems("tenant = \"a\"\napp = \"b\"\n[registry]\nurl = \"http://r:1\"\n[version]\nfile = \"v\"\n");
        assert!(got[0].contains("missing field `artifacts`"), "{got:?}");
    }

    #[test]
    fn credentials_in_the_version_url_are_not_shown() {
        let source =
            VersionSource::Http { url: "https://ops:s3cret@crm.internal/v".into(), ca_cert: None, pointer: None };
        assert_eq!(source.to_string(), "GET https://crm.internal/v");
    }

    #[test]
    fn a_missing_token_file_is_named() {
        let text = GOOD.replace(
            "url = \"https://registry.example.com:443\"",
            "url = \"https://r:443\"\ntoken_file = \"/nonexistent/token\"",
        );
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("registry.token_file: cannot read /nonexistent/token"), "{got:?}");
    }

    #[test]
    fn the_command_source_needs_a_program_and_the_timeout_fits_the_interval() {
        let text = GOOD
            .replace("url = \"http://crm.internal:8080/version\"", "command = []")
            .replace("interval_seconds = 20", "interval_seconds = 5\ntimeout_seconds = 6");
        let got = problems(&text.replace("token", ""));
        assert!(got.iter().any(|g| g.contains("version.command: name the program")), "{got:?}");
        // At the key itself.
        let line = text.lines().position(|l| l.starts_with("timeout_seconds")).unwrap() + 1;
        let expect = format!("agent.toml:{line}:19: version.timeout_seconds: must not exceed interval_seconds (5)");
        assert!(got.contains(&expect), "{expect} not in {got:?}");
    }
}
