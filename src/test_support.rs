//! Helpers for the core's unit tests: fresh temporary directories, and waiting for a thread to
//! be blocked in the kernel on a lock (an observable event: /proc/locks lists blocked waiters).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn temp_dir(prefix: &str) -> PathBuf {
  static NEXT: AtomicU32 = AtomicU32::new(0);
  let dir = std::env::temp_dir().join(format!(
    "ffl-{prefix}-{}-{}-{}",
    std::process::id(),
    crate::identity::now_ms(),
    NEXT.fetch_add(1, Ordering::Relaxed)
  ));
  std::fs::create_dir_all(&dir).unwrap();
  dir
}

/// Returns once some thread is blocked in `flock` on `path`'s inode (a `->` line of
/// /proc/locks names it), so a test can act while the waiter is really waiting.
pub fn wait_for_blocked_flock(path: &std::path::Path) {
  use std::os::unix::fs::MetadataExt;
  let meta = std::fs::metadata(path).unwrap();
  let inode = format!(
    " {:02x}:{:02x}:{} ",
    nix::sys::stat::major(meta.dev()),
    nix::sys::stat::minor(meta.dev()),
    meta.ino()
  );
  let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
  loop {
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    if locks
      .lines()
      .any(|line| line.contains("-> FLOCK") && line.contains(&inode))
    {
      return;
    }
    assert!(
      std::time::Instant::now() < deadline,
      "no waiter blocked on {}",
      path.display()
    );
    std::thread::yield_now();
  }
}
