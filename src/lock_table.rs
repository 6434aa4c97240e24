//! This process's locks: which lock files it holds, and who in it waits for which, first come
//! first served. An uncontended acquire takes the kernel lock right here, without a thread hop,
//! on a handle kept open from the previous hold; when the lock is taken, the waiter joins its
//! lock file's queue, and one thread per lock file waits in the kernel (a blocking flock) on
//! behalf of the whole queue, so a release in any process hands over within the kernel's
//! wake-up time and waiting burns no CPU.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::deadlines;
use crate::error::{LockError, Result};
use crate::heartbeat;
use crate::identity::{self, now_ms};
use crate::metrics;
use crate::os_lock::{self, LockFile, Probe, TryLock};
use crate::paths::{self, Target};
use crate::record::{self, Contents, LockRecord};
use crate::staleness::{self, Verdict};
use crate::waiting_room::WaitingRoom;

pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_STALE_MS: u64 = 30_000;
/// How often a waiter looks again at a lock that only a record protects (another host's, or
/// a legacy one): no kernel wake-up comes for those.
const RECORD_POLL: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, Copy)]
pub struct AcquireOptions {
  /// `None` waits for ever; zero means a single try.
  pub timeout: Option<Duration>,
  pub stale_after: Duration,
}

pub(crate) struct Held {
  pub lock_id: String,
  pub target: PathBuf,
  pub lock: LockFile,
  pub record: LockRecord,
  pub since: Instant,
  /// Set when the lock file was removed or replaced under us, or our record taken over: the
  /// lock no longer excludes, and a write under it must fail with `ELOCKLOST`.
  pub lost: bool,
}

struct Waiter {
  id: u64,
  target: PathBuf,
  stale_after: Duration,
  enqueued: Instant,
  complete: Completion,
}

#[derive(Default)]
struct Entry {
  held: Option<Held>,
  /// The handle of the last hold, unlocked, kept for the next uncontended acquire.
  idle: Option<LockFile>,
  /// Where the uncontended path looks for waiting processes before taking the lock.
  room: Option<WaitingRoom>,
  queue: VecDeque<Waiter>,
  kernel_waiter_running: bool,
}

type Table = HashMap<PathBuf, Entry>;

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| Mutex::new(HashMap::new()));
/// Signalled when a waiter joins a queue, for the idle waiting threads.
static WAITER_ADDED: Condvar = Condvar::new();
/// How long a waiting thread with nobody to wait for stays for the next waiter: spawning a
/// thread for every contended acquire would cost more than the handoff itself.
const IDLE_WAITING_THREAD: Duration = Duration::from_secs(10);

fn table() -> MutexGuard<'static, Table> {
  // Nothing panics while holding it; if something did, the table is still consistent.
  TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A kernel lock made ours, with our record written in it.
struct Won {
  lock_id: String,
  record: LockRecord,
  lock: LockFile,
}

enum Claim {
  Won(Box<Won>),
  /// What was left is a record the kernel lock does not cover (another host's, or a legacy
  /// one) that is still live: we must respect it and wait. The handle is unlocked.
  Respected(LockFile),
}

/// Makes a freshly locked lock file ours: writes our record over whatever was left.
fn claim(mut lock: LockFile, target: &Path, stale_after: Duration) -> Result<Claim> {
  let previous = lock.read();
  let me = identity::current();
  let now = now_ms();
  let recovered = match staleness::judge(&previous, false, me, now, stale_after.as_millis() as u64)
  {
    Verdict::Live => {
      lock.unlock();
      return Ok(Claim::Respected(lock));
    }
    Verdict::Free => false,
    Verdict::Stale(_) => true,
  };
  if !lock.is_writable() {
    // Another user's stale lock file that we may not write: replace it with our own.
    let path = lock.path().to_path_buf();
    lock.remove();
    return match LockFile::try_acquire(&path, None)? {
      TryLock::Locked(fresh) if fresh.is_writable() => claim(fresh, target, stale_after),
      TryLock::Locked(fresh) | TryLock::Busy(fresh) if !fresh.is_writable() => {
        fresh.unlock();
        Err(LockError::io(
          &std::io::Error::from_raw_os_error(libc::EACCES),
          "Cannot write the lock file (owned by another user, in a directory that keeps it)",
          &path,
        ))
      }
      TryLock::Locked(fresh) | TryLock::Busy(fresh) => Ok(Claim::Respected(fresh)),
    };
  }
  let lock_id = record::new_lock_id();
  let record = LockRecord::new_for(me, &lock_id, &target.to_string_lossy(), now);
  if let Err(e) = lock.write_record(&record) {
    lock.unlock();
    return Err(e);
  }
  if recovered {
    metrics::stale_recovered(&target.to_string_lossy());
  }
  Ok(Claim::Won(Box::new(Won {
    lock_id,
    record,
    lock,
  })))
}

