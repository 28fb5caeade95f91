//! Bytes stored and S3 requests (`storage`): ten consecutive real releases
//! published and deployed one after the other (patches made after each
//! deploy), then every object in the bucket counted, next to what the
//! registry must keep at least: the distinct files and the patches.
//!
//! "Before" is the previous layout (issue 13), computed from this run's own
//! uploads: every uploaded chunk kept as its own object beside the files
//! (one PUT each), and files assembled by reading every chunk back (one GET
//! each). "After" is measured: the S3 server counts every request it serves,
//! by method, during the publishes (patch making is counted apart). Last,
//! garbage collection of unused patches runs (default bases) and what is
//! left is counted again.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use ferry_e2e::{Stack, publish_to};
use ferry_release::{Hash, Manifest};
use ferry_testkit::RequestCounts;
use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::report::{Section, Table, Target, thousands};

/// Stored bytes may be at most this many times the distinct files plus
/// the patches.
const STORED_TARGET: f64 = 1.1;
/// Part size of the registry's multipart uploads (files above it).
const PART: u64 = 8 << 20;

#[derive(Serialize, Deserialize)]
pub(crate) struct Figures {
    series: Vec<String>,
    releases: usize,
    /// Bytes of the releases published (every file of every release).
    bytes_published: u64,
    /// Chunk bytes the agent uploaded.
    bytes_sent: u64,
    chunks_sent: u64,
    unique_file_bytes: u64,
    patch_bytes: u64,
    /// What the bucket holds at the end, by prefix.
    stored_files: u64,
    stored_chunks: u64,
    stored_patches: u64,
    /// Every chunk the registry ever recorded (what the previous layout
    /// kept as objects).
    chunk_bytes_recorded: u64,
    /// Measured during the publishes.
    requests: RequestCounts,
    /// The previous layout's requests for the same publishes (see the
    /// module's comment).
    before: RequestCounts,
    /// Measured while making patches.
    patch_requests: RequestCounts,
    /// After garbage collection of unused patches (default bases, 3): the
    /// patches left, in the tables and in the bucket.
    patch_bytes_kept: u64,
    stored_patches_kept: u64,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Figures> {
    let series = tokio::task::spawn_blocking(move || inputs::fetch_series(quick)).await??;
    let releases = series.iter().map(|s| s.versions.len()).min().context("no release series")?;
    let stack = Stack::start().await;
    let agent = stack.tenant("bench-storage").await;
    let conn = stack.connection(&agent);
    let (mut bytes_published, mut bytes_sent, mut chunks_sent) = (0, 0, 0);
    let mut requests = RequestCounts::default();
    let mut patch_requests = RequestCounts::default();
    let mut before = RequestCounts::default();
    let mut manifests: Vec<Manifest> = Vec::new();
    let mut stored_files: HashSet<Hash> = HashSet::new();
    let (app_id, tenant_id) = (stack.app_id("bench-storage").await, stack.tenant_id("bench-storage").await);
    for i in 0..releases {
        let version = format!("1.{i}.0");
        let artifacts: Vec<(&str, &Path)> = series.iter().map(|s| (s.artifact, s.versions[i].as_path())).collect();
        let start = stack.s3.requests.snapshot();
        let summary = publish_to(&conn, "bench-storage", &version, &artifacts, true)
            .await
            .with_context(|| format!("publishing release {version}"))?;
        let published = stack.s3.requests.snapshot();
        stack.make_patches().await;
        let patched = stack.s3.requests.snapshot();
        requests = add(requests, published.since(&start));
        patch_requests = add(patch_requests, patched.since(&published));
        (bytes_published, bytes_sent, chunks_sent) =
            (bytes_published + summary.bytes_total, bytes_sent + summary.bytes_sent, chunks_sent + summary.chunks_sent);
        // The previous layout: a PUT per uploaded chunk, a GET per chunk of
        // each new file, and the same file writes.
        let id = stack.meta.release_manifest(app_id, &version).await?.context("the release is not recorded")?;
        let body = stack.meta.load_manifest(tenant_id, id).await?.context("the manifest is not stored")?;
        let manifest = Manifest::decode(&body)?;
        before.put += summary.chunks_sent;
        for file in manifest.files() {
            if stored_files.insert(file.hash) {
                before.get += file.chunks.len() as u64;
                if file.size <= PART {
                    before.put += 1;
                } else {
                    before.put += file.size.div_ceil(PART);
                    before.post += 2;
                }
            }
        }
        manifests.push(manifest);
    }
    let meta = &stack.meta;
    let client = meta.client().await?;
    let sum = |sql: &'static str| {
        let client = &client;
        async move { Ok::<u64, anyhow::Error>(client.query_one(sql, &[]).await?.get::<_, i64>(0) as u64) }
    };
    let unique_file_bytes = sum("SELECT COALESCE(sum(size), 0)::bigint FROM files").await?;
    let patch_bytes =
        sum("SELECT COALESCE(sum(size), 0)::bigint FROM (SELECT DISTINCT patch_hash, size FROM patches) p").await?;
    let chunk_bytes_recorded = sum("SELECT COALESCE(sum(size), 0)::bigint FROM chunks").await?;
    let distinct: u64 = {
        let mut seen = HashSet::new();
        manifests.iter().flat_map(|m| m.files()).filter(|f| seen.insert(f.hash)).map(|f| f.size).sum()
    };
    anyhow::ensure!(distinct == unique_file_bytes, "files table {unique_file_bytes} vs manifests {distinct}");
    let (stored_files, stored_chunks, stored_patches) = (
        prefix_bytes(&stack, "files/").await?,
        prefix_bytes(&stack, "chunks/").await?,
        prefix_bytes(&stack, "patches/").await?,
    );
    let bases = ferry_registry::patcher::PatchSettings::default().bases;
    ferry_store::collect_patches(meta, &stack.blobs, bases, std::time::Duration::ZERO).await?;
    let patch_bytes_kept =
        sum("SELECT COALESCE(sum(size), 0)::bigint FROM (SELECT DISTINCT patch_hash, size FROM patches) p").await?;
    let stored_patches_kept = prefix_bytes(&stack, "patches/").await?;
    Ok(Figures {
        series: series.iter().map(|s| format!("{} ({}): {}", s.artifact, s.kind, s.label)).collect(),
        releases,
        bytes_published,
        bytes_sent,
        chunks_sent,
        unique_file_bytes,
        patch_bytes,
        stored_files,
        stored_chunks,
        stored_patches,
        chunk_bytes_recorded,
        requests,
        before,
        patch_requests,
        patch_bytes_kept,
        stored_patches_kept,
    })
}

