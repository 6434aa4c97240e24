//! The waiting room, for fairness between processes: a process waiting for a lock holds a
//! shared kernel lock on `<lock file>.wait`, so that a process about to take the lock without
//! waiting (typically the one that just released it) sees that others are waiting and queues
//! behind them instead of barging in ahead of the waiter the kernel is waking up.
//! Exclusion never depends on it: a lost or removed waiting-room file only costs fairness.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::os_lock;

#[derive(Debug)]
pub struct WaitingRoom {
  file: File,
  path: PathBuf,
}

impl WaitingRoom {
  /// The room of a lock file, made if it does not exist yet.
  pub fn open(lock_path: &Path) -> Option<WaitingRoom> {
    WaitingRoom::at(lock_path, true)
  }

  /// The room of a lock file, if it has one.
  pub fn existing(lock_path: &Path) -> Option<WaitingRoom> {
    WaitingRoom::at(lock_path, false)
  }

  fn at(lock_path: &Path, create: bool) -> Option<WaitingRoom> {
    let mut name = lock_path.as_os_str().to_os_string();
    name.push(".wait");
    let path = PathBuf::from(name);
    let file = OpenOptions::new()
      .read(true)
      .create(create)
      .append(true)
      .mode(0o666)
      .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
      .open(&path)
      .ok()?;
    Some(WaitingRoom { file, path })
  }

  /// Whether some process is waiting in this room now.
  pub fn others_waiting(&self) -> bool {
    if !os_lock::kernel_locks() {
      return false;
    }
    match self.file.try_lock() {
      Ok(()) => {
        let _ = self.file.unlock();
        false
      }
      Err(fs::TryLockError::WouldBlock) => true,
      Err(fs::TryLockError::Error(_)) => false,
    }
  }

  pub fn enter(&self) {
    if os_lock::kernel_locks() {
      let _ = self.file.lock_shared();
    }
  }

  pub fn leave(&self) {
    if os_lock::kernel_locks() {
      let _ = self.file.unlock();
    }
  }

  /// Removes the room if nobody waits in it (process exit, cleanup of its lock file).
  pub fn remove_if_empty(self) {
    if os_lock::kernel_locks() && self.file.try_lock().is_ok() {
      let _ = fs::remove_file(&self.path);
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_support::temp_dir;

  #[test]
  fn a_waiter_is_seen_by_others_and_gone_when_it_leaves() {
    let lock = temp_dir("room").join("tasks.json.lock");
    let checker = WaitingRoom::open(&lock).unwrap();
    let waiter = WaitingRoom::open(&lock).unwrap();
    assert!(!checker.others_waiting());
    waiter.enter();
    assert!(checker.others_waiting());
    waiter.leave();
    assert!(!checker.others_waiting());
    checker.remove_if_empty();
    assert!(!lock.with_extension("lock.wait").exists());
  }
}
