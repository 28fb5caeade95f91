//! Packing: turning files on disk into a [`Manifest`] (S0-1, S3-1).
//!
//! Each file is cut into content-defined chunks (FastCDC 2020) so that an edit
//! in the middle of a large file changes only the chunks around it, and every
//! chunk and every whole file is named by BLAKE3. Large files go through a
//! two-stage pipeline: one thread reads and finds cut points for segment
//! `n + 1` while the rayon pool hashes segment `n` (chunk hashes and the
//! whole-file hash in parallel), so both cores stay busy.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rayon::prelude::*;
use thiserror::Error;

use crate::manifest::{ArtifactKind, ArtifactManifest, ChunkRef, FileEntry, Hash, Manifest, ManifestError, RelPath};
use crate::name::{Name, NameError};

/// Smallest chunk FastCDC cuts (except a file's last chunk).
pub const CHUNK_MIN: usize = 16 * 1024;
/// Average chunk size FastCDC aims for.
pub const CHUNK_AVG: usize = 64 * 1024;
/// Largest chunk: a cut is forced here. Also the most a registry accepts.
pub const CHUNK_MAX: usize = 256 * 1024;

/// Bytes read per pipeline step. A cut decided with at least `CHUNK_MAX`
/// bytes ahead of it does not depend on what follows, so cuts found in a
/// segment are final except in its last `CHUNK_MAX` bytes, which carry over.
const SEGMENT: usize = 16 * 1024 * 1024;

/// What to pack under which artifact name: `name[@platform[,platform...]]=path`
/// on the agent's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    pub name: Name,
    pub platforms: Vec<Name>,
    pub path: PathBuf,
}

impl ArtifactSpec {
    pub fn parse(input: &str) -> Result<Self, PackError> {
        let spec_err = |reason: String| PackError::Spec { input: input.to_owned(), reason };
        let Some((lhs, path)) = input.split_once('=') else {
            return Err(spec_err("expected NAME[@PLATFORM,...]=PATH".into()));
        };
        if path.is_empty() {
            return Err(spec_err("the path is empty".into()));
        }
        let (name, platforms) = match lhs.split_once('@') {
            Some((name, platforms)) => (name, platforms.split(',').collect()),
            None => (lhs, Vec::new()),
        };
        let name = Name::parse("artifact", name).map_err(|e| spec_err(e.to_string()))?;
        let mut platforms = platforms
            .into_iter()
            .map(|p| Name::parse("platform", p))
            .collect::<Result<Vec<_>, NameError>>()
            .map_err(|e| spec_err(e.to_string()))?;
        platforms.sort();
        platforms.dedup();
        Ok(Self { name, platforms, path: PathBuf::from(path) })
    }
}

/// Why packing failed; every variant names the artifact or path at fault.
#[derive(Debug, Error)]
pub enum PackError {
    #[error("invalid artifact {input:?}: {reason}")]
    Spec { input: String, reason: String },
    #[error("artifact {0:?} is given more than once")]
    Duplicate(String),
    #[error("no artifacts to pack")]
    NoArtifacts,
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("artifact {artifact:?} is empty: {path} has no bytes")]
    Empty { artifact: String, path: PathBuf },
    #[error("{path}: file name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: symbolic link points outside the artifact directory")]
    SymlinkEscapes { path: PathBuf },
    #[error("{path}: symbolic link to one of its own parent directories")]
    SymlinkLoop { path: PathBuf },
    #[error("{path}: not a regular file or directory")]
    Special { path: PathBuf },
    #[error("{path}: {source}")]
    Path { path: PathBuf, source: ManifestError },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io { path: path.to_owned(), source }
}

