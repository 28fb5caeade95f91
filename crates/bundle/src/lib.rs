//! Transport bundles (seed 003: "a transport package is built from the
//! files and the manifest, sent, and restored on the remote side"): one
//! file holding a release's manifest and chunks, for private clouds that
//! cannot reach the registry. It is carried by hand or over a one-way
//! link, then published by `ferry-agent bundle push` (from any machine that
//! reaches the registry) or `ferry-registry admin import`.
//!
//! A bundle may hold every chunk of its release, or only those missing
//! from an earlier release's manifest (its `base_manifest_id`): the
//! registry must then already hold the rest for the tenant, and an import
//! that finds a chunk in neither place is refused before anything is
//! committed.
//!
//! # Format (version 1)
//!
//! All integers little-endian.
//!
//! ```text
//! "FERRYBDL"  u16 format = 1
//! u32 header length, header (JSON: BundleHeader)
//! u32 manifest length, manifest (its canonical encoding)
//! per chunk: u8 1, hash[32], u32 length, u32 stored length, u8 encoding (0 raw, 1 zstd), stored bytes
//! u8 0, u64 chunk count, digest[32] = BLAKE3 of every byte before it
//! ```
//!
//! [`Bundle::open`] reads the whole file before anything is used: the
//! digest catches any damage or truncation, and every chunk is checked
//! against its hash and its place in the manifest. [`Bundle::chunks`]
//! checks each chunk again as it is read for sending (the file could change
//! in between), and the registry checks them once more.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ferry_release::{CHUNK_MAX, Hash, MAX_MANIFEST_BYTES, Manifest, Name, parse_version};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const MAGIC: &[u8; 8] = b"FERRYBDL";
/// The format this code writes and reads.
pub const FORMAT: u16 = 1;
const MAX_HEADER_BYTES: u32 = 64 * 1024;
const TAG_CHUNK: u8 = 1;
const TAG_END: u8 = 0;
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// zstd level for chunks: fast, and most of the gain of higher levels on
/// 64 KiB pieces.
const ZSTD_LEVEL: i32 = 3;

/// What a bundle is: written first, read before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    pub tenant: String,
    pub app: String,
    pub version: String,
    /// Hex BLAKE3 of the manifest's encoding.
    pub manifest_id: String,
    /// Record the release as deployed when it is published.
    pub deploy: bool,
    /// Client versions that need not update (a semver requirement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible: Option<String>,
    /// Chunks of this earlier manifest are left out: the registry must
    /// hold them already. `None`: every chunk of the release is inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_manifest_id: Option<String>,
    /// Chunks inside, and their bytes before compression.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// The program that wrote it, e.g. `ferry-agent 0.1.0`.
    pub created_by: String,
}

/// Why a bundle was refused. Every message names the file.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a Ferry bundle (it does not start with FERRYBDL)", path.display())]
    NotABundle { path: PathBuf },
    #[error("{}: bundle format {found} is not supported (this program reads format {FORMAT}); use a ferry-agent of the same release to write it", path.display())]
    Format { path: PathBuf, found: u16 },
    #[error("{}: truncated: the file ends at byte {at} inside {what}; copy it again", path.display())]
    Truncated { path: PathBuf, at: u64, what: &'static str },
    #[error("{}: damaged at byte {at}: {reason}; copy it again", path.display())]
    Damaged { path: PathBuf, at: u64, reason: String },
}

/// A bundle that passed every check of [`Bundle::open`].
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    header: BundleHeader,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    /// Where the first chunk record starts.
    chunks_at: u64,
    hashes: HashSet<Hash>,
}

