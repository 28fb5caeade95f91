//! The manifest and its canonical encoding (S3-1, S3-3).
//!
//! Encoding (all integers unsigned LEB128, minimal form; strings are a
//! length then UTF-8 bytes; hashes are 32 raw bytes). Version 2 names the
//! release's owner, so that the manifest (and a signature over it, later)
//! says whose release it is (S1-8); version 1, without an owner, is still
//! read:
//!
//! ```text
//! manifest = "FERRYMF" 0x02  version:str  tenant:str  app:str  n:int  artifact*n
//!          | "FERRYMF" 0x01  version:str  n:int  artifact*n
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
const MAGIC_V2: &[u8; 8] = b"FERRYMF\x02";

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
    pub version: crate::Version,
    /// Whose release this is; `None` only in manifests of format version 1.
    pub owner: Option<Owner>,
    /// Sorted by name, names unique.
    pub artifacts: Vec<ArtifactManifest>,
}

/// The tenant and app a release belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub tenant: Name,
    pub app: Name,
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
/// `.` or `..` segments, no leading `/`, no NUL or backslash. Clients write
/// these paths on their own file systems, so names that are unsafe or
/// ambiguous on any common one are refused too: a drive or stream colon,
/// characters Windows forbids (`<>:"|?*`), segments ending in a dot or a
/// space, and Windows' reserved device names (`CON`, `NUL`, `COM1`, ...,
/// with or without an extension).
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
        if input.bytes().any(|b| matches!(b, b'<' | b'>' | b':' | b'"' | b'|' | b'?' | b'*')) {
            return Err(bad("contains a character some file systems forbid (<>:\"|?*)"));
        }
        for segment in input.split('/') {
            match segment {
                "" => return Err(bad("has an empty segment or a leading or trailing '/'")),
                "." | ".." => return Err(bad("has a '.' or '..' segment")),
                _ if segment.ends_with(['.', ' ']) => return Err(bad("has a segment ending in a dot or a space")),
                _ if is_reserved_device_name(segment) => {
                    return Err(bad("has a segment that is a reserved device name on Windows"));
                }
                _ => {}
            }
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `CON`, `prn.txt`, `Com1.log`, ...: names Windows gives to devices, in any
/// case, with or without an extension.
fn is_reserved_device_name(segment: &str) -> bool {
    let stem = segment.split('.').next().unwrap_or(segment).trim_end().to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => {
            // By characters: the stem may hold any UTF-8.
            let mut chars = stem.chars();
            let prefix: String = chars.by_ref().take(3).collect();
            let digit: Vec<char> = chars.collect();
            (prefix == "COM" || prefix == "LPT")
                && matches!(digit.as_slice(), [c] if c.is_ascii_digit() || matches!(c, '¹' | '²' | '³'))
        }
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
    #[error("invalid path {}: {reason}", crate::Quoted(path))]
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

    /// The identity of the content alone: the id of this manifest without
    /// its owner. Tenants publishing the same files share it (and what is
    /// derived from the files only, such as download lists).
    pub fn content_id(&self) -> ManifestId {
        ManifestId(*blake3::hash(&self.encode_as(None)).as_bytes())
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(self.owner.as_ref())
    }

    fn encode_as(&self, owner: Option<&Owner>) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.files().map(|f| 64 + 36 * f.chunks.len()).sum::<usize>());
        match owner {
            Some(owner) => {
                out.extend_from_slice(MAGIC_V2);
                put_str(&mut out, &self.version.to_string());
                put_str(&mut out, owner.tenant.as_str());
                put_str(&mut out, owner.app.as_str());
            }
            None => {
                out.extend_from_slice(MAGIC);
                put_str(&mut out, &self.version.to_string());
            }
        }
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
        let magic = r.take(MAGIC.len())?;
        let with_owner = match magic {
            m if m == MAGIC_V2 => true,
            m if m == MAGIC => false,
            _ => return Err(ManifestError::Magic),
        };
        let version_str = r.str()?;
        let version = parse_version(version_str).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        if version.to_string() != version_str {
            return invalid(format!("version {version_str:?} is not in canonical form"));
        }
        let owner = if with_owner {
            let tenant = name(r.str()?, "tenant")?;
            let app = name(r.str()?, "app")?;
            Some(Owner { tenant, app })
        } else {
            None
        };
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
        let manifest = Manifest { version, owner, artifacts };
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
            owner: Some(Owner {
                tenant: Name::parse("tenant", "acme").unwrap(),
                app: Name::parse("app", "crm").unwrap(),
            }),
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
    fn the_owner_changes_the_id_but_not_the_content_id() {
        let m = sample();
        let mut other = m.clone();
        other.owner =
            Some(Owner { tenant: Name::parse("tenant", "globex").unwrap(), app: Name::parse("app", "crm").unwrap() });
        assert_ne!(m.id(), other.id());
        assert_eq!(m.content_id(), other.content_id());
        let mut legacy = m.clone();
        legacy.owner = None;
        assert_eq!(legacy.id(), m.content_id(), "a version 1 manifest's id is its content id");
        assert_eq!(&legacy.encode()[..8], MAGIC);
        assert_eq!(Manifest::decode(&legacy.encode()).unwrap(), legacy);
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
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
        // A count of 2^40 artifacts with nothing behind it: refused as
        // truncated before anything is reserved.
        let mut bytes = MAGIC.to_vec();
        put_str(&mut bytes, "1.0.0");
        put_int(&mut bytes, 1 << 40);
        assert!(matches!(Manifest::decode(&bytes), Err(ManifestError::Truncated)));
        // A count of ~16 million artifacts with as many zero bytes behind it
        // passes the count check; the first artifact's empty name is refused
        // (and only PREALLOC slots were reserved for it).
        let mut bytes = MAGIC.to_vec();
        put_str(&mut bytes, "1.0.0");
        put_int(&mut bytes, 16_000_000);
        bytes.resize(bytes.len() + 16_000_000, 0);
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(matches!(&err, ManifestError::Invalid(m) if m.contains("must not be empty")), "{err}");
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

    #[test]
    fn refuses_paths_unsafe_on_some_client_file_system() {
        for bad in [
            "C:/x",
            "c:x",
            "file.txt:stream",
            "a/b?.js",
            "a*b",
            "x<y",
            "say\"hi\"",
            "pipe|d",
            "trailing.",
            "dir./x",
            "space /x",
            "CON",
            "con.txt",
            "con/x.js",
            "assets/Nul",
            "COM1.log",
            "lpt9",
            "com²",
        ] {
            let e = RelPath::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid path"), "{bad}: {e}");
        }
        for good in ["console.js", "assets/COM10.js", "nullable.ts", "a.b.c", ".well-known/x", "auxiliary"] {
            assert!(RelPath::parse(good).is_ok(), "{good}");
        }
    }

    /// Random valid manifests: versions with and without pre-release and
    /// build parts, 1 to 3 artifacts of both kinds, platforms, nested paths,
    /// empty files, chunk lengths of every LEB128 width.
    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        let name = "[a-z0-9][a-z0-9_-]{0,6}";
        let hash = any::<[u8; 32]>().prop_map(Hash::from_bytes);
        let chunk = (prop_oneof![1u32..128, 128u32..16_384, 16_384u32..=CHUNK_MAX as u32], hash.clone())
            .prop_map(|(len, hash)| ChunkRef { hash, len });
        let entry = (proptest::collection::vec(chunk, 0..4), 0u32..=0o7777, hash).prop_map(|(chunks, mode, hash)| {
            let size = chunks.iter().map(|c| u64::from(c.len)).sum();
            (size, mode, hash, chunks)
        });
        let file = |path: String, (size, mode, hash, chunks): (u64, u32, Hash, Vec<ChunkRef>)| FileEntry {
            path: RelPath::parse(&path).unwrap(),
            size,
            mode,
            hash,
            chunks,
        };
        let valid = |p: &String| RelPath::parse(p).is_ok();
        let single = ("[a-z]{1,8}\\.apk".prop_filter("valid path", valid), entry.clone())
            .prop_map(move |(p, e)| (ArtifactKind::File, vec![file(p, e)]));
        let tree = proptest::collection::btree_map(
            "[a-z]{1,3}(/[a-z]([a-z.]?[a-z])?){0,2}".prop_filter("valid path", valid),
            entry,
            1..5,
        )
        .prop_map(move |files| (ArtifactKind::Directory, files.into_iter().map(|(p, e)| file(p, e)).collect()));
        let artifact = (prop_oneof![single, tree], proptest::collection::btree_set(name, 0..3));
        let version = (0u64..30, 0u64..300, 0u64..70_000, "(-(rc|beta)\\.(0|[1-9][0-9]?))?(\\+b[0-9]{1,3})?")
            .prop_map(|(a, b, c, tail)| format!("{a}.{b}.{c}{tail}").parse::<crate::Version>().unwrap());
        let artifacts = proptest::collection::btree_map(name, artifact, 1..4);
        let owner = proptest::option::of((name, name)).prop_map(|o| {
            o.map(|(t, a)| Owner { tenant: Name::parse("tenant", &t).unwrap(), app: Name::parse("app", &a).unwrap() })
        });
        (version, owner, artifacts)
            .prop_map(|(version, owner, artifacts)| Manifest {
                version,
                owner,
                artifacts: artifacts
                    .into_iter()
                    .map(|(n, ((kind, files), platforms))| ArtifactManifest {
                        name: Name::parse("artifact", &n).unwrap(),
                        kind,
                        platforms: platforms.iter().map(|p| Name::parse("platform", p).unwrap()).collect(),
                        files,
                    })
                    .collect(),
            })
            .prop_filter("every artifact holds bytes", |m| m.artifacts.iter().all(|a| a.size() > 0))
            .prop_filter("paths are valid", |m| m.validate().is_ok())
    }

    /// One edit of an encoding. Positions are taken modulo the length.
    #[derive(Debug, Clone)]
    enum Mutation {
        Flip { pos: usize, xor: u8 },
        Insert { pos: usize, byte: u8 },
        Delete { pos: usize, len: usize },
        Truncate { len: usize },
        Duplicate { pos: usize, len: usize },
    }

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => (any::<usize>(), 1u8..=255).prop_map(|(pos, xor)| Mutation::Flip { pos, xor }),
            1 => (any::<usize>(), any::<u8>()).prop_map(|(pos, byte)| Mutation::Insert { pos, byte }),
            1 => (any::<usize>(), 1usize..40).prop_map(|(pos, len)| Mutation::Delete { pos, len }),
            1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
            1 => (any::<usize>(), 1usize..40).prop_map(|(pos, len)| Mutation::Duplicate { pos, len }),
        ]
    }

    fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Flip { pos, xor } => {
                if !bytes.is_empty() {
                    bytes[pos % n] ^= xor;
                }
            }
            Mutation::Insert { pos, byte } => bytes.insert(pos % (bytes.len() + 1), byte),
            Mutation::Delete { pos, len } => {
                let start = pos % n;
                let end = (start + len).min(bytes.len());
                bytes.drain(start.min(end)..end);
            }
            Mutation::Truncate { len } => bytes.truncate(len % n),
            Mutation::Duplicate { pos, len } => {
                let start = pos % n;
                let end = (start + len).min(bytes.len());
                let copy = bytes[start.min(end)..end].to_vec();
                bytes.splice(end..end, copy);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any string: never a panic; an accepted path has none of the
        /// shapes refused (checked independently of the parser); an error
        /// stays short whatever the input.
        #[test]
        fn accepted_paths_are_safe_everywhere(input in "\\PC{0,60}|([a-zA-Z0-9 .:<>|?*$]{1,6}/){0,3}[a-zA-Z0-9 .]{1,8}") {
            match RelPath::parse(&input) {
                Ok(path) => {
                    prop_assert_eq!(path.as_str(), input.as_str());
                    prop_assert!(!input.starts_with('/') && !input.contains('\\') && !input.contains(':'));
                    for segment in input.split('/') {
                        prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
                        prop_assert!(!segment.ends_with('.') && !segment.ends_with(' '));
                        let stem = segment.split('.').next().unwrap().to_ascii_uppercase();
                        prop_assert!(!["CON", "PRN", "AUX", "NUL"].contains(&stem.as_str()));
                    }
                }
                Err(e) => prop_assert!(e.to_string().len() < 400),
            }
        }

        /// Every manifest survives encoding: same value, same bytes, same id.
        #[test]
        fn random_manifests_round_trip(m in arb_manifest()) {
            let bytes = m.encode();
            let back = Manifest::decode(&bytes).unwrap();
            prop_assert_eq!(back.encode(), bytes);
            prop_assert_eq!(back.id(), m.id());
            prop_assert_eq!(back, m);
        }

        /// Edited encodings of valid manifests (past the magic, deep into
        /// artifacts, files and chunks) never panic the decoder, and whatever
        /// it accepts re-encodes to the very same bytes: the encoding is
        /// canonical, so an accepted edit is a different manifest with a
        /// different id.
        #[test]
        fn decode_accepts_only_canonical_bytes(
            m in arb_manifest(),
            mutations in proptest::collection::vec(arb_mutation(), 1..4),
        ) {
            let original = m.encode();
            let mut bytes = original.clone();
            for mutation in &mutations {
                mutate(&mut bytes, mutation);
            }
            if let Ok(decoded) = Manifest::decode(&bytes) {
                prop_assert_eq!(&decoded.encode(), &bytes);
                prop_assert_eq!(decoded.id() == m.id(), bytes == original);
            }
        }
    }

    /// The property above is only worth something if edited inputs get past
    /// the magic and the first fields: over a fixed sample, the decoder must
    /// both accept some edits (hash bytes) and refuse others for reasons
    /// found deep inside (truncation, trailing bytes, invalid content).
    #[test]
    fn mutated_inputs_reach_deep_into_the_decoder() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, TestRng, TestRunner};

        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
        );
        let (mut accepted, mut truncated, mut trailing, mut invalid, mut other) = (0, 0, 0, 0, 0);
        for _ in 0..2_000 {
            let m = arb_manifest().new_tree(&mut runner).unwrap().current();
            let mutation = arb_mutation().new_tree(&mut runner).unwrap().current();
            let mut bytes = m.encode();
            mutate(&mut bytes, &mutation);
            match Manifest::decode(&bytes) {
                Ok(_) => accepted += 1,
                Err(ManifestError::Truncated) => truncated += 1,
                Err(ManifestError::Trailing(_)) => trailing += 1,
                Err(ManifestError::Invalid(_) | ManifestError::Path { .. }) => invalid += 1,
                Err(_) => other += 1,
            }
        }
        let counts = format!(
            "accepted {accepted}, truncated {truncated}, trailing {trailing}, invalid {invalid}, other {other}"
        );
        assert!(accepted >= 100, "{counts}");
        assert!(truncated >= 50, "{counts}");
        assert!(trailing >= 20, "{counts}");
        assert!(invalid >= 100, "{counts}");
    }
}
