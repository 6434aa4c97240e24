//! Looking at locks from outside: is a file locked, by whom, is that holder stale; the list of
//! every lock under a project; and removing the stale ones (`cleanupStaleLocks`). A lock's
//! holders are its lock file's record (an exclusive holder) and its reader files (shared
//! holders: readers.rs), each judged on its own. Nothing here ever takes a live lock away from
//! its holder.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::os_lock::{self, LockFile, Probe};
use super::readers::{self, ReaderView};
use super::staleness::{self, Verdict};
use super::Removal;
use crate::backend::LockMode;
use crate::error::{LockError, Result};
use crate::identity::{self, now_ms};
use crate::paths::{self, LOCK_SUFFIX};
use crate::record::Contents;

/// One lock file, judged, with its readers.
#[derive(Debug)]
pub struct LockView {
  pub lock_file: PathBuf,
  pub contents: Contents,
  /// The lock file's record (an exclusive holder's), judged.
  pub verdict: Verdict,
  /// Its reader files, live and stale, oldest first.
  pub readers: Vec<ReaderView>,
}

impl LockView {
  pub fn is_held(&self) -> bool {
    self.verdict == Verdict::Live || self.readers.iter().any(ReaderView::is_live)
  }

  /// Who holds it now: `exclusive` (the lock file's record), `shared` (live readers), or `None`.
  pub fn mode(&self) -> Option<LockMode> {
    if self.verdict == Verdict::Live {
      Some(LockMode::Exclusive)
    } else if self.readers.iter().any(ReaderView::is_live) {
      Some(LockMode::Shared)
    } else {
      None
    }
  }

  /// `held`, `stale` (an abandoned record or reader file is left) or `free`.
  pub fn state(&self) -> &'static str {
    match (&self.verdict, self.mode()) {
      (_, Some(_)) => "held",
      (Verdict::Stale(_), None) => "stale",
      _ if !self.readers.is_empty() => "stale",
      _ => "free",
    }
  }

  /// The holder's record fields plus `lockFile`, `state` (`held`/`stale`), `mode`,
  /// `staleReason`, `heldForMs`, `heartbeatAgeMs` and `readers` (each reader file, judged).
  /// Held shared, the top-level record is the oldest live reader's. The lock table adds what
  /// this process knows of it.
  pub fn to_json(&self) -> Value {
    let readers: Vec<Value> = self.readers.iter().map(ReaderView::to_json).collect();
    let mode = self.mode();
    if mode == Some(LockMode::Shared) {
      let oldest = self
        .readers
        .iter()
        .find(|r| r.is_live())
        .expect("a live reader");
      let mut out = oldest.to_json();
      if let Value::Object(map) = &mut out {
        map.remove("readerFile");
      }
      out["lockFile"] = json!(self.lock_file.to_string_lossy());
      out["unreadable"] = Value::Null;
      out["readers"] = Value::Array(readers);
      return out;
    }
    let now = now_ms();
    let mut out = match &self.contents {
      Contents::Record(record) => record.to_json(),
      _ => json!({}),
    };
    let (acquired_at, heartbeat) = match &self.contents {
      Contents::Record(r) => (r.acquired_at, r.heartbeat),
      _ => (None, None),
    };
    let stale_reason = match (&self.verdict, self.readers.first()) {
      (Verdict::Stale(why), _) => Some(why.clone()),
      (
        _,
        Some(ReaderView {
          verdict: Verdict::Stale(why),
          ..
        }),
      ) => Some(format!("a reader's file is left: {why}")),
      _ => None,
    };
    let fields = json!({
      "lockFile": self.lock_file.to_string_lossy(),
      "state": self.state(),
      "mode": mode.map(LockMode::name),
      "staleReason": stale_reason,
      "unreadable": match &self.contents { Contents::Unreadable(why) => Some(why.as_str()), _ => None },
      "heldForMs": acquired_at.map(|t| now.saturating_sub(t)),
      "heartbeatAgeMs": heartbeat.map(|t| now.saturating_sub(t)),
      "readers": readers,
    });
    if let (Value::Object(out), Value::Object(fields)) = (&mut out, fields) {
      out.extend(fields);
    }
    out
  }
}

