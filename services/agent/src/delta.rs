//! Delta uploads (issue 14): the chunks the registry lacks, sent as zstd
//! frames whose reference is the corresponding bytes of the release this
//! agent published before (kept in its cache, held by the registry too).
//!
//! For each file with chunks to send, the previous release's file at the
//! same place (the same artifact, and the same path in a directory
//! artifact) is its counterpart. Consecutive missing chunks form a run (up
//! to [`RUN_MAX_BYTES`]); its reference is the counterpart's chunks around
//! the same offset ([`WINDOW`] either side, at most
//! [`REFERENCE_MAX_CHUNKS`]). A run is sent as a frame only when that is
//! smaller than its chunks; anything without a counterpart in the cache,
//! or whose cached bytes no longer match, goes as plain chunks.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use ferry_proto::registry::v1 as pb;
use ferry_release::{ArtifactKind, FileEntry, Hash, Manifest};

use crate::cache::Previous;
use crate::error::AgentError;
use crate::publish::{ChunkSource, Piece, PlannedChunk, PlannedFile};

/// A run holds at most this many bytes of chunks…
const RUN_MAX_BYTES: u64 = 1024 * 1024;
/// …and this many chunks (the registry takes 64).
const RUN_MAX_CHUNKS: usize = 64;
/// How far either side of a run its reference reaches in the old file.
const WINDOW: u64 = 1024 * 1024;
/// At most this many reference chunks (the registry takes 64, and 4 MiB).
const REFERENCE_MAX_CHUNKS: usize = 64;
/// The registry takes at most this many runs per message.
pub(crate) const RUNS_PER_MESSAGE: usize = 16;
/// zstd level of the frames: most of level 19's gain at several times its
/// speed, since the agent compresses every changed run before it is sent.
const LEVEL: i32 = 12;

/// For each file of `new` (by hash), its counterpart in `old`.
pub(crate) fn counterparts(new: &Manifest, old: &Manifest) -> HashMap<Hash, FileEntry> {
    let place = |kind: ArtifactKind, artifact: &str, path: &str| match kind {
        // A file artifact's name may carry the version (crm-2.4.1.apk).
        ArtifactKind::File => (artifact.to_owned(), String::new()),
        ArtifactKind::Directory => (artifact.to_owned(), path.to_owned()),
    };
    let mut before: HashMap<(String, String), &FileEntry> = HashMap::new();
    for a in &old.artifacts {
        for f in &a.files {
            before.insert(place(a.kind, a.name.as_str(), f.path.as_str()), f);
        }
    }
    let mut out = HashMap::new();
    for a in &new.artifacts {
        for f in &a.files {
            if let Some(old) = before.get(&place(a.kind, a.name.as_str(), f.path.as_str()))
                && old.hash != f.hash
                && !old.chunks.is_empty()
            {
                out.insert(f.hash, (*old).clone());
            }
        }
    }
    out
}

