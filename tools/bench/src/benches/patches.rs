//! Bytes a phone downloads to move between consecutive real releases, up
//! and down (`patches`), next to the `zstd -19 --long --patch-from` floor of
//! the same pair, and how long the registry takes to have a patch ready.
//!
//! Per artifact: version 1 is published and deployed, then version 2 (the
//! deploy queues patches both ways), the registry's worker makes them, and a
//! phone holding version 1 checks with `have`: it downloads each listed
//! file's patch when one is offered, else the file. Then version 1 is
//! deployed again and a phone holding version 2 does the same. The floor is
//! the zstd patch of the whole artifact (a directory as a tar file).
//!
//! And a first install (`compressed`): a new phone checks for version 2
//! without `have` and takes each text-like file's compressed copy, next to
//! every file compressed on its own by the zstd tool.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use ferry_e2e::{Stack, publish_to};
use ferry_gateway::GatewayConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inputs;
use crate::report::{Section, Table, Target, thousands};

/// Bytes downloaded may be at most this many times the floor.
const FLOOR_TARGET: f64 = 1.25;
/// A first install's bytes (compressed copies taken) may be at most this
/// many times every file compressed by the zstd tool on its own.
const INSTALL_TARGET: f64 = 1.1;
/// A patch for the deployed release of a 100 MB artifact must be ready
/// within this.
const READY_TARGET_SECONDS: f64 = 60.0;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    pairs: Vec<PairFigures>,
    large: Large,
    zstd_version: String,
}

#[derive(Serialize, Deserialize)]
struct PairFigures {
    artifact: String,
    label: String,
    /// Bytes listed (what a phone downloads without patches), up and down.
    whole_up: u64,
    whole_down: u64,
    /// What it downloads with patches, up and down.
    patched_up: u64,
    patched_down: u64,
    floor_up: u64,
    floor_down: u64,
    /// Seconds the worker took for all of this pair's patches.
    make_seconds: f64,
    /// A first install of v2 (no `have`): the files whole, with the
    /// compressed copies offered, and every file by `zstd -19 --long`
    /// where that is smaller (the anchor).
    install_whole: u64,
    install_compressed: u64,
    install_floor: u64,
}

#[derive(Serialize, Deserialize)]
struct Large {
    bytes: u64,
    /// Seconds from the deploy until the patch to the deployed release is
    /// made (the one back follows).
    seconds: f64,
    patch_up: u64,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let pairs = tokio::task::spawn_blocking(move || inputs::fetch_pairs(quick)).await??;
    let mut out = Vec::new();
    for pair in &pairs {
        let stack = Stack::start().await;
        let tenant = format!("bench-{}", pair.artifact);
        let agent = stack.tenant(&tenant).await;
        let key = stack.client_key(&tenant).await;
        let gw = stack.gateway(GatewayConfig::default()).await;
        let conn = stack.connection(&agent);
        let artifacts = |path: &Path| vec![(pair.artifact, path.to_path_buf())];
        let publish = |version: &'static str, path: &Path| {
            let list = artifacts(path);
            let conn = conn.clone();
            let tenant = tenant.clone();
            async move {
                let refs: Vec<(&str, &Path)> = list.iter().map(|(a, p)| (*a, p.as_path())).collect();
                publish_to(&conn, &tenant, version, &refs, true).await
            }
        };
        let v1 = publish("1.0.0", &pair.v1).await.context("publishing version 1")?;
        let mut applied = gw.gateway.applied();
        let v2 = publish("2.0.0", &pair.v2).await.context("publishing version 2")?;
        let started = Instant::now();
        stack.make_patches().await;
        let make_seconds = started.elapsed().as_secs_f64();
        let (whole_up, patched_up) =
            phone_bytes(&gw.http, &key, &tenant, ("1.0.0", &v1.manifest_id), "2.0.0", &mut applied).await?;
        let (install_whole, install_compressed) = first_install(&gw.http, &key, &tenant).await?;
        let (tenant_name, app) =
            (ferry_release::Name::parse("tenant", &tenant)?, ferry_release::Name::parse("app", "crm")?);
        let mut applied = gw.gateway.applied();
        ferry_agent::deploy(&conn, &tenant_name, &app, &"1.0.0".parse()?).await?;
        stack.make_patches().await;
        let (whole_down, patched_down) =
            phone_bytes(&gw.http, &key, &tenant, ("2.0.0", &v2.manifest_id), "1.0.0", &mut applied).await?;
        let (a, b) = (pair.v1.clone(), pair.v2.clone());
        let (floor_up, floor_down, install_floor) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64, u64)> {
                Ok((
                    super::transfer::zstd_patch_size(&a, &b)?,
                    super::transfer::zstd_patch_size(&b, &a)?,
                    zstd_each_file(&b)?,
                ))
            })
            .await??;
        out.push(PairFigures {
            artifact: pair.artifact.into(),
            label: pair.label.clone(),
            whole_up,
            whole_down,
            patched_up,
            patched_down,
            floor_up,
            floor_down,
            make_seconds,
            install_whole,
            install_compressed,
            install_floor,
        });
    }
    Ok(Figures { pairs: out, large: large(quick).await?, zstd_version: crate::procs::version("zstd", "--version") })
}

