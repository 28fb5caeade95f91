//! Tenant variants (`variants`): bytes sent and stored to publish one
//! release for 1, 10 and 100 tenants from one `ferry.variants.toml`, with a
//! publisher key, next to what per-tenant copies would send and store, and
//! the floor: every distinct byte of content once.
//!
//! The base is the real release the `transfer` benchmark uses (an APK, a
//! web bundle directory, an API description); each tenant's variant adds
//! its own 64 KiB logo to the web bundle and sets the bundle's
//! `package.json` `/description` by JSON pointer.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ferry_agent::Progress;
use ferry_agent::variants::{LinkMode, Variants, VariantsRequest, publish_variants};
use ferry_e2e::Stack;
use ferry_release::{Hash, Name};
use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::report::{Section, Table, Target, thousands};

/// The target: sent bytes within this factor of the distinct content.
const SENT_TARGET: f64 = 1.05;
/// Bytes of each tenant's own logo.
const LOGO_BYTES: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    base_label: String,
    runs: Vec<Run>,
}

#[derive(Serialize, Deserialize)]
struct Run {
    tenants: usize,
    /// Bytes of one tenant's release (all its files).
    release_bytes: u64,
    /// Chunk bytes the agent uploaded, all tenants together.
    sent: u64,
    /// Distinct chunk bytes over every tenant's release: what must be sent.
    distinct_chunks: u64,
    /// Distinct file bytes over every tenant's release: what a store of
    /// whole files must hold at least.
    distinct_files: u64,
    /// Chunk bytes the registry holds afterwards (rows of `chunks`).
    stored_chunks: u64,
    /// Assembled file bytes the registry holds afterwards (rows of `files`).
    stored_files: u64,
    seconds: f64,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let pairs = tokio::task::spawn_blocking(move || inputs::fetch_pairs(quick)).await??;
    let base_label = pairs.iter().map(|p| format!("{} ({})", p.artifact, p.label)).collect::<Vec<_>>().join(", ");
    let counts: &[usize] = if quick { &[1, 3] } else { &[1, 10, 100] };
    let mut runs = Vec::new();
    for &n in counts {
        let dir = tempfile::tempdir()?;
        let mut file = String::from("app = \"crm\"\n");
        for pair in &pairs {
            let _ = write!(file, "[base.artifacts.{}]\npath = {:?}\n", pair.artifact, pair.v2.display().to_string());
        }
        let web_is_dir = pairs.iter().any(|p| p.artifact == "web" && p.v2.is_dir());
        anyhow::ensure!(web_is_dir, "the variants benchmark needs the web bundle directory of the transfer inputs");
        let tenants: Vec<String> = (0..n).map(|i| format!("tenant-{i:03}")).collect();
        for (i, tenant) in tenants.iter().enumerate() {
            let logo = dir.path().join(format!("{tenant}.png"));
            inputs::write_noise(&logo, LOGO_BYTES, 1000 + i as u64)?;
            let _ = write!(
                file,
                "[variants.{tenant}]\ntenants = [{tenant:?}]\n[variants.{tenant}.web]\nadd = {{ \"tenant/logo.png\" = {:?} }}\n\
                 [variants.{tenant}.web.set.\"package.json\"]\n\"/description\" = \"CRM for {tenant}\"\n",
                logo.display().to_string()
            );
        }
        let path = dir.path().join("ferry.variants.toml");
        std::fs::write(&path, file)?;
        let variants = Arc::new(Variants::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?);
        let (distinct_chunks, distinct_files, release_bytes) = {
            let variants = Arc::clone(&variants);
            let tenants = tenants.clone();
            tokio::task::spawn_blocking(move || distinct(&variants, &tenants)).await??
        };

        let stack = Stack::start().await;
        let mut names = Vec::new();
        for tenant in &tenants {
            stack.tenant(tenant).await;
            names.push(Name::parse("tenant", tenant)?);
        }
        let key = stack.meta.issue_publisher_key(&names).await?.token();
        let req = VariantsRequest {
            variants,
            app: Name::parse("app", "crm")?,
            version: "1.0.0".parse()?,
            only: Vec::new(),
            deploy: true,
            retries: 0,
            compatible: None,
        };
        let started = Instant::now();
        let summary = publish_variants(&stack.connection(&key), &req, &Progress::hidden())
            .await
            .with_context(|| format!("publishing {n} variants"))?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(summary.tenants.len() == n, "published {} of {n} tenants", summary.tenants.len());
        let client = stack.meta.client().await?;
        let sum = |sql: &'static str| {
            let client = &client;
            async move { client.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0) as u64) }
        };
        let stored_chunks = sum("SELECT COALESCE(sum(size), 0)::bigint FROM chunks").await?;
        let stored_files = sum("SELECT COALESCE(sum(size), 0)::bigint FROM files").await?;
        runs.push(Run {
            tenants: n,
            release_bytes,
            sent: summary.bytes_sent,
            distinct_chunks,
            distinct_files,
            stored_chunks,
            stored_files,
            seconds,
        });
    }
    Ok(Figures { base_label, runs })
}

