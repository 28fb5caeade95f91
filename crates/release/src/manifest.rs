//! The manifest and its canonical encoding (S3-1, S3-3).
//!
//! Encoding, version 1 (all integers unsigned LEB128, minimal form; strings are
//! a length then UTF-8 bytes; hashes are 32 raw bytes):
//!
//! ```text
//! manifest = "FERRYMF" 0x01  version:str  n:int  artifact*n
//! artifact = name:str  kind:u8 (0 file, 1 directory)  n:int platform:str*n  n:int file*n
//! file     = path:str  size:int  mode:int  blake3:[32]  n:int chunk*n
//! chunk    = len:int  blake3:[32]
//! ```
//!
//! Artifacts are sorted by name, platforms and files by their bytes, all
//! without duplicates. Decoding accepts only what encoding produces, so
//! `encode(decode(b)) == b` for every accepted `b` and the BLAKE3 of the bytes
//! ([`ManifestId`]) names one manifest.

use std::collections::HashSet;
use std::fmt;

use thiserror::Error;

use crate::name::Name;
use crate::pack::CHUNK_MAX;
use crate::version::parse_version;

/// A BLAKE3 digest of a chunk or a whole file.
pub type Hash = blake3::Hash;

const MAGIC: &[u8; 8] = b"FERRYMF\x01";

/// The largest manifest a registry accepts: about 460,000 chunks, i.e.
/// roughly 28 GiB of artifacts in one release.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// Preallocation cap while decoding: counts come from untrusted bytes, and
/// an item in memory is far larger than its smallest encoding.
const PREALLOC: usize = 1024;

const MAX_PATH_LEN: usize = 4096;

/// The identity of a manifest: BLAKE3 of its canonical encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ManifestId(pub [u8; 32]);

impl ManifestId {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for ManifestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Everything one release consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: semver::Version,
    /// Sorted by name, names unique.
    pub artifacts: Vec<ArtifactManifest>,
}

/// Whether an artifact was packed from one file or from a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A single file: the artifact has exactly one [`FileEntry`], whose path
    /// is the file's name.
    File,
    /// A directory: one [`FileEntry`] per regular file below it, with paths
    /// relative to it.
    Directory,
}

/// One artifact of a release: `mobile`, `web`, `api`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactManifest {
    pub name: Name,
    pub kind: ArtifactKind,
    /// Platforms this artifact is for (S1-7); empty means every platform.
    /// Sorted, unique.
    pub platforms: Vec<Name>,
    /// Sorted by path, paths unique.
    pub files: Vec<FileEntry>,
}

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: RelPath,
    pub size: u64,
    /// Unix permission bits (`0o7777` at most).
    pub mode: u32,
    /// BLAKE3 of the whole file.
    pub hash: Hash,
    /// The file's content-defined chunks in order; their lengths add up to
    /// `size`. Empty exactly when the file is empty.
    pub chunks: Vec<ChunkRef>,
}

/// One content-defined chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// A relative path inside a directory artifact: `/`-separated, no empty,
/// `.` or `..` segments, no leading `/`, no NUL or backslash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(input: &str) -> Result<Self, ManifestError> {
        let bad = |reason: &'static str| ManifestError::Path { path: input.to_owned(), reason };
        if input.is_empty() {
            return Err(bad("is empty"));
        }
        if input.len() > MAX_PATH_LEN {
            return Err(bad("is longer than 4096 bytes"));
        }
        if input.bytes().any(|b| b == 0 || b == b'\\' || b.is_ascii_control()) {
            return Err(bad("contains a control character or a backslash"));
        }
        for segment in input.split('/') {
            match segment {
                "" => return Err(bad("has an empty segment or a leading or trailing '/'")),
                "." | ".." => return Err(bad("has a '.' or '..' segment")),
                _ => {}
            }
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why bytes are not a valid manifest, or a manifest is not valid.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("manifest is truncated")]
    Truncated,
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("not a ferry manifest (bad magic or unsupported format version)")]
    Magic,
    #[error("manifest has {0} trailing bytes")]
    Trailing(usize),
    #[error("manifest has a non-minimal integer encoding")]
    NonCanonicalInt,
    #[error("manifest integer overflows")]
    IntOverflow,
    #[error("manifest string is not UTF-8")]
    Utf8,
    #[error("manifest {0}")]
    Invalid(String),
    #[error("invalid path {path:?}: {reason}")]
    Path { path: String, reason: &'static str },
}

impl Manifest {
    /// The manifest's identity: BLAKE3 of [`Manifest::encode`].
    pub fn id(&self) -> ManifestId {
        ManifestId(*blake3::hash(&self.encode()).as_bytes())
    }

