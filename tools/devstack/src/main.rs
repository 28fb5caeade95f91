//! `ferry-dev`: the whole stack on one machine, for trying Ferry out and for
//! developing it. Starts a throwaway PostgreSQL and an S3 server that checks
//! SigV4, runs the registry and the gateway, creates a demo tenant, app and
//! keys, publishes two sample versions with the real `ferry-agent` binary
//! (deploying the first), and shows a phone (ferry-client's library)
//! watching for deploys and syncing: upgrade, delta upgrade, downgrade; writes
//! `target/ferry-dev/stack.env`, and keeps everything up until Ctrl-C.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ferry_registry::Registry;
use ferry_release::Name;
use ferry_store::{Blobs, KeyRole, S3Settings};
use ferry_testkit::{Postgres, S3Server, noise};

const TENANT: &str = "acme";
const APP: &str = "crm";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ferry_telemetry::run_main("ferry-dev", "info", Box::pin(run())).await
}

async fn run() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::var("FERRY_DEV_DIR").unwrap_or_else(|_| "target/ferry-dev".into()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let agent = agent_binary()?;

    step("starting PostgreSQL");
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let database_url = pg.create_database().await?;

    step("starting the S3 server (s3s, SigV4 checked)");
    let s3_port: u16 = env_port("FERRY_DEV_S3_PORT")?;
    let s3 = S3Server::start(None, SocketAddr::from(([127, 0, 0, 1], s3_port)))?;
    let bucket = s3.create_bucket().await?;

    step("starting the registry");
    let meta = ferry_store::connect(&database_url, 8)?;
    meta.migrate().await?;
    let settings = S3Settings {
        endpoint: Some(s3.endpoint.clone()),
        region: s3.region.clone(),
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
        force_path_style: true,
    };
    let blobs = Blobs::from_settings(&settings, &bucket);
    let blobs_for_gateway = blobs.clone();
    let registry_port = env_port("FERRY_DEV_REGISTRY_PORT")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", registry_port)).await?;
    let registry_url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry_registry::serve(Registry::new(meta.clone(), blobs), listener, None, async {
        let _ = stopped.await;
    }));

    step("starting the gateway");
    // Device counts reach the dashboard within two seconds here.
    let gateway_config =
        ferry_gateway::GatewayConfig { device_flush: std::time::Duration::from_secs(2), ..Default::default() };
    let gateway = ferry_gateway::Gateway::new(meta.clone(), blobs_for_gateway, gateway_config);
    let mut applied = gateway.applied();
    gateway.follow(ferry_store::listen(&database_url)?);
    applied.recv().await?; // listening for changes
    let gateway_port = env_port("FERRY_DEV_GATEWAY_PORT")?;
    let http = tokio::net::TcpListener::bind(("127.0.0.1", gateway_port)).await?;
    let grpc = tokio::net::TcpListener::bind(("127.0.0.1", env_port("FERRY_DEV_GATEWAY_GRPC_PORT")?)).await?;
    let gateway_url = format!("http://{}", http.local_addr()?);
    let gateway_grpc = format!("http://{}", grpc.local_addr()?);
    let (stop_gw, gw_stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = tokio::spawn(ferry_gateway::serve(gateway, http, grpc, async {
        let _ = gw_stopped.await;
    }));

    step("starting the operator dashboard");
    let live = ferry_dashboard::Live::listen(&database_url, meta.clone()).await?;
    let dashboard = ferry_dashboard::Dashboard::new(meta.clone(), live, ferry_dashboard::DashboardSettings::default());
    let admin_listener = tokio::net::TcpListener::bind(("127.0.0.1", env_port("FERRY_DEV_DASHBOARD_PORT")?)).await?;
    // localhost: browsers keep the dashboard's Secure cookie over plain HTTP there.
    let dashboard_url = format!("http://localhost:{}", admin_listener.local_addr()?.port());
    let (stop_dash, dash_stopped) = tokio::sync::oneshot::channel::<()>();
    let dashboard_task =
        tokio::spawn(ferry_registry::serve_dashboard(dashboard, admin_listener, ferry_net::Limits::default(), async {
            let _ = dash_stopped.await;
        }));
    let admin_key = meta.issue_admin_key().await?.token();

    step("creating tenant acme, app crm and their keys");
    let tenant = Name::parse("tenant", TENANT)?;
    meta.create_tenant(&tenant).await?;
    meta.create_app(&tenant, &Name::parse("app", APP)?).await?;
    let agent_token = meta.issue_key(&tenant, KeyRole::Agent).await?.token();
    let client_key = meta.issue_key(&tenant, KeyRole::Client).await?.token();

    let env_file = dir.join("stack.env");
    let vars = [
        ("FERRY_REGISTRY_URL", registry_url.as_str()),
        ("FERRY_GATEWAY_URL", gateway_url.as_str()),
        ("FERRY_GATEWAY_GRPC_URL", gateway_grpc.as_str()),
        ("FERRY_TENANT", TENANT),
        ("FERRY_APP", APP),
        ("FERRY_AGENT_TOKEN", agent_token.as_str()),
        ("FERRY_CLIENT_KEY", client_key.as_str()),
        ("FERRY_DASHBOARD_URL", dashboard_url.as_str()),
        ("FERRY_ADMIN_KEY", admin_key.as_str()),
        ("DATABASE_URL", database_url.as_str()),
        ("AWS_ENDPOINT_URL_S3", s3.endpoint.as_str()),
        ("FERRY_S3_BUCKET", bucket.as_str()),
        ("AWS_ACCESS_KEY_ID", s3.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.as_str()),
        ("AWS_REGION", s3.region.as_str()),
    ];
    let body: String = vars.iter().map(|(k, v)| format!("{k}={}\n", shell_quote(v))).collect();
    std::fs::write(&env_file, format!("# written by ferry-dev; valid while it runs\n{body}"))?;

    let samples = dir.join("sample");
    let (v1, v2) = write_samples(&samples)?;
    let run_agent = |version: &str, root: &Path, extra: &[&str]| {
        let mut cmd = std::process::Command::new(&agent);
        cmd.args(["publish", "--registry", &registry_url, "--tenant", TENANT, "--app", APP, "--version", version])
            .arg("--artifact")
            .arg(format!("mobile@android={}", root.join("crm.apk").display()))
            .arg("--artifact")
            .arg(format!("web={}", root.join("web").display()))
            .arg("--artifact")
            .arg(format!("api={}", root.join("openapi.json").display()))
            .args(extra)
            .env("FERRY_AGENT_TOKEN", &agent_token)
            // The release last published, for delta uploads.
            .env("FERRY_AGENT_STATE_DIR", dir.join("agent-state"));
        cmd
    };
    step("publishing sample version 1.0.0 and deploying it (ferry-agent publish --deploy)");
    check(run_agent("1.0.0", &v1, &["--deploy"]).status().context("running ferry-agent")?)?;
    step("publishing sample version 1.1.0: only changed chunks travel (ferry-agent publish --json)");
    check(run_agent("1.1.0", &v2, &["--json"]).status().context("running ferry-agent")?)?;

    let app_id = meta.app_id(meta.tenant_id(&tenant).await?, &Name::parse("app", APP)?).await?.context("demo app")?;
    let run_deploy = |version: &str| {
        let mut cmd = std::process::Command::new(&agent);
        cmd.args(["deploy", "--registry", &registry_url, "--tenant", TENANT, "--app", APP, "--version", version])
            .env("FERRY_AGENT_TOKEN", &agent_token);
        cmd
    };

    // The phone: ferry-client's library, the reference for app developers.
    let phone_dir = dir.join("phone");
    let _ = std::fs::remove_dir_all(&phone_dir);
    let phone = ferry_client::Cache::open(&phone_dir)?;
    let mut config = ferry_client::Config::new(&gateway_url, &client_key, TENANT, APP);
    config.platform = Some("android".into());
    config.device_id = Some("demo-phone".into());
    let client = ferry_client::Client::new(config)?;
    let mut notices = client.watch(None, None);
    step("a phone with nothing installed watches for deploys and syncs (ferry-client)");
    let notice = notices.next().await?;
    println!("    push notice: {} deployed", notice.version);
    demo_sync(&client, &phone).await?;
    step("deploying 1.1.0 (ferry-agent deploy): the phone is told, and downloads only what changed");
    check(run_deploy("1.1.0").status().context("running ferry-agent")?)?;
    let notice = notices.next().await?;
    println!("    push notice: {} deployed", notice.version);
    demo_sync(&client, &phone).await?;
    step("deploying 1.0.0 again: the phone downgrades to the release it kept");
    check(run_deploy("1.0.0").status().context("running ferry-agent")?)?;
    let notice = notices.next().await?;
    println!("    push notice: {} deployed", notice.version);
    demo_sync(&client, &phone).await?;
    step("a few more devices check and report, so the dashboard has something to show");
    demo_devices(&gateway_url, &client_key).await?;
    let deployed = meta.deployed_version(app_id).await?.unwrap_or_else(|| "none".into());

    println!(
        "\nFerry is running.\n  registry (gRPC)  {registry_url}\n  gateway (HTTP)   {gateway_url}\n  \
         gateway (gRPC)   {gateway_grpc}\n  S3               {} bucket {bucket}\n  \
         dashboard        {dashboard_url}  (sign in with the admin key: $FERRY_ADMIN_KEY)\n  \
         admin key        {admin_key}\n  \
         tenant/app       {TENANT}/{APP}, deployed version {deployed}\n  environment      {}\n\n\
         Try:  set -a; . {}; set +a\n      \
         curl -H \"Authorization: Bearer $FERRY_CLIENT_KEY\" \"$FERRY_GATEWAY_URL/v1/check?tenant=acme&app=crm&version=0.9.0&platform=android\"\n      \
         target/release/ferry-client watch --dir /tmp/phone --platform android   (in one terminal)\n      \
         target/release/ferry-agent deploy --version 1.1.0                        (in another)\n\nCtrl-C stops everything.",
        s3.endpoint,
        env_file.display(),
        env_file.display(),
    );
    tokio::signal::ctrl_c().await?;
    step("stopping");
    let _ = stop.send(());
    let _ = server.await;
    let _ = stop_gw.send(());
    let _ = gateway_task.await;
    let _ = stop_dash.send(());
    let _ = dashboard_task.await;
    let _ = std::fs::remove_file(&env_file);
    // Exiting closes every connection at once; PostgreSQL's watchdog then
    // stops the cluster and deletes it, and the S3 store is a temp dir.
    std::mem::forget(pg);
    drop(s3);
    std::process::exit(0)
}