impl Bundle {
    /// Reads and checks the whole bundle: structure, digest, header against
    /// manifest, every chunk against its hash and the manifest. Nothing is
    /// trusted before this returns.
    pub fn open(path: &Path) -> Result<Self, BundleError> {
        let file = File::open(path).map_err(|source| BundleError::Io { path: path.to_owned(), source })?;
        let mut r = Reader::new(path, file);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic, "the file's start")?;
        if &magic != MAGIC {
            return Err(BundleError::NotABundle { path: path.to_owned() });
        }
        let format = r.u16("the format number")?;
        if format != FORMAT {
            return Err(BundleError::Format { path: path.to_owned(), found: format });
        }
        let header_len = r.u32("the header's length")?;
        if header_len > MAX_HEADER_BYTES {
            return Err(r.damaged(format!("the header claims {header_len} bytes (at most {MAX_HEADER_BYTES})")));
        }
        let header_bytes = r.bytes(header_len as usize, "the header")?;
        let header: BundleHeader =
            serde_json::from_slice(&header_bytes).map_err(|e| r.damaged(format!("the header is not valid: {e}")))?;
        let manifest_len = r.u32("the manifest's length")?;
        if manifest_len as usize > MAX_MANIFEST_BYTES {
            return Err(r.damaged(format!("the manifest claims {manifest_len} bytes (at most {MAX_MANIFEST_BYTES})")));
        }
        let manifest_bytes = r.bytes(manifest_len as usize, "the manifest")?;
        let manifest = Manifest::decode(&manifest_bytes).map_err(|e| r.damaged(format!("manifest: {e}")))?;
        check_header(&header, &manifest, &manifest_bytes).map_err(|reason| r.damaged(reason))?;
        let chunks_at = r.offset;
        let expected: HashMap<Hash, u32> = manifest.unique_chunks().iter().map(|c| (c.hash, c.len)).collect();
        let mut hashes = HashSet::new();
        let mut bytes = 0u64;
        loop {
            match r.u8("a chunk record")? {
                TAG_CHUNK => {
                    let (hash, data) = r.chunk(&expected)?;
                    if !hashes.insert(hash) {
                        return Err(r.damaged(format!("chunk {hash} appears twice")));
                    }
                    bytes += data.len() as u64;
                }
                TAG_END => break,
                other => return Err(r.damaged(format!("unknown record type {other}"))),
            }
        }
        let count = r.u64("the chunk count")?;
        let digest = r.hasher.finalize();
        let mut stored = [0u8; 32];
        r.read_exact(&mut stored, "the digest")?;
        if count != hashes.len() as u64 || count != header.chunks || bytes != header.chunk_bytes {
            return Err(r.damaged(format!(
                "it holds {} chunks ({bytes} bytes); its header says {} ({} bytes) and its end {count}",
                hashes.len(),
                header.chunks,
                header.chunk_bytes
            )));
        }
        if digest.as_bytes() != &stored {
            return Err(r.damaged("the digest does not match the content".into()));
        }
        let mut rest = [0u8; 1];
        if r.inner.read(&mut rest).map_err(|e| r.io(e))? != 0 {
            return Err(r.damaged("bytes follow the end of the bundle".into()));
        }
        if header.base_manifest_id.is_none() && hashes.len() != expected.len() {
            return Err(r.damaged(format!(
                "a full bundle must hold all {} chunks of its release; it holds {}",
                expected.len(),
                hashes.len()
            )));
        }
        Ok(Self { path: path.to_owned(), header, manifest, manifest_bytes, chunks_at, hashes })
    }

    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's canonical encoding, as it travels to the registry.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// Whether the bundle holds this chunk.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.hashes.contains(hash)
    }

    /// Reads the chunks again, in file order, each checked against its
    /// hash; `wanted` says which to return (the others are skipped).
    pub fn chunks<F: Fn(&Hash) -> bool>(&self, wanted: F) -> Result<Chunks<F>, BundleError> {
        let file = File::open(&self.path).map_err(|source| BundleError::Io { path: self.path.clone(), source })?;
        let mut r = Reader::new(&self.path, file);
        r.skip(self.chunks_at).map_err(|e| r.io(e))?;
        let expected = self.manifest.unique_chunks().iter().map(|c| (c.hash, c.len)).collect();
        Ok(Chunks { r, expected, wanted, done: false })
    }
}

/// The chunks of a bundle, read again ([`Bundle::chunks`]).
pub struct Chunks<F> {
    r: Reader,
    expected: HashMap<Hash, u32>,
    wanted: F,
    done: bool,
}

