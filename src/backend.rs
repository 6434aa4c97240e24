//! The seam between this process's lock table and the place where exclusion between processes
//! is decided: a lock file with a kernel lock (the file backend), or a lock server (Redis, etcd).
//! A backend takes locks (one try, or a wait on behalf of this process's queue), and hands out
//! [`Grant`]s: one held lock each, which the table refreshes, checks before a commit, and
//! releases. Everything else (the queue, deadlines, metrics, the atomic store) is shared. The
//! two lock servers (Redis, etcd) also share from here what they make alike: a request's holder
//! record ([`Request::holder`]) and a lock's view ([`server_view`]).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{LockError, Result};
use crate::identity::{self, now_ms};
use crate::paths::Target;
use crate::record::{new_lock_id, LockRecord};

/// How a lock is held: alone (a writer), or beside other shared holders (readers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
  #[default]
  Exclusive,
  Shared,
}

impl LockMode {
  /// `'exclusive'` or `'shared'`, as JS callers name them.
  pub fn parse(name: &str) -> Result<LockMode> {
    match name {
      "exclusive" => Ok(LockMode::Exclusive),
      "shared" => Ok(LockMode::Shared),
      other => Err(LockError::invalid_value(format!(
        "The lock mode must be 'exclusive' (the default: one holder, who may write) or 'shared' (readers together, no writer). Received {other:?}"
      ))),
    }
  }

  /// The name JS callers use (`mode: 'shared'`) and `status` shows.
  pub fn name(self) -> &'static str {
    match self {
      LockMode::Exclusive => "exclusive",
      LockMode::Shared => "shared",
    }
  }
}

/// What an acquire asks for, besides the lock itself.
#[derive(Debug, Clone)]
pub struct Request {
  /// The file the caller wants to protect (several files may share one lock).
  pub file: std::path::PathBuf,
  /// How old another host's heartbeat may be before its lock counts as abandoned.
  pub stale_after: Duration,
  /// Exclusive (a writer) or shared (one of several readers).
  pub mode: LockMode,
  /// The priority and arrival of the waiter this is for (the head of this process's queue for
  /// a wait): they rank it among other processes' waiters (the file backend's ticket queue).
  pub priority: f64,
  pub arrival: Instant,
}

impl Request {
  /// A new holder's record for this request: this process, a lock id of its own, the request's
  /// file, taken now. A lock server stores it as the value of its key (the file backend writes
  /// its own, beside the kernel lock).
  pub fn holder(&self) -> LockRecord {
    LockRecord::new_for(
      identity::current(),
      &new_lock_id(),
      &self.file.to_string_lossy(),
      now_ms(),
    )
  }
}

/// A lock server's view of one of its locks (`getLockInfo`, `listLocks`, `status`): the holder's
/// record, when the server's value is one, with the server's own `fields` laid over it.
pub fn server_view(holder: Option<&LockRecord>, fields: Value) -> Value {
  let mut out = holder.map_or_else(|| json!({}), LockRecord::to_json);
  if let (Value::Object(out), Value::Object(fields)) = (&mut out, fields) {
    out.extend(fields);
  }
  out
}

/// Aging: a waiter's effective priority rises by one level per this much waiting. Shared by this
/// process's queue (lock_table.rs) and the file backend's queue between processes, which must
/// rank alike.
pub const AGING_STEP: Duration = Duration::from_secs(1);

/// The outcome of a refresh (heartbeat, lease renewal), as every backend and both lock-server
/// engines report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
  /// Still ours: a lock server's lease was renewed and the grant's deadline moved on.
  Held,
  /// The lock is no longer ours, for sure: taken over, expired, its key deleted or its lock
  /// file replaced; the reason says which.
  Lost(String),
  /// We could not tell (a network error, the server did not answer): not a success, so no
  /// deadline moves; the lock table decides when to give up.
  Unknown(String),
}