/// Packs `specs` into the manifest of `version`. `progress` is called with
/// the number of bytes just processed, from any thread.
pub fn pack(
    version: crate::Version,
    specs: &[ArtifactSpec],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest, PackError> {
    if specs.is_empty() {
        return Err(PackError::NoArtifacts);
    }
    let mut seen = HashSet::new();
    for spec in specs {
        if !seen.insert(&spec.name) {
            return Err(PackError::Duplicate(spec.name.to_string()));
        }
    }
    let mut artifacts = specs.iter().map(|spec| pack_artifact(spec, progress)).collect::<Result<Vec<_>, _>>()?;
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    // The caller names the owner (the agent, from its tenant and app).
    let manifest = Manifest { version, owner: None, artifacts };
    manifest.validate()?;
    Ok(manifest)
}

fn pack_artifact(spec: &ArtifactSpec, progress: &(dyn Fn(u64) + Sync)) -> Result<ArtifactManifest, PackError> {
    let root = &spec.path;
    let meta = fs::metadata(root).map_err(io_err(root))?;
    let (kind, sources) = if meta.is_file() {
        let name =
            root.file_name().and_then(|n| n.to_str()).ok_or_else(|| PackError::NotUtf8 { path: root.clone() })?;
        let rel = RelPath::parse(name).map_err(|source| PackError::Path { path: root.clone(), source })?;
        (ArtifactKind::File, vec![(rel, root.clone())])
    } else if meta.is_dir() {
        (ArtifactKind::Directory, walk(root)?.into_iter().map(|f| (f.rel, f.path)).collect())
    } else {
        return Err(PackError::Special { path: root.clone() });
    };
    let files = sources
        .par_iter()
        .map(|(rel, path)| {
            let mut entry = pack_file(path, progress)?;
            entry.path = rel.clone();
            Ok(entry)
        })
        .collect::<Result<Vec<_>, PackError>>()?;
    if files.iter().all(|f| f.size == 0) {
        return Err(PackError::Empty { artifact: spec.name.to_string(), path: root.clone() });
    }
    Ok(ArtifactManifest { name: spec.name.clone(), kind, platforms: spec.platforms.clone(), files })
}

/// A regular file found below a directory artifact's root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalkedFile {
    /// Its path in the artifact.
    pub rel: RelPath,
    /// Its path as found (through any symbolic links).
    pub path: PathBuf,
    /// Its real path (links resolved), to read it from.
    pub real: PathBuf,
}

