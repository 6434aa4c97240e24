//! The seam between this process's lock table and the place where exclusion between processes
//! is decided: a lock file with a kernel lock (the file backend), or a lock server (Redis, etcd).
//! A backend takes locks (one try, or a wait on behalf of this process's queue), and hands out
//! [`Grant`]s: one held lock each, which the table refreshes, checks before a commit, and
//! releases. Everything else (the queue, deadlines, metrics, the atomic store) is shared.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::Result;
use crate::paths::Target;
use crate::record::LockRecord;

/// What an acquire asks for, besides the lock itself.
#[derive(Debug, Clone)]
pub struct Request {
  /// The file the caller wants to protect (several files may share one lock).
  pub file: std::path::PathBuf,
  /// How old another host's heartbeat may be before its lock counts as abandoned.
  pub stale_after: Duration,
  /// The priority and arrival of the waiter this is for (the head of this process's queue for
  /// a wait): they rank it among other processes' waiters (the file backend's ticket queue).
  pub priority: f64,
  pub arrival: Instant,
}

/// The outcome of a refresh (heartbeat, lease renewal).
#[derive(Debug)]
pub enum Refreshed {
  Held,
  /// The lock is no longer ours: taken over, expired, or its lock file replaced.
  Lost(String),
  /// We could not tell (a network error): not a success, so no deadline moves.
  Unknown(String),
}

/// One held lock. The lock table keeps each grant behind a guard of its own that release also
/// takes, so a refresh or a pre-commit check can never run after the hold has ended.
pub trait Grant: Send {
  fn lock_id(&self) -> &str;
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
  /// caller's thread. A lock server's try is a round trip, never made on Node's event loop.
  fn tries_locally(&self) -> bool {
    false
  }
  /// One try without waiting: `Ok(None)` when somebody else holds the lock.
  fn try_acquire(&self, target: &Target, request: &Request) -> Result<Option<Box<dyn Grant>>>;
  /// Waits for the lock on behalf of this process's queue for `target`'s lock. `head` gives the
  /// request of whoever is first in that queue when the lock comes free, or `None` when nobody
  /// waits any more, in which case the wait ends with `Ok(None)`.
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
  /// Whether a live holder exists (a stale record does not count).
  fn is_locked(&self, target: &Target, stale_after: Duration) -> Result<bool>;
  /// The holder's record and its judgement (`state`, `staleReason`, …), or `None` when free.
  fn lock_info(&self, target: &Target, stale_after: Duration) -> Result<Option<Value>>;
  /// Every lock of the project at `root`, judged as in [`Backend::lock_info`] (free ones too).
  fn list(&self, root: &std::path::Path, stale_after: Duration) -> Result<Vec<Value>>;
  /// Removes the project's abandoned locks: `{ removed: [...], kept: [...] }`.
  fn cleanup(&self, root: &std::path::Path, stale_after: Duration, dry_run: bool) -> Result<Value>;
}
