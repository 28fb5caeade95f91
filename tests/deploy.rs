//! The deployment artifacts, validated offline: docker-compose.yml against
//! the Compose specification, every Kustomize overlay rendered and checked
//! against the Kubernetes API schemas (strictly, for the oldest and newest
//! Kubernetes versions we claim), the contract between them and the
//! binaries (every variable they set is documented in README.md, every
//! command they run is a real subcommand, probes hit the ports the services
//! listen on, secrets only as files), the PromQL of the alerts and the
//! dashboard, and the gateway's database roles (deploy/sql/gateway-role.sql)
//! against a real gateway on real PostgreSQL.
//!
//! The tools (kubectl, check-jsonschema, kubernetes-validate, and Python
//! with PyYAML and promql-parser) are installed by `scripts/install-deps`
//! into FERRY_TOOLS_DIR (default ~/.cache/ferry/tools); a missing tool fails
//! the test, it is never skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use ferry_e2e::{Release, Stack, publish_to};
use ferry_gateway::{Gateway, GatewayConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Kubernetes versions the manifests must be valid for: the oldest we
/// support and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// Overlays that must exist (any other under overlays/ is validated too).
const OVERLAYS: &[&str] = &["dev", "production"];

/// Prefixes of the variables that are Ferry's configuration and must be
/// documented in README.md's configuration tables.
const DOCUMENTED_PREFIXES: &[&str] = &["FERRY_", "DATABASE_URL", "AWS_", "OTEL_", "RUST_LOG"];

/// Secrets: never set as a plain value, only as `X_FILE` — the variables
/// ferry-config reads from files, but for a Redis URL without credentials.
fn is_secret(var: &str, value: &str) -> bool {
    ferry_config::SECRET_VARIABLES.contains(&var) && (var != "FERRY_REDIS_URL" || value.contains('@'))
}

/// The metrics the services export (counters by their `_total` name,
/// histograms by their base name). Kept by hand: prometheus-client shows a
/// family only once it has a sample, so an idle registry cannot list them.
/// `metric_names_are_registered` checks each is registered in the code.
const METRICS: &[&str] = &[
    "ferry_gateway_requests_total",
    "ferry_gateway_requests_shed_total",
    "ferry_gateway_request_duration_seconds",
    "ferry_gateway_watches_open",
    "ferry_gateway_cache_loads_total",
    "ferry_gateway_reports_total",
    "ferry_gateway_rate_limit_fallbacks_total",
    "ferry_gateway_dependency_errors_total",
    "ferry_gateway_dependency_duration_seconds",
    "ferry_registry_requests_total",
    "ferry_registry_request_duration_seconds",
    "ferry_registry_bytes_received_total",
    "ferry_registry_bytes_reused_total",
    "ferry_registry_dependency_errors_total",
    "ferry_registry_dependency_duration_seconds",
    "ferry_ready",
];

/// Each name in [`METRICS`] is registered by the code: its prefix's
/// metrics module (or ferry-store's, shown by both) registers its base name.
#[test]
fn metric_names_are_registered() {
    let source = |path: &str| read(path);
    let (gateway, registry, store) = (
        source("services/gateway/src/metrics.rs"),
        source("services/registry/src/metrics.rs"),
        source("crates/store/src/metrics.rs"),
    );
    for metric in METRICS {
        let base = metric.strip_suffix("_total").unwrap_or(metric);
        let registered = |code: &str, name: &str| code.contains(&format!("\"{name}\""));
        let found = match base {
            "ferry_ready" => registered(&gateway, base) && registered(&registry, base),
            _ => {
                let (code, name) = if let Some(name) = base.strip_prefix("ferry_gateway_") {
                    (&gateway, name)
                } else {
                    (&registry, base.strip_prefix("ferry_registry_").expect("a known prefix"))
                };
                registered(code, name) || (name.starts_with("dependency_") && registered(&store, name))
            }
        };
        assert!(found, "{metric} is not registered by the code");
    }
}

const BINARIES: &[&str] = &["ferry-registry", "ferry-gateway", "ferry-agent"];

// ---------------------------------------------------------------- tools

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_TOOLS_DIR") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").expect("HOME is set (or set FERRY_TOOLS_DIR)");
    Path::new(&home).join(".cache/ferry/tools")
}

fn missing_tool(what: &str, looked: &Path) -> ! {
    panic!(
        "{what} not found at {}: run scripts/install-deps (it installs the deployment test's tools)",
        looked.display()
    )
}

/// A program of the tools' virtual environment.
fn venv_tool(name: &str) -> PathBuf {
    let path = tools_dir().join("venv/bin").join(name);
    if !path.is_file() {
        missing_tool(name, &path);
    }
    path
}

/// kubectl: the one install-deps put in the tools directory, else PATH's.
fn kubectl() -> PathBuf {
    let own = tools_dir().join("bin/kubectl");
    if own.is_file() {
        return own;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| missing_tool("kubectl", &own))
}

