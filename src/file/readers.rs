//! Shared (read) holds of the file backend, beside the kernel lock that decides them: a reader
//! holds `flock(LOCK_SH)` on the lock file (mod.rs), and this module owns what the lock file's
//! single record cannot say: who the readers are.
//!
//! Reader files. Each reader writes its record into a file of its own beside the lock file,
//! `<name>.lock.r-<pid>-<n>`, created with `O_EXCL`, and holds an exclusive `flock` on it for
//! the hold. On this host a reader file whose `flock` can be taken belongs to a reader that is
//! gone (the kernel dropped its lock when it died), so anyone may remove it, and does so while
//! holding that `flock`: a reader that created its file but had not locked it yet notices that
//! its file was removed (the path names another inode, or none) and starts again. A record of
//! another host is judged by its heartbeat, as for exclusive locks (staleness.rs).
//!
//! Between holds a reader file stays, blanked and still locked, for this process's next shared
//! hold of that lock (as the lock file and its handle stay): creating and removing a file per
//! hold would cost more than the rest of an uncontended shared hold. A blank locked reader file
//! is nobody's hold; the process removes its idle ones when it exits, and a blank unlocked one
//! (its process died) is a leftover like any other.
//!
//! Writer preference (a steady stream of readers must not starve a waiting writer, though the
//! kernel grants `LOCK_SH` while only readers hold the lock) comes from the lock's ticket queue
//! (ticket_queue.rs): waiters are served in arrival order, readers queue behind an earlier
//! writer's ticket, and the fast path of a reader stops at any ticket.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

use super::os_lock;
use super::staleness::{self, Verdict};
use crate::backend::LockMode;
use crate::error::{LockError, Result};
use crate::identity::{self, now_ms};
use crate::record::{Contents, LockRecord};

/// What follows `<name>.lock` in a reader file's name.
const READER_INFIX: &str = ".r-";

fn with_suffix(lock_path: &Path, suffix: &str) -> PathBuf {
  let mut name = lock_path.as_os_str().to_os_string();
  name.push(suffix);
  PathBuf::from(name)
}

/// This process's idle reader files, blank and locked, by lock path.
static IDLE: LazyLock<Mutex<HashMap<PathBuf, Vec<ReaderFile>>>> = LazyLock::new(Default::default);

fn idle() -> MutexGuard<'static, HashMap<PathBuf, Vec<ReaderFile>>> {
  IDLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A reader file of ours, locked for the hold.
#[derive(Debug)]
pub struct ReaderFile {
  file: File,
  path: PathBuf,
  dev: u64,
  ino: u64,
  len: usize,
}