/// Distinct chunk bytes and distinct file bytes over every tenant's
/// release, and the bytes of one release (packed from renders, as the
/// agent packs them).
fn distinct(variants: &Variants, tenants: &[String]) -> anyhow::Result<(u64, u64, u64)> {
    let mut chunks: std::collections::HashMap<Hash, u32> = std::collections::HashMap::new();
    let mut files: std::collections::HashMap<Hash, u64> = std::collections::HashMap::new();
    let mut release_bytes = 0;
    for tenant in tenants {
        let out = tempfile::tempdir()?;
        let specs = variants
            .render(&Name::parse("tenant", tenant)?, &out.path().join("r"), LinkMode::HardLink)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let manifest = ferry_release::pack("1.0.0".parse()?, &specs, &|_| {})?;
        release_bytes = manifest.total_size();
        for chunk in manifest.unique_chunks() {
            chunks.insert(chunk.hash, chunk.len);
        }
        for file in manifest.files() {
            files.insert(file.hash, file.size);
        }
    }
    Ok((chunks.values().map(|l| u64::from(*l)).sum(), files.values().sum(), release_bytes))
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("variants");
    s.setup.push(format!("base release: {}", f.base_label));
    s.setup.push(format!(
        "each tenant's variant adds its own {} KiB logo to the web bundle and sets `/description` in its package.json; one section per tenant",
        LOGO_BYTES / 1024
    ));
    s.setup.push("ferry: `ferry-agent publish --variants` with one publisher key for all tenants, against the registry over gRPC, S3 and PostgreSQL on this machine".into());
    s.setup.push("anchors: per-tenant copies (what agent keys, or N separate uploads, send and store: N × one release) and the floor (every distinct chunk, every distinct file once)".into());
    s.commands
        .push("ferry-agent publish --variants ferry.variants.toml --version 1.0.0 --deploy   # publisher key".into());
    let mut table = Table::new(&[
        "tenants",
        "one release",
        "per-tenant copies (anchor)",
        "**ferry sent**",
        "distinct chunks (floor)",
        "sent / floor",
        "stored: chunks + files",
        "distinct files",
        "time",
    ]);
    let mut worst: f64 = 0.0;
    for r in &f.runs {
        let ratio = r.sent as f64 / r.distinct_chunks.max(1) as f64;
        worst = worst.max(ratio);
        table.row(vec![
            r.tenants.to_string(),
            thousands(r.release_bytes),
            thousands(r.release_bytes * r.tenants as u64),
            format!("**{}**", thousands(r.sent)),
            thousands(r.distinct_chunks),
            format!("{ratio:.3}"),
            format!(
                "{} + {} = {}",
                thousands(r.stored_chunks),
                thousands(r.stored_files),
                thousands(r.stored_chunks + r.stored_files)
            ),
            thousands(r.distinct_files),
            format!("{:.1} s", r.seconds),
        ]);
    }
    s.tables.push(table);
    let last = f.runs.last();
    s.targets.push(Target::new(
        quick,
        "bytes sent for N variants of one base",
        &format!("≤ {SENT_TARGET}× the distinct chunks"),
        format!("{worst:.3}× at worst"),
        worst <= SENT_TARGET,
    ));
    if let Some(r) = last {
        s.targets.push(Target::new(
            quick,
            &format!("bytes sent for {} tenants", r.tenants),
            "≤ 2× one release (the base once, plus the differences)",
            format!(
                "{} ({:.2}× one release; per-tenant copies: {:.0}×)",
                thousands(r.sent),
                r.sent as f64 / r.release_bytes.max(1) as f64,
                r.tenants as f64
            ),
            r.sent <= 2 * r.release_bytes,
        ));
    }
    s
}