/// Runs `cmd` (from the repository's root) and returns its output, failing
/// the test with everything it printed unless it succeeded.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (run scripts/install-deps)"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` with `input` on its stdin.
fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (run scripts/install-deps)"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("waiting for the child");
    writer.join().expect("stdin writer").expect("writing stdin");
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every document of a YAML stream, as JSON (PyYAML's safe loader, which
/// also resolves anchors and merge keys as Compose does).
fn yaml_documents(text: &str) -> Vec<Value> {
    const SCRIPT: &str = "import sys, json, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)";
    let out = run_with_input(Command::new(venv_tool("python")).args(["-c", SCRIPT]), text.as_bytes());
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("the YAML converts to JSON");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn compose() -> Value {
    let mut docs = yaml_documents(&read("docker-compose.yml"));
    assert_eq!(docs.len(), 1, "docker-compose.yml is one YAML document");
    docs.remove(0)
}

fn overlays() -> Vec<String> {
    let dir = repo().join("deploy/kubernetes/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| dir.join(name).join("kustomization.yaml").is_file())
        .collect();
    names.sort();
    for expected in OVERLAYS {
        assert!(names.iter().any(|n| n == expected), "overlay {expected} is missing (found {names:?})");
    }
    names
}

/// `kubectl kustomize` of an overlay, as text; rendered once per overlay.
fn rendered_text(overlay: &str) -> String {
    static RENDERED: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    let all = RENDERED.get_or_init(|| {
        overlays()
            .into_iter()
            .map(|name| {
                let dir = format!("deploy/kubernetes/overlays/{name}");
                let out = run(Command::new(kubectl()).args(["kustomize", &dir]));
                (name, String::from_utf8(out.stdout).expect("UTF-8 manifests"))
            })
            .collect()
    });
    all.get(overlay).unwrap_or_else(|| panic!("no overlay {overlay}")).clone()
}

fn rendered(overlay: &str) -> Vec<Value> {
    yaml_documents(&rendered_text(overlay))
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

fn kind_of(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or("")
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn documented(name: &str) -> bool {
    DOCUMENTED_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Pod templates of the rendered objects that run pods, with their owner.
fn pod_specs(objects: &[Value]) -> Vec<(String, &Value)> {
    objects
        .iter()
        .filter_map(|o| {
            let spec = match kind_of(o) {
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &o["spec"]["template"]["spec"],
                "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                "Pod" => &o["spec"],
                _ => return None,
            };
            Some((format!("{}/{}", kind_of(o), name_of(o)), spec))
        })
        .collect()
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"].iter().flat_map(|key| pod[*key].as_array().into_iter().flatten()).collect()
}

// ------------------------------------------------------------- compose

#[test]
fn compose_file_follows_the_compose_specification() {
    run(Command::new(venv_tool("check-jsonschema")).args([
        "--builtin-schema",
        "vendor.compose-spec",
        "docker-compose.yml",
    ]));
}

/// Secrets reach the services only as files, each a compose secret the
/// service is given and whose file exists; every one-shot step the stack
/// waits for exists.
#[test]
fn compose_passes_secrets_as_files() {
    let compose = compose();
    let declared = compose["secrets"].as_object().expect("top-level secrets");
    for (name, secret) in declared {
        let file = secret["file"].as_str().unwrap_or_else(|| panic!("secret {name} comes from a file"));
        assert!(repo().join(file).is_file(), "secret {name}: {file} does not exist");
    }
    let services = compose["services"].as_object().expect("services");
    for (service, spec) in services {
        let given: BTreeSet<String> = strings(&spec["secrets"]).into_iter().collect();
        for (var, value) in spec["environment"].as_object().into_iter().flatten() {
            assert!(
                !is_secret(var, value.as_str().unwrap_or("")),
                "{service}: {var} is a secret: give it as {var}_FILE (a compose secret)"
            );
            let Some(path) = value.as_str().and_then(|v| v.strip_prefix("/run/secrets/")) else { continue };
            assert!(var.ends_with("_FILE"), "{service}: {var} names a secret file but is not a *_FILE variable");
            assert!(given.contains(path), "{service}: {var} reads /run/secrets/{path}, a secret it is not given");
            assert!(declared.contains_key(path), "{service}: secret {path} is not declared");
        }
        for (dependency, condition) in spec["depends_on"].as_object().into_iter().flatten() {
            assert!(services.contains_key(dependency), "{service} depends on {dependency}, which does not exist");
            let condition = condition["condition"].as_str().unwrap_or("");
            assert!(
                ["service_healthy", "service_completed_successfully", "service_started"].contains(&condition),
                "{service} waits for {dependency} with condition {condition:?}"
            );
            if condition == "service_healthy" {
                assert!(
                    services[dependency]["healthcheck"]["test"].is_array(),
                    "{service} waits for {dependency} to be healthy, which has no health check"
                );
            }
        }
        for volume in strings(&spec["volumes"]) {
            let source = volume.split(':').next().unwrap_or("");
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "{service} mounts {source}, which does not exist");
            }
        }
    }
    for service in ["postgres", "garage", "garage-init", "valkey", "registry", "gateway", "otel-collector", "jaeger"] {
        assert!(services.contains_key(service), "docker-compose.yml has no {service} service");
    }
    assert_eq!(strings(&services["agent"]["profiles"]), ["agent"], "the agent runs only in profile agent");
}

// ---------------------------------------------------------- kubernetes

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for overlay in overlays() {
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, rendered_text(&overlay)).unwrap();
        for version in KUBERNETES_VERSIONS {
            run(Command::new(venv_tool("kubernetes-validate"))
                .args(["--kubernetes-version", version, "--strict", "--quiet"])
                .arg(&file));
        }
    }
}

/// What the schemas cannot see: hardened pods, probes on the ports the
/// services listen on, a grace period above drain plus shutdown grace,
/// secrets only as mounted files whose keys exist, Services that select
/// pods and name their ports, the gateway's autoscaler and budget.
#[test]
fn overlays_keep_pods_hardened_probed_and_secrets_in_files() {
    for overlay in overlays() {
        let objects = rendered(&overlay);
        let config_maps: BTreeMap<&str, &Value> =
            objects.iter().filter(|o| kind_of(o) == "ConfigMap").map(|o| (name_of(o), &o["data"])).collect();
        let secrets: BTreeMap<&str, &Value> =
            objects.iter().filter(|o| kind_of(o) == "Secret").map(|o| (name_of(o), &o["data"])).collect();
        for data in config_maps.values() {
            for (key, value) in data.as_object().into_iter().flatten() {
                assert!(!is_secret(key, value.as_str().unwrap_or("")), "{overlay}: ConfigMap sets secret {key}");
            }
        }
        let pods = pod_specs(&objects);
        assert!(pods.len() >= 2, "{overlay}: expected the registry and gateway Deployments");
        for (owner, pod) in &pods {
            let at = format!("{overlay}: {owner}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{at}: runAsNonRoot");
            assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0, "{at}: runAsUser not root");
            assert_eq!(pod["automountServiceAccountToken"], false, "{at}: no service account token");
            let mut settings: BTreeMap<String, String> = BTreeMap::new();
            for container in containers(pod) {
                let at = format!("{at} container {}", container["name"]);
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{at}: readOnlyRootFilesystem");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{at}: allowPrivilegeEscalation");
                assert!(strings(&security["capabilities"]["drop"]).contains(&"ALL".into()), "{at}: drop ALL");
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(container["resources"][bound][resource].is_string(), "{at}: {bound}.{resource}");
                    }
                }
                for source in container["envFrom"].as_array().into_iter().flatten() {
                    let name = source["configMapRef"]["name"].as_str().unwrap_or("");
                    let data = config_maps.get(name).unwrap_or_else(|| panic!("{at}: no ConfigMap {name}"));
                    for (k, v) in data.as_object().into_iter().flatten() {
                        settings.insert(k.clone(), v.as_str().unwrap_or("").to_owned());
                    }
                }
                for var in container["env"].as_array().into_iter().flatten() {
                    let name = var["name"].as_str().unwrap_or("");
                    if let Some(value) = var["value"].as_str() {
                        settings.insert(name.to_owned(), value.to_owned());
                    }
                    assert!(
                        !is_secret(name, var["value"].as_str().unwrap_or("")),
                        "{at}: {name} is a secret: give it as {name}_FILE"
                    );
                    assert!(var["valueFrom"]["secretKeyRef"].is_null(), "{at}: {name} from a Secret: use a file");
                    if let Some(path) = name.strip_suffix("_FILE").and(var["value"].as_str()) {
                        secret_file_is_mounted(&at, pod, container, path, &secrets);
                    }
                }
            }
            // A service's container: probes on ports it listens on.
            let main = &pod["containers"][0];
            if owner.starts_with("Deployment/") {
                assert_eq!(main["readinessProbe"]["httpGet"]["path"], "/readyz", "{at}: readiness on /readyz");
                assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/healthz", "{at}: liveness on /healthz");
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let Some(port) = probe_port(main, &main[probe]) else { continue };
                    assert!(
                        settings.iter().any(|(k, v)| k.ends_with("_LISTEN") && v.ends_with(&format!(":{port}"))),
                        "{at}: {probe} uses port {port}, which no *_LISTEN setting listens on ({settings:?})"
                    );
                }
                let seconds = |key: &str| settings.get(key).and_then(|v| v.parse::<u64>().ok());
                let (drain, grace) = (seconds("FERRY_DRAIN_SECONDS"), seconds("FERRY_SHUTDOWN_GRACE_SECONDS"));
                let needed = drain.unwrap_or(5) + grace.unwrap_or(25);
                let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                assert!(period > needed, "{at}: terminationGracePeriodSeconds {period} <= drain + grace {needed}");
            }
        }
        services_select_pods_and_ports(&overlay, &objects);
        let hpa = objects
            .iter()
            .find(|o| kind_of(o) == "HorizontalPodAutoscaler")
            .unwrap_or_else(|| panic!("{overlay}: no HorizontalPodAutoscaler"));
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "ferry-gateway");
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
        let gateway = objects.iter().find(|o| kind_of(o) == "Deployment" && name_of(o) == "ferry-gateway").unwrap();
        assert!(gateway["spec"]["replicas"].is_null(), "{overlay}: the autoscaler, not the Deployment, sets replicas");
        let pdb = objects.iter().find(|o| kind_of(o) == "PodDisruptionBudget").expect("a PodDisruptionBudget");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], gateway["spec"]["selector"]["matchLabels"],
            "{overlay}: the PodDisruptionBudget covers the gateway"
        );
        let policies: Vec<&str> = objects.iter().filter(|o| kind_of(o) == "NetworkPolicy").map(name_of).collect();
        assert!(policies.contains(&"ferry-gateway") && policies.contains(&"ferry-registry"), "{overlay}: {policies:?}");
    }
}