impl ReaderFile {
  /// Our reader file beside `lock_path`, locked, with `record` in it: an idle one of ours, or a
  /// new one.
  pub fn create(lock_path: &Path, record: &LockRecord) -> Result<ReaderFile> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let kept = idle().get_mut(lock_path).and_then(Vec::pop);
    if let Some(mut reader) = kept.filter(ReaderFile::still_at_path) {
      return match reader.write(record) {
        Ok(()) => Ok(reader),
        Err(e) => {
          reader.remove();
          Err(e)
        }
      };
    }
    loop {
      let path = with_suffix(
        lock_path,
        &format!(
          "{READER_INFIX}{}-{}",
          identity::current().pid,
          NEXT.fetch_add(1, Ordering::Relaxed)
        ),
      );
      let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
      {
        Ok(file) => file,
        // A leftover of an earlier process that had our pid: take the next number.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
        Err(e) => return Err(LockError::io(&e, "Cannot create the reader file", &path)),
      };
      // Only a remover holds it, for an instant; then our inode is gone and we start again.
      if let Err(e) = lock_retrying(&file) {
        let _ = fs::remove_file(&path);
        return Err(LockError::io(&e, "Cannot lock the reader file", &path));
      }
      let meta = file
        .metadata()
        .map_err(|e| LockError::io(&e, "Cannot stat", &path))?;
      let mut reader = ReaderFile {
        file,
        path,
        dev: meta.dev(),
        ino: meta.ino(),
        len: 0,
      };
      if !reader.still_at_path() {
        continue;
      }
      if let Err(e) = reader.write(record) {
        reader.remove();
        return Err(e);
      }
      return Ok(reader);
    }
  }

  /// Whether the path still names our file (nobody removed it as a leftover).
  pub fn still_at_path(&self) -> bool {
    os_lock::names_inode(&self.path, self.dev, self.ino)
  }

  /// Writes `record` over ours, in place: a rewrite is never shorter than what it covers.
  pub fn write(&mut self, record: &LockRecord) -> Result<()> {
    let bytes = record.to_bytes(self.len);
    self
      .file
      .write_all_at(&bytes, 0)
      .map_err(|e| LockError::io(&e, "Cannot write the reader record", &self.path))?;
    self.len = bytes.len();
    Ok(())
  }

  /// Ends the hold: the record is blanked in place (a blank record is nobody's) and the file
  /// kept, locked, for this process's next shared hold of `lock_path`.
  pub fn release(self, lock_path: &Path) {
    if !self.still_at_path() || self.file.write_all_at(&vec![b' '; self.len], 0).is_err() {
      return self.remove();
    }
    idle()
      .entry(lock_path.to_path_buf())
      .or_default()
      .push(self);
  }

  /// The file goes, then its lock (closing it).
  fn remove(self) {
    if self.still_at_path() {
      let _ = fs::remove_file(&self.path);
    }
  }
}

/// Process exit: removes this process's idle reader files of `lock_path`.
pub fn remove_idle(lock_path: &Path) {
  let kept = idle().remove(lock_path).unwrap_or_default();
  for reader in kept {
    reader.remove();
  }
}

/// Locks a reader file exclusively, through signals that interrupt the wait.
fn lock_retrying(file: &File) -> io::Result<()> {
  loop {
    match file.lock() {
      Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
      other => return other,
    }
  }
}

/// One reader file, judged.
#[derive(Debug)]
pub struct ReaderView {
  pub path: PathBuf,
  pub contents: Contents,
  pub verdict: Verdict,
}

impl ReaderView {
  pub fn is_live(&self) -> bool {
    self.verdict == Verdict::Live
  }

  /// The record's fields plus `readerFile`, `state`, `staleReason`, `heldForMs`,
  /// `heartbeatAgeMs`.
  pub fn to_json(&self) -> Value {
    let now = now_ms();
    let (mut out, acquired_at, heartbeat) = match &self.contents {
      Contents::Record(r) => (r.to_json(), r.acquired_at, r.heartbeat),
      _ => (json!({}), None, None),
    };
    out["readerFile"] = json!(self.path.to_string_lossy());
    out["mode"] = json!(LockMode::Shared.name());
    out["state"] = json!(if self.is_live() { "held" } else { "stale" });
    out["staleReason"] = match &self.verdict {
      Verdict::Stale(why) => json!(why),
      _ => Value::Null,
    };
    out["heldForMs"] = json!(acquired_at.map(|t| now.saturating_sub(t)));
    out["heartbeatAgeMs"] = json!(heartbeat.map(|t| now.saturating_sub(t)));
    out
  }
}

/// The reader files of `lock_path`, oldest first (by acquisition time, then name).
fn reader_files(lock_path: &Path) -> Vec<PathBuf> {
  let (Some(dir), Some(name)) = (lock_path.parent(), lock_path.file_name()) else {
    return Vec::new();
  };
  let mut prefix = name.to_string_lossy().into_owned();
  prefix.push_str(READER_INFIX);
  let Ok(entries) = fs::read_dir(dir) else {
    return Vec::new();
  };
  let mut files: Vec<PathBuf> = entries
    .flatten()
    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    .map(|e| e.path())
    .collect();
  files.sort();
  files
}