fn install(entry: &mut Entry, target: &Path, won: Won) {
  entry.held = Some(Held {
    lock_id: won.lock_id,
    target: target.to_path_buf(),
    lock: won.lock,
    record: won.record,
    since: Instant::now(),
    lost: false,
  });
  heartbeat::ensure_running();
}

/// Resolves the caller's path and makes sure its lock directory is usable.
pub fn prepare(file: &str) -> Result<Target> {
  let target = paths::resolve(file)?;
  paths::ensure_lock_dir(target.lock_path.parent().expect("lock paths have a parent"))?;
  Ok(target)
}

/// The uncontended path: one non-blocking try, right on the caller's thread.
/// `Ok(None)` means somebody holds the lock (or others in this process are queued for it).
pub fn try_acquire(target: &Target, options: &AcquireOptions) -> Result<Option<String>> {
  let mut table = table();
  let entry = table.entry(target.lock_path.clone()).or_default();
  if let Some(held) = &entry.held {
    if held.target != target.file {
      return Err(deadlock_error(target, &held.target));
    }
    return Ok(None);
  }
  if !entry.queue.is_empty() {
    return Ok(None);
  }
  if entry.room.is_none() {
    entry.room = WaitingRoom::open(&target.lock_path);
  }
  if entry.room.as_ref().is_some_and(WaitingRoom::others_waiting) {
    // Others are waiting: queue behind them rather than barge in.
    return Ok(None);
  }
  let lock = match LockFile::try_acquire(&target.lock_path, entry.idle.take())? {
    TryLock::Locked(lock) => lock,
    TryLock::Busy(lock) => {
      entry.idle = Some(lock);
      return Ok(None);
    }
  };
  match claim(lock, &target.file, options.stale_after)? {
    Claim::Won(won) => {
      let lock_id = won.lock_id.clone();
      install(entry, &target.file, *won);
      drop(table);
      metrics::acquired(&target.file.to_string_lossy(), Duration::ZERO, false);
      Ok(Some(lock_id))
    }
    Claim::Respected(lock) => {
      entry.idle = Some(lock);
      Ok(None)
    }
  }
}

/// Called exactly once with a queued waiter's outcome, from the thread that decided it.
pub type Completion = Box<dyn FnOnce(Result<String>) + Send>;

/// Takes the lock if it is free, else joins its queue; `complete` gets the lockId or the error
/// (`ELOCKTIMEOUT` at the deadline, `ELOCKDEADLOCK`, …) once decided, possibly right away.
/// Called on the caller's thread, so the queue order is the order of the calls: first come,
/// first served.
pub fn acquire(target: Target, options: AcquireOptions, complete: Completion) {
  let started = Instant::now();
  match try_acquire(&target, &options) {
    Ok(Some(lock_id)) => return complete(Ok(lock_id)),
    Ok(None) => {}
    Err(e) => return complete(Err(e)),
  }
  if options.timeout == Some(Duration::ZERO) {
    metrics::timed_out(&target.file.to_string_lossy());
    return complete(Err(timeout_error(&target, Duration::ZERO)));
  }
  if let Err(why) = options
    .timeout
    .map_or(Ok(()), |_| deadlines::ensure_running())
  {
    return complete(Err(LockError::new("ELOCKINTERNAL", why)));
  }
  static NEXT_WAITER: AtomicU64 = AtomicU64::new(0);
  let waiter_id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
  let mut table = table();
  let entry = table.entry(target.lock_path.clone()).or_default();
  if !entry.kernel_waiter_running {
    let lock_path = target.lock_path.clone();
    let spawned = std::thread::Builder::new()
      .name("flowforge-lock-wait".into())
      .spawn(move || wait_in_kernel(lock_path));
    if let Err(e) = spawned {
      drop(table);
      return complete(Err(LockError::io(
        &e,
        "Cannot start a waiting thread for",
        &target.lock_path,
      )));
    }
    entry.kernel_waiter_running = true;
  }
  entry.queue.push_back(Waiter {
    id: waiter_id,
    target: target.file.clone(),
    stale_after: options.stale_after,
    enqueued: started,
    complete,
  });
  drop(table);
  WAITER_ADDED.notify_all();
  if let Some(timeout) = options.timeout {
    deadlines::add(started + timeout, move || {
      give_up(&target, waiter_id, timeout)
    });
  }
}

/// At a waiter's deadline: if it is still queued, it leaves with `ELOCKTIMEOUT`; if it was
/// granted meanwhile, nothing happens.
fn give_up(target: &Target, waiter_id: u64, timeout: Duration) {
  let waiter = {
    let mut table = table();
    let Some(entry) = table.get_mut(&target.lock_path) else {
      return;
    };
    let Some(index) = entry.queue.iter().position(|w| w.id == waiter_id) else {
      return;
    };
    entry.queue.remove(index)
  };
  if let Some(waiter) = waiter {
    metrics::timed_out(&target.file.to_string_lossy());
    (waiter.complete)(Err(timeout_error(target, timeout)));
  }
}