/// One held lock. The lock table keeps each grant behind a guard of its own that release also
/// takes, so a refresh or a pre-commit check can never run after the hold has ended.
pub trait Grant: Send {
  fn lock_id(&self) -> &str;
  /// The mode the lock was taken in: lock servers take exclusive locks only.
  fn mode(&self) -> LockMode {
    LockMode::Exclusive
  }
  /// The record describing the holder (shown by `getLockInfo` and `status`).
  fn record(&self) -> &LockRecord;
  /// A number that rises with every grant of this lock, for backends that issue one.
  fn fencing_token(&self) -> Option<u64> {
    None
  }
  /// How often this grant wants [`Grant::refresh`]; `None` follows the process's heartbeat
  /// interval (`HEARTBEAT_INTERVAL`, which tests may shorten).
  fn refresh_interval(&self) -> Option<Duration> {
    None
  }
  /// Heartbeat or lease renewal.
  fn refresh(&mut self) -> Refreshed;
  /// When the holder must count the lock lost by its own clock, if it can expire at all.
  fn deadline(&self) -> Option<Instant> {
    None
  }
  /// Right before a commit becomes visible: is the lock still ours? `ELOCKLOST` if not.
  fn verify(&self) -> Result<()>;
  /// Gives the lock up.
  fn release(self: Box<Self>);
  /// The descriptor whose inheritance keeps the lock held (file backend), for `exec`.
  fn inheritable_fd(&self) -> Option<i32> {
    None
  }
}

/// Where locks are decided.
pub trait Backend: Send + Sync {
  /// Whether a try costs only local system calls (the file backend), so it may run on the
  /// caller's thread whenever it likes. A lock server's try is a round trip: see
  /// [`Backend::try_acquire_here`].
  fn tries_locally(&self) -> bool {
    false
  }
  /// One try without waiting: `Ok(None)` when somebody else holds the lock.
  fn try_acquire(&self, target: &Target, request: &Request) -> Result<Option<Box<dyn Grant>>>;
  /// One try on the caller's thread, which may be Node's event loop: made only when it waits on
  /// nothing but local system calls or one answer from a connection already open (never a
  /// connect), within `within` (the caller's whole wait; `None`: for ever) and the backend's own
  /// bound. `Ok(None)` when refused or not made (the caller then queues, and the waiting thread
  /// asks). By default the local try, and none for a lock server.
  fn try_acquire_here(
    &self,
    target: &Target,
    request: &Request,
    _within: Option<Duration>,
  ) -> Result<Option<Box<dyn Grant>>> {
    if self.tries_locally() {
      self.try_acquire(target, request)
    } else {
      Ok(None)
    }
  }
  /// Waits for the lock on behalf of this process's queue for `target`'s lock. `head` gives the
  /// request of whoever is first in that queue when the lock comes free, or `None` when nobody
  /// waits any more, in which case the wait ends with `Ok(None)`. A blocking call interrupted by
  /// a signal (a synchronous caller's deadline alarm, see thread_alarm.rs) asks `head` again.
  fn wait_acquire(
    &self,
    target: &Target,
    head: &dyn Fn() -> Option<Request>,
  ) -> Result<Option<Box<dyn Grant>>>;
  /// Whether this process's own hold keeps [`Backend::wait_acquire`] from seeing the lock as
  /// taken (a file system without shared kernel locks): the lock table then waits for its own
  /// holder to release before asking the backend.
  fn waits_for_local_holder(&self) -> bool {
    false
  }
  /// `Ok` when `target`'s lock can be taken in shared mode here. Lock servers keep one holder
  /// per key: shared mode is the file backend's (`ELOCKUNSUPPORTED` elsewhere).
  fn check_shared(&self, target: &Target) -> Result<()> {
    Err(LockError::new(
      "ELOCKUNSUPPORTED",
      format!(
        "Shared (read) locks are not supported by the lock server backend (Redis or etcd) that decides the locks of {} (FLOWFORGE_LOCK_BACKEND, configure({{ backend }}) or .flowforge/lock-config.json): it keeps one holder per lock. Take an exclusive lock (drop mode: 'shared'), or read without any lock with readJSON, which never waits and always returns a whole committed document.",
        target.root.display()
      ),
    ))
  }
  /// Whether a live holder exists (a stale record does not count).
  fn is_locked(&self, target: &Target, stale_after: Duration) -> Result<bool>;
  /// The holder's record and its judgement (`state`, `staleReason`, …), or `None` when free.
  fn lock_info(&self, target: &Target, stale_after: Duration) -> Result<Option<Value>>;
  /// Every lock of the project at `root`, judged as in [`Backend::lock_info`] (free ones too).
  fn list(&self, root: &std::path::Path, stale_after: Duration) -> Result<Vec<Value>>;
  /// Removes the project's abandoned locks: `{ removed: [...], kept: [...] }`.
  fn cleanup(&self, root: &std::path::Path, stale_after: Duration, dry_run: bool) -> Result<Value>;
}