impl<F: Fn(&Hash) -> bool> Iterator for Chunks<F> {
    type Item = Result<(Hash, Vec<u8>), BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let record = match self.r.u8("a chunk record") {
                Ok(TAG_CHUNK) => self.r.chunk(&self.expected),
                Ok(TAG_END) => {
                    self.done = true;
                    return None;
                }
                // The file changed since it was checked.
                Ok(other) => Err(self.r.damaged(format!("unknown record type {other}"))),
                Err(e) => Err(e),
            };
            match record {
                Ok((hash, data)) if (self.wanted)(&hash) => return Some(Ok((hash, data))),
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// The header must describe the manifest it travels with.
fn check_header(header: &BundleHeader, manifest: &Manifest, manifest_bytes: &[u8]) -> Result<(), String> {
    let id = hex::encode(blake3::hash(manifest_bytes).as_bytes());
    if header.manifest_id != id {
        return Err(format!("the header names manifest {} but the manifest is {id}", header.manifest_id));
    }
    let tenant = Name::parse("tenant", &header.tenant).map_err(|e| format!("header: {e}"))?;
    let app = Name::parse("app", &header.app).map_err(|e| format!("header: {e}"))?;
    let version = parse_version(&header.version).map_err(|e| format!("header: {e}"))?;
    match &manifest.owner {
        Some(owner) if owner.tenant == tenant && owner.app == app => {}
        _ => return Err(format!("the manifest is not {tenant}/{app}'s")),
    }
    if manifest.version.as_str() != version.as_str() {
        return Err(format!("the header says version {version} but the manifest is {}", manifest.version));
    }
    // Shown by `bundle show`: no control characters to play with a terminal.
    if header.created_by.chars().count() > 200 || header.created_by.chars().any(char::is_control) {
        return Err("header: created_by must be at most 200 printable characters".into());
    }
    if let Some(base) = &header.base_manifest_id
        && (base.len() != 64 || hex::decode(base).is_err())
    {
        return Err(format!("header: base_manifest_id {base:?} is not 64 hex digits"));
    }
    Ok(())
}

/// Reads a bundle, hashing what it reads and knowing where it is.
struct Reader {
    path: PathBuf,
    inner: BufReader<File>,
    offset: u64,
    hasher: blake3::Hasher,
}

impl Reader {
    fn new(path: &Path, file: File) -> Self {
        Self {
            path: path.to_owned(),
            inner: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    fn io(&self, source: io::Error) -> BundleError {
        BundleError::Io { path: self.path.clone(), source }
    }

    fn damaged(&self, reason: String) -> BundleError {
        BundleError::Damaged { path: self.path.clone(), at: self.offset, reason }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), BundleError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(BundleError::Truncated {
                        path: self.path.clone(),
                        at: self.offset + filled as u64,
                        what,
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        self.hasher.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.offset += n;
        Ok(())
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Vec<u8>, BundleError> {
        let mut buf = vec![0u8; n];
        self.read_exact(&mut buf, what)?;
        Ok(buf)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, BundleError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, what)?;
        Ok(b[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, BundleError> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b, what)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BundleError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BundleError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// One chunk record after its tag: read, decoded, and checked against
    /// its hash and the manifest (`expected`: each chunk's length).
    fn chunk(&mut self, expected: &HashMap<Hash, u32>) -> Result<(Hash, Vec<u8>), BundleError> {
        let start = self.offset;
        let mut hash = [0u8; 32];
        self.read_exact(&mut hash, "a chunk")?;
        let hash = Hash::from_bytes(hash);
        let len = self.u32("a chunk")?;
        let stored_len = self.u32("a chunk")?;
        let encoding = self.u8("a chunk")?;
        let Some(&want) = expected.get(&hash) else {
            return Err(self.damaged(format!("chunk {hash} (record at byte {start}) is not in the manifest")));
        };
        if len != want || len as usize > CHUNK_MAX {
            return Err(self.damaged(format!("chunk {hash} claims {len} bytes; the manifest says {want}")));
        }
        let limit = match encoding {
            RAW => len,
            ZSTD => zstd::zstd_safe::compress_bound(len as usize) as u32,
            other => return Err(self.damaged(format!("chunk {hash}: unknown encoding {other}"))),
        };
        if stored_len > limit {
            return Err(self.damaged(format!("chunk {hash} claims {stored_len} stored bytes (at most {limit})")));
        }
        let stored = self.bytes(stored_len as usize, "a chunk's bytes")?;
        let data = match encoding {
            RAW => stored,
            _ => zstd::bulk::decompress(&stored, len as usize)
                .map_err(|e| self.damaged(format!("chunk {hash} does not decompress: {e}")))?,
        };
        if data.len() != len as usize || blake3::hash(&data) != hash {
            return Err(self.damaged(format!("chunk {hash} does not match its hash")));
        }
        Ok((hash, data))
    }
}

/// Writes a bundle beside its destination and renames it in when complete,
/// so a bundle that exists is whole.
pub struct BundleWriter {
    out: PathBuf,
    tmp: tempfile::NamedTempFile,
    w: HashingWriter,
    expected: u64,
    written: u64,
    bytes: u64,
    expected_bytes: u64,
}

struct HashingWriter {
    inner: BufWriter<File>,
    hasher: blake3::Hasher,
    written: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BundleWriter {
    /// Starts a bundle at `out` (which must not exist) with its header and
    /// manifest; `header.chunks` and `chunk_bytes` must be what follows.
    pub fn create(out: &Path, header: &BundleHeader, manifest_bytes: &[u8]) -> io::Result<Self> {
        if out.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", out.display())));
        }
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new().prefix(".ferry-bundle.").suffix(".partial").tempfile_in(dir)?;
        let file = tmp.reopen()?;
        let mut w =
            HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: blake3::Hasher::new(), written: 0 };
        let header_json = serde_json::to_vec(header).map_err(io::Error::other)?;
        // What readers refuse is never written.
        if header_json.len() > MAX_HEADER_BYTES as usize || manifest_bytes.len() > MAX_MANIFEST_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a bundle's header and manifest are at most {MAX_HEADER_BYTES} and {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT.to_le_bytes())?;
        w.write_all(&(header_json.len() as u32).to_le_bytes())?;
        w.write_all(&header_json)?;
        w.write_all(&(manifest_bytes.len() as u32).to_le_bytes())?;
        w.write_all(manifest_bytes)?;
        Ok(Self {
            out: out.to_owned(),
            tmp,
            w,
            expected: header.chunks,
            written: 0,
            bytes: 0,
            expected_bytes: header.chunk_bytes,
        })
    }

    /// Adds one chunk (its hash is the caller's promise; readers check it),
    /// compressed when that saves bytes.
    pub fn add(&mut self, hash: &Hash, data: &[u8]) -> io::Result<()> {
        let compressed = zstd::bulk::compress(data, ZSTD_LEVEL)?;
        let (encoding, stored) = if compressed.len() < data.len() { (ZSTD, &compressed[..]) } else { (RAW, data) };
        self.w.write_all(&[TAG_CHUNK])?;
        self.w.write_all(hash.as_bytes())?;
        self.w.write_all(&(data.len() as u32).to_le_bytes())?;
        self.w.write_all(&(stored.len() as u32).to_le_bytes())?;
        self.w.write_all(&[encoding])?;
        self.w.write_all(stored)?;
        self.written += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Ends the bundle, syncs it and renames it into place; its size.
    pub fn finish(mut self) -> io::Result<u64> {
        if self.written != self.expected || self.bytes != self.expected_bytes {
            return Err(io::Error::other(format!(
                "{} chunks ({} bytes) were added; the header announced {} ({} bytes)",
                self.written, self.bytes, self.expected, self.expected_bytes
            )));
        }
        self.w.write_all(&[TAG_END])?;
        self.w.write_all(&self.written.to_le_bytes())?;
        let digest = self.w.hasher.finalize();
        self.w.inner.write_all(digest.as_bytes())?;
        self.w.inner.flush()?;
        let size = self.w.written + 32;
        self.w.inner.get_ref().sync_all()?;
        self.tmp.persist_noclobber(&self.out).map_err(|e| e.error)?;
        if let Some(dir) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests;