/// The body of the per-lock-file waiting thread: blocks in the kernel for the lock, hands it to
/// the first waiter still queued, and ends when nobody has waited for a while.
fn wait_in_kernel(lock_path: PathBuf) {
  // A room handle of this thread's own: a kernel lock belongs to an open file description.
  let room = WaitingRoom::open(&lock_path);
  loop {
    if !wait_for_waiters(&lock_path) {
      return;
    }
    if let Some(room) = &room {
      room.enter();
    }
    let acquired = LockFile::acquire_blocking(&lock_path);
    if let Some(room) = &room {
      room.leave();
    }
    let lock = match acquired {
      Ok(lock) => lock,
      Err(e) => {
        fail_all_waiters(&lock_path, &e);
        continue;
      }
    };
    // The first waiter stays queued until it is served, so its deadline can always find it.
    let mut table = table();
    let entry = table.entry(lock_path.clone()).or_default();
    let Some((target, stale_after)) = entry
      .queue
      .front()
      .map(|w| (w.target.clone(), w.stale_after))
    else {
      // Everyone who waited gave up meanwhile: the lock goes back as we found it.
      drop(table);
      lock.unlock();
      continue;
    };
    match claim(lock, &target, stale_after) {
      Ok(Claim::Won(won)) => {
        let waiter = entry.queue.pop_front().expect("checked above");
        let lock_id = won.lock_id.clone();
        install(entry, &target, *won);
        drop(table);
        metrics::acquired(&target.to_string_lossy(), waiter.enqueued.elapsed(), true);
        (waiter.complete)(Ok(lock_id));
      }
      Ok(Claim::Respected(_)) => {
        drop(table);
        std::thread::sleep(RECORD_POLL);
      }
      Err(e) => {
        let waiter = entry.queue.pop_front().expect("checked above");
        drop(table);
        (waiter.complete)(Err(e));
      }
    }
  }
}

/// Sleeps until the lock file's queue has someone in it (true), or gives up after an idle
/// while (false: the thread is no longer registered and must end).
fn wait_for_waiters(lock_path: &Path) -> bool {
  let mut table = table();
  let idle_since = Instant::now();
  loop {
    let entry = table.entry(lock_path.to_path_buf()).or_default();
    if !entry.queue.is_empty() {
      return true;
    }
    let Some(left) = IDLE_WAITING_THREAD.checked_sub(idle_since.elapsed()) else {
      entry.kernel_waiter_running = false;
      if entry.held.is_none() && entry.idle.is_none() {
        table.remove(lock_path);
      }
      return false;
    };
    table = WAITER_ADDED
      .wait_timeout(table, left)
      .unwrap_or_else(|e| e.into_inner())
      .0;
  }
}

fn fail_all_waiters(lock_path: &Path, error: &LockError) {
  let waiters: Vec<Waiter> = match table().get_mut(lock_path) {
    Some(entry) => entry.queue.drain(..).collect(),
    None => Vec::new(),
  };
  for waiter in waiters {
    (waiter.complete)(Err(error.clone()));
  }
}

/// Releases a lock this process holds. `Ok(false)`: nothing to release (already released).
pub fn release(target: &Target, lock_id: &str) -> Result<bool> {
  let mut table = table();
  let Some(entry) = table.get_mut(&target.lock_path) else {
    drop(table);
    return release_not_held(target, lock_id);
  };
  match &entry.held {
    Some(held) if held.lock_id == lock_id => {
      let held = entry.held.take().expect("checked above");
      metrics::released(&held.target.to_string_lossy(), held.since.elapsed());
      entry.idle = Some(give_up_hold(held));
      Ok(true)
    }
    Some(held) => Err(LockError::new(
      "ELOCKMISMATCH",
      format!(
        "Lock on {} was not released: lockId {lock_id} does not match the current holder's (this process holds it for {} under another lockId). Pass the lockId that acquireLock returned.",
        target.file.display(),
        held.target.display()
      ),
    )),
    None => {
      drop(table);
      release_not_held(target, lock_id)
    }
  }
}

/// Blanks our record and unlocks; the handle comes back for reuse. Writes go through our own
/// descriptor, so they only ever touch the inode we locked, even if the path names another
/// one by now (the next acquire notices that); a record that is no longer ours (taken over
/// after we stalled) is left alone.
fn give_up_hold(held: Held) -> LockFile {
  let Held {
    mut lock, lock_id, ..
  } = held;
  if lock.record_mentions(&lock_id) {
    lock.clear();
  }
  lock.unlock();
  lock
}