/// The port number a probe uses (named ports resolved).
fn probe_port(container: &Value, probe: &Value) -> Option<u64> {
    let port = &probe["httpGet"]["port"];
    if let Some(number) = port.as_u64() {
        return Some(number);
    }
    let name = port.as_str()?;
    container["ports"].as_array()?.iter().find(|p| p["name"] == name).and_then(|p| p["containerPort"].as_u64())
}

/// A `*_FILE` path lies in a mounted Secret volume; where the overlay
/// renders that Secret, the file's key is in it.
fn secret_file_is_mounted(at: &str, pod: &Value, container: &Value, path: &str, secrets: &BTreeMap<&str, &Value>) {
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str().is_some_and(|dir| Path::new(path).parent() == Some(Path::new(dir))))
        .unwrap_or_else(|| panic!("{at}: {path} is in no mounted volume"));
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{at}: no volume {}", mount["name"]));
    let secret = volume["secret"]["secretName"].as_str().unwrap_or_else(|| panic!("{at}: {path} is not in a Secret"));
    let key = Path::new(path).file_name().unwrap().to_str().unwrap();
    if let Some(data) = secrets.get(secret) {
        assert!(data.get(key).is_some(), "{at}: Secret {secret} has no key {key} (for {path})");
    }
}

fn services_select_pods_and_ports(overlay: &str, objects: &[Value]) {
    let workloads: Vec<&Value> =
        objects.iter().filter(|o| matches!(kind_of(o), "Deployment" | "StatefulSet")).collect();
    for service in objects.iter().filter(|o| kind_of(o) == "Service") {
        let selector = service["spec"]["selector"].as_object().expect("a selector");
        let template = workloads
            .iter()
            .map(|w| &w["spec"]["template"])
            .find(|t| selector.iter().all(|(k, v)| &t["metadata"]["labels"][k] == v))
            .unwrap_or_else(|| panic!("{overlay}: Service {} selects no pods", name_of(service)));
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(name) = port["targetPort"].as_str() {
                let ports = template["spec"]["containers"][0]["ports"].as_array().cloned().unwrap_or_default();
                assert!(
                    ports.iter().any(|p| p["name"] == name),
                    "{overlay}: Service {} targets port {name}, which its pods lack",
                    name_of(service)
                );
            }
        }
    }
}

