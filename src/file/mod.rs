//! The file backend: exclusion by a kernel lock (`flock`) held on
//! `<root>/.flowforge/.locks/<name>.lock` for the whole hold, with the holder's record written
//! in it. A holder that dies, even by SIGKILL, releases at once on its host; hosts that share the
//! directory without sharing kernel locks judge the record by its heartbeat (`staleness.rs`).
//!
//! Between holds the lock file and an unlocked handle on it are kept for the next acquire, so an
//! uncontended lock costs a handful of system calls. Waiting processes line up in the lock's
//! ticket queue (`ticket_queue.rs`), which serves them by priority and arrival across processes
//! and keeps a releasing process from barging in ahead of them; where kernel locks are off or
//! the directory is on a network file system there is no queue, and waiters are woken in the
//! kernel's order.
//!
//! A shared (read) hold takes the same lock file's kernel lock in shared mode, on an open file
//! description of its own, and keeps its record in a reader file beside it (`readers.rs`): the
//! lock file's one record stays the exclusive holder's. Readers wait in the same ticket queue,
//! which is what gives writers preference: a reader that arrives after a waiting writer is
//! served after it. Shared mode is refused wherever there is no queue (`check_shared`).

pub mod claim;
pub mod inspect;
pub mod os_lock;
pub mod readers;
pub mod staleness;
pub mod ticket_queue;

use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::{Backend, Grant, LockMode, Refreshed, Request};
use crate::error::{LockError, Result};
use crate::failpoint;
use crate::identity::{self, now_ms};
use crate::metrics;
use crate::paths::{PathMap, Target};
use crate::record::{self, LockRecord};
use crate::thread_alarm;
use os_lock::{LockFile, TryLock};
use staleness::Verdict;
use ticket_queue::{Ahead, QueueFile};

/// How often a waiter looks again at a lock that only a record protects (another host's, or a
/// legacy one): no kernel wake-up comes for those.
const RECORD_POLL: Duration = Duration::from_millis(25);

/// How often a waiter blocked for its turn looks at the queue for waiters ahead of it that do
/// not move (a stopped process, such as a `flowforge-lock exec` suspended with Ctrl-Z): seen
/// with the lock free on two looks this far apart, they are passed. See docs/priorities.md.
const STALL_LOOK: Duration = Duration::from_millis(500);

/// What this process keeps of a lock file between holds.
#[derive(Default)]
struct Slot {
  /// The handle of the last hold, unlocked, for the next uncontended acquire.
  idle: Option<LockFile>,
  /// Handles on the lock's queue file holding no lock, for reuse: the fast path's check and
  /// hold, a waiting thread's ticket and turn (two at most are ever in use at once).
  queues: Vec<QueueFile>,
}

/// How many spare queue handles a slot keeps.
const SPARE_QUEUES: usize = 2;

/// Whether waiters of this lock line up in its ticket queue: only where the kernel's locks are
/// the whole truth (on a network file system other hosts would not see our byte-range locks, and
/// a waiter there could block on a lock of a frozen host).
fn queued(lock_path: &Path) -> bool {
  os_lock::kernel_locks() && !claim::needed(lock_path.parent().unwrap_or(Path::new("/")))
}

#[derive(Default)]
pub struct FileBackend {
  slots: Mutex<PathMap<Slot>>,
}

/// The one file backend of this process (its idle handles are per process).
pub fn backend() -> &'static FileBackend {
  static BACKEND: LazyLock<FileBackend> = LazyLock::new(FileBackend::default);
  &BACKEND
}

impl FileBackend {
  fn slots(&self) -> MutexGuard<'_, PathMap<Slot>> {
    self.slots.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// The handle kept from the last hold of `lock_path`, now the caller's alone.
  fn take_idle(&self, lock_path: &Path) -> Option<LockFile> {
    self
      .slots()
      .get_mut(lock_path)
      .and_then(|slot| slot.idle.take())
  }

  fn park_idle(&self, lock: LockFile) {
    self.park(lock, None);
  }

  /// Gives up a kernel lock taken for a claim that is not going ahead, keeping the handle.
  fn give_back(&self, lock: LockFile) {
    lock.unlock();
    self.park_idle(lock);
  }