fn add(a: RequestCounts, b: RequestCounts) -> RequestCounts {
    RequestCounts {
        get: a.get + b.get,
        put: a.put + b.put,
        post: a.post + b.post,
        delete: a.delete + b.delete,
        other: a.other + b.other,
    }
}

/// Bytes of every object under `prefix` in the registry's bucket.
async fn prefix_bytes(stack: &Stack, prefix: &str) -> anyhow::Result<u64> {
    let client = stack.s3.client();
    let mut token = None;
    let mut total = 0;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(stack.blobs.bucket())
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await?;
        total += page.contents().iter().map(|o| o.size().unwrap_or(0).max(0) as u64).sum::<u64>();
        match page.next_continuation_token().filter(|_| page.is_truncated() == Some(true)) {
            Some(next) => token = Some(next.to_owned()),
            None => return Ok(total),
        }
    }
}

pub(crate) fn render(f: &Figures, quick: bool) -> Section {
    let mut s = Section::new("storage");
    s.setup.extend(f.series.iter().cloned());
    s.setup.push(format!(
        "ferry: the {} releases published and deployed in order, one agent, default settings (patches made after each deploy); then every object in the bucket listed",
        f.releases
    ));
    s.setup.push("before: the previous layout, from this run's uploads: every uploaded chunk kept as its own object (a PUT each) and read back once per new file (a GET each); file writes the same".into());
    let floor = f.unique_file_bytes + f.patch_bytes;
    let after = f.stored_files + f.stored_chunks + f.stored_patches;
    let before = f.chunk_bytes_recorded + f.unique_file_bytes + f.patch_bytes;
    let ratio = |x: u64| format!("{:.2}", x as f64 / floor.max(1) as f64);
    let mut stored = Table::new(&["layout", "files", "chunk objects", "patches", "**stored**", "/ (files + patches)"]);
    stored.row(vec![
        "distinct files + patches (floor)".into(),
        thousands(f.unique_file_bytes),
        "0".into(),
        thousands(f.patch_bytes),
        thousands(floor),
        "1.00".into(),
    ]);
    stored.row(vec![
        "before: chunks beside files".into(),
        thousands(f.unique_file_bytes),
        thousands(f.chunk_bytes_recorded),
        thousands(f.patch_bytes),
        thousands(before),
        ratio(before),
    ]);
    stored.row(vec![
        "**ferry now** (measured)".into(),
        thousands(f.stored_files),
        thousands(f.stored_chunks),
        thousands(f.stored_patches),
        format!("**{}**", thousands(after)),
        ratio(after),
    ]);
    let kept = f.stored_files + f.stored_chunks + f.stored_patches_kept;
    stored.row(vec![
        "ferry now, unused patches collected".into(),
        thousands(f.stored_files),
        thousands(f.stored_chunks),
        thousands(f.stored_patches_kept),
        thousands(kept),
        format!(
            "{} (of files + patches kept: {:.2})",
            ratio(kept),
            kept as f64 / (f.unique_file_bytes + f.patch_bytes_kept).max(1) as f64
        ),
    ]);
    s.tables.push(stored);
    let mib = f.bytes_published as f64 / (1u64 << 20) as f64;
    let sent_mib = f.bytes_sent as f64 / (1u64 << 20) as f64;
    let mut reqs = Table::new(&[
        "S3 requests",
        "GET",
        "PUT",
        "POST",
        "DELETE",
        "other",
        "total",
        "per published MiB",
        "per MiB sent",
    ]);
    for (label, r) in [
        ("before (computed)", f.before),
        ("**ferry now** (measured)", f.requests),
        ("patch making (measured)", f.patch_requests),
    ] {
        reqs.row(vec![
            label.into(),
            thousands(r.get),
            thousands(r.put),
            thousands(r.post),
            thousands(r.delete),
            thousands(r.other),
            thousands(r.total()),
            format!("{:.1}", r.total() as f64 / mib.max(f64::MIN_POSITIVE)),
            format!("{:.1}", r.total() as f64 / sent_mib.max(f64::MIN_POSITIVE)),
        ]);
    }
    s.tables.push(reqs);
    s.setup.push(format!(
        "published {} bytes in {} releases; the agent sent {} bytes in {} chunks",
        thousands(f.bytes_published),
        f.releases,
        thousands(f.bytes_sent),
        thousands(f.chunks_sent)
    ));
    s.targets.push(Target::new(
        quick,
        &format!("bytes stored after publishing {} consecutive releases", f.releases),
        &format!("≤ {STORED_TARGET}× (distinct files + patches)"),
        format!("{} vs {} ({}×; before: {}×)", thousands(after), thousands(floor), ratio(after), ratio(before)),
        after as f64 <= STORED_TARGET * floor as f64,
    ));
    s
}