fn release_not_held(target: &Target, lock_id: &str) -> Result<bool> {
  match os_lock::probe(&target.lock_path)? {
    Probe::Held(Contents::Record(record)) => Err(LockError::new(
      "ELOCKMISMATCH",
      format!(
        "Lock on {} was not released: it is held by {}, not under lockId {lock_id}. Only the holder can release it.",
        target.file.display(),
        describe_record(&record)
      ),
    )),
    _ => Ok(false),
  }
}

/// Process exit: releases everything this process holds and removes the lock files it used
/// that nobody else holds now, so a project's lock directory does not fill up.
pub fn release_all() -> usize {
  let mut released = 0;
  let entries: Vec<Entry> = table().drain().map(|(_, entry)| entry).collect();
  for entry in entries {
    if let Some(room) = entry.room {
      room.remove_if_empty();
    }
    let handle = match entry.held {
      Some(held) => {
        released += 1;
        Some(give_up_hold(held))
      }
      None => entry.idle,
    };
    if let Some(handle) = handle {
      let path = handle.path().to_path_buf();
      if let Ok(TryLock::Locked(lock)) = LockFile::try_acquire(&path, Some(handle)) {
        if lock.read() == Contents::Empty {
          lock.remove();
        }
      }
    }
  }
  released
}

/// Confirms, right before a write, that we still hold the lock: same lock file on disk, our
/// record in it. A lock evicted while its holder stalled must not write.
pub fn verify_held(target: &Target, lock_id: &str) -> Result<()> {
  let table = table();
  let held = table
    .get(&target.lock_path)
    .and_then(|e| e.held.as_ref())
    .filter(|h| h.lock_id == lock_id);
  let lost = |why: &str| {
    LockError::new(
      "ELOCKLOST",
      format!(
        "The lock on {} was lost before the write ({why}); the file was not changed. Retry the update.",
        target.file.display()
      ),
    )
  };
  let Some(held) = held else {
    return Err(lost("this process no longer holds it"));
  };
  if held.lost || !held.lock.still_at_path() {
    return Err(lost("its lock file was removed or replaced"));
  }
  match held.lock.read() {
    Contents::Record(r) if r.lock_id.as_deref() == Some(lock_id) => Ok(()),
    Contents::Record(r) => Err(lost(&format!("{} took it over", describe_record(&r)))),
    _ => Err(lost("its record was overwritten")),
  }
}

/// Visits every lock this process holds (the heartbeat).
pub(crate) fn for_each_held(mut visit: impl FnMut(&mut Held)) {
  for entry in table().values_mut() {
    if let Some(held) = entry.held.as_mut() {
      visit(held);
    }
  }
}

/// The held lock's age if this process holds it: for status reports.
pub fn held_here(lock_path: &Path) -> Option<(String, Duration)> {
  table()
    .get(lock_path)
    .and_then(|e| e.held.as_ref())
    .map(|h| (h.lock_id.clone(), h.since.elapsed()))
}

fn deadlock_error(target: &Target, held_for: &Path) -> LockError {
  LockError::new(
    "ELOCKDEADLOCK",
    format!(
      "This process already holds the lock {} for {}, and {} shares that lock (same file name). Waiting for it would wait on ourselves: release the first lock before taking the second.",
      target.lock_path.display(),
      held_for.display(),
      target.file.display()
    ),
  )
}

fn timeout_error(target: &Target, waited: Duration) -> LockError {
  let holder = match held_here(&target.lock_path) {
    Some((_, age)) => format!(
      "held by this process (pid {}) for {:.1} s",
      identity::current().pid,
      age.as_secs_f64()
    ),
    None => match os_lock::probe(&target.lock_path) {
      Ok(Probe::Held(Contents::Record(r)) | Probe::Free(Contents::Record(r))) => {
        format!("held by {}", describe_record(&r))
      }
      _ => "held by an unknown process".to_string(),
    },
  };
  LockError::new(
    "ELOCKTIMEOUT",
    format!(
      "Lock acquisition timeout after {} ms for {}: {holder}. Retry later, raise the timeout, or inspect it with `npx flowforge-lock status`.",
      waited.as_millis(),
      target.file.display()
    ),
  )
}

/// "pid 42 (user alice on host devbox) for 3.2 s"
pub fn describe_record(record: &LockRecord) -> String {
  let mut text = format!(
    "pid {}",
    record.pid.map_or("?".to_string(), |p| p.to_string())
  );
  text.push_str(&format!(
    " (user {} on host {})",
    record.username.as_deref().unwrap_or("?"),
    record.hostname.as_deref().unwrap_or("? (legacy lock)")
  ));
  if let Some(since) = record.acquired_at {
    text.push_str(&format!(
      " for {:.1} s",
      now_ms().saturating_sub(since) as f64 / 1000.0
    ));
  }
  text
}