/// Every reader file in a lock directory, whatever its lock (for cleanup, which also finds the
/// leftovers of a lock file that is gone).
fn all_reader_files(lock_dir: &Path) -> Vec<PathBuf> {
  let Ok(entries) = fs::read_dir(lock_dir) else {
    return Vec::new();
  };
  let mut files: Vec<PathBuf> = entries
    .flatten()
    .filter(|e| {
      let name = e.file_name();
      let name = name.to_string_lossy();
      name
        .split_once(READER_INFIX)
        .is_some_and(|(lock, _)| lock.ends_with(crate::paths::LOCK_SUFFIX))
    })
    .map(|e| e.path())
    .collect();
  files.sort();
  files
}

/// Looks at one reader file; with `keep_lock`, a dead reader's file comes back locked by us
/// (so that it can be removed safely). `None` when it vanished or is not a plain file.
fn judge_file(path: &Path, stale_after: Duration) -> Option<(ReaderView, Option<File>)> {
  let file = os_lock::open_no_follow(path, OpenOptions::new().read(true)).ok()?;
  os_lock::check_plain_file(&file, path).ok()?;
  let held = match file.try_lock() {
    Ok(()) => false,
    Err(fs::TryLockError::WouldBlock) => true,
    Err(fs::TryLockError::Error(_)) => return None,
  };
  let contents = os_lock::read_stable(&file);
  if held && contents == Contents::Empty {
    // An idle reader file of a live process (or one being created): nobody's hold.
    return None;
  }
  let verdict = match staleness::judge(
    &contents,
    held,
    identity::current(),
    now_ms(),
    stale_after.as_millis() as u64,
  ) {
    // A reader file is never "released": an empty unlocked one is a reader that died (or one
    // that is being created, which notices a removal and starts again).
    Verdict::Free => Verdict::Stale("empty reader file, and nobody holds its lock".into()),
    verdict => verdict,
  };
  let view = ReaderView {
    path: path.to_path_buf(),
    contents,
    verdict,
  };
  Some((view, (!held).then_some(file)))
}

