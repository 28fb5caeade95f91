//! Chunks and assembled files in S3.
//!
//! Layout, all content addressed by BLAKE3 (lowercase hex):
//! - `chunks/<hash>`: one content-defined chunk, stored once for all tenants;
//! - `files/<hash>`: a whole artifact file, byte-identical to what the agent
//!   packed, so a phone can fetch it with one presigned GET (S3-4). A tenant
//!   placed on a [`Location`] has its files at `<prefix>files/<hash>` in the
//!   location's bucket instead ([`Blobs::at`]); chunks stay here.
//!
//! Requests avoid aws-chunked uploads and checksum trailers (checksums only
//! when the API requires them) and use path-style addressing by default, so
//! the same code works against AWS S3, MinIO, Garage and Ceph.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::ProvideCredentials;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use ferry_release::{ChunkRef, FileEntry, Hash};
use futures::{StreamExt, TryStreamExt};

use crate::error::StoreError;
use crate::locations::Location;
use crate::places::ChunkSource;
use std::collections::HashMap;

/// Part size of multipart uploads when assembling large files (S3 wants at
/// least 5 MiB for all parts but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// SigV4 presigned URLs live at most a week.
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Chunks (or ranges) fetched ahead while assembling a file.
const ASSEMBLY_PREFETCH: usize = 16;
/// The most one ranged read of placed chunks fetches (so a file's reads
/// ahead hold at most 16 MiB).
const RANGE_MAX: u64 = 1 << 20;

/// How to reach S3 when not relying on the SDK's environment.
#[derive(Clone)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub force_path_style: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("force_path_style", &self.force_path_style)
            .finish_non_exhaustive()
    }
}

pub fn chunk_key(hash: &Hash) -> String {
    format!("chunks/{}", hash.to_hex())
}

pub fn file_key(hash: &Hash) -> String {
    format!("files/{}", hash.to_hex())
}

/// Where a binary patch is (always in the registry's bucket).
pub fn patch_key(hash: &Hash) -> String {
    format!("patches/{}", hash.to_hex())
}

/// Handle on the bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Blobs {
    client: Client,
    bucket: String,
    /// Where presigning gets its credentials: URLs are signed with exactly
    /// the credentials whose expiry bounds them.
    credentials: Option<SharedCredentialsProvider>,
    /// The credentials last used for presigning, reused while they outlast
    /// a URL signed now (so the provider is not asked on every presign).
    signing: Arc<Mutex<Option<Credentials>>>,
    /// Where assembled files are written and read: the bucket above unless
    /// this handle is [`Blobs::at`] a location.
    files_bucket: String,
    /// Prepended to `files/<hash>` (empty, or ending in `/`).
    files_prefix: String,
    /// Scheme and host put in presigned URLs instead of the endpoint the
    /// services use (phones reach S3 or a CDN by another name).
    public_endpoint: Option<String>,
}

impl Blobs {
    /// A handle from the AWS SDK's standard environment (`AWS_ENDPOINT_URL_S3`,
    /// `AWS_REGION`, the credentials chain, ...).
    ///
    /// `AWS_ACCESS_KEY_ID_FILE`, `AWS_SECRET_ACCESS_KEY_FILE` and
    /// `AWS_SESSION_TOKEN_FILE` (files holding the keys, as Kubernetes and
    /// Compose mount secrets) take the place of the SDK's credential chain
    /// when one is set (the others from their file or variable); the error
    /// names a variable that is set wrong.
    pub async fn from_env(bucket: impl Into<String>, force_path_style: bool) -> Result<Self, String> {
        let mut loader = aws_config::from_env();
        let id = ferry_config::secret("AWS_ACCESS_KEY_ID")?;
        let secret = ferry_config::secret("AWS_SECRET_ACCESS_KEY")?;
        let from_files = ["AWS_ACCESS_KEY_ID_FILE", "AWS_SECRET_ACCESS_KEY_FILE", "AWS_SESSION_TOKEN_FILE"]
            .map(|v| std::env::var_os(v).is_some());
        if from_files.contains(&true) {
            let (Some(id), Some(secret)) = (id, secret) else {
                return Err("AWS_ACCESS_KEY_ID(_FILE) and AWS_SECRET_ACCESS_KEY(_FILE) must be set together".into());
            };
            let session = ferry_config::secret("AWS_SESSION_TOKEN")?;
            loader = loader.credentials_provider(Credentials::new(id, secret, session, None, "ferry-files"));
        }
        let shared = loader.load().await;
        let client = Client::from_conf(portable(aws_sdk_s3::config::Builder::from(&shared), force_path_style).build());
        Ok(Self::new(client, bucket.into(), shared.credentials_provider()))
    }

