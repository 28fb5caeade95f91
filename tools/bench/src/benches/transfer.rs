//! Bytes on the wire to publish version 2 of real release artifacts when
//! the registry holds version 1, next to rsync (plain and `-z`) updating a
//! copy of version 1, and the compressed-delta floor `zstd -19 --long
//! --patch-from=v1 v2`, for the same pairs in the same run.
//!
//! Each artifact is published by a tenant of its own, so the figures are
//! per artifact; a relay between agent and registry counts everything the
//! agent writes to the TCP connection (manifest, gRPC and HTTP/2 framing,
//! zstd-compressed chunks). Ferry runs twice per pair: with a state
//! directory (version 2's missing chunks go as deltas against version 1,
//! which the agent cached when it published it) and without (whole
//! chunks, the anchor of what deltas save).

use std::path::Path;

use anyhow::Context;
use ferry_e2e::{Stack, specs};
use ferry_testkit::Relay;
use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::procs;
use crate::report::{Section, Table, Target, thousands};

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    pairs: Vec<PairFigures>,
    rsync_version: String,
    zstd_version: String,
}

#[derive(Serialize, Deserialize)]
struct PairFigures {
    artifact: String,
    kind: String,
    label: String,
    v2_bytes: u64,
    /// Everything the agent wrote to the connection, with deltas.
    wire: u64,
    /// The same without a cache: whole chunks.
    #[serde(default)]
    wire_whole: u64,
    /// Chunks sent as deltas.
    #[serde(default)]
    chunks_delta: u64,
    /// Chunk bytes before compression (`bytes_sent` of the summary).
    payload: u64,
    chunks_sent: u64,
    chunks_total: u64,
    rsync: u64,
    rsync_z: u64,
    zstd_floor: u64,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let pairs = tokio::task::spawn_blocking(move || inputs::fetch_pairs(quick)).await??;
    let stack = Stack::start().await;
    let mut out = Vec::new();
    for pair in &pairs {
        let mut wires = Vec::new();
        let mut summary = None;
        for deltas in [true, false] {
            let tenant = format!("bench-{}-{}", pair.artifact, if deltas { "delta" } else { "whole" });
            let token = stack.tenant(&tenant).await;
            let state = tempfile::tempdir()?;
            let state_dir = deltas.then(|| state.path().to_owned());
            let publish = |conn: ferry_agent::Connection, version: &'static str, path: std::path::PathBuf| {
                let (tenant, state_dir) = (tenant.clone(), state_dir.clone());
                async move {
                    let req = ferry_agent::PublishRequest {
                        tenant: ferry_release::Name::parse("tenant", &tenant)?,
                        app: ferry_release::Name::parse("app", "crm")?,
                        version: version.parse()?,
                        artifacts: specs(&[(pair.artifact, path.as_path())]),
                        deploy: true,
                        retries: 0,
                        compatible: None,
                        state_dir,
                    };
                    let summary = ferry_agent::publish(&conn, &req, &ferry_agent::Progress::hidden()).await?;
                    anyhow::Ok(summary)
                }
            };
            publish(stack.connection(&token), "1.0.0", pair.v1.clone())
                .await
                .with_context(|| format!("publishing {} version 1", pair.artifact))?;
            let relay = Relay::start(stack.addr, None).await?;
            let via_relay =
                ferry_agent::Connection { url: relay.url(), token, ca_cert: None, proxy: ferry_agent::Proxy::none() };
            let s = publish(via_relay, "2.0.0", pair.v2.clone())
                .await
                .with_context(|| format!("publishing {} version 2", pair.artifact))?;
            wires.push(relay.bytes_sent());
            if deltas {
                summary = Some(s);
            }
        }
        let summary = summary.expect("published with deltas");
        let (wire, wire_whole) = (wires[0], wires[1]);

        let (v1, v2) = (pair.v1.clone(), pair.v2.clone());
        let (rsync, rsync_z, zstd_floor) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            Ok((rsync_sent(&v1, &v2, &[])?, rsync_sent(&v1, &v2, &["-z"])?, zstd_patch_size(&v1, &v2)?))
        })
        .await??;
        out.push(PairFigures {
            artifact: pair.artifact.into(),
            kind: pair.kind.into(),
            label: pair.label.clone(),
            v2_bytes: inputs::size(&pair.v2)?,
            wire,
            wire_whole,
            chunks_delta: summary.chunks_delta,
            payload: summary.bytes_sent,
            chunks_sent: summary.chunks_sent,
            chunks_total: summary.chunks_total,
            rsync,
            rsync_z,
            zstd_floor,
        });
    }
    Ok(Figures {
        pairs: out,
        rsync_version: procs::version("rsync", "--version"),
        zstd_version: procs::version("zstd", "--version"),
    })
}