/// What to send for `plan`: runs as deltas where the cache allows, the
/// rest as chunks. Lazy: one run is read and encoded at a time.
pub(crate) fn pieces(
    plan: Vec<PlannedFile>,
    previous: Arc<Previous>,
    counterparts: HashMap<Hash, FileEntry>,
) -> ChunkSource {
    let counterparts = Arc::new(counterparts);
    Box::new(plan.into_iter().flat_map(move |file| {
        let old = counterparts.get(&file.hash).cloned();
        let cached = old.as_ref().and_then(|o| previous.file(&o.hash));
        let runs = runs(file.chunks);
        let path = file.path;
        let mut source: Option<File> = None;
        runs.into_iter().flat_map(move |run| {
            let result = (|| {
                let io = |e| AgentError::Io { path: path.clone(), source: e };
                let file = match &mut source {
                    Some(f) => f,
                    None => source.insert(File::open(&path).map_err(io)?),
                };
                let mut chunks = Vec::with_capacity(run.len());
                for c in &run {
                    let mut data = vec![0u8; c.len as usize];
                    file.seek(SeekFrom::Start(c.offset)).map_err(io)?;
                    file.read_exact(&mut data).map_err(io)?;
                    if blake3::hash(&data) != c.hash {
                        return Err(AgentError::Changed { path: path.clone() });
                    }
                    chunks.push((c.hash, data));
                }
                let delta = match (&old, &cached) {
                    (Some(old), Some(cached)) => encode(&run, &chunks, old, cached),
                    _ => None,
                };
                Ok(match delta {
                    Some(piece) => vec![piece],
                    None => chunks.into_iter().map(|(h, d)| Piece::Chunk(h, d)).collect(),
                })
            })();
            match result {
                Ok(pieces) => pieces.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
        })
    }))
}

/// Splits a file's planned chunks into runs of consecutive chunks.
fn runs(chunks: Vec<PlannedChunk>) -> Vec<Vec<PlannedChunk>> {
    let mut out: Vec<Vec<PlannedChunk>> = Vec::new();
    for c in chunks {
        if let Some(run) = out.last_mut() {
            let last = run.last().expect("runs are not empty");
            let bytes: u64 = run.iter().map(|c| u64::from(c.len)).sum();
            if last.offset + u64::from(last.len) == c.offset
                && run.len() < RUN_MAX_CHUNKS
                && bytes + u64::from(c.len) <= RUN_MAX_BYTES
            {
                run.push(c);
                continue;
            }
        }
        out.push(vec![c]);
    }
    out
}

/// The run as a delta frame against `old` (cached at `cached`), if that
/// is smaller than its chunks.
fn encode(run: &[PlannedChunk], chunks: &[(Hash, Vec<u8>)], old: &FileEntry, cached: &PathBuf) -> Option<Piece> {
    let start = run.first()?.offset;
    let end = run.last().map(|c| c.offset + u64::from(c.len))?;
    let (from, to) = (start.saturating_sub(WINDOW), end + WINDOW);
    // The old file's chunks overlapping the window, with their offsets.
    let mut offset = 0u64;
    let mut window = Vec::new();
    for c in &old.chunks {
        let at = offset;
        offset += u64::from(c.len);
        if offset > from && at < to {
            window.push((at, *c));
        }
    }
    if window.len() > REFERENCE_MAX_CHUNKS {
        let skip = (window.len() - REFERENCE_MAX_CHUNKS) / 2;
        window = window[skip..skip + REFERENCE_MAX_CHUNKS].to_vec();
    }
    // At most 4 MiB of reference, trimmed from both ends.
    while window.iter().map(|(_, c)| u64::from(c.len)).sum::<u64>() > 4 * 1024 * 1024 && window.len() > 1 {
        window.remove(0);
        if window.len() > 1 {
            window.pop();
        }
    }
    let (first, _) = *window.first()?;
    let total: u64 = window.iter().map(|(_, c)| u64::from(c.len)).sum();
    let mut base = vec![0u8; total as usize];
    let mut file = File::open(cached).ok()?;
    file.seek(SeekFrom::Start(first)).ok()?;
    file.read_exact(&mut base).ok()?;
    let mut at = 0usize;
    for (_, c) in &window {
        // A cache that no longer holds what it says costs only the delta.
        if blake3::hash(&base[at..at + c.len as usize]) != c.hash {
            return None;
        }
        at += c.len as usize;
    }
    let target: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let frame = ferry_patch::make_at(&base, &target, LEVEL).ok()?;
    if frame.len() >= target.len() {
        return None;
    }
    Some(Piece::Run {
        run: pb::DeltaRun {
            reference: window.iter().map(|(_, c)| c.hash.as_bytes().to_vec()).collect(),
            hashes: chunks.iter().map(|(h, _)| h.as_bytes().to_vec()).collect(),
            lens: chunks.iter().map(|(_, d)| d.len() as u32).collect(),
            frame,
        },
        chunks: chunks.len() as u64,
        bytes: target.len() as u64,
    })
}