  /// Waits in the kernel for `lock_path`'s lock in `mode`, on the handle kept from the last
  /// hold if there is one. `None`: a signal ended the wait (a synchronous caller's deadline),
  /// and the handle is kept again.
  fn wait_kernel_lock(&self, lock_path: &Path, mode: LockMode) -> Result<Option<LockFile>> {
    match LockFile::acquire_blocking(lock_path, self.take_idle(lock_path), mode)? {
      TryLock::Locked(lock) => Ok(Some(lock)),
      TryLock::Busy(lock) => {
        self.park_idle(lock);
        Ok(None)
      }
    }
  }

  /// Keeps a released hold's handles for the next acquire, in one visit to the slot.
  fn park(&self, lock: LockFile, queue: Option<QueueFile>) {
    let mut slots = self.slots();
    let slot = slots.entry(lock.path());
    if let Some(queue) = queue {
      if slot.queues.len() < SPARE_QUEUES {
        slot.queues.push(queue);
      }
    }
    slot.idle = Some(lock);
  }

  /// Takes a spare handle on the queue of `lock_path`, or opens one.
  fn take_queue(&self, lock_path: &Path) -> Option<QueueFile> {
    let spare = self
      .slots()
      .get_mut(lock_path)
      .and_then(|slot| slot.queues.pop());
    spare.or_else(|| QueueFile::open(lock_path))
  }

  /// Keeps queue handles (holding no lock any more) for reuse.
  fn park_queues(&self, lock_path: &Path, queues: impl IntoIterator<Item = QueueFile>) {
    let mut slots = self.slots();
    let slot = slots.entry(lock_path);
    for queue in queues {
      if slot.queues.len() < SPARE_QUEUES {
        slot.queues.push(queue);
      }
    }
  }

  /// Process exit: removes the lock files and queue files this process used that nobody uses
  /// now, so a project's lock directory does not fill up. Held locks are released first.
  pub fn remove_unused(&self) {
    let slots: Vec<(PathBuf, Slot)> = self.slots().drain().collect();
    for (path, slot) in slots {
      readers::remove_idle(&path);
      if let Ok(TryLock::Locked(lock)) = LockFile::try_acquire(&path, slot.idle) {
        // At exit another host's abandoned claim file is left to the next acquirer to judge.
        let _ = remove_lock_file(lock, Duration::MAX, false, |contents| {
          *contents == record::Contents::Empty
        });
      }
    }
  }
}

/// Removes the lock file whose kernel lock `lock` holds, and its queue file, if `decide` says so
/// of the record in it: the one way lock files go (process exit, `cleanupStaleLocks`). Where
/// claims are needed (kernel locks that other hosts may not see), the record is read, judged and
/// the file removed under the lock file's claim, and only while the path still names our file:
/// a claimer elsewhere looks at the path under that same claim before it writes its record
/// (`claim`), so it never writes into a file removed from under it. `stale_after`: when another
/// host's claim file counts as abandoned. With `dry_run` nothing is written: the record is judged
/// as it would be, but no claim is taken (nor an abandoned one cleared away) and nothing removed.
pub(crate) fn remove_lock_file(
  lock: LockFile,
  stale_after: Duration,
  dry_run: bool,
  decide: impl FnOnce(&record::Contents) -> bool,
) -> Result<Removal> {
  let lock_dir = lock.path().parent().unwrap_or(Path::new("/"));
  let kernel_locked = os_lock::kernel_locks();
  let ticket = match claim::needed(lock_dir) {
    false => None,
    // Busy exactly where the claim could not be taken; a claim that `take` would clear away as
    // abandoned is no obstacle.
    true if dry_run => {
      if claim::under_way(lock.path(), kernel_locked, stale_after) {
        return Ok(Removal::Busy);
      }
      None
    }
    true => match claim::take(lock.path(), kernel_locked, stale_after)? {
      Some(ticket) => Some(ticket),
      None => return Ok(Removal::Busy),
    },
  };
  let removal = if !lock.still_at_path() {
    Removal::Busy
  } else if decide(&lock.read()) && !dry_run {
    // The queue first, under the lock: see `try_acquire`'s check after locking.
    if let Some(queue) = QueueFile::existing(lock.path()) {
      queue.remove_if_unused();
    }
    match lock.remove() {
      Ok(()) => Removal::Done,
      Err(e) => Removal::Failed(e),
    }
  } else {
    Removal::Done
  };
  if let Some(ticket) = ticket {
    ticket.finish();
  }
  Ok(removal)
}