// ------------------------------------------------------- the contract

/// The variables README.md's "Configuration" section names (backquoted):
/// its tables, and the paragraph that lists the `*_FILE` forms of secrets.
fn readme_variables() -> BTreeSet<String> {
    let readme = read("README.md");
    let section = readme.split("\n## Configuration").nth(1).expect("README.md has a ## Configuration section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| {
            !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_variable_the_deployments_set_is_documented_in_the_readme() {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let compose = compose();
    for (service, spec) in compose["services"].as_object().expect("services") {
        for var in spec["environment"].as_object().into_iter().flatten().map(|(k, _)| k) {
            used.entry(var.clone()).or_default().insert(format!("docker-compose.yml ({service})"));
        }
    }
    for overlay in overlays() {
        let objects = rendered(&overlay);
        for object in objects.iter().filter(|o| kind_of(o) == "ConfigMap") {
            for var in object["data"].as_object().into_iter().flatten().map(|(k, _)| k) {
                used.entry(var.clone()).or_default().insert(format!("overlay {overlay} (ConfigMap)"));
            }
        }
        for (owner, pod) in pod_specs(&objects) {
            for container in containers(pod) {
                for var in container["env"].as_array().into_iter().flatten() {
                    let name = var["name"].as_str().unwrap_or("").to_owned();
                    used.entry(name).or_default().insert(format!("overlay {overlay} ({owner})"));
                }
            }
        }
    }
    let documented_vars = readme_variables();
    let missing: Vec<String> = used
        .iter()
        .filter(|(var, _)| documented(var) && !documented_vars.contains(*var))
        .map(|(var, wheres)| format!("  {var}  (set in {})", wheres.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "variables the deployment artifacts set but README.md's Configuration section does not document:\n{}",
        missing.join("\n")
    );
}

/// The three binaries, built from this workspace into this test's own
/// target directory and profile (ferry-e2e uses them as libraries, so cargo
/// does not build them for it).
fn binaries() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo.args(["build", "--locked", "--bins"]).env("CARGO_TARGET_DIR", target_dir);
        for binary in BINARIES {
            cargo.args(["-p", binary]);
        }
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(other) => {
                cargo.args(["--profile", other]);
            }
            None => panic!("unexpected test path {}", exe.display()),
        }
        run(&mut cargo);
        profile_dir.to_path_buf()
    })
}