/// Lists the regular files below `root`, sorted by relative path, exactly
/// as packing sees them: symbolic links are followed when they stay inside
/// `root` and refused otherwise (and a link to one of its own ancestors).
pub fn walk(root: &Path) -> Result<Vec<WalkedFile>, PackError> {
    let canonical_root = fs::canonicalize(root).map_err(io_err(root))?;
    let mut out = Vec::new();
    // Each directory to list, with its real path: a link to a directory is
    // followed like a directory (every path it shows is packed), except a
    // link back to one of its own ancestors, which would never end.
    let mut stack = vec![(root.to_path_buf(), vec![canonical_root.clone()], String::new())];
    while let Some((dir, ancestors, prefix)) = stack.pop() {
        let real_dir = ancestors.last().expect("the directory itself").clone();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let name = entry.file_name().into_string().map_err(|_| PackError::NotUtf8 { path: path.clone() })?;
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let file_type = entry.file_type().map_err(io_err(&path))?;
            let (meta, real) = if file_type.is_symlink() {
                let target = fs::canonicalize(&path).map_err(io_err(&path))?;
                if !target.starts_with(&canonical_root) {
                    return Err(PackError::SymlinkEscapes { path });
                }
                (fs::metadata(&target).map_err(io_err(&path))?, target)
            } else {
                (entry.metadata().map_err(io_err(&path))?, real_dir.join(entry.file_name()))
            };
            if meta.is_dir() {
                if ancestors.contains(&real) {
                    return Err(PackError::SymlinkLoop { path });
                }
                let mut chain = ancestors.clone();
                chain.push(real);
                stack.push((path, chain, rel));
            } else if meta.is_file() {
                let rel = RelPath::parse(&rel).map_err(|source| PackError::Path { path: path.clone(), source })?;
                out.push(WalkedFile { rel, path, real });
            } else {
                return Err(PackError::Special { path });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Packs one file: size, mode, whole-file BLAKE3 and chunk list. The
/// returned entry's path is the file name; callers inside a directory
/// replace it with the relative path.
pub fn pack_file(path: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<FileEntry, PackError> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    let mode = file_mode(&meta);
    let mut hasher = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut consume = |segment: Segment| {
        let data = &segment.data[..segment.consumed];
        let (_, hashes) = rayon::join(
            || hasher.update_rayon(data),
            || segment.cuts.par_iter().map(|&(start, len)| blake3::hash(&data[start..start + len])).collect::<Vec<_>>(),
        );
        chunks.extend(segment.cuts.iter().zip(hashes).map(|(&(_, len), hash)| ChunkRef { hash, len: len as u32 }));
        size += segment.consumed as u64;
        progress(segment.consumed as u64);
        segment.data
    };
    if meta.len() <= SEGMENT as u64 {
        // Small files: no pipeline thread, the pool is busy with siblings.
        let mut reader = Segmenter::new(file);
        while let Some(segment) = reader.next_segment().map_err(io_err(path))? {
            reader.spare = Some(consume(segment));
        }
    } else {
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<Segment>(1);
            let (give_back, spares) = mpsc::channel::<Vec<u8>>();
            let producer = scope.spawn(move || -> io::Result<()> {
                let mut reader = Segmenter::new(file);
                loop {
                    reader.spare = spares.try_recv().ok();
                    let Some(segment) = reader.next_segment()? else { break };
                    if tx.send(segment).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            for segment in rx {
                let data = consume(segment);
                let _ = give_back.send(data);
            }
            producer.join().expect("packing reader thread panicked").map_err(io_err(path))
        })?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let rel = RelPath::parse(name).map_err(|source| PackError::Path { path: path.to_owned(), source })?;
    Ok(FileEntry { path: rel, size, mode, hash: Hash::from(*hasher.finalize().as_bytes()), chunks })
}

#[cfg(unix)]
fn file_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn file_mode(meta: &fs::Metadata) -> u32 {
    if meta.permissions().readonly() { 0o444 } else { 0o644 }
}

/// A run of bytes whose chunk boundaries are final.
struct Segment {
    data: Vec<u8>,
    /// Bytes of `data` covered by `cuts`; the rest was carried over.
    consumed: usize,
    /// `(offset, len)` of each chunk within `data`.
    cuts: Vec<(usize, usize)>,
}

/// Reads a file segment by segment and finds its chunk boundaries.
struct Segmenter<R> {
    reader: R,
    carry: Vec<u8>,
    eof: bool,
    /// A buffer handed back by the consumer, to reuse.
    spare: Option<Vec<u8>>,
}

impl<R: Read> Segmenter<R> {
    fn new(reader: R) -> Self {
        Self { reader, carry: Vec::new(), eof: false, spare: None }
    }

    fn next_segment(&mut self) -> io::Result<Option<Segment>> {
        if self.eof && self.carry.is_empty() {
            return Ok(None);
        }
        // A recycled buffer keeps its pages: no page faults per segment. And
        // read_to_end reads into spare capacity without zeroing it first.
        let mut data = self.spare.take().unwrap_or_default();
        data.clear();
        data.reserve(self.carry.len() + SEGMENT);
        data.extend_from_slice(&self.carry);
        let want = SEGMENT as u64;
        let got = (&mut self.reader).take(want).read_to_end(&mut data)?;
        if (got as u64) < want {
            self.eof = true;
        }
        if data.is_empty() {
            return Ok(None);
        }
        let ends = find_cuts(&data, self.eof);
        let mut cuts = Vec::with_capacity(ends.len());
        let mut consumed = 0;
        for end in ends {
            cuts.push((consumed, end - consumed));
            consumed = end;
        }
        self.carry.clear();
        self.carry.extend_from_slice(&data[consumed..]);
        Ok(Some(Segment { data, consumed, cuts }))
    }
}

/// The end offsets of the chunks of `data` whose boundaries are final: all
/// of them at end of file, else those decided with `CHUNK_MAX` bytes of
/// look-ahead.
///
/// Cutting stays on one thread: measured on 2 cores, splitting a segment in
/// two halves (cut separately, then re-synchronised) was slower (1.5 vs
/// 1.65 GB/s), because hashing the previous segment already uses the other
/// core.
fn find_cuts(data: &[u8], eof: bool) -> Vec<usize> {
    let chunker = fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
    cuts_from(&chunker, data.len(), 0, eof)
}

/// Cuts sequentially from `start` until the data or the look-ahead runs out.
fn cuts_from(chunker: &fastcdc::v2020::FastCDC<'_>, len: usize, start: usize, eof: bool) -> Vec<usize> {
    let mut ends = Vec::with_capacity((len - start) / CHUNK_AVG + 1);
    let mut pos = start;
    while pos < len {
        let remaining = len - pos;
        if !eof && remaining < CHUNK_MAX {
            break; // not enough look-ahead: the cut could move
        }
        let (_, end) = chunker.cut(pos, remaining);
        ends.push(end);
        pos = end;
    }
    ends
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), incompressible like a
    /// real package.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunk_file(data: &[u8]) -> FileEntry {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        pack_file(f.path(), &|_| {}).unwrap()
    }

    #[test]
    fn chunks_cover_the_file_and_hash_it() {
        let data = noise(3 * SEGMENT + 12345, 7);
        let entry = chunk_file(&data);
        assert_eq!(entry.size, data.len() as u64);
        assert_eq!(entry.hash, blake3::hash(&data));
        let mut offset = 0;
        for chunk in &entry.chunks {
            let len = chunk.len as usize;
            assert!(len <= CHUNK_MAX);
            assert_eq!(chunk.hash, blake3::hash(&data[offset..offset + len]));
            offset += len;
        }
        assert_eq!(offset, data.len());
    }

    #[test]
    fn segmenting_does_not_move_cut_points() {
        // The same bytes chunked in one piece and through segments agree.
        let data = noise(2 * SEGMENT + 999, 3);
        let whole: Vec<usize> =
            fastcdc::v2020::FastCDC::new(&data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX).map(|c| c.length).collect();
        let segmented: Vec<usize> = chunk_file(&data).chunks.iter().map(|c| c.len as usize).collect();
        assert_eq!(whole, segmented);
    }

    #[test]
    fn an_edit_in_the_middle_changes_few_chunks() {
        let mut data = noise(4 * 1024 * 1024, 11);
        let before = chunk_file(&data);
        data[2 * 1024 * 1024] ^= 0xff;
        let after = chunk_file(&data);
        let old: HashSet<_> = before.chunks.iter().map(|c| c.hash).collect();
        let changed = after.chunks.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!((1..=2).contains(&changed), "{changed} chunks changed");
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let entry = chunk_file(b"");
        assert_eq!(entry.size, 0);
        assert!(entry.chunks.is_empty());
        assert_eq!(entry.hash, blake3::hash(b""));
    }

    #[test]
    fn parses_artifact_specs() {
        let spec = ArtifactSpec::parse("mobile@ios,android=./build/crm.ipa").unwrap();
        assert_eq!(spec.name.as_str(), "mobile");
        assert_eq!(spec.platforms.iter().map(Name::as_str).collect::<Vec<_>>(), ["android", "ios"]);
        assert_eq!(spec.path, PathBuf::from("./build/crm.ipa"));
        for bad in ["mobile", "=x", "mobile=", "Mobile=x", "mobile@=x"] {
            assert!(ArtifactSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn directory_walk_refuses_escaping_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("index.html"), b"<html>").unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"not for the release").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("leak")).unwrap();
        let spec =
            ArtifactSpec { name: Name::parse("artifact", "web").unwrap(), platforms: vec![], path: dir.path().into() };
        let err = pack("1.0.0".parse().unwrap(), &[spec], &|_| {}).unwrap_err();
        assert!(matches!(err, PackError::SymlinkEscapes { .. }), "{err}");
    }

    #[test]
    fn directory_walk_lists_nested_files_sorted_and_follows_inner_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("assets/img")).unwrap();
        fs::write(dir.path().join("index.html"), b"<html>").unwrap();
        fs::write(dir.path().join("assets/app.js"), b"js").unwrap();
        fs::write(dir.path().join("assets/img/logo.png"), b"png").unwrap();
        std::os::unix::fs::symlink("index.html", dir.path().join("default.html")).unwrap();
        let spec =
            ArtifactSpec { name: Name::parse("artifact", "web").unwrap(), platforms: vec![], path: dir.path().into() };
        let m = pack("1.0.0".parse().unwrap(), &[spec], &|_| {}).unwrap();
        let paths: Vec<_> = m.artifacts[0].files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["assets/app.js", "assets/img/logo.png", "default.html", "index.html"]);
        assert_eq!(m.artifacts[0].kind, ArtifactKind::Directory);
    }

    #[test]
    fn linked_directories_are_packed_under_every_path_and_loops_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("v2")).unwrap();
        fs::write(dir.path().join("v2/app.js"), b"js").unwrap();
        std::os::unix::fs::symlink("v2", dir.path().join("current")).unwrap();
        let spec =
            ArtifactSpec { name: Name::parse("artifact", "web").unwrap(), platforms: vec![], path: dir.path().into() };
        let m = pack("1.0.0".parse().unwrap(), std::slice::from_ref(&spec), &|_| {}).unwrap();
        let paths: Vec<_> = m.artifacts[0].files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["current/app.js", "v2/app.js"]);

        // A loop through a sibling: a/b -> ../c and c/d -> ../a.
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::create_dir_all(dir.path().join("c")).unwrap();
        std::os::unix::fs::symlink("../c", dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("../a", dir.path().join("c/d")).unwrap();
        let err = pack("1.0.0".parse().unwrap(), std::slice::from_ref(&spec), &|_| {}).unwrap_err();
        assert!(matches!(err, PackError::SymlinkLoop { .. }), "{err}");

        fs::remove_file(dir.path().join("c/d")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("v2/up")).unwrap();
        let err = pack("1.0.0".parse().unwrap(), &[spec], &|_| {}).unwrap_err();
        assert!(matches!(err, PackError::SymlinkLoop { .. }), "{err}");
    }

    #[test]
    fn refuses_duplicate_names_and_empty_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.apk");
        fs::write(&empty, b"").unwrap();
        let spec = ArtifactSpec::parse(&format!("mobile={}", empty.display())).unwrap();
        let v: crate::Version = "1.0.0".parse().unwrap();
        assert!(matches!(pack(v.clone(), std::slice::from_ref(&spec), &|_| {}), Err(PackError::Empty { .. })));
        assert!(matches!(pack(v.clone(), &[spec.clone(), spec], &|_| {}), Err(PackError::Duplicate(_))));
        let missing = ArtifactSpec::parse("api=/nonexistent/openapi.json").unwrap();
        let e = pack(v, &[missing], &|_| {}).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/openapi.json"), "{e}");
    }
}
