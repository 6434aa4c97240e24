//! The heartbeat: one background thread per process refreshes the `heartbeat` of every lock
//! this process holds, in place, so hosts that cannot see our kernel lock know we are alive.
//! It also notices a lock file removed or replaced under us, or a record taken over, and marks
//! that lock lost.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

use crate::identity::now_ms;
use crate::lock_table;

pub const DEFAULT_INTERVAL_MS: u64 = 5_000;
static INTERVAL_MS: AtomicU64 = AtomicU64::new(DEFAULT_INTERVAL_MS);

static THREAD: OnceLock<Option<Thread>> = OnceLock::new();

pub fn set_interval(interval: Duration) {
  INTERVAL_MS.store(interval.as_millis().max(10) as u64, Ordering::Relaxed);
  // Wake the thread so the new interval applies now, not after the old one ran out.
  if let Some(Some(thread)) = THREAD.get() {
    thread.unpark();
  }
}

pub fn interval() -> Duration {
  Duration::from_millis(INTERVAL_MS.load(Ordering::Relaxed))
}

pub fn ensure_running() {
  THREAD.get_or_init(|| {
    // If no thread can be started, locks still exclude through the kernel; only hosts that
    // share the directory without kernel locks would see the heartbeat age.
    std::thread::Builder::new()
      .name("flowforge-lock-heartbeat".into())
      .spawn(|| loop {
        // An early wake-up (set_interval, or a spurious one) only beats sooner: harmless.
        std::thread::park_timeout(interval());
        beat();
      })
      .ok()
      .map(|handle| handle.thread().clone())
  });
}

/// Refreshes every held record. The new bytes are prepared under the lock table, and written
/// and synced outside it, so a slow disk never stalls lock operations.
pub fn beat() {
  let mut writes = Vec::new();
  lock_table::for_each_held(|held| {
    if held.lost {
      return;
    }
    // A record that is no longer ours was taken over (we stalled past the stale threshold, on a
    // file system whose kernel locks other hosts do not see): the lock is lost, and rewriting
    // our record would hide that from our own next write.
    if !held.lock.still_at_path() || !held.lock.record_mentions(&held.lock_id) {
      held.lost = true;
      return;
    }
    held.record.heartbeat = Some(now_ms());
    if let Ok(file) = held.lock.duplicate() {
      writes.push((file, held.record.to_bytes(0)));
    }
  });
  for (file, bytes) in writes {
    if file.write_all_at(&bytes, 0).is_ok() {
      let _ = file.sync_data();
    }
  }
}
