//! The file backend: exclusion by a kernel lock (`flock`) held on
//! `<root>/.flowforge/.locks/<name>.lock` for the whole hold, with the holder's record written
//! in it. A holder that dies, even by SIGKILL, releases at once on its host; hosts that share the
//! directory without sharing kernel locks judge the record by its heartbeat (`staleness.rs`).
//!
//! Between holds the lock file and an unlocked handle on it are kept for the next acquire, so an
//! uncontended lock costs a handful of system calls; waiting processes sit in the lock's waiting
//! room (`waiting_room.rs`) so that a releasing process does not barge in ahead of them.
//!
//! A shared (read) hold takes the same lock file's kernel lock in shared mode, on an open file
//! description of its own, and keeps its record in a reader file beside it (`readers.rs`): the
//! lock file's one record stays the exclusive holder's.

pub mod claim;
pub mod inspect;
pub mod os_lock;
pub mod readers;
pub mod staleness;
pub mod waiting_room;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use crate::backend::{Backend, Grant, LockMode, Refreshed, Request};
use crate::error::{LockError, Result};
use crate::failpoint;
use crate::identity::{self, now_ms};
use crate::metrics;
use crate::paths::Target;
use crate::record::{self, LockRecord};
use os_lock::{LockFile, TryLock};
use staleness::Verdict;
use waiting_room::WaitingRoom;

/// How often a waiter looks again at a lock that only a record protects (another host's, or a
/// legacy one): no kernel wake-up comes for those.
const RECORD_POLL: Duration = Duration::from_millis(25);

/// What this process keeps of a lock file between holds.
#[derive(Default)]
struct Slot {
  /// The handle of the last hold, unlocked, for the next uncontended acquire.
  idle: Option<LockFile>,
  /// Where the uncontended path looks for waiting processes before taking the lock.
  room: Option<WaitingRoom>,
}

#[derive(Default)]
pub struct FileBackend {
  slots: Mutex<HashMap<PathBuf, Slot>>,
}

/// The one file backend of this process (its idle handles are per process).
pub fn backend() -> &'static FileBackend {
  static BACKEND: LazyLock<FileBackend> = LazyLock::new(FileBackend::default);
  &BACKEND
}

impl FileBackend {
  fn slots(&self) -> MutexGuard<'_, HashMap<PathBuf, Slot>> {
    self.slots.lock().unwrap_or_else(|e| e.into_inner())
  }

  fn park_idle(&self, lock: LockFile) {
    let path = lock.path().to_path_buf();
    self.slots().entry(path).or_default().idle = Some(lock);
  }

  /// Process exit: removes the lock files and waiting rooms this process used that nobody
  /// uses now, so a project's lock directory does not fill up. Held locks are released first.
  pub fn remove_unused(&self) {
    let slots: Vec<(PathBuf, Slot)> = self.slots().drain().collect();
    for (path, slot) in slots {
      readers::remove_idle(&path);
      if let Some(room) = slot.room {
        room.remove_if_empty();
      }
      if let Ok(TryLock::Locked(lock)) = LockFile::try_acquire(&path, slot.idle) {
        if lock.read() == record::Contents::Empty {
          lock.remove();
          readers::remove_gate_if_unused(&path);
        }
      }
    }
  }
}

/// A kernel lock made ours, with our record in it (in the lock file, or for a shared hold in
/// our reader file).
struct FileGrant {
  lock_id: String,
  record: LockRecord,
  lock: LockFile,
  reader: Option<readers::ReaderFile>,
}

enum Claim {
  Won(Box<FileGrant>),
  /// What was left is a record the kernel lock does not cover (another host's, or a legacy
  /// one) that is still live: we must respect it and wait. The handle is unlocked.
  Respected(LockFile),
}