/// Asks as a phone running `current.0` and holding release `current.1`,
/// until the gateway answers with `target` (it learns of a deploy from a
/// database notice: each miss waits for the next change it applies);
/// returns (bytes of the files listed, bytes it downloads taking every
/// patch offered).
async fn phone_bytes(
    gateway: &str,
    key: &str,
    tenant: &str,
    (current, have): (&str, &str),
    target: &str,
    applied: &mut tokio::sync::broadcast::Receiver<ferry_store::Change>,
) -> anyhow::Result<(u64, u64)> {
    loop {
        let answer = check(gateway, key, &[("tenant", tenant), ("version", current), ("have", have)]).await?;
        if answer["target"] == target {
            let files = answer["artifacts"].as_array().context("no artifacts in the answer")?;
            let size = |f: &Value| f["size"].as_u64().unwrap_or(0);
            let whole: u64 = files.iter().map(size).sum();
            let patched: u64 =
                files.iter().map(|f| f.get("patch").and_then(|p| p["size"].as_u64()).unwrap_or(size(f))).sum();
            return Ok((whole, patched));
        }
        tokio::time::timeout(std::time::Duration::from_secs(30), applied.recv())
            .await
            .with_context(|| format!("the gateway never answered with {target}"))??;
    }
}

/// The gateway's answer to a check of app `crm` with `query`.
async fn check(gateway: &str, key: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
    Ok(ferry_testkit::http()
        .get(format!("{gateway}/v1/check"))
        .query(&[("app", "crm")])
        .query(query)
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// A new phone installing the deployed release (no `have`): (bytes of the
/// files listed, bytes it downloads taking every compressed copy offered).
async fn first_install(gateway: &str, key: &str, tenant: &str) -> anyhow::Result<(u64, u64)> {
    let answer = check(gateway, key, &[("tenant", tenant), ("version", "0.0.1")]).await?;
    let files = answer["artifacts"].as_array().context("no artifacts in the answer")?;
    let size = |f: &Value| f["size"].as_u64().unwrap_or(0);
    let whole = files.iter().map(size).sum();
    let compressed =
        files.iter().map(|f| f.get("compressed").and_then(|c| c["size"].as_u64()).unwrap_or(size(f))).sum();
    Ok((whole, compressed))
}

/// Every file under `path` (or the file) compressed on its own by
/// `zstd -19 --long=27`, counted where that is smaller than the file.
fn zstd_each_file(path: &Path) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("file.zst");
    let mut total = 0;
    for file in walk(path)? {
        crate::procs::run(
            crate::procs::command("zstd")?.args(["-q", "-f", "-19", "--long=27"]).arg(&file).arg("-o").arg(&out),
        )?;
        total += std::fs::metadata(&out)?.len().min(std::fs::metadata(&file)?.len());
    }
    Ok(total)
}

/// The regular files under `path` (or `path` itself).
fn walk(path: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.extend(walk(&entry.path())?);
        } else if entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// A 100 MB artifact (quick: 8 MB) with scattered edits: seconds from its
/// deploy until the patches both ways are made.
async fn large(quick: bool) -> anyhow::Result<Large> {
    let bytes: u64 = if quick { 8 << 20 } else { 100 << 20 };
    let dir = tempfile::tempdir()?;
    let (v1, v2) = (dir.path().join("v1/app.bin"), dir.path().join("v2/app.bin"));
    std::fs::create_dir_all(v1.parent().unwrap())?;
    std::fs::create_dir_all(v2.parent().unwrap())?;
    inputs::write_noise(&v1, bytes, 5)?;
    let mut data = std::fs::read(&v1)?;
    let mut noise = inputs::Noise::new(6);
    for i in 0..50 {
        let at = (i * (data.len() / 50)) + 4096;
        noise.fill(&mut data[at..at + 8192]);
    }
    std::fs::write(&v2, data)?;
    let stack = Stack::start().await;
    let agent = stack.tenant("bench-large").await;
    let conn = stack.connection(&agent);
    publish_to(&conn, "bench-large", "1.0.0", &[("mobile", v1.as_path())], true).await?;
    publish_to(&conn, "bench-large", "2.0.0", &[("mobile", v2.as_path())], true).await?;
    // Jobs are taken in the order the deploy queued them: the patch to the
    // deployed release first, then the one back.
    let settings = ferry_registry::patcher::PatchSettings::default();
    let started = Instant::now();
    anyhow::ensure!(ferry_registry::patcher::work_once(&stack.registry, &settings).await?, "no patch job queued");
    let seconds = started.elapsed().as_secs_f64();
    let client = stack.meta.client().await?;
    let up = client
        .query_opt(
            "SELECT p.size FROM patches p JOIN patch_jobs j USING (base_hash, target_hash) ORDER BY j.id LIMIT 1",
            &[],
        )
        .await?;
    let Some(up) = up else {
        let row = client.query_one("SELECT state, last_error FROM patch_jobs ORDER BY id LIMIT 1", &[]).await?;
        let (state, error): (String, Option<String>) = (row.get(0), row.get(1));
        anyhow::bail!("the first patch job made no patch: {state}: {}", error.unwrap_or_default());
    };
    let both = stack.make_patches().await + 1;
    anyhow::ensure!(both == 2, "expected 2 patch jobs, worked {both}");
    Ok(Large { bytes, seconds, patch_up: up.get::<_, i64>(0) as u64 })
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("patches");
    s.tools.push(f.zstd_version.clone());
    for p in &f.pairs {
        s.setup.push(format!("{}: {}", p.artifact, p.label));
    }
    s.setup.push("ferry: v1 deployed, then v2 (queues patches both ways), the registry's worker makes them; a phone on v1 checks with `have` and downloads each listed file's patch if offered, else the file; then v1 is deployed again and a phone on v2 does the same".into());
    s.setup.push("no patches: what the same phone downloads today (the delta list, whole files)".into());
    s.commands
        .push("zstd -19 --long=27 --patch-from=V1 V2 -o patch   # and V2 -> V1; directories as tar --sort=name".into());
    let mut table = Table::new(&[
        "artifact",
        "direction",
        "no patches",
        "**ferry with patches**",
        "zstd --patch-from (floor)",
        "ferry / floor",
        "patches made in",
    ]);
    let (mut up, mut down, mut floor_up, mut floor_down, mut whole_up, mut whole_down) = (0, 0, 0, 0, 0, 0);
    for p in &f.pairs {
        for (dir, whole, patched, floor) in
            [("up", p.whole_up, p.patched_up, p.floor_up), ("down", p.whole_down, p.patched_down, p.floor_down)]
        {
            table.row(vec![
                p.artifact.clone(),
                dir.into(),
                thousands(whole),
                format!("**{}**", thousands(patched)),
                thousands(floor),
                format!("{:.2}", patched as f64 / floor.max(1) as f64),
                if dir == "up" { format!("{:.1} s", p.make_seconds) } else { String::new() },
            ]);
        }
        (up, down, floor_up, floor_down) =
            (up + p.patched_up, down + p.patched_down, floor_up + p.floor_up, floor_down + p.floor_down);
        (whole_up, whole_down) = (whole_up + p.whole_up, whole_down + p.whole_down);
    }
    for (dir, whole, patched, floor) in [("up", whole_up, up, floor_up), ("down", whole_down, down, floor_down)] {
        table.row(vec![
            "**all**".into(),
            dir.into(),
            thousands(whole),
            format!("**{}**", thousands(patched)),
            thousands(floor),
            format!("{:.2}", patched as f64 / floor.max(1) as f64),
            String::new(),
        ]);
    }
    s.tables.push(table);
    s.setup.push("first install: a new phone checks for v2 without `have` and downloads each file's compressed copy where one is offered (text-like files), else the file; the anchor is every file compressed on its own by the zstd tool, where that is smaller".into());
    s.commands.push("zstd -19 --long=27 FILE -o FILE.zst   # each file of v2; min(file, FILE.zst) summed".into());
    let mut install = Table::new(&[
        "artifact",
        "first install, whole files",
        "**ferry, compressed copies**",
        "zstd -19 each file",
        "ferry / zstd",
    ]);
    let (mut all_whole, mut all_compressed, mut all_floor) = (0, 0, 0);
    for p in &f.pairs {
        install.row(vec![
            p.artifact.clone(),
            thousands(p.install_whole),
            format!("**{}**", thousands(p.install_compressed)),
            thousands(p.install_floor),
            format!("{:.2}", p.install_compressed as f64 / p.install_floor.max(1) as f64),
        ]);
        (all_whole, all_compressed, all_floor) =
            (all_whole + p.install_whole, all_compressed + p.install_compressed, all_floor + p.install_floor);
    }
    install.row(vec![
        "**all**".into(),
        thousands(all_whole),
        format!("**{}**", thousands(all_compressed)),
        thousands(all_floor),
        format!("{:.2}", all_compressed as f64 / all_floor.max(1) as f64),
    ]);
    s.tables.push(install);
    s.targets.push(Target::new(
        quick,
        "bytes a new phone downloads for a first install, all artifacts",
        &format!("≤ {INSTALL_TARGET}× each file compressed by zstd -19"),
        format!(
            "{} vs {} ({:.2}×; {} whole)",
            thousands(all_compressed),
            thousands(all_floor),
            all_compressed as f64 / all_floor.max(1) as f64,
            thousands(all_whole)
        ),
        all_compressed as f64 <= INSTALL_TARGET * all_floor as f64,
    ));
    for (dir, patched, floor) in [("upgrade", up, floor_up), ("downgrade", down, floor_down)] {
        s.targets.push(Target::new(
            quick,
            &format!("bytes a phone downloads, {dir}, all artifacts"),
            &format!("≤ {FLOOR_TARGET}× the zstd --patch-from floor"),
            format!("{} vs {} ({:.2}×)", thousands(patched), thousands(floor), patched as f64 / floor.max(1) as f64),
            patched as f64 <= FLOOR_TARGET * floor as f64,
        ));
    }
    s.targets.push(Target::new(
        quick,
        &format!("patch to the deployed release ready after its deploy, {} MB artifact", f.large.bytes >> 20),
        &format!("≤ {READY_TARGET_SECONDS} s"),
        format!("{:.1} s (patch {} bytes)", f.large.seconds, thousands(f.large.patch_up)),
        f.large.seconds <= READY_TARGET_SECONDS,
    ));
    s
}