/// What [`remove_lock_file`] did.
pub(crate) enum Removal {
  /// Somebody is claiming the lock file now, or it was replaced: left alone, not judged.
  Busy,
  /// Judged, and removed or kept as `decide` said.
  Done,
  /// Judged removable, but still there (another user's, in a sticky directory): why.
  Failed(LockError),
}

/// A kernel lock made ours, with our record in it (in the lock file, or for a shared hold in
/// our reader file).
struct FileGrant {
  lock_id: String,
  record: LockRecord,
  lock: LockFile,
  reader: Option<readers::ReaderFile>,
  /// Our handle on the lock's queue, holding the holder's byte (none where there is no queue).
  queue: Option<QueueFile>,
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
  // The lock file open (and kernel-locked where kernel locks are on), the claim not taken yet.
  failpoint!("claim::locked");
  let ticket = claim::take(lock.path(), os_lock::kernel_locks(), request.stale_after)?;
  let Some(ticket) = ticket else {
    lock.unlock();
    return Ok(Claim::Respected(lock));
  };
  // Lock files are removed only under their claim (`remove_lock_file`), so a path that names our
  // file now keeps naming it until our record is written. One removed before we took the claim
  // must not get our record, where nobody would see it: the next look opens the file now there.
  if !lock.still_at_path() {
    ticket.finish();
    lock.unlock();
    return Ok(Claim::Respected(lock));
  }
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
    queue: None,
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
  // Between the judgement and the reader file: where the waiter this claim is for may leave.
  failpoint!("claim::shared_judged");
  let lock_id = record::new_lock_id();
  let record = LockRecord::new_for(me, &lock_id, &request.file.to_string_lossy(), now);
  match readers::ReaderFile::create(lock.path(), &record) {
    Ok(reader) => Ok(Claim::Won(Box::new(FileGrant {
      lock_id,
      record,
      lock,
      reader: Some(reader),
      queue: None,
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
  // Not removable (another user's, in a sticky directory): the retry below says so.
  let _ = lock.remove();
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

  fn mode(&self) -> LockMode {
    match self.reader {
      Some(_) => LockMode::Shared,
      None => LockMode::Exclusive,
    }
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

  /// Blanks our record and unlocks; the handles go back to the backend for reuse. Writes go
  /// through our own descriptor, so they only ever touch the inode we locked, even if the path
  /// names another one by now (the next acquire notices that). The holder's byte goes last: the
  /// waiter whose turn it wakes then finds the kernel lock free, and a newcomer meanwhile still
  /// sees the queue taken. That wake-up is the last system call: whatever the releaser does
  /// after it delays the waiter it woke when both share a CPU.
  fn release(self: Box<Self>) {
    let FileGrant {
      lock,
      lock_id,
      reader,
      mut queue,
      ..
    } = *self;
    match reader {
      Some(reader) => reader.release(lock.path()),
      None => lock.clear_if_ours(&lock_id),
    }
    lock.unlock();
    if let Some(queue) = &mut queue {
      queue.unhold();
    }
    backend().park(lock, queue);
  }

  fn inheritable_fd(&self) -> Option<i32> {
    Some(self.lock.raw_fd())
  }
}

impl FileBackend {
  /// A try that found the lock taken or others queued: the handles go back for the next one.
  fn not_now(
    &self,
    path: &Path,
    idle: Option<LockFile>,
    queue: Option<QueueFile>,
  ) -> Option<Box<dyn Grant>> {
    if let Some(idle) = idle {
      self.park_idle(idle);
    }
    self.park_queues(path, queue);
    None
  }
}

/// Takes a ticket at `rank` (or just after it) in the queue file now at the path, with `turn` a
/// handle on that same file; `None` if the queue file cannot be used.
fn line_up(path: &Path, ticket: &mut QueueFile, turn: &mut QueueFile, rank: i64) -> Option<i64> {
  loop {
    let place = ticket.line_up(rank).ok()?;
    // A queue file removed by a process tidying up (only ever while nobody held a lock on it)
    // would hide our ticket: line up in the file now at the path instead.
    if ticket.still_at_path() {
      if !turn.same_file(ticket) {
        *turn = QueueFile::open(path)?;
        if !turn.same_file(ticket) {
          ticket.leave(place);
          continue;
        }
      }
      return Some(place);
    }
    *ticket = QueueFile::open(path)?;
  }
}

impl FileBackend {
  /// Waits in the kernel's order (no ticket queue), then claims for whoever heads our queue.
  fn wait_unqueued(
    &self,
    target: &Target,
    head: &dyn Fn() -> Option<Request>,
  ) -> Result<Option<Box<dyn Grant>>> {
    let path = &target.lock_path;
    loop {
      let Some(mode) = head().map(|request| request.mode) else {
        return Ok(None);
      };
      let Some(lock) = self.wait_kernel_lock(path, mode)? else {
        // Interrupted (a synchronous caller's deadline): the loop asks `head` again.
        continue;
      };
      let Some(request) = head() else {
        // Everyone who waited gave up meanwhile: the lock goes back as we found it.
        self.give_back(lock);
        return Ok(None);
      };
      if request.mode != mode {
        // The head changed (a higher priority came, or the head gave up) and wants the other
        // mode: wait again in its mode.
        self.give_back(lock);
        continue;
      }
      match claim(lock, &request)? {
        Claim::Won(grant) => return Ok(Some(grant)),
        Claim::Respected(lock) => {
          self.park_idle(lock);
          std::thread::sleep(RECORD_POLL);
        }
      }
    }
  }
}

/// How a wait for a turn in the ticket queue ended.
enum Turn {
  /// No holder in the way and nobody ranked ahead, or only waiters that do not move.
  Came,
  /// Everyone of ours who waited gave up (timed out or cancelled).
  GaveUp,
  /// The head of our waiters now ranks lower, or wants the other mode: line up again.
  Changed,
  /// The queue file failed (an error of the file system): wait in the kernel's order.
  Failed,
}

/// Waits at `place` for the turn of a waiter lined up at `rank` in `mode`. The wait is woken
/// every [`STALL_LOOK`] (a timer signal of this thread: thread_alarm.rs) to look for waiters
/// ahead that do not move, and to give the place up once our waiters are gone. Without a free
/// signal there are no looks: only the turn (or a synchronous caller's deadline alarm) ends it.
fn wait_turn(
  lock_path: &Path,
  turn: &QueueFile,
  place: i64,
  rank: i64,
  mode: LockMode,
  head: &dyn Fn() -> Option<Request>,
) -> Turn {
  let mut stalled: Option<(Ahead, Instant)> = None;
  loop {
    let waited = {
      let _look = thread_alarm::arm(Instant::now() + STALL_LOOK);
      turn.wait_turn(place, mode)
    };
    match waited {
      Ok(true) => return Turn::Came,
      Err(_) => return Turn::Failed,
      Ok(false) => {}
    }
    match head() {
      None => return Turn::GaveUp,
      Some(now) if now.mode != mode || ticket_queue::key(now.priority, now.arrival) > rank => {
        return Turn::Changed
      }
      Some(_) => {}
    }
    // The same lock in our way, a look apart, with the kernel lock free: it is not moving. (Any
    // signal ends the wait, so the looks are timed here rather than counted.)
    let ahead = turn.stalled_ahead(place);
    match (stalled, ahead) {
      (Some((key, since)), Some(now_key)) if key == now_key => {
        if since.elapsed() >= STALL_LOOK
          && (now_key != Ahead::Holder || os_lock::kernel_lock_free(lock_path))
        {
          return Turn::Came;
        }
      }
      (_, Some(key)) => stalled = Some((key, Instant::now())),
      (_, None) => stalled = None,
    }
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
    let path = &target.lock_path;
    let idle = self.take_idle(path);
    let mut queue = if queued(path) {
      self.take_queue(path)
    } else {
      None
    };
    // Others hold the lock or are queued for it: queue behind them rather than barge in.
    if queue
      .as_ref()
      .is_some_and(|queue| queue.others_queued(request.mode))
    {
      return Ok(self.not_now(path, idle, queue));
    }
    let lock = match LockFile::try_acquire_as(path, idle, request.mode)? {
      TryLock::Locked(lock) => lock,
      TryLock::Busy(lock) => return Ok(self.not_now(path, Some(lock), queue)),
    };
    if let Some(current) = &queue {
      // Queue files are only removed by someone holding the kernel lock, which is ours now: a
      // handle on the file at the path stays good for the whole hold. One that was removed may
      // have hidden newcomers (they line up in the new file): look again there.
      if !current.still_at_path() {
        queue = QueueFile::open(path);
        if queue
          .as_ref()
          .is_some_and(|queue| queue.others_queued(request.mode))
        {
          lock.unlock();
          return Ok(self.not_now(path, Some(lock), queue));
        }
      }
    }
    if let Some(queue) = &queue {
      queue.hold(request.mode);
    }
    match claim(lock, request)? {
      Claim::Won(mut grant) => {
        grant.queue = queue;
        Ok(Some(grant))
      }
      Claim::Respected(lock) => {
        if let Some(queue) = &mut queue {
          queue.unhold();
        }
        Ok(self.not_now(path, Some(lock), queue))
      }
    }
  }

  /// Blocks until the lock is ours, on behalf of this process's waiters, then claims it for
  /// whoever heads their queue by then. With a ticket queue the process waits for its turn
  /// there first (ranked by the head's priority and arrival, in the head's mode), so that the
  /// kernel lock is only ever asked for by the waiters whose turn it is.
  fn wait_acquire(
    &self,
    target: &Target,
    head: &dyn Fn() -> Option<Request>,
  ) -> Result<Option<Box<dyn Grant>>> {
    let path = &target.lock_path;
    if !queued(path) {
      return self.wait_unqueued(target, head);
    }
    let (Some(mut ticket), Some(mut turn)) = (self.take_queue(path), self.take_queue(path)) else {
      return self.wait_unqueued(target, head);
    };
    loop {
      let Some(request) = head() else {
        self.park_queues(path, [ticket, turn]);
        return Ok(None);
      };
      let (rank, mode) = (
        ticket_queue::key(request.priority, request.arrival),
        request.mode,
      );
      let Some(place) = line_up(path, &mut ticket, &mut turn, rank) else {
        // No usable queue file (an error of the file system): wait in the kernel's order.
        return self.wait_unqueued(target, head);
      };
      match wait_turn(path, &turn, place, rank, mode, head) {
        Turn::Came => {}
        Turn::GaveUp => {
          ticket.leave(place);
          self.park_queues(path, [ticket, turn]);
          return Ok(None);
        }
        Turn::Changed => {
          ticket.leave(place);
          continue;
        }
        Turn::Failed => {
          ticket.leave(place);
          return self.wait_unqueued(target, head);
        }
      }
      // Our turn: nobody in the way, nobody ranked ahead. Our own waiters may have changed.
      match head() {
        None => {
          // Everyone who waited gave up: pass the turn on without touching the lock.
          ticket.leave(place);
          self.park_queues(path, [ticket, turn]);
          return Ok(None);
        }
        Some(now) if now.mode != mode || ticket_queue::key(now.priority, now.arrival) > rank => {
          // The waiter we lined up for left and the next ranks lower or wants the other mode:
          // go back to its place.
          ticket.leave(place);
          continue;
        }
        Some(_) => {}
      }
      let lock = match self.wait_kernel_lock(path, mode) {
        Ok(Some(lock)) => lock,
        // Interrupted (a synchronous caller's deadline): give the turn back and ask `head`.
        Ok(None) => {
          ticket.leave(place);
          continue;
        }
        Err(e) => {
          ticket.leave(place);
          return Err(e);
        }
      };
      // The ticket stays, as the holder's, until the release: a newcomer always sees someone
      // in the queue, and the waiter behind wakes once, when we are done.
      ticket.hold_at(place, mode);
      let request = match head() {
        Some(request) if request.mode == mode => request,
        gone_or_changed => {
          self.give_back(lock);
          ticket.unhold();
          if gone_or_changed.is_some() {
            continue;
          }
          self.park_queues(path, [ticket, turn]);
          return Ok(None);
        }
      };
      match claim(lock, &request) {
        Ok(Claim::Won(mut grant)) => {
          grant.queue = Some(ticket);
          self.park_queues(path, [turn]);
          return Ok(Some(grant));
        }
        Ok(Claim::Respected(lock)) => {
          self.park_idle(lock);
          ticket.unhold();
          std::thread::sleep(RECORD_POLL);
        }
        Err(e) => {
          ticket.unhold();
          return Err(e);
        }
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
