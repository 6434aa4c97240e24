//! Helpers for the core's unit tests: fresh temporary directories, and waiting for a thread to
//! be blocked in the kernel on a lock (an observable event: /proc/locks lists blocked waiters).

use std::path::{Path, PathBuf};
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
pub fn wait_for_blocked_flock(path: &Path) {
  wait_for_blocked(&[(path, "-> FLOCK")]);
}

/// Returns once some waiter of the file lock at `lock_path` is blocked in the kernel: for its
/// turn in the lock's ticket queue (an OFD lock on `<lock>.wait`), or for the lock itself.
pub fn wait_for_blocked_waiter(lock_path: &Path) {
  let mut queue = lock_path.as_os_str().to_os_string();
  queue.push(".wait");
  let queue = PathBuf::from(queue);
  wait_for_blocked(&[(lock_path, "-> FLOCK"), (&queue, "-> OFDLCK")]);
}

/// Returns once a `->` line of /proc/locks of one of the kinds given names its file's inode.
fn wait_for_blocked(files: &[(&Path, &str)]) {
  use std::os::unix::fs::MetadataExt;
  let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
  loop {
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    // A file not made yet has no waiter.
    let blocked = files.iter().any(|(path, kind)| {
      std::fs::metadata(path).is_ok_and(|meta| {
        let inode = format!(
          " {:02x}:{:02x}:{} ",
          nix::sys::stat::major(meta.dev()),
          nix::sys::stat::minor(meta.dev()),
          meta.ino()
        );
        locks
          .lines()
          .any(|line| line.contains(kind) && line.contains(&inode))
      })
    });
    if blocked {
      return;
    }
    assert!(
      std::time::Instant::now() < deadline,
      "no waiter blocked on {}",
      files[0].0.display()
    );
    std::thread::yield_now();
  }
}