/// Makes a freshly locked lock file ours, inside a claim where one is needed (see claim.rs): only
/// one claimer at a time may judge the record and write its own, even across hosts that share
/// no kernel locks.
fn claim(lock: LockFile, request: &Request) -> Result<Claim> {
  if request.mode == LockMode::Shared {
    return claim_shared(lock, request);
  }
  let lock_dir = lock.path().parent().unwrap_or(Path::new("/"));
  if !claim::needed(lock_dir) {
    return claim_record(lock, request);
  }
  let ticket = claim::take(lock.path(), os_lock::kernel_locks(), request.stale_after)?;
  let Some(ticket) = ticket else {
    lock.unlock();
    return Ok(Claim::Respected(lock));
  };
  let outcome = claim_record(lock, request);
  let still_ours = ticket.finish();
  match outcome {
    Ok(Claim::Won(grant)) if !still_ours => {
      // We stalled mid-claim long enough for another host to take the claim over: our record
      // must not stand beside whatever that claimer decided.
      grant.lock.clear_if_ours(&grant.lock_id);
      grant.lock.unlock();
      Ok(Claim::Respected(grant.lock))
    }
    other => other,
  }
}

/// Writes our record over whatever was left, unless what was left is a live holder's.
fn claim_record(mut lock: LockFile, request: &Request) -> Result<Claim> {
  let previous = lock.read_raw();
  let previous_len = previous.as_ref().map_or(0, Vec::len);
  let contents = match previous {
    Ok(bytes) => record::parse(&bytes),
    Err(why) => record::Contents::Unreadable(why),
  };
  let me = identity::current();
  let now = now_ms();
  let stale_ms = request.stale_after.as_millis() as u64;
  let recovered = match staleness::judge(&contents, false, me, now, stale_ms) {
    Verdict::Live => {
      lock.unlock();
      return Ok(Claim::Respected(lock));
    }
    Verdict::Free => false,
    Verdict::Stale(_) => true,
  };
  if !lock.is_writable() {
    return replace_unwritable(lock, request);
  }
  // Between the judgement and the write: where two claimers without claim files both win.
  failpoint!("claim::judged");
  let lock_id = record::new_lock_id();
  let record = LockRecord::new_for(me, &lock_id, &request.file.to_string_lossy(), now);
  if let Err(e) = lock.write_record(&record, previous_len) {
    lock.unlock();
    return Err(e);
  }
  if recovered {
    metrics::stale_recovered(&request.file.to_string_lossy());
  }
  Ok(Claim::Won(Box::new(FileGrant {
    lock_id,
    record,
    lock,
    reader: None,
  })))
}

/// A shared hold: the lock file's record is left as it is (it is a writer's, live or not), unless
/// it is a live record that the kernel lock does not cover (a legacy FlowForge lock), which we
/// respect; our record goes into a reader file of our own. Shared mode is refused where claims
/// are needed ([`Backend::check_shared`]), so no claim is taken here.
fn claim_shared(lock: LockFile, request: &Request) -> Result<Claim> {
  let me = identity::current();
  let now = now_ms();
  let stale_ms = request.stale_after.as_millis() as u64;
  if staleness::judge(&lock.read(), false, me, now, stale_ms) == Verdict::Live {
    lock.unlock();
    return Ok(Claim::Respected(lock));
  }
  let lock_id = record::new_lock_id();
  let record = LockRecord::new_for(me, &lock_id, &request.file.to_string_lossy(), now);
  match readers::ReaderFile::create(lock.path(), &record) {
    Ok(reader) => Ok(Claim::Won(Box::new(FileGrant {
      lock_id,
      record,
      lock,
      reader: Some(reader),
    }))),
    Err(e) => {
      lock.unlock();
      Err(e)
    }
  }
}

/// Another user's stale lock file that we may lock but not write: replace it with our own.
fn replace_unwritable(lock: LockFile, request: &Request) -> Result<Claim> {
  let path = lock.path().to_path_buf();
  lock.remove();
  match LockFile::try_acquire(&path, None)? {
    TryLock::Locked(fresh) if fresh.is_writable() => claim_record(fresh, request),
    TryLock::Locked(fresh) | TryLock::Busy(fresh) if !fresh.is_writable() => {
      fresh.unlock();
      Err(LockError::io(
        &std::io::Error::from_raw_os_error(libc::EACCES),
        "Cannot write the lock file (owned by another user, in a directory that keeps it)",
        &path,
      ))
    }
    TryLock::Locked(fresh) | TryLock::Busy(fresh) => Ok(Claim::Respected(fresh)),
  }
}