/// rsync's "Total bytes sent" for updating a copy of `v1` to `v2`.
fn rsync_sent(v1: &Path, v2: &Path, extra: &[&str]) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("dest");
    procs::run(std::process::Command::new("cp").arg("-a").arg(v1).arg(&dest))?;
    let (src, dst) = if v2.is_dir() {
        (format!("{}/", v2.display()), format!("{}/", dest.display()))
    } else {
        (v2.display().to_string(), dest.display().to_string())
    };
    // --checksum: files whose size and mtime match are still compared by
    // content (npm packages all carry the same mtime); --no-whole-file: use
    // the delta algorithm even though both ends are local.
    let out = procs::run(
        procs::command("rsync")?
            .args(["-r", "--checksum", "--no-whole-file", "--stats"])
            .args(extra)
            .arg(&src)
            .arg(&dst),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent:"))
        .context("rsync --stats printed no \"Total bytes sent\"")?;
    Ok(line.trim().replace(',', "").parse()?)
}

/// Size of `zstd -19 --long --patch-from=v1 v2`; a directory is first
/// made into a tar file with sorted names and fixed metadata.
pub(crate) fn zstd_patch_size(v1: &Path, v2: &Path) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let as_file = |path: &Path, name: &str| -> anyhow::Result<std::path::PathBuf> {
        if !path.is_dir() {
            return Ok(path.to_owned());
        }
        let tar = dir.path().join(name);
        procs::run(
            procs::command("tar")?
                .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf"])
                .arg(&tar)
                .arg("-C")
                .arg(path)
                .arg("."),
        )?;
        Ok(tar)
    };
    let (old, new) = (as_file(v1, "v1.tar")?, as_file(v2, "v2.tar")?);
    let patch = dir.path().join("patch.zst");
    procs::run(
        procs::command("zstd")?
            .args(["-q", "-f", "-19", "--long=27"])
            .arg(format!("--patch-from={}", old.display()))
            .arg(&new)
            .arg("-o")
            .arg(&patch),
    )?;
    Ok(std::fs::metadata(&patch)?.len())
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("transfer");
    s.tools.push(f.rsync_version.clone());
    s.tools.push(f.zstd_version.clone());
    for p in &f.pairs {
        s.setup.push(format!("{} ({}): {}", p.artifact, p.kind, p.label));
    }
    s.setup.push("ferry: version 1 published and deployed, then version 2 through a relay counting every byte the agent writes to the TCP connection; with deltas (a state directory holding version 1, as the agent cached it) and, as the anchor, without (whole chunks)".into());
    s.commands.push(
        "cp -a V1 DEST && rsync -r --checksum --no-whole-file --stats [-z] V2 DEST   # \"Total bytes sent\"".into(),
    );
    s.commands.push("zstd -19 --long=27 --patch-from=V1 V2 -o patch   # directories as tar --sort=name".into());

    let mut table = Table::new(&[
        "artifact",
        "v2 bytes",
        "**ferry on the wire**",
        "ferry, whole chunks",
        "ferry chunk payload",
        "rsync",
        "rsync -z",
        "zstd --patch-from (floor)",
        "ferry / rsync -z",
        "ferry / floor",
    ]);
    let mut total = PairFigures {
        artifact: "**all**".into(),
        kind: String::new(),
        label: String::new(),
        v2_bytes: 0,
        wire: 0,
        wire_whole: 0,
        chunks_delta: 0,
        payload: 0,
        chunks_sent: 0,
        chunks_total: 0,
        rsync: 0,
        rsync_z: 0,
        zstd_floor: 0,
    };
    for p in f.pairs.iter() {
        total.v2_bytes += p.v2_bytes;
        total.wire += p.wire;
        total.wire_whole += p.wire_whole;
        total.chunks_delta += p.chunks_delta;
        total.payload += p.payload;
        total.chunks_sent += p.chunks_sent;
        total.chunks_total += p.chunks_total;
        total.rsync += p.rsync;
        total.rsync_z += p.rsync_z;
        total.zstd_floor += p.zstd_floor;
    }
    for p in f.pairs.iter().chain(std::iter::once(&total)) {
        table.row(vec![
            p.artifact.clone(),
            thousands(p.v2_bytes),
            format!("**{}**", thousands(p.wire)),
            thousands(p.wire_whole),
            format!(
                "{} ({} of {} chunks, {} as deltas)",
                thousands(p.payload),
                p.chunks_sent,
                p.chunks_total,
                p.chunks_delta
            ),
            thousands(p.rsync),
            thousands(p.rsync_z),
            thousands(p.zstd_floor),
            format!("{:.2}", p.wire as f64 / p.rsync_z.max(1) as f64),
            format!("{:.1}", p.wire as f64 / p.zstd_floor.max(1) as f64),
        ]);
    }
    s.tables.push(table);
    s.targets.push(Target::new(
        quick,
        "wire bytes, all artifacts",
        "≤ rsync -z",
        format!(
            "{} vs {} ({:.2}×)",
            thousands(total.wire),
            thousands(total.rsync_z),
            total.wire as f64 / total.rsync_z.max(1) as f64
        ),
        total.wire <= total.rsync_z,
    ));
    s
}