/// Command lines in shell scripts: a binary's name (not an option's value)
/// and the words after it up to the first one the shell would expand or
/// redirect.
fn shell_commands(script: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in script.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            // `-p ferry-agent` names a package, not a command.
            if !BINARIES.contains(word) || (i > 0 && words[i - 1].starts_with('-')) {
                continue;
            }
            let plain = |w: &&&str| w.chars().all(|c| c.is_ascii_alphanumeric() || "@=/._:,-".contains(c));
            let args = words[i + 1..].iter().take_while(plain).map(|w| (*w).to_owned());
            found.push(std::iter::once((*word).to_owned()).chain(args).collect());
        }
    }
    found
}

/// Every command the Dockerfile, docker-compose.yml, the scripts it runs
/// and the rendered manifests run with one of the three binaries.
fn deployed_commands() -> BTreeMap<Vec<String>, BTreeSet<String>> {
    let mut found: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let mut add = |argv: Vec<String>, source: String| {
        if argv.first().is_some_and(|bin| BINARIES.contains(&bin.as_str())) {
            found.entry(argv).or_default().insert(source);
        }
    };
    // Dockerfile: CMD/ENTRYPOINT (exec form) and the binaries' smoke test.
    for line in read("Dockerfile").lines() {
        if let Some(json) = line.strip_prefix("CMD ").or_else(|| line.strip_prefix("ENTRYPOINT ")) {
            let argv: Vec<String> = serde_json::from_str(json).expect("CMD and ENTRYPOINT in exec (JSON) form");
            add(argv, "Dockerfile".into());
        } else if let Some(shell) = line.strip_prefix("RUN ") {
            for command in shell_commands(shell) {
                add(command, "Dockerfile".into());
            }
        }
    }
    let compose = compose();
    for (service, spec) in compose["services"].as_object().expect("services") {
        let part = |v: &Value| match v {
            Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            other => strings(other),
        };
        let argv: Vec<String> = part(&spec["entrypoint"]).into_iter().chain(part(&spec["command"])).collect();
        add(argv, format!("docker-compose.yml ({service})"));
    }
    let scripts = std::fs::read_dir(repo().join("deploy/compose")).expect("deploy/compose");
    for entry in scripts.map(|e| e.expect("directory entry").path()) {
        if entry.extension().is_some_and(|e| e == "sh") {
            let text = std::fs::read_to_string(&entry).unwrap();
            for command in shell_commands(&text) {
                add(command, entry.strip_prefix(repo()).unwrap().display().to_string());
            }
        }
    }
    for overlay in overlays() {
        let objects = rendered(&overlay);
        for (owner, pod) in pod_specs(&objects) {
            for container in containers(pod) {
                let argv = strings(&container["command"]).into_iter().chain(strings(&container["args"])).collect();
                add(argv, format!("overlay {overlay} ({owner})"));
            }
        }
    }
    for (owner, pod) in pod_specs(&agent_objects()) {
        for container in containers(pod) {
            let argv = strings(&container["command"]).into_iter().chain(strings(&container["args"])).collect();
            add(argv, format!("deploy/agent/kubernetes ({owner})"));
        }
    }
    for line in read(AGENT_UNIT).lines() {
        if let Some(exec) = line.strip_prefix("ExecStart=") {
            let mut argv: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
            argv[0] = Path::new(&argv[0]).file_name().unwrap().to_string_lossy().into_owned();
            add(argv, AGENT_UNIT.into());
        }
    }
    found
}

// ---------------------------------------------------------- the agent

const AGENT_UNIT: &str = "deploy/agent/ferry-agent.service";

/// `kubectl kustomize deploy/agent/kubernetes`, rendered once.
fn agent_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let out = run(Command::new(kubectl()).args(["kustomize", "deploy/agent/kubernetes"]));
        String::from_utf8(out.stdout).expect("UTF-8")
    })
}

fn agent_objects() -> Vec<Value> {
    yaml_documents(agent_text())
}