    /// Checks the invariants that [`Manifest::decode`] enforces, for a
    /// manifest built in memory (by packing).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.artifacts.is_empty() {
            return invalid("has no artifacts".into());
        }
        for pair in self.artifacts.windows(2) {
            if pair[0].name >= pair[1].name {
                return invalid(format!("artifact {:?} is duplicated or out of order", pair[1].name.as_str()));
            }
        }
        self.artifacts.iter().try_for_each(ArtifactManifest::validate)
    }

    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.files().map(|f| f.size).sum()
    }

    /// Every file of every artifact, in manifest order.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.artifacts.iter().flat_map(|a| a.files.iter())
    }

    /// Each distinct chunk once, in first-use order.
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        self.files().flat_map(|f| f.chunks.iter().copied()).filter(|c| seen.insert(c.hash)).collect()
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.files().map(|f| 64 + 36 * f.chunks.len()).sum::<usize>());
        out.extend_from_slice(MAGIC);
        put_str(&mut out, &self.version.to_string());
        put_int(&mut out, self.artifacts.len() as u64);
        for artifact in &self.artifacts {
            put_str(&mut out, artifact.name.as_str());
            out.push(match artifact.kind {
                ArtifactKind::File => 0,
                ArtifactKind::Directory => 1,
            });
            put_int(&mut out, artifact.platforms.len() as u64);
            for platform in &artifact.platforms {
                put_str(&mut out, platform.as_str());
            }
            put_int(&mut out, artifact.files.len() as u64);
            for file in &artifact.files {
                put_str(&mut out, file.path.as_str());
                put_int(&mut out, file.size);
                put_int(&mut out, u64::from(file.mode));
                out.extend_from_slice(file.hash.as_bytes());
                put_int(&mut out, file.chunks.len() as u64);
                for chunk in &file.chunks {
                    put_int(&mut out, u64::from(chunk.len));
                    out.extend_from_slice(chunk.hash.as_bytes());
                }
            }
        }
        out
    }

    /// Decodes and validates untrusted bytes; accepts only canonical
    /// encodings.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let mut r = Reader { buf: bytes };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(ManifestError::Magic);
        }
        let version_str = r.str()?;
        let version = parse_version(version_str).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        if version.to_string() != version_str {
            return invalid(format!("version {version_str:?} is not in canonical form"));
        }
        let n_artifacts = r.count()?;
        let mut artifacts = Vec::with_capacity(n_artifacts.min(PREALLOC));
        for _ in 0..n_artifacts {
            let name = name(r.str()?, "artifact")?;
            let kind = match r.take(1)?[0] {
                0 => ArtifactKind::File,
                1 => ArtifactKind::Directory,
                other => return invalid(format!("artifact {:?} has unknown kind {other}", name.as_str())),
            };
            let n_platforms = r.count()?;
            let mut platforms = Vec::with_capacity(n_platforms.min(PREALLOC));
            for _ in 0..n_platforms {
                platforms.push(self::name(r.str()?, "platform")?);
            }
            let n_files = r.count()?;
            let mut files = Vec::with_capacity(n_files.min(PREALLOC));
            for _ in 0..n_files {
                let path = RelPath::parse(r.str()?)?;
                let size = r.int()?;
                let mode = u32::try_from(r.int()?).map_err(|_| ManifestError::IntOverflow)?;
                let hash = r.hash()?;
                let n_chunks = r.count()?;
                let mut chunks = Vec::with_capacity(n_chunks.min(PREALLOC));
                for _ in 0..n_chunks {
                    let len = u32::try_from(r.int()?).map_err(|_| ManifestError::IntOverflow)?;
                    chunks.push(ChunkRef { len, hash: r.hash()? });
                }
                files.push(FileEntry { path, size, mode, hash, chunks });
            }
            artifacts.push(ArtifactManifest { name, kind, platforms, files });
        }
        if !r.buf.is_empty() {
            return Err(ManifestError::Trailing(r.buf.len()));
        }
        let manifest = Manifest { version, artifacts };
        manifest.validate()?;
        Ok(manifest)
    }
}

impl ArtifactManifest {
    /// Total bytes of the artifact's files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let name = self.name.as_str();
        if self.files.is_empty() {
            return invalid(format!("artifact {name:?} is empty (no files)"));
        }
        if self.kind == ArtifactKind::File && self.files.len() != 1 {
            return invalid(format!("file artifact {name:?} must have exactly one file"));
        }
        if self.size() == 0 {
            return invalid(format!("artifact {name:?} is empty (0 bytes)"));
        }
        for pair in self.platforms.windows(2) {
            if pair[0] >= pair[1] {
                return invalid(format!("artifact {name:?} has duplicated or unsorted platforms"));
            }
        }
        for pair in self.files.windows(2) {
            if pair[0].path >= pair[1].path {
                return invalid(format!(
                    "artifact {name:?} has duplicated or unsorted path {:?}",
                    pair[1].path.as_str()
                ));
            }
        }
        for file in &self.files {
            file.validate(name)?;
        }
        Ok(())
    }
}

impl FileEntry {
    fn validate(&self, artifact: &str) -> Result<(), ManifestError> {
        let path = self.path.as_str();
        if self.mode > 0o7777 {
            return invalid(format!("file {artifact}/{path} has mode {:o} beyond permission bits", self.mode));
        }
        let mut sum = 0u64;
        for chunk in &self.chunks {
            if chunk.len == 0 || chunk.len as usize > CHUNK_MAX {
                return invalid(format!("file {artifact}/{path} has a chunk of {} bytes", chunk.len));
            }
            sum += u64::from(chunk.len);
        }
        if sum != self.size {
            return invalid(format!("file {artifact}/{path}: chunks add up to {sum} bytes, size says {}", self.size));
        }
        Ok(())
    }
}

