//! One file from its presigned URL into the staging area, surviving
//! phones' networks: a cut download resumes where it stopped (HTTP
//! `Range`); the bytes are hashed as they arrive, and only a file of the
//! right size and BLAKE3 leaves `parts/` for `tree/`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::api::ArtifactFile;
use crate::cache::{CacheError, io};

/// Why a download did not produce the file.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The URL no longer works (expired or revoked): ask for a new one.
    Expired,
    /// The whole file arrived but is not what the answer promised; the
    /// partial download is gone, so the next try starts over.
    Corrupt(String),
    /// The transfer stopped (cut, timeout, server error); what arrived is
    /// kept for the next try to resume from.
    Failed(String),
    /// The server will not serve it (404 and the like): trying again does
    /// not help.
    Refused(String),
    Cache(CacheError),
}

impl From<CacheError> for FetchError {
    fn from(e: CacheError) -> Self {
        FetchError::Cache(e)
    }
}

/// Downloads `file` into `part` (resuming what is there) and, once its size
/// and BLAKE3 match, moves it to `done`. Counts received bytes in `received`.
pub(crate) async fn fetch(
    http: &reqwest::Client,
    file: &ArtifactFile,
    part: &Path,
    done: &Path,
    received: &AtomicU64,
) -> Result<(), FetchError> {
    for path in [part, done] {
        let parent = path.parent().expect("staged files have a parent");
        tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
    }
    let mut have = match tokio::fs::metadata(part).await {
        Ok(m) if m.len() <= file.size => m.len(),
        Ok(_) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(CacheError::Io { path: part.to_owned(), source: e }.into()),
    };
    // The bytes already here count towards the hash.
    let mut hasher = blake3::Hasher::new();
    if have > 0 {
        let path = part.to_owned();
        hasher = tokio::task::spawn_blocking(move || -> Result<blake3::Hasher, CacheError> {
            let mut hasher = blake3::Hasher::new();
            let f = std::fs::File::open(&path).map_err(io(&path))?;
            hasher.update_reader(std::io::Read::take(f, have)).map_err(io(&path))?;
            Ok(hasher)
        })
        .await
        .expect("hashing does not panic")?;
        if hasher.count() != have {
            have = 0;
            hasher = blake3::Hasher::new();
        }
    }
    if have < file.size {
        let mut request = http.get(&file.url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| FetchError::Failed(crate::transfer_error(e)))?;
        let status = response.status().as_u16();
        let resumed = match status {
            206 if have > 0 => {
                let range = response.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
                if !range.is_some_and(|r| r.starts_with(&format!("bytes {have}-"))) {
                    return Err(FetchError::Failed(format!("unexpected Content-Range {range:?}")));
                }
                true
            }
            // The server sent the whole file: start over.
            200 => false,
            // An expired presigned URL: S3 answers 403 (some servers 400).
            400 | 401 | 403 => return Err(FetchError::Expired),
            416 => {
                let _ = tokio::fs::remove_file(part).await;
                return Err(FetchError::Failed("the server refused to resume (416); starting over".into()));
            }
            500..=599 | 408 | 429 => return Err(FetchError::Failed(format!("HTTP {status}"))),
            _ => return Err(FetchError::Refused(format!("HTTP {status}"))),
        };
        if !resumed {
            have = 0;
            hasher = blake3::Hasher::new();
        }
        let out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .await
            .map_err(io(part))?;
        let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, out);
        let mut body = response.bytes_stream();
        let mut cut = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    cut = Some(crate::transfer_error(e));
                    break;
                }
            };
            if have + chunk.len() as u64 > file.size {
                drop(out);
                let _ = tokio::fs::remove_file(part).await;
                return Err(FetchError::Corrupt(format!("more than the {} bytes announced", file.size)));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io(part))?;
            have += chunk.len() as u64;
            received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        out.flush().await.map_err(io(part))?;
        out.get_ref().sync_all().await.map_err(io(part))?;
        if let Some(why) = cut {
            return Err(FetchError::Failed(format!("cut after {have} of {} bytes: {why}", file.size)));
        }
        if have < file.size {
            return Err(FetchError::Failed(format!("ended after {have} of {} bytes", file.size)));
        }
    }
    let hash = hasher.finalize().to_hex();
    if hash.as_str() != file.blake3 {
        let _ = tokio::fs::remove_file(part).await;
        return Err(FetchError::Corrupt(format!("BLAKE3 is {hash}, the answer says {}", file.blake3)));
    }
    if file.size == 0 {
        // Nothing to download; the empty file is made here.
        tokio::fs::File::create(part).await.map_err(io(part))?;
    }
    tokio::fs::rename(part, done).await.map_err(io(done))?;
    Ok(())
}