/// What an app does (S0-3…S0-5): check, download what the cache lacks,
/// verify, switch, report.
async fn demo_sync(client: &ferry_client::Client, cache: &ferry_client::Cache) -> anyhow::Result<()> {
    let synced = client.sync(cache).await?;
    println!(
        "    {:?} to {}: {} files downloaded ({} bytes), {} reused from the cache; now in {}",
        synced.action,
        synced.version,
        synced.downloaded_files,
        synced.downloaded_bytes,
        synced.reused_files,
        cache.current_dir()?.map(|d| d.display().to_string()).unwrap_or_default(),
    );
    Ok(())
}

/// Demo devices: some check in on either version, a few report how their
/// upgrade to 1.0.0 went, failures included.
async fn demo_devices(gateway_url: &str, client_key: &str) -> anyhow::Result<()> {
    for i in 1..=8 {
        let mut config = ferry_client::Config::new(gateway_url, client_key, TENANT, APP);
        config.platform = Some("android".into());
        config.device_id = Some(format!("demo-device-{i}"));
        let client = ferry_client::Client::new(config)?;
        let (running, result) = match i {
            1..=4 => ("1.0.0", Some(ferry_client::Outcome::Success)),
            5 => ("1.1.0", Some(ferry_client::Outcome::Failure)),
            6 => ("1.1.0", Some(ferry_client::Outcome::RolledBack)),
            _ => ("1.1.0", None),
        };
        client.check(running, None).await?;
        if let Some(result) = result {
            let failed = result != ferry_client::Outcome::Success;
            client
                .report(&ferry_client::Report {
                    report_id: ferry_client::Report::new_id(),
                    device_id: format!("demo-device-{i}"),
                    tenant: TENANT.into(),
                    app: APP.into(),
                    from_version: "1.1.0".into(),
                    to_version: "1.0.0".into(),
                    result,
                    error_code: failed.then(|| "E_DEMO".into()),
                    error_message: failed.then(|| "a demo failure: the download was cut off".into()),
                    duration_ms: Some(1200),
                    platform: Some("android".into()),
                })
                .await?;
        }
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

fn check(status: std::process::ExitStatus) -> anyhow::Result<()> {
    if !status.success() {
        bail!("ferry-agent failed ({status})");
    }
    Ok(())
}

fn env_port(var: &str) -> anyhow::Result<u16> {
    match std::env::var(var) {
        Ok(v) => v.parse().with_context(|| format!("{var}={v:?} is not a port number")),
        Err(_) => Ok(0),
    }
}

/// The `ferry-agent` binary built next to this one.
fn agent_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let agent = me.with_file_name("ferry-agent");
    if !agent.exists() {
        bail!("{} not found; build it with `cargo build -p ferry-agent` (scripts/dev does)", agent.display());
    }
    Ok(agent)
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Two versions of a small product: an Android package, a web bundle and
/// an API description. 1.1.0 changes a few bytes in the middle of the
/// package, one web file and the API.
fn write_samples(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let _ = std::fs::remove_dir_all(dir);
    let (v1, v2) = (dir.join("1.0.0"), dir.join("1.1.0"));
    for (root, version) in [(&v1, 1u8), (&v2, 2)] {
        std::fs::create_dir_all(root.join("web/assets"))?;
        let mut apk = noise(8 * 1024 * 1024, 1);
        if version == 2 {
            apk[4 * 1024 * 1024..4 * 1024 * 1024 + 64].fill(0xaa);
        }
        std::fs::write(root.join("crm.apk"), apk)?;
        std::fs::write(root.join("web/index.html"), format!("<!doctype html><title>crm {version}</title>"))?;
        std::fs::write(root.join("web/assets/vendor.js"), noise(2 * 1024 * 1024, 2))?;
        std::fs::write(root.join("web/assets/app.js"), noise(512 * 1024, 10 + u64::from(version)))?;
        std::fs::write(
            root.join("openapi.json"),
            format!(r#"{{"openapi":"3.1.0","info":{{"title":"crm","version":"1.{}.0"}},"paths":{{}}}}"#, version - 1),
        )?;
    }
    Ok((v1, v2))
}
