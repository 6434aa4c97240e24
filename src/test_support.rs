//! Helpers for the core's unit tests: fresh temporary directories.

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