/// The lock protecting a lock path, or `None` when there is no lock file at all.
pub fn inspect(lock_path: &Path, stale_after: Duration) -> Result<Option<LockView>> {
  let (contents, kernel_held) = match os_lock::probe(lock_path)? {
    Probe::Absent => return Ok(None),
    Probe::Held(contents) => (contents, true),
    Probe::Free(contents) => (contents, false),
  };
  let verdict = staleness::judge(
    &contents,
    kernel_held,
    identity::current(),
    now_ms(),
    stale_after.as_millis() as u64,
  );
  Ok(Some(LockView {
    lock_file: lock_path.to_path_buf(),
    contents,
    verdict,
    readers: readers::readers(lock_path, stale_after),
  }))
}

/// `getLockInfo`: the lock's view as JSON, or `None` when there is no lock (no lock file, or a
/// released one).
pub fn lock_info(lock_path: &Path, stale_after: Duration) -> Result<Option<Value>> {
  Ok(
    inspect(lock_path, stale_after)?
      .filter(|view| view.state() != "free")
      .map(|view| view.to_json()),
  )
}

/// Every lock file under the project root, sorted by name. A lock file that cannot even be
/// looked at (a planted symlink, say) is listed with the reason.
pub fn list(
  root: &Path,
  stale_after: Duration,
) -> Result<Vec<std::result::Result<LockView, (PathBuf, LockError)>>> {
  Ok(
    lock_files(root)?
      .into_iter()
      .filter_map(|path| match inspect(&path, stale_after) {
        Ok(Some(view)) => Some(Ok(view)),
        Ok(None) => None,
        Err(e) => Some(Err((path, e))),
      })
      .collect(),
  )
}

/// [`list`] as JSON; a lock file that cannot be looked at is listed with the reason.
pub fn list_json(root: &Path, stale_after: Duration) -> Result<Vec<Value>> {
  Ok(
    list(root, stale_after)?
      .into_iter()
      .map(|view| match view {
        Ok(view) => view.to_json(),
        Err((path, e)) => json!({
          "lockFile": path.to_string_lossy(), "state": "unsafe", "staleReason": e.message, "code": e.code,
        }),
      })
      .collect(),
  )
}

fn lock_files(root: &Path) -> Result<Vec<PathBuf>> {
  let dir = paths::lock_dir_of(root);
  let entries = match fs::read_dir(&dir) {
    Ok(entries) => entries,
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
    Err(e) => return Err(LockError::io(&e, "Cannot list the lock directory", &dir)),
  };
  let mut files: Vec<PathBuf> = entries
    .flatten()
    .map(|e| e.path())
    .filter(|p| p.to_string_lossy().ends_with(LOCK_SUFFIX))
    .collect();
  files.sort();
  Ok(files)
}

/// A cleanup entry's reason, for a file judged removable that is still there.
pub(super) fn not_removed(reason: &Value, e: &LockError) -> String {
  format!(
    "{}; not removed: {}: {}",
    reason.as_str().unwrap_or(""),
    e.code,
    e.message
  )
}

#[derive(Serialize, Debug, Default)]
pub struct CleanupReport {
  pub removed: Vec<Value>,
  pub kept: Vec<Value>,
}