fn invalid<T>(message: String) -> Result<T, ManifestError> {
    Err(ManifestError::Invalid(message))
}

fn name(s: &str, what: &'static str) -> Result<Name, ManifestError> {
    Name::parse(what, s).map_err(|e| ManifestError::Invalid(e.to_string()))
}

fn put_int(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_int(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        if self.buf.len() < n {
            return Err(ManifestError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn int(&mut self) -> Result<u64, ManifestError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.take(1)?[0];
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(ManifestError::IntOverflow);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(ManifestError::NonCanonicalInt);
                }
                return Ok(value);
            }
        }
        Err(ManifestError::IntOverflow)
    }

    /// A count of items that each take at least one byte: never more than
    /// the bytes left, so a hostile count cannot make us allocate.
    fn count(&mut self) -> Result<usize, ManifestError> {
        let n = self.int()?;
        if n > self.buf.len() as u64 {
            return Err(ManifestError::Truncated);
        }
        Ok(n as usize)
    }

    fn str(&mut self) -> Result<&'a str, ManifestError> {
        let n = self.count()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| ManifestError::Utf8)
    }

    fn hash(&mut self) -> Result<Hash, ManifestError> {
        let bytes: [u8; 32] = self.take(32)?.try_into().expect("took 32 bytes");
        Ok(Hash::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn file(path: &str, data: &[u8]) -> FileEntry {
        let chunks = data.chunks(CHUNK_MAX).map(|c| ChunkRef { hash: blake3::hash(c), len: c.len() as u32 }).collect();
        FileEntry {
            path: RelPath::parse(path).unwrap(),
            size: data.len() as u64,
            mode: 0o644,
            hash: blake3::hash(data),
            chunks,
        }
    }

    fn sample() -> Manifest {
        Manifest {
            version: "2.4.1-rc.1".parse().unwrap(),
            artifacts: vec![
                ArtifactManifest {
                    name: Name::parse("artifact", "mobile").unwrap(),
                    kind: ArtifactKind::File,
                    platforms: vec![Name::parse("platform", "android").unwrap()],
                    files: vec![file("crm.apk", b"apk bytes")],
                },
                ArtifactManifest {
                    name: Name::parse("artifact", "web").unwrap(),
                    kind: ArtifactKind::Directory,
                    platforms: vec![],
                    files: vec![file("assets/app.js", b"js"), file("empty.txt", b""), file("index.html", b"<html>")],
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_id_is_stable() {
        let m = sample();
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), m.id());
        assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn refuses_trailing_bytes_and_truncation() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(Manifest::decode(&bytes), Err(ManifestError::Trailing(1))));
        bytes.truncate(bytes.len() - 10);
        assert!(matches!(Manifest::decode(&bytes), Err(ManifestError::Truncated)));
    }

    #[test]
    fn refuses_unsorted_artifacts() {
        let mut m = sample();
        m.artifacts.reverse();
        let e = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(e.contains("duplicated or out of order"), "{e}");
    }

    #[test]
    fn huge_counts_do_not_allocate_before_failing() {
        // Magic, version, then a count of ~16 million artifacts with nothing
        // behind them: must fail cleanly, not reserve gigabytes.
        let mut bytes = MAGIC.to_vec();
        put_str(&mut bytes, "1.0.0");
        put_int(&mut bytes, 16_000_000);
        bytes.resize(bytes.len() + 16_000_000, 0);
        assert!(Manifest::decode(&bytes).is_err());
    }

    #[test]
    fn refuses_chunks_that_do_not_add_up() {
        let mut m = sample();
        m.artifacts[0].files[0].size += 1;
        let e = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(e.contains("chunks add up to"), "{e}");
    }

    #[test]
    fn refuses_empty_artifact() {
        let mut m = sample();
        m.artifacts[1].files.retain(|f| f.size == 0);
        let e = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", "a\\b", "dir/"] {
            assert!(RelPath::parse(bad).is_err(), "{bad}");
        }
        assert!(RelPath::parse("assets/app.js").is_ok());
    }

    proptest! {
        /// Decoding never panics, and whatever it accepts re-encodes to the
        /// very same bytes (the encoding is canonical).
        #[test]
        fn decode_accepts_only_canonical_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = Manifest::decode(&bytes) {
                prop_assert_eq!(m.encode(), bytes);
            }
        }

        /// Mutating one byte of a valid manifest never yields a different
        /// manifest with the same id, and never panics.
        #[test]
        fn single_byte_mutations_are_caught_or_change_the_id(pos in 0usize..400, xor in 1u8..=255) {
            let m = sample();
            let mut bytes = m.encode();
            let pos = pos % bytes.len();
            bytes[pos] ^= xor;
            if let Ok(other) = Manifest::decode(&bytes) {
                prop_assert_ne!(other.id(), m.id());
                prop_assert_eq!(other.encode(), bytes);
            }
        }
    }
}
