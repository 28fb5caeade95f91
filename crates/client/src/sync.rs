//! The whole upgrade (or downgrade): check, download what the cache lacks,
//! verify, switch, report (S0-5, S1-8, S4-3).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::api::{Action, Answer, ArtifactFile, LastFailure, Outcome, Report};
use crate::cache::{Cache, CacheError, Current, FileRecord, ReleaseRecord, hash_file, io};
use crate::download::{FetchError, fetch};
use crate::{Client, Error};

/// The version a client with nothing installed says it runs: lower than
/// any real version, so the deployed one is always an upgrade.
pub const NOTHING_INSTALLED: &str = "0.0.0-0";

/// How many times the deployment may change under a sync before it gives
/// up (the next sync starts from the new one).
const RESTARTS: u32 = 3;

/// What a sync did.
#[derive(Debug, Clone, Serialize)]
pub struct Synced {
    /// `none`: the cache runs the target already.
    pub action: Action,
    /// The version `current` names now.
    pub version: String,
    pub manifest_id: String,
    /// Whether `current` was switched.
    pub switched: bool,
    /// From the check: the app must update before it can be used.
    pub required: bool,
    /// From the check: this device's latest failed upgrade, to show.
    pub last_failure: Option<LastFailure>,
    pub downloaded_files: usize,
    pub downloaded_bytes: u64,
    /// Files copied from a release in the cache instead of downloaded.
    pub reused_files: usize,
    /// Files rebuilt from a file in the cache and a downloaded binary patch
    /// (counted in `downloaded_files`; `downloaded_bytes` counts the
    /// patches' bytes).
    pub patched_files: usize,
    /// Files downloaded compressed and decompressed here (counted in
    /// `downloaded_files`; `downloaded_bytes` counts the compressed bytes).
    pub compressed_files: usize,
    /// Whether the gateway has the outcome report (otherwise it is kept
    /// and sent by the next sync).
    pub reported: bool,
    /// The target is the release this device rolled back from
    /// ([`Cache::rollback`]): not installed again until the deployment
    /// moves on (or [`Cache::clear_rollback`]).
    pub held_back: bool,
}

/// Where a sync is (for progress displays, and tests that stop a client
/// at a chosen point).
#[derive(Debug)]
pub enum Progress<'a> {
    Checked(&'a Answer),
    /// Every file of the target is in the staging area, verified; the
    /// switch comes next.
    Staged {
        manifest_id: &'a str,
    },
    Switched(&'a Current),
}

/// A file of the target release: its record, and where to download it if
/// the answer said.
/// Bytes that rebuild a file: a patch from a file the cache holds, or the
/// file compressed (a patch from the empty file, `base` none).
struct Rebuild<'a> {
    url: &'a str,
    size: u64,
    blake3: &'a str,
    base: Option<&'a PathBuf>,
}

struct Planned {
    record: FileRecord,
    source: Option<ArtifactFile>,
}

enum Installed {
    Done {
        downloaded: usize,
        reused: usize,
        patched: usize,
        compressed: usize,
    },
    /// The gateway now deploys another release: start over.
    Moved,
}

impl Client {
    /// Brings the cache to the version the gateway says to run: checks,
    /// downloads what the cache lacks, verifies, switches `current`, and
    /// reports the outcome. A failure leaves `current` as it was (and is
    /// reported too, unless the gateway could not be reached at all).
    pub async fn sync(&self, cache: &Cache) -> Result<Synced, Error> {
        self.sync_observed(cache, &|_| {}).await
    }

