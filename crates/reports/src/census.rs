//! Which version each device runs, learnt from checks (S4-6: "counted per
//! device, not per request"). A gateway answers thousands of checks a
//! second; writing each would make the database the gateway's limit. Checks
//! are gathered in memory, one entry per device (a device checking a
//! thousand times is one entry), and written in sorted batches every few
//! seconds and at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ferry_store::{Meta, StoreError};

use crate::model::MAX_DEVICE_CHARS;

const SHARDS: usize = 16;
/// Devices remembered between flushes; past this a flush is due at once and
/// further devices wait for it (counted as dropped, never blocking a check).
const MAX_PENDING: usize = 200_000;
const ROWS_PER_STATEMENT: usize = 5_000;

/// (app id, device id) → (version, when).
type Seen = HashMap<(i64, String), (String, SystemTime)>;
type Sighting = ((i64, String), (String, SystemTime));

/// Devices seen since the last flush, sharded so concurrent checks rarely
/// share a lock.
pub struct Census {
    shards: Vec<Mutex<Seen>>,
    dropped: std::sync::atomic::AtomicU64,
    full: tokio::sync::Notify,
}

impl Default for Census {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            dropped: Default::default(),
            full: tokio::sync::Notify::new(),
        }
    }
}

impl Census {
    /// Notes that `device` of app `app_id` ran `version` at `at`; a later
    /// note of the same device replaces an earlier one.
    /// Device ids a report would refuse are not counted.
    pub fn record(&self, app_id: i64, device: &str, version: &str, at: SystemTime) {
        if device.is_empty() || device.len() > MAX_DEVICE_CHARS || !device.bytes().all(|b| b.is_ascii_graphic()) {
            return;
        }
        let shard = &self.shards[shard_of(app_id, device)];
        let mut seen = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = seen.get_mut(&(app_id, device.to_owned())) {
            if entry.1 <= at {
                *entry = (version.to_owned(), at);
            }
            return;
        }
        if seen.len() >= MAX_PENDING / SHARDS {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.full.notify_one();
            return;
        }
        seen.insert((app_id, device.to_owned()), (version.to_owned(), at));
    }

    /// Devices not recorded because a flush was overdue.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self) -> Vec<Sighting> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            all.extend(taken);
        }
        // Batches by app and device; the statement itself locks rows in the
        // database's collation order (ORDER BY), the order the reports
        // trigger uses too, so no two writers wait on each other's rows in
        // opposite orders.
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Writes what was gathered (newer sightings win over older rows);
    /// returns how many devices were written. On failure what was taken is
    /// put back for the next flush.
    pub async fn flush(&self, meta: &Meta) -> Result<usize, StoreError> {
        let seen = self.take();
        let mut written = 0;
        for (i, batch) in seen.chunks(ROWS_PER_STATEMENT).enumerate() {
            if let Err(e) = write(meta, batch).await {
                for ((app_id, device), (version, at)) in &seen[i * ROWS_PER_STATEMENT..] {
                    self.record(*app_id, device, version, *at);
                }
                return Err(e);
            }
            written += batch.len();
        }
        Ok(written)
    }

    /// Flushes every `interval` (sooner when the census is full) until
    /// `stop` resolves, then once more.
    pub async fn run(&self, meta: Meta, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut dropped = 0;
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = self.full.notified() => false,
                _ = &mut stop => true,
            };
            if let Err(e) = self.flush(&meta).await {
                tracing::warn!(error = %ferry_proto::error_chain(&e), "device census: flush failed; kept for the next");
            }
            if self.dropped() > dropped {
                tracing::warn!(
                    devices = self.dropped() - dropped,
                    "device census: full between flushes, new devices not counted (lower FERRY_DEVICE_FLUSH_SECONDS)"
                );
                dropped = self.dropped();
            }
            if stopping {
                return;
            }
        }
    }
}

fn shard_of(app_id: i64, device: &str) -> usize {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: one device, one shard.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (app_id, device).hash(&mut h);
    (h.finish() as usize) % SHARDS
}

async fn write(meta: &Meta, batch: &[Sighting]) -> Result<(), StoreError> {
    let apps: Vec<i64> = batch.iter().map(|((app, _), _)| *app).collect();
    let devices: Vec<&str> = batch.iter().map(|((_, d), _)| d.as_str()).collect();
    let versions: Vec<&str> = batch.iter().map(|(_, (v, _))| v.as_str()).collect();
    let times: Vec<SystemTime> = batch.iter().map(|(_, (_, t))| *t).collect();
    let client = meta.client().await?;
    client
        .execute(
            "INSERT INTO devices AS d (app_id, device_id, version, seen_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[]) AS s (a, d, v, t) \
             ORDER BY a, d \
             ON CONFLICT (app_id, device_id) DO UPDATE SET version = EXCLUDED.version, seen_at = EXCLUDED.seen_at \
             WHERE d.seen_at <= EXCLUDED.seen_at",
            &[&apps, &devices, &versions, &times],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn one_entry_per_device_newest_wins_in_one_order() {
        let census = Census::default();
        for i in 0..1_000 {
            census.record(7, "phone-1", "1.0.0", at(100 + i));
        }
        census.record(7, "phone-1", "1.1.0", at(2_000));
        // An older sighting arriving late changes nothing.
        census.record(7, "phone-1", "0.9.0", at(50));
        census.record(3, "tablet", "2.0.0", at(10));
        census.record(7, "phone-0", "1.0.0", at(10));
        census.record(7, "", "1.0.0", at(10));
        census.record(7, "a phone", "1.0.0", at(10));
        census.record(7, &"x".repeat(MAX_DEVICE_CHARS + 1), "1.0.0", at(10));
        let taken = census.take();
        let keys: Vec<_> = taken.iter().map(|(k, v)| (k.0, k.1.as_str(), v.0.as_str())).collect();
        assert_eq!(keys, vec![(3, "tablet", "2.0.0"), (7, "phone-0", "1.0.0"), (7, "phone-1", "1.1.0")]);
        assert!(census.take().is_empty(), "a flush empties the census");
    }

    #[test]
    fn a_full_census_drops_new_devices_and_asks_for_a_flush() {
        let census = Census::default();
        let mut n = 0;
        while census.dropped() == 0 {
            census.record(1, &format!("d{n}"), "1.0.0", at(1));
            n += 1;
        }
        assert!(n > MAX_PENDING / SHARDS && n <= MAX_PENDING + 1, "{n}");
        // Known devices are still updated.
        census.record(1, "d0", "2.0.0", at(2));
        let taken = census.take();
        assert!(taken.iter().any(|(k, v)| k.1 == "d0" && v.0 == "2.0.0"));
    }
}