/// Loads an example configuration as `ferry-agent watch` does, its token
/// file swapped for one that exists here.
fn load_agent_config(text: &str, what: &str) -> ferry_agent::watch::WatchConfig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "ferry_agent_example").unwrap();
    // Without a token_file the key comes from FERRY_AGENT_TOKEN_FILE (the
    // systemd unit's credential); either way, this test's token file.
    let text = match text.lines().find(|l| l.starts_with("token_file")) {
        Some(line) => text.replace(line, "token_file = \"token\""),
        None => text.replacen("[registry]\n", "[registry]\ntoken_file = \"token\"\n", 1),
    };
    assert!(text.contains("token_file = \"token\""), "{what}: no [registry] table");
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, text).unwrap();
    ferry_agent::watch::load(&file).unwrap_or_else(|problems| {
        panic!("{what} does not load:\n{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    })
}

/// The agent's examples: the Kubernetes manifests validate, their pod is
/// hardened and probed on the port the configuration listens on, the state
/// directory is the mounted volume, and both example configurations load.
#[test]
fn the_agent_examples_validate_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, agent_text()).unwrap();
    for version in KUBERNETES_VERSIONS {
        run(Command::new(venv_tool("kubernetes-validate"))
            .args(["--kubernetes-version", version, "--strict", "--quiet"])
            .arg(&file));
    }
    let objects = agent_objects();
    let config_map = objects.iter().find(|o| kind_of(o) == "ConfigMap").expect("the agent's ConfigMap");
    let config = load_agent_config(config_map["data"]["agent.toml"].as_str().unwrap(), "the ConfigMap's agent.toml");
    let pods = pod_specs(&objects);
    assert_eq!(pods.len(), 1, "one agent Deployment");
    let (owner, pod) = &pods[0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{owner}");
    let main = &pod["containers"][0];
    assert_eq!(main["securityContext"]["readOnlyRootFilesystem"], true, "{owner}");
    assert!(strings(&main["securityContext"]["capabilities"]["drop"]).contains(&"ALL".into()), "{owner}");
    assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/healthz", "{owner}");
    let port = probe_port(main, &main["livenessProbe"]).expect("the probe's port");
    assert_eq!(config.listen.map(|a| u64::from(a.port())), Some(port), "{owner}: the probe's port is `listen`'s");
    let mounts: Vec<&str> =
        main["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert!(mounts.contains(&config.state_dir.to_str().unwrap()), "{owner}: state_dir is not mounted ({mounts:?})");
    assert!(mounts.contains(&"/run/secrets/ferry"), "{owner}: the token's directory is not mounted ({mounts:?})");
    load_agent_config(&read("deploy/agent/agent.toml"), "deploy/agent/agent.toml");
    let unit = read(AGENT_UNIT);
    assert!(unit.contains("StateDirectory=ferry-agent") && unit.contains("Restart=always"), "{AGENT_UNIT}");
    // The state directory systemd makes is the one the example uses, and the
    // credential it loads is the file the agent is told to read.
    let example = read("deploy/agent/agent.toml");
    assert!(example.contains("state_dir = \"/var/lib/ferry-agent\""), "deploy/agent/agent.toml: state_dir");
    let credential = unit
        .lines()
        .find_map(|l| l.strip_prefix("LoadCredential="))
        .and_then(|c| c.split_once(':'))
        .map(|(name, _)| name.to_owned())
        .expect("LoadCredential=NAME:PATH");
    assert!(
        unit.contains(&format!("Environment=FERRY_AGENT_TOKEN_FILE=%d/{credential}")),
        "{AGENT_UNIT}: FERRY_AGENT_TOKEN_FILE does not name the credential {credential}"
    );
    assert!(
        !example.lines().any(|l| l.starts_with("token_file")),
        "the unit hands the token over; agent.toml must not name another"
    );
    // A dynamic user reads what the install steps write.
    assert!(unit.contains("install -m 0644 agent.toml"), "{AGENT_UNIT}: agent.toml must be readable by any user");
}

#[test]
fn every_deployed_command_is_a_real_subcommand() {
    let commands = deployed_commands();
    for expected in [
        &["ferry-registry", "serve"][..],
        &["ferry-registry", "migrate"],
        &["ferry-gateway", "serve"],
        &["ferry-agent", "publish"],
        &["ferry-agent", "watch"],
    ] {
        assert!(
            commands.keys().any(|argv| argv.starts_with(&expected.iter().map(|s| s.to_string()).collect::<Vec<_>>())),
            "no deployment artifact runs `{}` (found {:?})",
            expected.join(" "),
            commands.keys().collect::<Vec<_>>()
        );
    }
    let dir = binaries();
    for (argv, sources) in &commands {
        let mut cmd = Command::new(dir.join(&argv[0]));
        cmd.args(&argv[1..]).env_clear();
        // Help after the arguments: clap checks every subcommand, flag and
        // value before it, and nothing is started. Only `BIN --help` and
        // `BIN --version` run as they are.
        if !(argv.len() == 2 && ["--help", "--version"].contains(&argv[1].as_str())) {
            cmd.arg("--help");
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", argv[0]));
        assert!(
            out.status.success(),
            "`{}` (in {}) is not a valid command line of the real binary:\n{}",
            argv.join(" "),
            sources.iter().cloned().collect::<Vec<_>>().join(", "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The image is built from the toolchain the workspace names, with the
/// lock file, and runs as a numeric non-root user.
#[test]
fn dockerfile_builds_the_three_binaries_locked_and_runs_as_non_root() {
    let dockerfile = read("Dockerfile");
    let workspace = read("Cargo.toml");
    let rust_version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("the workspace's rust-version");
    assert!(
        dockerfile.contains(&format!("rust:{rust_version}-bookworm")),
        "the build image is not rust:{rust_version}-bookworm (the workspace's rust-version)"
    );
    let build = dockerfile.lines().find(|l| l.contains("cargo build")).expect("a cargo build step");
    assert!(build.contains("--release") && build.contains("--locked"), "{build}");
    for binary in BINARIES {
        assert!(build.contains(&format!("-p {binary}")), "the image's build does not build {binary}");
    }
    let user = dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER instruction");
    let uid: u32 = user.split(':').next().unwrap().trim().parse().expect("a numeric USER");
    assert!(uid != 0, "the image runs as root");
    let ignore = read(".dockerignore");
    for excluded in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l.trim() == excluded), ".dockerignore does not exclude {excluded}");
    }
}

// --------------------------------------------------------- monitoring

/// Metric names an expression refers to (`ferry_...` identifiers).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("ferry_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            expr[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(expr.len(), |n| start + n);
        if boundary {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

fn known_metric(name: &str) -> bool {
    METRICS
        .iter()
        .any(|m| name == *m || ["_bucket", "_sum", "_count"].iter().any(|suffix| name.strip_suffix(suffix) == Some(m)))
}

/// Parses each expression with promql-parser; returns the errors.
fn promql_errors(exprs: &[String]) -> Vec<String> {
    const SCRIPT: &str = "
import sys, json, promql_parser
errors = []
for expr in json.load(sys.stdin):
    try:
        promql_parser.parse(expr)
    except Exception as e:
        errors.append(f'{e}: {expr}')
json.dump(errors, sys.stdout)
";
    let input = serde_json::to_vec(exprs).unwrap();
    let out = run_with_input(Command::new(venv_tool("python")).args(["-c", SCRIPT]), &input);
    serde_json::from_slice(&out.stdout).expect("a JSON list of errors")
}

#[test]
fn alerts_and_dashboard_are_valid_promql_over_the_exported_metrics() {
    let mut exprs: Vec<(String, String)> = Vec::new();
    let rules = yaml_documents(&read("deploy/prometheus/alerts.yml"));
    let groups = rules[0]["groups"].as_array().expect("alerts.yml has groups");
    let mut alerts = BTreeSet::new();
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()) {
        let alert = rule["alert"].as_str().expect("every rule is an alert").to_owned();
        assert!(rule["labels"]["severity"].is_string(), "{alert}: severity label");
        assert!(rule["annotations"]["summary"].is_string(), "{alert}: summary");
        assert!(alerts.insert(alert.clone()), "{alert} twice");
        exprs.push((alert, rule["expr"].as_str().expect("expr").to_owned()));
    }
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/ferry.json")).expect("ferry.json is JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            // Grafana's variables, as Grafana would substitute them.
            let expr = target["expr"].as_str().expect("expr").replace("$__rate_interval", "5m").replace("$job", ".*");
            exprs.push((format!("panel {}", panel["title"]), expr));
        }
    }
    let errors = promql_errors(&exprs.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
    assert!(errors.is_empty(), "invalid PromQL:\n{}", errors.join("\n"));
    let mut used = BTreeSet::new();
    for (what, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what}: refers to no Ferry metric: {expr}");
        for name in names {
            assert!(known_metric(&name), "{what}: {name} is not a metric Ferry exports");
            used.insert(name);
        }
    }
    for alert in ["gateway 5xx", "rate limited", "registry errors", "not ready", "latency"] {
        let covered = match alert {
            "gateway 5xx" => {
                exprs.iter().any(|(_, e)| e.contains("ferry_gateway_requests_total") && e.contains("internal"))
            }
            "rate limited" => exprs.iter().any(|(_, e)| e.contains("rate_limited")),
            "registry errors" => alerts.iter().any(|a| a.starts_with("FerryRegistry")),
            "not ready" => exprs.iter().any(|(_, e)| e.contains("ferry_ready")),
            _ => exprs.iter().any(|(_, e)| e.contains("histogram_quantile")),
        };
        assert!(covered, "no alert for {alert}");
    }
}

// ------------------------------------------------------ database roles

fn psql() -> PathBuf {
    let bin = std::env::var_os("FERRY_PG_BIN").map(PathBuf::from).or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin)| bin.join("psql").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    });
    let psql = bin.map(|b| b.join("psql")).unwrap_or_else(|| "/usr/lib/postgresql/N/bin/psql".into());
    if !psql.is_file() {
        missing_tool("psql (postgresql)", &psql);
    }
    psql
}