    /// [`Client::sync`], telling `observe` how it goes.
    pub async fn sync_observed(
        &self,
        cache: &Cache,
        observe: &(dyn Fn(&Progress<'_>) + Send + Sync),
    ) -> Result<Synced, Error> {
        // One sync at a time per cache (another process, or another task).
        let locking = cache.clone();
        let _lock = tokio::task::spawn_blocking(move || locking.lock()).await.expect("locking does not panic")?;
        // Every call says which device it is, also when only the cache knows.
        let this = self.with_device_of(cache)?;
        this.sync_locked(cache, observe).await
    }

    async fn sync_locked(
        &self,
        cache: &Cache,
        observe: &(dyn Fn(&Progress<'_>) + Send + Sync),
    ) -> Result<Synced, Error> {
        self.send_pending_reports(cache).await;
        let started = Instant::now();
        let current = match cache.current() {
            Err(CacheError::Corrupt { path, reason }) => {
                // Unreadable (written by hand, or by something else): start
                // as if nothing were installed rather than fail for ever.
                tracing::warn!(path = %path.display(), %reason, "ignoring an unreadable `current`");
                None
            }
            other => other?,
        };
        let record = match &current {
            Some(c) => cache.record(&c.manifest_id)?,
            None => None,
        };
        let from_version = current.as_ref().map_or(NOTHING_INSTALLED, |c| c.version.as_str()).to_owned();
        let have = record.as_ref().map(|r| r.manifest_id.clone());
        let received = AtomicU64::new(0);
        let mut restarts = 0;
        loop {
            let answer = match self.check(&from_version, have.as_deref()).await {
                Ok(answer) => answer,
                // Not reported: it is not a failure of an upgrade (and a
                // report would mark the version this device runs as failed).
                Err(e @ Error::Foreign { .. }) => {
                    tracing::error!(error = %e, "refused the gateway's answer");
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            observe(&Progress::Checked(&answer));
            let up_to_date = current.as_ref().is_some_and(|c| c.manifest_id == answer.manifest_id)
                || (answer.action == Action::None && current.is_some());
            let held_back = !up_to_date && current.is_some() && cache.rolled_back(&answer.manifest_id);
            if held_back {
                tracing::warn!(version = %answer.target, "holding back the release this device rolled back from");
            } else if !up_to_date && let Err(e) = cache.clear_rollback() {
                tracing::warn!(error = %e, "a rollback mark could not be removed");
            }
            if up_to_date || held_back {
                let c = current.as_ref().expect("up to date implies a current release");
                return Ok(Synced {
                    action: Action::None,
                    version: c.version.clone(),
                    manifest_id: c.manifest_id.clone(),
                    switched: false,
                    required: false,
                    last_failure: answer.last_failure,
                    downloaded_files: 0,
                    downloaded_bytes: 0,
                    reused_files: 0,
                    patched_files: 0,
                    compressed_files: 0,
                    reported: true,
                    held_back,
                });
            }
            let installed = self.install(cache, &answer, &from_version, record.as_ref(), &received, observe).await;
            let (downloaded, reused, patched, compressed) = match installed {
                Ok(Installed::Done { downloaded, reused, patched, compressed }) => {
                    (downloaded, reused, patched, compressed)
                }
                Ok(Installed::Moved) if restarts < RESTARTS => {
                    restarts += 1;
                    tracing::info!("the deployment changed during the download; starting over");
                    continue;
                }
                Ok(Installed::Moved) => {
                    let e = Error::Download {
                        file: "the release".into(),
                        reason: "the deployment kept changing during the download".into(),
                    };
                    return Err(e);
                }
                Err(e) => {
                    // Network trouble is not an upgrade failure: the next
                    // sync resumes.
                    let reportable = !matches!(
                        e,
                        Error::Unreachable(_) | Error::Gateway { .. } | Error::Config(_) | Error::Interrupted { .. }
                    );
                    if reportable {
                        let reported = self.report_failure(cache, &from_version, &answer.target, &e, started).await;
                        tracing::error!(error = %e, reported, "the upgrade failed");
                    }
                    return Err(e);
                }
            };
            let switched = cache.switch(&answer.manifest_id, &answer.target)?;
            observe(&Progress::Switched(&switched));
            if let Err(e) = cache.prune_locked(None) {
                tracing::warn!(error = %e, "old releases could not be removed");
            }
            let report = self.new_report(&from_version, &answer.target, Outcome::Success, started);
            // Once: the switch is done, and a kept report goes with the
            // next sync.
            let reported = self.deliver(cache, report, false).await;
            return Ok(Synced {
                action: answer.action,
                version: answer.target.clone(),
                manifest_id: answer.manifest_id.clone(),
                switched: true,
                required: answer.required,
                last_failure: answer.last_failure,
                downloaded_files: downloaded,
                downloaded_bytes: received.load(Ordering::Relaxed),
                reused_files: reused,
                patched_files: patched,
                compressed_files: compressed,
                reported,
                held_back: false,
            });
        }
    }

    /// Stages every file of the answer's release (copying unchanged files
    /// from the cache, downloading the rest) and installs it.
    async fn install(
        &self,
        cache: &Cache,
        answer: &Answer,
        from_version: &str,
        current: Option<&ReleaseRecord>,
        received: &AtomicU64,
        observe: &(dyn Fn(&Progress<'_>) + Send + Sync),
    ) -> Result<Installed, Error> {
        let id = answer.manifest_id.as_str();
        if let Some(record) = cache.record(id)? {
            // Installed before (the previous release): nothing to fetch,
            // if it is all there.
            if cache.looks_complete(&record) {
                return Ok(Installed::Done { downloaded: 0, reused: 0, patched: 0, compressed: 0 });
            }
            tracing::warn!(manifest_id = id, "a release kept in the cache is incomplete; downloading it again");
            cache.remove_release(id)?;
        }
        // Staging areas of other releases are abandoned downloads.
        cache.prune_locked(Some(id))?;
        let mut planned = plan(answer, current);
        let (tree, parts) = cache.staging(id);
        let reusable = reusable_files(cache)?;
        let mut reused = 0;
        let mut patched = 0;
        let mut compressed = 0;
        let mut to_fetch: Vec<usize> = Vec::new();
        for (i, p) in planned.iter().enumerate() {
            let dest = tree.join(p.record.relative());
            if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.len() == p.record.size) {
                continue; // staged by an earlier, interrupted sync
            }
            if let Some(source) = reusable.get(&p.record.blake3)
                && copy_verified(source.clone(), parts.join(p.record.relative()), dest.clone(), p.record.clone())
                    .await?
            {
                reused += 1;
                continue;
            }
            // Beside the partial downloads, never over one.
            let tmp = parts.with_file_name("patching").join(p.record.relative());
            // A patch from a file the cache holds: a fraction of the bytes.
            // Any failure costs only the patch: the file compressed, or
            // whole, follows.
            if let Some(offer) = p.source.as_ref().and_then(|s| s.patch.as_ref())
                && let Some(base) = reusable.get(&offer.base_blake3)
            {
                let rebuild = if offer.algorithm == ferry_patch::ALGORITHM {
                    let how = Rebuild { url: &offer.url, size: offer.size, blake3: &offer.blake3, base: Some(base) };
                    self.rebuild(how, &tmp, &dest, &p.record, received).await
                } else {
                    Err(format!("unknown patch algorithm {:?}", offer.algorithm))
                };
                match rebuild {
                    Ok(()) => {
                        patched += 1;
                        continue;
                    }
                    Err(reason) => {
                        tracing::info!(file = %file_label(&p.record), reason, "patch not used; downloading the file")
                    }
                }
            }
            // The file compressed (text): a patch from the empty file.
            if let Some(offer) = p.source.as_ref().and_then(|s| s.compressed.as_ref())
                && offer.encoding == "zstd"
            {
                let how = Rebuild { url: &offer.url, size: offer.size, blake3: &offer.blake3, base: None };
                match self.rebuild(how, &tmp, &dest, &p.record, received).await {
                    Ok(()) => {
                        compressed += 1;
                        continue;
                    }
                    Err(reason) => tracing::info!(
                        file = %file_label(&p.record),
                        reason,
                        "compressed copy not used; downloading the whole file"
                    ),
                }
            }
            to_fetch.push(i);
        }
        // Files the answer gave no URL for (unchanged in a delta, but not
        // reusable from the cache after all): ask for the full list.
        if to_fetch.iter().any(|&i| planned[i].source.is_none()) {
            let full = self.check(from_version, None).await?;
            if full.manifest_id != answer.manifest_id {
                return Ok(Installed::Moved);
            }
            refresh_sources(&mut planned, &full);
        }
        let downloaded = to_fetch.len() + patched + compressed;
        let mut refreshes = 0;
        while !to_fetch.is_empty() {
            let results: Vec<(usize, Result<(), FetchError>)> = futures::stream::iter(to_fetch.iter().copied())
                .map(|i| {
                    let p = &planned[i];
                    let (tree, parts) = (&tree, &parts);
                    async move { (i, self.fetch_with_retries(p, tree, parts, received).await) }
                })
                .buffer_unordered(self.config.parallel)
                .collect()
                .await;
            let mut expired = Vec::new();
            for (i, result) in results {
                match result {
                    Ok(()) => {}
                    Err(FetchError::Expired) => expired.push(i),
                    Err(FetchError::Cache(e)) => return Err(e.into()),
                    Err(FetchError::Corrupt(reason)) => {
                        return Err(Error::Corrupt {
                            file: file_label(&planned[i].record),
                            attempts: self.config.download_attempts,
                            reason,
                        });
                    }
                    Err(FetchError::Failed(reason)) => {
                        return Err(Error::Interrupted { file: file_label(&planned[i].record), reason });
                    }
                    Err(FetchError::Refused(reason)) => {
                        return Err(Error::Download { file: file_label(&planned[i].record), reason });
                    }
                }
            }
            if expired.is_empty() {
                break;
            }
            // URLs expired mid-download: a new check gives fresh ones. A
            // long download may need many; only refusals of fresh URLs
            // (nothing completed since the last refresh) count.
            if expired.len() < to_fetch.len() {
                refreshes = 0;
            }
            refreshes += 1;
            if refreshes > 3 {
                return Err(Error::Download {
                    file: file_label(&planned[expired[0]].record),
                    reason: "its download URL keeps being refused (403) even when fresh".into(),
                });
            }
            tracing::info!(files = expired.len(), "download URLs expired; asking for new ones");
            let fresh = self.check(from_version, None).await?;
            if fresh.manifest_id != answer.manifest_id {
                return Ok(Installed::Moved);
            }
            refresh_sources(&mut planned, &fresh);
            to_fetch = expired;
        }
        // Every file present with its size (hashes were checked as they
        // were written).
        for p in &planned {
            let path = tree.join(p.record.relative());
            let size = tokio::fs::metadata(&path).await.map_err(io(&path))?.len();
            if size != p.record.size {
                return Err(Error::Corrupt {
                    file: file_label(&p.record),
                    attempts: 1,
                    reason: format!("{size} bytes staged, {} expected", p.record.size),
                });
            }
        }
        observe(&Progress::Staged { manifest_id: id });
        let record = ReleaseRecord {
            manifest_id: id.to_owned(),
            version: answer.target.clone(),
            tenant: answer.tenant.clone(),
            app: answer.app.clone(),
            files: planned.into_iter().map(|p| p.record).collect(),
        };
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || cache.install(&record)).await.expect("installing does not panic")?;
        Ok(Installed::Done { downloaded, reused, patched, compressed })
    }

    /// Downloads `how`, checks it, applies it to its base (none: the empty
    /// file) into `tmp` and moves the result to `dest` once its BLAKE3 is
    /// the record's. Nothing is left at `dest` on failure; the error says
    /// why.
    async fn rebuild(
        &self,
        how: Rebuild<'_>,
        tmp: &std::path::Path,
        dest: &std::path::Path,
        record: &FileRecord,
        received: &AtomicU64,
    ) -> Result<(), String> {
        let offer = &how;
        if offer.size >= record.size || offer.size > ferry_patch::MAX_FILE_BYTES {
            return Err(format!("{} bytes offered for a file of {}", offer.size, record.size));
        }
        let expected = blake3::Hash::from_hex(&record.blake3).map_err(|e| e.to_string())?;
        let mut response = self.http.get(offer.url).send().await.map_err(crate::transfer_error)?;
        if !response.status().is_success() {
            return Err(format!("its URL answered {}", response.status()));
        }
        // Grown as bytes arrive: the announced size is the gateway's word.
        let mut patch = Vec::with_capacity(offer.size.min(1 << 20) as usize);
        while let Some(chunk) = response.chunk().await.map_err(crate::transfer_error)? {
            received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if (patch.len() + chunk.len()) as u64 > offer.size {
                return Err("it is longer than announced".into());
            }
            patch.extend_from_slice(&chunk);
        }
        if patch.len() as u64 != offer.size || blake3::hash(&patch).to_hex().as_str() != offer.blake3 {
            return Err("what was downloaded does not match its size and BLAKE3".into());
        }
        let (size, base, tmp, dest) = (record.size, how.base.cloned(), tmp.to_owned(), dest.to_owned());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let base = match &base {
                Some(base) => std::fs::read(base).map_err(|e| format!("reading {}: {e}", base.display()))?,
                None => Vec::new(),
            };
            let applied = (|| -> Result<(), String> {
                for path in [&tmp, &dest] {
                    let parent = path.parent().expect("staged files have a parent");
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
                let mut out = std::io::BufWriter::new(file);
                ferry_patch::apply(&base, patch.as_slice(), &mut out, &expected, size).map_err(|e| e.to_string())?;
                let file = out.into_inner().map_err(|e| e.to_string())?;
                file.sync_all().map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())
            })();
            if applied.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            applied
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// One file, resumed after cuts and started over after corruption, up
    /// to the configured number of tries.
    async fn fetch_with_retries(
        &self,
        p: &Planned,
        tree: &std::path::Path,
        parts: &std::path::Path,
        received: &AtomicU64,
    ) -> Result<(), FetchError> {
        let Some(source) = &p.source else {
            return Err(FetchError::Failed("the gateway gave no URL for it".into()));
        };
        let (part, done) = (parts.join(p.record.relative()), tree.join(p.record.relative()));
        let mut backoff = Duration::from_millis(200);
        // Tries without progress: a cut after bytes arrived costs none.
        let mut fruitless = 0;
        loop {
            let before = received.load(Ordering::Relaxed);
            let error = match fetch(&self.http, source, &part, &done, received).await {
                Ok(()) => return Ok(()),
                Err(e @ (FetchError::Expired | FetchError::Cache(_) | FetchError::Refused(_))) => return Err(e),
                Err(e) => e,
            };
            let progressed = matches!(error, FetchError::Failed(_)) && received.load(Ordering::Relaxed) > before;
            if progressed {
                fruitless = 0;
                backoff = Duration::from_millis(200);
            } else {
                fruitless += 1;
            }
            if fruitless >= self.config.download_attempts {
                return Err(error);
            }
            tracing::info!(file = %file_label(&p.record), fruitless, error = ?error, "download interrupted; trying again");
            tokio::time::sleep(crate::api::with_jitter(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// A report of this client's device (resolved before: see
    /// `with_device_of`).
    fn new_report(&self, from: &str, to: &str, result: Outcome, started: Instant) -> Report {
        Report {
            report_id: Report::new_id(),
            device_id: self.config.device_id.clone().unwrap_or_default(),
            tenant: self.config.tenant.clone(),
            app: self.config.app.clone(),
            from_version: from.to_owned(),
            to_version: to.to_owned(),
            result,
            error_code: None,
            error_message: None,
            duration_ms: Some(started.elapsed().as_millis() as u64),
            platform: self.config.platform.clone(),
        }
    }

    async fn report_failure(&self, cache: &Cache, from: &str, to: &str, error: &Error, started: Instant) -> bool {
        let mut report = self.new_report(from, to, Outcome::Failure, started);
        report.error_code = Some(error.report_code().to_owned());
        let message: String = error.to_string().chars().filter(|c| !c.is_control()).take(1000).collect();
        report.error_message = Some(message);
        self.deliver(cache, report, false).await
    }

    /// Sends a report the way syncs do: kept in the cache until the gateway
    /// has it (later syncs send it again, with the same id), e.g. a
    /// `rolled_back` after [`Cache::rollback`]. True if the gateway has it.
    pub async fn submit_report(&self, cache: &Cache, report: Report) -> bool {
        self.deliver(cache, report, true).await
    }

    /// Keeps the report in the cache, sends it (waiting out rate limits
    /// only with `patient`), and forgets it once the gateway has it; true
    /// if it does.
    async fn deliver(&self, cache: &Cache, report: Report, patient: bool) -> bool {
        if let Err(e) = cache.save_report(&report) {
            tracing::warn!(error = %e, "the report could not be kept for a retry");
        }
        let sent = if patient { self.report(&report).await } else { self.report_once(&report).await };
        match sent {
            Ok(_) => {
                let _ = cache.forget_report(&report.report_id);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, report_id = %report.report_id, "the report is kept for the next sync");
                false
            }
        }
    }

    /// Sends reports earlier syncs could not (same ids: never counted twice).
    async fn send_pending_reports(&self, cache: &Cache) {
        let pending = match cache.pending_reports() {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "pending reports could not be read");
                return;
            }
        };
        for report in pending {
            match self.report_once(&report).await {
                Ok(_) => {
                    let _ = cache.forget_report(&report.report_id);
                }
                // Malformed: the gateway will never take it. (A 401 or 404
                // may pass: a key is replaced, provisioning fixed.)
                Err(Error::Gateway { status: status @ (400 | 422), .. }) => {
                    tracing::warn!(report_id = %report.report_id, status, "dropping a report the gateway refuses");
                    let _ = cache.forget_report(&report.report_id);
                }
                Err(e) => {
                    tracing::info!(error = %e, "pending reports wait for the next sync");
                    return;
                }
            }
        }
    }
}

/// The target's files: the answer's list, or with a delta the current
/// release's files, minus `deleted`, with the answer's files over them.
fn plan(answer: &Answer, current: Option<&ReleaseRecord>) -> Vec<Planned> {
    let mut files: Vec<Planned> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    if answer.delta
        && let Some(current) = current
    {
        let deleted: std::collections::HashSet<(&str, &str)> =
            answer.deleted.iter().map(|d| (d.kind.as_str(), d.path.as_str())).collect();
        for f in &current.files {
            if !deleted.contains(&(f.kind.as_str(), f.path.as_str())) {
                index.insert((f.kind.clone(), f.path.clone()), files.len());
                files.push(Planned { record: f.clone(), source: None });
            }
        }
    }
    for a in &answer.artifacts {
        let planned = Planned {
            record: FileRecord { kind: a.kind.clone(), path: a.path.clone(), size: a.size, blake3: a.blake3.clone() },
            source: Some(a.clone()),
        };
        match index.get(&(a.kind.clone(), a.path.clone())) {
            Some(&i) => files[i] = planned,
            None => {
                index.insert((a.kind.clone(), a.path.clone()), files.len());
                files.push(planned);
            }
        }
    }
    files
}

/// Takes fresh URLs from a new answer (same release).
fn refresh_sources(planned: &mut [Planned], fresh: &Answer) {
    let urls: HashMap<(&str, &str), &ArtifactFile> =
        fresh.artifacts.iter().map(|a| ((a.kind.as_str(), a.path.as_str()), a)).collect();
    for p in planned {
        if let Some(a) = urls.get(&(p.record.kind.as_str(), p.record.path.as_str()))
            && a.blake3 == p.record.blake3
        {
            p.source = Some((*a).clone());
        }
    }
}

/// Files of the releases in the cache, by BLAKE3.
fn reusable_files(cache: &Cache) -> Result<HashMap<String, PathBuf>, CacheError> {
    let mut files = HashMap::new();
    let Some(current) = cache.current()? else { return Ok(files) };
    let ids = std::iter::once(current.manifest_id.clone()).chain(current.previous.map(|p| p.manifest_id));
    for id in ids {
        if let Some(record) = cache.record(&id)? {
            let dir = cache.release_dir(&id);
            for f in record.files {
                let path = dir.join(f.relative());
                files.entry(f.blake3).or_insert(path);
            }
        }
    }
    Ok(files)
}

/// Copies a cached file into the staging area (through `tmp`, its place
/// among partial downloads) if it still has the expected content; false if
/// it does not (then it is downloaded).
async fn copy_verified(source: PathBuf, tmp: PathBuf, dest: PathBuf, record: FileRecord) -> Result<bool, Error> {
    let copied = tokio::task::spawn_blocking(move || -> Result<bool, CacheError> {
        for path in [&tmp, &dest] {
            let parent = path.parent().expect("staged files have a parent");
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if std::fs::copy(&source, &tmp).is_err() {
            return Ok(false);
        }
        let (size, hash) = hash_file(&tmp)?;
        if size != record.size || hash != record.blake3 {
            tracing::warn!(file = %source.display(), "a cached file no longer matches its record; downloading it");
            std::fs::remove_file(&tmp).map_err(io(&tmp))?;
            return Ok(false);
        }
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(true)
    })
    .await
    .expect("copying does not panic")?;
    Ok(copied)
}

fn file_label(record: &FileRecord) -> String {
    format!("{}/{}", record.kind, record.path)
}