    /// A handle from explicit settings (tests, tools).
    pub fn from_settings(s: &S3Settings, bucket: impl Into<String>) -> Self {
        let creds = SharedCredentialsProvider::new(Credentials::new(
            &s.access_key_id,
            &s.secret_access_key,
            None,
            None,
            "ferry-settings",
        ));
        Self::from_settings_with_credentials(s, bucket, creds)
    }

    /// A handle from explicit settings whose credentials come from
    /// `credentials` instead of the settings' keys (tests of expiring
    /// credentials, tools).
    pub fn from_settings_with_credentials(
        s: &S3Settings,
        bucket: impl Into<String>,
        creds: SharedCredentialsProvider,
    ) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .credentials_provider(creds.clone());
        if let Some(endpoint) = &s.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let client = Client::from_conf(portable(builder, s.force_path_style).build());
        Self::new(client, bucket.into(), Some(creds))
    }

    fn new(client: Client, bucket: String, credentials: Option<SharedCredentialsProvider>) -> Self {
        Self {
            client,
            files_bucket: bucket.clone(),
            bucket,
            credentials,
            signing: Arc::default(),
            files_prefix: String::new(),
            public_endpoint: None,
        }
    }

    /// The same handle, putting `endpoint` (`https://host[:port]`) in
    /// presigned URLs instead of the endpoint it connects to.
    pub fn with_public_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.public_endpoint = endpoint.map(|e| e.trim_end_matches('/').to_owned());
        self
    }

    /// The handle for files at `location` (`None`: the registry's bucket):
    /// files are assembled, read and presigned there; chunks stay in the
    /// registry's bucket. A location without a public endpoint of its own
    /// uses this handle's.
    pub fn at(&self, location: Option<&Location>) -> Blobs {
        let mut at = self.clone();
        if let Some(location) = location {
            at.files_bucket = location.bucket.clone();
            at.files_prefix = location.prefix.clone();
            if let Some(endpoint) = &location.public_endpoint {
                at.public_endpoint = Some(endpoint.clone());
            }
        } else {
            at.files_bucket = self.bucket.clone();
            at.files_prefix = String::new();
        }
        at
    }

    /// The object key of an assembled file, under this handle's prefix.
    pub fn file_object(&self, hash: &Hash) -> String {
        format!("{}{}", self.files_prefix, file_key(hash))
    }

    /// The bucket assembled files are in.
    pub fn files_bucket(&self) -> &str {
        &self.files_bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Checks the bucket is reachable with these credentials.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let sent = self.client.head_bucket().bucket(&self.bucket).send().await;
        crate::metrics::took("s3", "head_bucket", started);
        sent.map_err(|e| s3_error("head bucket", e))?;
        Ok(())
    }

    pub async fn put_chunk(&self, hash: &Hash, data: Bytes) -> Result<(), StoreError> {
        self.put(&self.bucket, chunk_key(hash), data).await
    }

    pub async fn get_chunk(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let key = chunk_key(hash);
        let started = Instant::now();
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error("get chunk", e))?;
        let data = out.body.collect().await.map_err(|e| StoreError::Unavailable { what: "s3", source: Box::new(e) })?;
        crate::metrics::took("s3", "get_object", started);
        let data = data.into_bytes();
        if blake3::hash(&data) != *hash {
            return Err(StoreError::Integrity(format!("stored chunk {key} does not match its hash")));
        }
        Ok(data)
    }

    /// `len` bytes of the assembled file `file` in the registry's bucket
    /// from `start` (where placed chunks are read).
    async fn get_file_range(&self, file: &Hash, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let started = Instant::now();
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(file_key(file))
            .range(format!("bytes={start}-{}", start + len - 1))
            .send()
            .await
            .map_err(|e| s3_error("get file range", e))?;
        let data = out.body.collect().await.map_err(|e| StoreError::Unavailable { what: "s3", source: Box::new(e) })?;
        crate::metrics::took("s3", "get_object_range", started);
        let data = data.into_bytes();
        if data.len() as u64 != len {
            return Err(StoreError::Integrity(format!(
                "a range of files/{} has {} bytes, not {len}",
                file,
                data.len()
            )));
        }
        Ok(data)
    }

    /// The file's chunks, fetched ahead in order, each checked against its
    /// hash: placed chunks from the files holding them (consecutive ones of
    /// one file in one ranged GET of up to [`RANGE_MAX`]), the others from
    /// their own objects.
    fn chunks_of(
        &self,
        chunks: &[ChunkRef],
        sources: &HashMap<Hash, ChunkSource>,
    ) -> impl futures::Stream<Item = Result<Bytes, StoreError>> + Send + use<> {
        let reads = plan_reads(chunks, sources);
        let this = self.clone();
        futures::stream::iter(reads)
            .map(move |read| {
                let this = this.clone();
                async move {
                    match read {
                        Read::Object(hash) => Ok(vec![this.get_chunk(&hash).await?]),
                        Read::Range { file, start, chunks } => {
                            let total: u64 = chunks.iter().map(|(_, len)| u64::from(*len)).sum();
                            let data = this.get_file_range(&file, start, total).await?;
                            let mut out = Vec::with_capacity(chunks.len());
                            let mut at = 0usize;
                            for (hash, len) in chunks {
                                let piece = data.slice(at..at + len as usize);
                                if blake3::hash(&piece) != hash {
                                    return Err(StoreError::Integrity(format!(
                                        "chunk {hash} is not at its recorded place in files/{file}"
                                    )));
                                }
                                at += len as usize;
                                out.push(piece);
                            }
                            Ok(out)
                        }
                    }
                }
            })
            .buffered(ASSEMBLY_PREFETCH)
            .map_ok(|pieces| futures::stream::iter(pieces.into_iter().map(Ok)))
            .try_flatten()
    }

    /// The bytes of `chunks`, concatenated in order, each checked against
    /// its hash (the reference of a delta upload).
    pub async fn read_chunks(
        &self,
        chunks: &[ChunkRef],
        sources: &HashMap<Hash, ChunkSource>,
    ) -> Result<Vec<u8>, StoreError> {
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        let mut out = Vec::with_capacity(total as usize);
        let mut stream = std::pin::pin!(self.chunks_of(chunks, sources));
        while let Some(piece) = stream.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    /// Deletes a chunk's own object (its bytes are in a file).
    pub async fn delete_chunk(&self, hash: &Hash) -> Result<(), StoreError> {
        self.delete(chunk_key(hash)).await
    }

    /// Checks that `file`'s chunks rebuild it (size and BLAKE3) without
    /// writing anything: for a file someone else already assembled.
    /// `sources` says where each chunk is (absent: its own object).
    pub async fn verify_file(&self, file: &FileEntry, sources: &HashMap<Hash, ChunkSource>) -> Result<(), StoreError> {
        let mut chunks = std::pin::pin!(self.chunks_of(&file.chunks, sources));
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = chunks.try_next().await? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        verify(file, size, hasher.finalize())
    }

    /// Rebuilds `file` from its chunks as `files/<hash>` (S3-4), streaming:
    /// at most a part and the prefetched chunks are in memory. The object
    /// appears only if the bytes have the manifest's size and BLAKE3;
    /// otherwise nothing is left behind and the answer is
    /// [`StoreError::Mismatch`]. `sources` says where each chunk is
    /// (absent: its own object).
    pub async fn assemble_file(
        &self,
        file: &FileEntry,
        sources: &HashMap<Hash, ChunkSource>,
    ) -> Result<(), StoreError> {
        let key = self.file_object(&file.hash);
        let mut chunks = std::pin::pin!(self.chunks_of(&file.chunks, sources));
        if file.size <= PART_SIZE as u64 {
            let mut body = BytesMut::with_capacity(file.size as usize);
            while let Some(chunk) = chunks.try_next().await? {
                body.extend_from_slice(&chunk);
            }
            verify(file, body.len() as u64, blake3::hash(&body))?;
            return self.put(&self.files_bucket, key, body.freeze()).await;
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.files_bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error("create multipart upload", e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            let mut parts = Vec::new();
            let mut part = BytesMut::with_capacity(PART_SIZE + ferry_release::CHUNK_MAX);
            loop {
                let next = chunks.try_next().await?;
                if let Some(chunk) = &next {
                    hasher.update(chunk);
                    size += chunk.len() as u64;
                    part.extend_from_slice(chunk);
                }
                if part.len() >= PART_SIZE || (next.is_none() && !part.is_empty()) {
                    let number = parts.len() as i32 + 1;
                    let started = Instant::now();
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.files_bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .body(ByteStream::from(part.split().freeze()))
                        .send()
                        .await
                        .map_err(|e| s3_error("upload part", e))?;
                    crate::metrics::took("s3", "upload_part", started);
                    parts.push(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build());
                }
                if next.is_none() {
                    break;
                }
            }
            verify(file, size, hasher.finalize())?;
            self.client
                .complete_multipart_upload()
                .bucket(&self.files_bucket)
                .key(&key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| s3_error("complete multipart upload", e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.files_bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::warn!(key = %key, error = %ferry_proto::error_chain(&e), "aborting multipart upload failed; a bucket lifecycle rule cleans it up");
            }
        }
        result
    }

    /// A presigned GET URL for one assembled file, valid for `lifetime` but
    /// never past the expiry of the credentials that sign it (a URL cannot
    /// outlive them). Returns the URL and when it expires.
    pub async fn presign_file(&self, hash: &Hash, lifetime: Duration) -> Result<(String, SystemTime), StoreError> {
        self.presign_file_from(hash, SystemTime::now(), lifetime).await
    }

    /// [`Blobs::presign_file`] with the signature's validity starting at
    /// `now` (the caller's clock; a past start makes an already expired URL,
    /// for tests).
    pub async fn presign_file_from(
        &self,
        hash: &Hash,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(String, SystemTime), StoreError> {
        self.presign_from(&self.files_bucket, self.file_object(hash), now, lifetime).await
    }

    /// A presigned GET URL for a binary patch (in the registry's bucket),
    /// as [`Blobs::presign_file_from`].
    pub async fn presign_patch_from(
        &self,
        hash: &Hash,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(String, SystemTime), StoreError> {
        self.presign_from(&self.bucket, patch_key(hash), now, lifetime).await
    }

    async fn presign_from(
        &self,
        bucket: &str,
        key: String,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(String, SystemTime), StoreError> {
        // SigV4 counts whole seconds (X-Amz-Date, X-Amz-Expires): sign
        // from a whole second for whole seconds, so the expiry returned is
        // exactly when S3 stops honouring the URL, never a moment later.
        let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
        let mut lifetime = Duration::from_secs(lifetime.min(MAX_PRESIGN).as_secs());
        let mut request = self.client.get_object().bucket(bucket).key(key).customize();
        let mut overrides = aws_sdk_s3::config::Builder::new();
        if let Some(endpoint) = &self.public_endpoint {
            // Path-style under the public host: one host name can front
            // every bucket (and a CDN name need not embed the bucket's).
            overrides = overrides.endpoint_url(endpoint).force_path_style(true);
        }
        if let Some(provider) = &self.credentials {
            // Sign with the very credentials whose expiry bounds the URL: a
            // URL cannot outlive the credentials that signed it.
            let creds = self.signing_credentials(provider, now, lifetime).await?;
            if let Some(expiry) = creds.expiry() {
                let left = expiry.duration_since(now).unwrap_or_default();
                lifetime = lifetime.min(Duration::from_secs(left.as_secs()));
            }
            overrides = overrides.credentials_provider(creds);
        }
        request = request.config_override(overrides);
        if lifetime < Duration::from_secs(1) {
            return Err(StoreError::Unavailable {
                what: "s3 credentials",
                source: "credentials are about to expire".into(),
            });
        }
        let config = PresigningConfig::builder()
            .start_time(now)
            .expires_in(lifetime)
            .build()
            .map_err(|e| StoreError::Backend { what: "presigning", source: Box::new(e) })?;
        let request = request
            .presigned(config)
            .await
            .map_err(|e| StoreError::Backend { what: "presigning", source: Box::new(e) })?;
        Ok((request.uri().to_owned(), now + lifetime))
    }

    /// The credentials to presign with at `now` for `lifetime`: the last
    /// ones while they last that long (or never expire), else fresh ones.
    async fn signing_credentials(
        &self,
        provider: &SharedCredentialsProvider,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Credentials, StoreError> {
        let outlasts = |c: &Credentials| c.expiry().is_none_or(|e| e >= now + lifetime);
        if let Some(creds) = self.signing.lock().unwrap_or_else(|e| e.into_inner()).clone().filter(outlasts) {
            return Ok(creds);
        }
        let fresh = provider
            .provide_credentials()
            .await
            .map_err(|e| StoreError::Unavailable { what: "s3 credentials", source: Box::new(e) })?;
        *self.signing.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Stores a binary patch (content-addressed: a retry puts the same
    /// bytes).
    pub async fn put_patch(&self, hash: &Hash, data: Bytes) -> Result<(), StoreError> {
        self.put(&self.bucket, patch_key(hash), data).await
    }

    /// Reads a whole assembled file (tools, the patch maker and tests;
    /// clients use presigned URLs).
    pub async fn get_file(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.files_bucket)
            .key(self.file_object(hash))
            .send()
            .await
            .map_err(|e| s3_error("get file", e))?;
        let data = out.body.collect().await.map_err(|e| StoreError::Unavailable { what: "s3", source: Box::new(e) })?;
        Ok(data.into_bytes())
    }

    /// One page (up to 1,000) of the objects under `prefix`: keys and
    /// sizes of those last written before `cutoff`, and the token of the
    /// next page if there is one.
    pub(crate) async fn list_older_than(
        &self,
        prefix: &str,
        cutoff: SystemTime,
        token: Option<String>,
    ) -> Result<(Vec<(String, u64)>, Option<String>), StoreError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| s3_error("list objects", e))?;
        let old = page
            .contents()
            .iter()
            .filter(|o| o.last_modified().and_then(|t| SystemTime::try_from(*t).ok()).is_some_and(|t| t < cutoff))
            .filter_map(|o| Some((o.key()?.to_owned(), o.size().unwrap_or(0).max(0) as u64)))
            .collect();
        let next = page.next_continuation_token().filter(|_| page.is_truncated() == Some(true)).map(str::to_owned);
        Ok((old, next))
    }

    /// Deletes an object (no error when it is already gone).
    pub(crate) async fn delete(&self, key: String) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("delete object", e))?;
        Ok(())
    }

    async fn put(&self, bucket: &str, key: String, data: Bytes) -> Result<(), StoreError> {
        let started = Instant::now();
        let sent = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .send()
            .await;
        crate::metrics::took("s3", "put_object", started);
        sent.map_err(|e| s3_error("put object", e))?;
        Ok(())
    }
}

/// One read of [`Blobs::chunks_of`].
enum Read {
    Object(Hash),
    /// Consecutive chunks of one file: `(hash, length)` from `start`.
    Range {
        file: Hash,
        start: u64,
        chunks: Vec<(Hash, u32)>,
    },
}

/// The reads that fetch `file`'s chunks in order: consecutive placed
/// chunks of one file merged into one range of at most [`RANGE_MAX`].
fn plan_reads(chunks: &[ChunkRef], sources: &HashMap<Hash, ChunkSource>) -> Vec<Read> {
    let mut reads: Vec<Read> = Vec::new();
    for chunk in chunks {
        match sources.get(&chunk.hash) {
            Some(ChunkSource::Place { file: holder, offset }) => {
                if let Some(Read::Range { file: last, start, chunks }) = reads.last_mut() {
                    let end = *start + chunks.iter().map(|(_, len)| u64::from(*len)).sum::<u64>();
                    if last == holder && end == *offset && end - *start + u64::from(chunk.len) <= RANGE_MAX {
                        chunks.push((chunk.hash, chunk.len));
                        continue;
                    }
                }
                reads.push(Read::Range { file: *holder, start: *offset, chunks: vec![(chunk.hash, chunk.len)] });
            }
            _ => reads.push(Read::Object(chunk.hash)),
        }
    }
    reads
}

/// Settings that keep the SDK to what every S3-compatible store speaks.
fn portable(builder: aws_sdk_s3::config::Builder, force_path_style: bool) -> aws_sdk_s3::config::Builder {
    builder
        .force_path_style(force_path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
}

fn verify(file: &FileEntry, size: u64, actual: Hash) -> Result<(), StoreError> {
    if size != file.size || actual != file.hash {
        return Err(StoreError::Mismatch(format!(
            "the chunks of {} rebuild {size} bytes hashing to {actual}, but the manifest says {} bytes hashing to {}",
            file.path, file.size, file.hash
        )));
    }
    Ok(())
}

/// Classifies an SDK error: no answer or a 5xx is "unavailable, retry";
/// 404 is "not found"; the rest is a backend failure.
fn s3_error<E>(what: &'static str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let error = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable { what: "s3", source: Box::new(err) }
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("").to_owned();
            if status >= 500 || status == 429 || matches!(code.as_str(), "SlowDown" | "RequestTimeout" | "Throttling") {
                StoreError::Unavailable { what: "s3", source: Box::new(err) }
            } else if status == 404 || code == "NoSuchKey" {
                StoreError::NotFound(format!("{what}: object not found"))
            } else {
                StoreError::Backend { what, source: format!("s3 answered {status} {code}").into() }
            }
        }
        _ => StoreError::Backend { what, source: Box::new(err) },
    };
    if !matches!(error, StoreError::NotFound(_)) {
        crate::metrics::failed("s3");
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let settings = S3Settings {
            endpoint: Some("http://s3".into()),
            region: "us-east-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG".into(),
            force_path_style: true,
        };
        let shown = format!("{settings:?}");
        assert!(shown.contains("AKIDEXAMPLE") && !shown.contains("wJalrXUtnFEMI"), "{shown}");
        let url: crate::DatabaseUrl = "postgres://ferry:hunter2@db/ferry".parse().unwrap();
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(url.as_str(), "postgres://ferry:hunter2@db/ferry");
    }
}
