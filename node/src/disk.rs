//! Free space in the data directory: a gauge, and the floor below which the leader refuses writes.
//!
//! A replica whose disk fills mid-write stops (fail-stop: redb's commit fails, and the replica exits
//! and recovers from its log once space is freed). Refusing new writes on the leader while its disk
//! still has `storage.free_bytes_min` free keeps that from happening on the replica that matters
//! most: clients get a clear `RESOURCE_EXHAUSTED` instead of a leader that vanishes. Followers do not
//! refuse anything (they cannot; the log is the leader's), and one whose disk fills stops cleanly
//! while the others go on.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the free space is measured. A full batch is about 1 MiB and the leader writes at most
/// a few hundred a second, so the floor should leave room for a few seconds of writes.
pub const FREE_SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes an unprivileged process may still write to the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The data directory's free space, as last measured, and its floor.
#[derive(Debug)]
pub struct DiskSpace {
    directory: PathBuf,
    floor_bytes: u64,
    free_bytes: AtomicU64,
}

impl DiskSpace {
    /// Measures once, so that the floor holds from the first request on.
    pub fn measure(directory: &Path, floor_bytes: u64) -> std::io::Result<DiskSpace> {
        let free = free_bytes(directory)?;
        Ok(DiskSpace { directory: directory.to_owned(), floor_bytes, free_bytes: AtomicU64::new(free) })
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    /// Why a new write must be refused, if it must: the free space is below the floor.
    pub fn below_floor(&self) -> Option<String> {
        let free = self.free_bytes();
        (free < self.floor_bytes).then(|| {
            format!(
                "the leader's data directory {} has {free} bytes free, below storage.free_bytes_min ({} bytes): \
                 writes are refused until space is freed",
                self.directory.display(),
                self.floor_bytes
            )
        })
    }

    fn update(&self) {
        match free_bytes(&self.directory) {
            Ok(free) => {
                self.free_bytes.store(free, Ordering::Relaxed);
                metrics::gauge!("tally_data_directory_free_bytes").set(free as f64);
            }
            // The directory is the replica's own: failing to stat it is as alarming as a full disk,
            // so the floor holds (writes refused) until it can be measured again.
            Err(error) => {
                tracing::warn!(%error, directory = %self.directory.display(), "cannot measure free space");
                self.free_bytes.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Measures the free space every [`FREE_SPACE_CHECK_INTERVAL`] until `stopped` completes.
pub async fn watch_free_space(space: Arc<DiskSpace>, stopped: impl Future<Output = ()>) {
    metrics::gauge!("tally_data_directory_free_bytes_min").set(space.floor_bytes as f64);
    let mut interval = tokio::time::interval(FREE_SPACE_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = interval.tick() => {}
        }
        let measured = Arc::clone(&space);
        if tokio::task::spawn_blocking(move || measured.update()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_refuses_below_it_and_names_the_setting() {
        let directory = tempfile::tempdir().unwrap();
        let free = free_bytes(directory.path()).unwrap();
        assert!(free > 0, "a temporary directory has some free space");
        let roomy = DiskSpace::measure(directory.path(), 0).unwrap();
        assert_eq!(roomy.below_floor(), None);
        let full = DiskSpace::measure(directory.path(), u64::MAX).unwrap();
        let reason = full.below_floor().expect("nothing is above u64::MAX bytes");
        assert!(reason.contains("storage.free_bytes_min"), "{reason}");
        assert!(reason.contains(&directory.path().display().to_string()), "{reason}");
    }

    #[test]
    fn a_directory_that_cannot_be_measured_counts_as_full() {
        let directory = tempfile::tempdir().unwrap();
        let space = DiskSpace::measure(directory.path(), 1).unwrap();
        let path = directory.path().to_owned();
        drop(directory);
        assert!(!path.exists());
        space.update();
        assert!(space.below_floor().is_some());
    }
}