impl Grant for FileGrant {
  fn lock_id(&self) -> &str {
    &self.lock_id
  }

  fn record(&self) -> &LockRecord {
    &self.record
  }

  /// Rewrites the heartbeat in place. A record that is no longer ours was taken over (we stalled
  /// past the stale threshold on a file system whose kernel locks other hosts do not see):
  /// rewriting it would hide that from our own next write.
  fn refresh(&mut self) -> Refreshed {
    if !self.lock.still_at_path() {
      return Refreshed::Lost("its lock file was removed or replaced".into());
    }
    if let Some(reader) = &mut self.reader {
      if !reader.still_at_path() {
        return Refreshed::Lost("its reader file was removed".into());
      }
      self.record.heartbeat = Some(now_ms());
      return match reader.write(&self.record) {
        Ok(()) => Refreshed::Held,
        Err(e) => Refreshed::Unknown(e.message),
      };
    }
    let Ok(bytes) = self.lock.read_raw() else {
      return Refreshed::Unknown("cannot read the lock record".into());
    };
    if !os_lock::mentions(&bytes, &self.lock_id) {
      return Refreshed::Lost(match record::parse(&bytes) {
        record::Contents::Record(r) => format!("{} took it over", r.describe()),
        _ => "its record was overwritten".into(),
      });
    }
    failpoint!("heartbeat::before_write");
    self.record.heartbeat = Some(now_ms());
    match self.lock.write_record(&self.record, bytes.len()) {
      Ok(()) => Refreshed::Held,
      Err(e) => Refreshed::Unknown(e.message),
    }
  }

  fn verify(&self) -> Result<()> {
    let lost = |why: &str| lost_error(&self.record, why);
    if !self.lock.still_at_path() {
      return Err(lost("its lock file was removed or replaced"));
    }
    if let Some(reader) = &self.reader {
      return match reader.still_at_path() {
        true => Ok(()),
        false => Err(lost("its reader file was removed")),
      };
    }
    match self.lock.read() {
      record::Contents::Record(r) if r.lock_id.as_deref() == Some(self.lock_id.as_str()) => Ok(()),
      record::Contents::Record(r) => Err(lost(&format!("{} took it over", r.describe()))),
      _ => Err(lost("its record was overwritten")),
    }
  }

  /// Blanks our record and unlocks; the handle goes back to the backend for reuse. Writes go
  /// through our own descriptor, so they only ever touch the inode we locked, even if the path
  /// names another one by now (the next acquire notices that).
  fn release(self: Box<Self>) {
    let FileGrant {
      lock,
      lock_id,
      reader,
      ..
    } = *self;
    match reader {
      Some(reader) => reader.release(lock.path()),
      None => lock.clear_if_ours(&lock_id),
    }
    lock.unlock();
    backend().park_idle(lock);
  }

  fn inheritable_fd(&self) -> Option<i32> {
    Some(self.lock.raw_fd())
  }
}

fn lost_error(record: &LockRecord, why: &str) -> LockError {
  LockError::new(
    "ELOCKLOST",
    format!(
      "The lock on {} was lost before the write ({why}); the file was not changed. Retry the update.",
      record.file.as_deref().unwrap_or("?")
    ),
  )
}

impl Backend for FileBackend {
  fn tries_locally(&self) -> bool {
    true
  }