fn names(path: &Path, file: &File) -> bool {
  matches!((file.metadata(), fs::symlink_metadata(path)),
    (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
}

/// The readers of `lock_path`, live and stale, oldest first.
pub fn readers(lock_path: &Path, stale_after: Duration) -> Vec<ReaderView> {
  let mut views: Vec<ReaderView> = reader_files(lock_path)
    .iter()
    .filter_map(|path| judge_file(path, stale_after).map(|(view, _)| view))
    .collect();
  views.sort_by_key(|v| match &v.contents {
    Contents::Record(r) => r.acquired_at.unwrap_or(u64::MAX),
    _ => u64::MAX,
  });
  views
}

/// Removes the reader files of dead readers in `lock_dir` (with `dry_run`, only says which it
/// would): `(removed, kept)`, each entry as `cleanupStaleLocks` reports it. A file is removed
/// only while we hold its lock, so a live reader's file never goes.
pub fn cleanup(lock_dir: &Path, stale_after: Duration, dry_run: bool) -> (Vec<Value>, Vec<Value>) {
  let (mut removed, mut kept) = (Vec::new(), Vec::new());
  for path in all_reader_files(lock_dir) {
    let Some((view, lock)) = judge_file(&path, stale_after) else {
      continue;
    };
    let mut entry = view.to_json();
    entry["lockFile"] = json!(lock_path_of(&path).to_string_lossy());
    if view.is_live() {
      entry["reason"] = json!(if lock.is_none() {
        "held: a reader holds its lock"
      } else {
        "held: its record is live"
      });
      kept.push(entry);
      continue;
    }
    entry["reason"] = entry["staleReason"].clone();
    let removal = match lock {
      _ if dry_run => Ok(()),
      Some(ours) if names(&path, &ours) => os_lock::remove_file(&path),
      // Replaced since we looked at it: somebody else's now.
      _ => continue,
    };
    match removal {
      Ok(()) => removed.push(entry),
      Err(e) => {
        entry["reason"] = json!(super::inspect::not_removed(&entry["reason"], &e));
        kept.push(entry);
      }
    }
  }
  (removed, kept)
}

/// `<dir>/<name>.lock` of a reader file `<dir>/<name>.lock.r-<pid>-<n>`.
fn lock_path_of(reader: &Path) -> PathBuf {
  let text = reader.to_string_lossy();
  match text.rfind(READER_INFIX) {
    Some(at) => PathBuf::from(&text[..at]),
    None => reader.to_path_buf(),
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_support::temp_dir;

  const STALE: Duration = Duration::from_secs(30);

  fn record(pid: i64, lock_id: &str) -> LockRecord {
    let mut record = LockRecord::new_for(identity::current(), lock_id, "/p/tasks.json", now_ms());
    record.pid = Some(pid);
    record
  }

  #[test]
  fn live_readers_are_listed_and_kept_dead_ones_removed() {
    let dir = temp_dir("readers");
    let lock = dir.join("tasks.json.lock");
    let me = i64::from(identity::current().pid);
    let live = ReaderFile::create(&lock, &record(me, "live")).unwrap();
    // A reader that died: its file is left, and nobody holds its lock.
    let dead = with_suffix(&lock, ".r-999999-0");
    fs::write(&dead, record(999_999, "dead").to_bytes(0)).unwrap();
    // Another lock's reader and a lone empty file (a reader that died creating it).
    let other = ReaderFile::create(&dir.join("time.json.lock"), &record(me, "other")).unwrap();
    let empty = with_suffix(&dir.join("gone.json.lock"), ".r-7-7");
    fs::write(&empty, b"").unwrap();

    let views = readers(&lock, STALE);
    assert_eq!(views.len(), 2);
    let by_id = |id: &str| {
      views
        .iter()
        .find(|v| matches!(&v.contents, Contents::Record(r) if r.lock_id.as_deref() == Some(id)))
        .unwrap()
    };
    assert!(by_id("live").is_live());
    assert!(matches!(&by_id("dead").verdict, Verdict::Stale(why) if why.contains("gone")));

    let (removed, kept) = cleanup(&dir, STALE, true);
    assert_eq!((removed.len(), kept.len()), (2, 2));
    assert!(dead.exists() && empty.exists());
    let (removed, kept) = cleanup(&dir, STALE, false);
    assert_eq!((removed.len(), kept.len()), (2, 2), "{removed:?}");
    assert!(!dead.exists() && !empty.exists());
    assert!(live.still_at_path() && other.still_at_path());
    let path = live.path.clone();
    live.remove();
    other.remove();
    assert!(!path.exists());
    assert!(readers(&lock, STALE).is_empty());
  }

  /// A reader record of another host (a lock directory its kernel shares with nobody here) is
  /// judged by its heartbeat, as an exclusive record would be.
  #[test]
  fn another_hosts_reader_is_judged_by_its_heartbeat() {
    let lock = temp_dir("readers").join("tasks.json.lock");
    let mut far = record(7, "far");
    far.hostname = Some("another-host".into());
    let fresh = with_suffix(&lock, ".r-7-0");
    fs::write(&fresh, far.to_bytes(0)).unwrap();
    far.heartbeat = Some(now_ms() - 60_000);
    let old = with_suffix(&lock, ".r-7-1");
    fs::write(&old, far.to_bytes(0)).unwrap();
    let views = readers(&lock, STALE);
    let verdict = |path: &Path| &views.iter().find(|v| v.path == path).unwrap().verdict;
    assert_eq!(verdict(&fresh), &Verdict::Live);
    assert!(matches!(verdict(&old), Verdict::Stale(why) if why.contains("another-host")));
  }

  #[test]
  fn a_reader_file_removed_under_its_holder_is_noticed() {
    let lock = temp_dir("readers").join("tasks.json.lock");
    let reader = ReaderFile::create(&lock, &record(1, "x")).unwrap();
    fs::remove_file(&reader.path).unwrap();
    assert!(!reader.still_at_path());
  }
}