/// `url` (a key=value connection string) as another user.
fn as_user(url: &str, user: &str) -> String {
    url.split_whitespace()
        .map(|kv| if kv.starts_with("user=") { format!("user={user}") } else { kv.to_owned() })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn sql_error(url: &str, statement: &str) -> Option<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connecting");
    tokio::spawn(connection);
    client
        .batch_execute(statement)
        .await
        .err()
        .map(|e| e.as_db_error().map_or(e.to_string(), |d| d.code().code().into()))
}

/// deploy/sql/gateway-role.sql makes roles a real gateway serves with:
/// checks and version lists with the read-only role, reports, last
/// failures and the device census with the reports role; neither can
/// write anything else, nor read tenants' webhook secrets. Running the
/// script again changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_with_the_roles_of_deploy_sql() {
    let stack = Stack::start().await;
    for _ in 0..2 {
        run(Command::new(psql())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "gateway_password=dev", "-d"])
            .arg(&stack.database_url)
            .args(["-f", "deploy/sql/gateway-role.sql"]));
    }
    let token = stack.tenant("acme").await;
    let release = Release::new(40_000, 7);
    publish_to(&stack.connection(&token), "acme", "1.0.0", &release.artifacts(), true).await.unwrap();
    let key = stack.client_key("acme").await;

    let read_url = as_user(&stack.database_url, "ferry_gateway");
    let reports_url = as_user(&stack.database_url, "ferry_gateway_reports");
    let meta = ferry_store::connect(&read_url, 4).unwrap();
    let reports = ferry_store::connect(&reports_url, 4).unwrap();
    let gateway = Gateway::build(
        meta,
        reports,
        stack.blobs.clone(),
        GatewayConfig::default(),
        std::sync::Arc::new(SystemTime::now),
    );
    // LISTEN needs no grant: the gateway follows changes as ferry_gateway.
    let mut applied = gateway.applied();
    gateway.follow(ferry_store::listen(&read_url).unwrap());
    let first = tokio::time::timeout(Duration::from_secs(30), applied.recv()).await.expect("listening within 30 s");
    assert_eq!(first.unwrap(), ferry_store::Change::Resync);
    let gw = stack.serve_gateway_following(gateway).await;

    let http = ferry_testkit::http();
    let ready = http.get(format!("{}/readyz", gw.http)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let check = |device: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/check?tenant=acme&app=crm&version=0.9.0", gw.http);
        let key = key.clone();
        async move {
            let resp = http.get(url).bearer_auth(key).header("X-Ferry-Device", device).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        }
    };
    let answer = check("phone-1").await;
    assert_eq!(answer["action"], "upgrade");
    assert!(!answer["artifacts"].as_array().unwrap().is_empty());
    let versions = http.get(format!("{}/v1/versions?tenant=acme&app=crm", gw.http)).bearer_auth(&key).send().await;
    assert_eq!(versions.unwrap().status(), StatusCode::OK);

    let report = |id: &str, result: &str| {
        json!({"report_id": id, "device_id": "phone-1", "tenant": "acme", "app": "crm",
               "from_version": "0.9.0", "to_version": "1.0.0", "result": result,
               "error_code": if result == "success" { Value::Null } else { json!("E_DISK") }})
    };
    for (id, result) in [("r-1", "failure"), ("r-2", "success")] {
        let resp = http.post(format!("{}/v1/reports", gw.http)).bearer_auth(&key).json(&report(id, result)).send();
        assert_eq!(resp.await.unwrap().status(), StatusCode::ACCEPTED, "report {result}");
        if result == "failure" {
            assert_eq!(check("phone-1").await["last_failure"]["version"], "1.0.0");
        }
    }
    assert!(gw.gateway.flush_census().await.expect("the census is written with the reports role") >= 1);

    for role in ["ferry_gateway", "ferry_gateway_reports"] {
        let url = as_user(&stack.database_url, role);
        for statement in [
            "INSERT INTO tenants (name) VALUES ('intruder')",
            "UPDATE releases SET compatible = NULL",
            "DELETE FROM api_keys",
            "SELECT * FROM alert_targets",
            "SELECT * FROM dashboard_sessions",
        ] {
            assert_eq!(sql_error(&url, statement).await.as_deref(), Some("42501"), "{role} may: {statement}");
        }
    }
    let read_only = as_user(&stack.database_url, "ferry_gateway");
    for statement in ["DELETE FROM device_failures", "UPDATE devices SET version = '0'", "DELETE FROM reports"] {
        assert_eq!(sql_error(&read_only, statement).await.as_deref(), Some("42501"), "ferry_gateway may: {statement}");
    }
}