  fn try_acquire(&self, target: &Target, request: &Request) -> Result<Option<Box<dyn Grant>>> {
    let (idle, room_says_wait) = {
      let mut slots = self.slots();
      let slot = slots.entry(target.lock_path.clone()).or_default();
      if slot.room.is_none() {
        slot.room = WaitingRoom::open(&target.lock_path);
      }
      // Others are waiting: queue behind them rather than barge in.
      let waiting = slot.room.as_ref().is_some_and(WaitingRoom::others_waiting);
      (slot.idle.take(), waiting)
    };
    if room_says_wait {
      if let Some(idle) = idle {
        self.park_idle(idle);
      }
      return Ok(None);
    }
    let lock = match LockFile::try_acquire_as(&target.lock_path, idle, request.mode)? {
      TryLock::Locked(lock) => lock,
      TryLock::Busy(lock) => {
        self.park_idle(lock);
        return Ok(None);
      }
    };
    match claim(lock, request)? {
      Claim::Won(grant) => Ok(Some(grant)),
      Claim::Respected(lock) => {
        self.park_idle(lock);
        Ok(None)
      }
    }
  }

  /// Blocks in the kernel for the lock in the mode of the queue's head (inside the waiting
  /// room, so the fast path of others sees us, and past the writers' gate: readers.rs), then
  /// claims it for whoever heads the queue by then.
  fn wait_acquire(
    &self,
    target: &Target,
    head: &dyn Fn() -> Option<Request>,
  ) -> Result<Option<Box<dyn Grant>>> {
    // A room handle of this wait's own: a kernel lock belongs to an open file description.
    let room = WaitingRoom::open(&target.lock_path);
    loop {
      let Some(mode) = head().map(|request| request.mode) else {
        return Ok(None);
      };
      if let Some(room) = &room {
        room.enter();
      }
      let gate = readers::Gate::pass(&target.lock_path, mode);
      let acquired = LockFile::acquire_blocking(&target.lock_path, mode);
      drop(gate);
      if let Some(room) = &room {
        room.leave();
      }
      let Some(lock) = acquired? else {
        // Interrupted (a synchronous caller's deadline): wait on only for someone still waiting.
        if head().is_none() {
          return Ok(None);
        }
        continue;
      };
      let Some(request) = head() else {
        // Everyone who waited gave up meanwhile: the lock goes back as we found it.
        lock.unlock();
        return Ok(None);
      };
      if request.mode != mode {
        // The head changed (a higher priority came, or the head gave up) and wants the other
        // mode: wait again in its mode.
        lock.unlock();
        continue;
      }
      match claim(lock, &request)? {
        Claim::Won(grant) => return Ok(Some(grant)),
        Claim::Respected(_) => std::thread::sleep(RECORD_POLL),
      }
    }
  }

  fn waits_for_local_holder(&self) -> bool {
    !os_lock::kernel_locks()
  }

  /// Shared holds rest on shared kernel locks. Where the lock directory may be shared by hosts
  /// whose kernel locks we do not see (a network file system, or kernel locks off), a writer
  /// there would judge only the lock file's record, which readers do not write: refused.
  fn check_shared(&self, target: &Target) -> Result<()> {
    let lock_dir = target.lock_path.parent().unwrap_or(Path::new("/"));
    if !claim::needed(lock_dir) {
      return Ok(());
    }
    Err(LockError::new(
      "ELOCKUNSUPPORTED",
      format!(
        "Shared (read) locks are not supported for {}: its lock directory {} is on a network file system (or kernel locks are off), where a writer on another host cannot see this host's readers. Take an exclusive lock (drop mode: 'shared'), read without any lock with readJSON, or use a lock server backend for exclusive locks (docs/backends.md).",
        target.file.display(),
        lock_dir.display()
      ),
    ))
  }

  fn is_locked(&self, target: &Target, stale_after: Duration) -> Result<bool> {
    Ok(inspect::inspect(&target.lock_path, stale_after)?.is_some_and(|v| v.is_held()))
  }

  fn lock_info(&self, target: &Target, stale_after: Duration) -> Result<Option<Value>> {
    inspect::lock_info(&target.lock_path, stale_after)
  }

  fn list(&self, root: &Path, stale_after: Duration) -> Result<Vec<Value>> {
    inspect::list_json(root, stale_after)
  }

  fn cleanup(&self, root: &Path, stale_after: Duration, dry_run: bool) -> Result<Value> {
    let report = inspect::cleanup(root, stale_after, dry_run)?;
    Ok(serde_json::json!({ "removed": report.removed, "kept": report.kept }))
  }
}