/// Removes every stale lock file under `root` (or, with `dry_run`, only says which it would).
/// A lock file is removed only while we hold its kernel lock, so a holder arriving meanwhile
/// is never cut off.
pub fn cleanup(root: &Path, stale_after: Duration, dry_run: bool) -> Result<CleanupReport> {
  let mut report = CleanupReport::default();
  let now = now_ms();
  // Dead readers' files first (also those of a lock file that is gone): a lock file that only
  // they named is then free below.
  let (removed, kept) = readers::cleanup(&paths::lock_dir_of(root), stale_after, dry_run);
  report.removed.extend(removed);
  report.kept.extend(kept);
  for path in lock_files(root)? {
    let entry = |state: &str, reason: &str, contents: Option<&Contents>| {
      let mut value = match contents {
        Some(Contents::Record(r)) => r.to_json(),
        _ => json!({}),
      };
      value["lockFile"] = json!(path.to_string_lossy());
      value["state"] = json!(state);
      value["reason"] = json!(reason);
      value
    };
    let lock = match LockFile::try_acquire_existing(&path) {
      Ok(Some(lock)) => lock,
      Ok(None) => {
        report
          .kept
          .push(entry("held", "held: its kernel lock is taken", None));
        continue;
      }
      Err(e) => {
        report.kept.push(entry(
          "unsafe",
          &format!("not inspected: {}", e.message),
          None,
        ));
        continue;
      }
    };
    let mut judged = None;
    let removal = super::remove_lock_file(lock, stale_after, dry_run, |contents| {
      let verdict = staleness::judge(
        contents,
        false,
        identity::current(),
        now,
        stale_after.as_millis() as u64,
      );
      let (entry, removable) = match verdict {
        Verdict::Live => (
          entry("held", "held: its record is live", Some(contents)),
          false,
        ),
        Verdict::Free => (entry("free", "free: released, nobody uses it", None), true),
        Verdict::Stale(why) => (entry("stale", &why, Some(contents)), true),
      };
      judged = Some((entry, removable));
      removable
    });
    match (removal, judged) {
      (Ok(Removal::Done), Some((entry, true))) => report.removed.push(entry),
      (Ok(Removal::Done), Some((entry, false))) => report.kept.push(entry),
      (Ok(Removal::Failed(e)), Some((mut entry, _))) => {
        entry["reason"] = json!(not_removed(&entry["reason"], &e));
        report.kept.push(entry);
      }
      (Err(e), _) => report.kept.push(entry(
        "unsafe",
        &format!("not inspected: {}", e.message),
        None,
      )),
      _ => report.kept.push(entry(
        "held",
        "held: another host is claiming it (its claim file is taken), or it was just replaced",
        None,
      )),
    }
  }
  Ok(report)
}

#[cfg(test)]
mod tests {
  use super::os_lock::TryLock;
  use super::*;
  use crate::record::LockRecord;
  use crate::test_support::temp_dir;

  #[test]
  fn cleanup_removes_dead_and_keeps_live_foreign_records() {
    let root = temp_dir("inspect");
    let locks = paths::lock_dir_of(&root);
    fs::create_dir_all(&locks).unwrap();
    let me = identity::current();
    let mut dead = LockRecord::new_for(me, "dead", "/x/tasks.json", now_ms());
    dead.pid = Some(i64::from(i32::MAX));
    fs::write(locks.join("tasks.json.lock"), dead.to_bytes(0)).unwrap();
    let mut foreign = LockRecord::new_for(me, "far", "/x/current.json", now_ms());
    foreign.hostname = Some("another-host".into());
    fs::write(locks.join("current.json.lock"), foreign.to_bytes(0)).unwrap();
    fs::write(locks.join("junk.json.lock"), b"\x00\x01 not json").unwrap();

    let dry = cleanup(&root, Duration::from_secs(30), true).unwrap();
    assert_eq!(dry.removed.len(), 2);
    assert!(locks.join("tasks.json.lock").exists());

    let report = cleanup(&root, Duration::from_secs(30), false).unwrap();
    assert_eq!(report.removed.len(), 2, "{report:?}");
    assert_eq!(report.kept.len(), 1);
    assert_eq!(report.kept[0]["lockId"], "far");
    assert!(!locks.join("tasks.json.lock").exists());
    assert!(!locks.join("junk.json.lock").exists());
    assert!(locks.join("current.json.lock").exists());
  }

  #[test]
  fn a_held_kernel_lock_is_reported_held() {
    let root = temp_dir("inspect");
    let locks = paths::lock_dir_of(&root);
    fs::create_dir_all(&locks).unwrap();
    let path = locks.join("tasks.json.lock");
    let TryLock::Locked(lock) = LockFile::try_acquire(&path, None).unwrap() else {
      panic!("busy")
    };
    let view = inspect(&path, Duration::from_secs(30)).unwrap().unwrap();
    assert!(view.is_held());
    let report = cleanup(&root, Duration::from_secs(30), false).unwrap();
    assert_eq!(report.kept.len(), 1);
    assert!(path.exists());
    lock.unlock();
    assert_eq!(
      inspect(&path, Duration::from_secs(30))
        .unwrap()
        .unwrap()
        .verdict,
      Verdict::Free
    );
    let report = cleanup(&root, Duration::from_secs(30), false).unwrap();
    assert_eq!(
      report.removed[0]["reason"],
      "free: released, nobody uses it"
    );
    assert!(!path.exists());
  }
}
