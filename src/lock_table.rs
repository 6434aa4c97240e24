//! This process's locks: which locks it holds, and who in it waits for which, highest priority
//! first and first come first served among equals (with aging: see [`next_waiter`]), whatever
//! the backend; and which JS environment (the main thread or a worker) took each hold or queued
//! each wait, since they end with it ([`end_owner`]). An uncontended acquire asks the backend
//! once, right on the caller's thread; when the lock is taken, the waiter joins the lock's queue, and one thread
//! per lock waits on behalf of the whole queue (in the kernel for the file backend, on the
//! server for the others), so a release anywhere hands over within one wake-up and waiting
//! burns no CPU.
//!
//! A lock is held by one exclusive hold or by several shared ones (readers), and the queue is
//! writer-preferring: a shared request is granted at once only while every hold is shared and
//! nobody is queued (so never past a queued writer); queued readers pass one after another once
//! they head the queue, and a writer behind them waits for those readers only.
//!
//! A lock is known by its lock path, in its directory's real path (one lock file spelled two ways
//! is one lock here); a hold is found by its lockId, whatever its caller's path leads to by the
//! time it releases or writes.
//!
//! Each hold keeps its grant behind a guard of its own. Release takes the grant out under that
//! guard; the heartbeat's refresh and the store's pre-commit check run under it: once a hold
//! has ended, nothing of ours can write to that lock again.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, LazyLock, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use rustc_hash::FxBuildHasher;
use serde_json::Value;

use crate::backend::{Backend, Grant, LockMode, Refreshed, Request, AGING_STEP};
use crate::config;
use crate::deadlines;
use crate::error::{LockError, Result};
use crate::failpoint;
use crate::fence;
use crate::heartbeat;
use crate::identity;
use crate::metrics;
use crate::paths::{self, PathMap, Target};
use crate::record::{self, Contents};
use crate::thread_alarm;

pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_STALE_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy)]
pub struct AcquireOptions {
  /// `None` waits for ever; zero means a single try.
  pub timeout: Option<Duration>,
  pub stale_after: Duration,
  /// Higher goes first among this process's waiters for the lock; 0 by default.
  pub priority: f64,
  /// Exclusive (a writer, the default) or shared (a reader).
  pub mode: LockMode,
  /// The JS environment asking: its holds and waits end with it ([`end_owner`]).
  pub owner: Owner,
}

/// Which JS environment (Node's main thread, or one worker thread) a request came from. When an
/// environment ends, even while its JS waits, the holds it took and its queued waits end with it
/// ([`end_owner`]): nobody is left there to release them or to hear an answer. Never reused;
/// [`NO_OWNER`] for callers outside any environment (Rust tests).
pub type Owner = u64;
pub const NO_OWNER: Owner = 0;

/// A hold's grant, guarded: `None` once released.
struct Hold {
  grant: Option<Box<dyn Grant>>,
  /// Why the lock was lost while held, if it was: a write under it must fail with `ELOCKLOST`.
  lost: Option<String>,
  /// Writes under this hold past their check and not yet renamed ([`CommitPass`]): the hold
  /// does not end before they have landed.
  commits: usize,
}

/// A hold's state under its guard, and the signal that a write under it has landed (its
/// [`CommitPass`] dropped), which ending the hold waits for.
struct HoldState {
  hold: Mutex<Hold>,
  landed: Condvar,
  /// A lease's renewal is under way on a thread of its own (see [`refresh_due`]).
  renewing: AtomicBool,
}

type HoldCell = Arc<HoldState>;

fn guard(cell: &HoldCell) -> MutexGuard<'_, Hold> {
  cell.hold.lock().unwrap_or_else(|e| e.into_inner())
}

struct Held {
  lock_id: String,
  owner: Owner,
  file: PathBuf,
  mode: LockMode,
  since: Instant,
  cell: HoldCell,
  /// The grant's own refresh period; `None`: the heartbeat's interval.
  refresh_every: Option<Duration>,
  next_refresh: Instant,
}

impl Held {
  fn refresh_every(&self) -> Duration {
    self.refresh_every.unwrap_or_else(heartbeat::interval)
  }
}

struct Waiter {
  /// Arrival order: ties of effective priority go to the lower id.
  id: u64,
  request: Request,
  enqueued: Instant,
  priority: f64,
  owner: Owner,
  complete: Completion,
  /// Its timeout, cancelled when the waiter is answered (or dropped) before it runs.
  deadline: Option<deadlines::Registration>,
}

impl Waiter {
  /// Answers the waiter, its timeout cancelled first.
  fn answer(self, outcome: Result<String>) {
    drop(self.deadline);
    (self.complete)(outcome);
  }
}

/// `priority + waited / AGING_STEP`: see [`next_waiter`].
fn effective_priority(waiter: &Waiter, now: Instant) -> f64 {
  waiter.priority
    + now.saturating_duration_since(waiter.enqueued).as_secs_f64() / AGING_STEP.as_secs_f64()
}

/// The index of the waiter to serve next: the highest effective priority `priority + waited /
/// AGING_STEP`, ties to the earliest arrival. Among equal priorities the earliest arrival has
/// waited longest, so the order stays first come, first served. A waiter of priority `p`
/// outranks every later arrival of priority at most `q` once it has waited `(q - p) x
/// AGING_STEP`: from then on only the finite set of waiters already ahead of it can pass it, so
/// a low-priority waiter always finishes.
fn next_waiter(queue: &VecDeque<Waiter>, now: Instant) -> Option<usize> {
  let mut best: Option<(usize, f64, u64)> = None;
  for (index, waiter) in queue.iter().enumerate() {
    let rank = effective_priority(waiter, now);
    let better = match best {
      None => true,
      Some((_, best_rank, best_id)) => {
        rank > best_rank || (rank == best_rank && waiter.id < best_id)
      }
    };
    if better {
      best = Some((index, rank, waiter.id));
    }
  }
  best.map(|(index, _, _)| index)
}

/// Takes the waiter to serve next out of the queue.
fn take_next(queue: &mut VecDeque<Waiter>) -> Option<Waiter> {
  next_waiter(queue, Instant::now()).and_then(|index| queue.remove(index))
}

/// Takes the waiter to serve next out of the queue if it asked for `mode`: a grant claimed for
/// one waiter may only go to another of the same mode. A writer handed a reader's shared kernel
/// lock would write beside other processes' readers; a reader handed a writer's exclusive one
/// would shut them out.
fn take_next_in(queue: &mut VecDeque<Waiter>, mode: LockMode) -> Option<Waiter> {
  let index = next_waiter(queue, Instant::now())?;
  if queue[index].request.mode != mode {
    return None;
  }
  queue.remove(index)
}

#[derive(Default)]
struct Entry {
  /// This process's holds: none, one exclusive, or any number of shared ones.
  held: Vec<Held>,
  /// The uncontended path is asking the backend right now (outside the table's mutex).
  claiming: bool,
  /// Single tries (timeout 0) asking a lock server from a thread of their own, counted from
  /// their call until their caller is told the outcome (a grant is installed in `held` first).
  trying: usize,
  queue: VecDeque<Waiter>,
  waiting_thread: bool,
}

impl Entry {
  fn find(&self, lock_id: &str) -> Option<&Held> {
    self.held.iter().find(|h| h.lock_id == lock_id)
  }

  /// Whether a request in `mode` conflicts with this process's holds.
  fn conflicts(&self, mode: LockMode) -> bool {
    match mode {
      LockMode::Exclusive => !self.held.is_empty(),
      LockMode::Shared => self.held.iter().any(|h| h.mode == LockMode::Exclusive),
    }
  }

  fn unused(&self) -> bool {
    self.held.is_empty()
      && !self.claiming
      && self.trying == 0
      && self.queue.is_empty()
      && !self.waiting_thread
  }
}

#[derive(Default)]
struct Table {
  /// This process's locks by lock path (with the lock directory's real path: one key per lock
  /// file, however its callers spell it).
  locks: PathMap<Entry>,
  /// The lock path of each hold, by lockId. A hold is found by its lockId, not by resolving
  /// its caller's path again: by release time that path may lead elsewhere (a `.flowforge/`
  /// made nearer the file, another `FLOWFORGE_ROOT_OVERRIDE`, a relative path after a chdir),
  /// and the hold would stay, kept alive by the heartbeat, until the process ends.
  lock_of: HashMap<String, PathBuf, FxBuildHasher>,
}

impl Table {
  /// Makes `grant` a hold of the lock at `lock_path`, for `file` in `mode`, taken from
  /// `owner`'s environment; returns its lockId.
  fn install(
    &mut self,
    lock_path: &Path,
    file: PathBuf,
    mode: LockMode,
    owner: Owner,
    grant: Box<dyn Grant>,
  ) -> String {
    let lock_id = grant.lock_id().to_string();
    let refresh_every = grant.refresh_interval();
    let since = Instant::now();
    let next_refresh = since + refresh_every.unwrap_or_else(heartbeat::interval);
    self.locks.entry(lock_path).held.push(Held {
      lock_id: lock_id.clone(),
      owner,
      file,
      mode,
      since,
      cell: Arc::new(HoldState {
        hold: Mutex::new(Hold {
          grant: Some(grant),
          lost: None,
          commits: 0,
        }),
        landed: Condvar::new(),
        renewing: AtomicBool::new(false),
      }),
      refresh_every,
      next_refresh,
    });
    self
      .lock_of
      .insert(lock_id.clone(), lock_path.to_path_buf());
    heartbeat::ensure_running(refresh_due, next_refresh);
    lock_id
  }

  /// The hold `lock_id`, with its lock path.
  fn find(&self, lock_id: &str) -> Option<(&Path, &Held)> {
    let lock_path = self.lock_of.get(lock_id)?;
    let held = self.locks.get(lock_path).and_then(|e| e.find(lock_id))?;
    Some((lock_path, held))
  }

  /// Takes the hold `lock_id` out of the table; with it, whether a waiting thread listens for
  /// the lock (someone of this process is queued for it).
  fn remove_hold(&mut self, lock_id: &str) -> Option<(Held, bool)> {
    let lock_path = self.lock_of.remove(lock_id)?;
    let entry = self
      .locks
      .get_mut(&lock_path)
      .expect("an indexed hold's lock is in the table");
    let index = entry
      .held
      .iter()
      .position(|h| h.lock_id == lock_id)
      .expect("an indexed hold is held");
    let listens = entry.waiting_thread && !entry.queue.is_empty();
    Some((entry.held.remove(index), listens))
  }
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Default::default);
/// Signalled when a waiter joins a queue or a hold ends, for the waiting threads.
static CHANGED: Condvar = Condvar::new();
/// How long a waiting thread with nobody to wait for stays for the next waiter: spawning a
/// thread for every contended acquire would cost more than the handoff itself.
const IDLE_WAITING_THREAD: Duration = Duration::from_secs(10);

fn table() -> MutexGuard<'static, Table> {
  // Nothing panics while holding it; if something did, the table is still consistent.
  TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called with (lockId, file, reason) when a held lock is found lost (see [`on_lost`]).
type LostListener = Arc<dyn Fn(&str, &Path, &str) + Send + Sync>;
/// Who hears of the losses of the holds each environment took: a hold's JS (and the
/// `AbortSignal` it watches) lives in the environment that took it, a worker's or the main
/// thread's, and only that environment's listener can reach it.
static LOST_LISTENERS: LazyLock<RwLock<HashMap<Owner, LostListener, FxBuildHasher>>> =
  LazyLock::new(Default::default);

/// Registers who hears about the locks `owner`'s environment took that are lost while held (the
/// JS layer aborts their `AbortSignal`). The last registration of an environment wins: a JS realm
/// loaded later in it (a test runner's fresh module registry) registers its own listener, and
/// must hear the losses from then on.
pub fn on_lost(owner: Owner, listener: impl Fn(&str, &Path, &str) + Send + Sync + 'static) {
  LOST_LISTENERS
    .write()
    .unwrap_or_else(|e| e.into_inner())
    .insert(owner, Arc::new(listener));
}

/// Resolves the caller's path and makes sure its lock directory is usable ([`paths::prepare`]),
/// for a caller that keeps the target.
pub fn prepare(file: &str) -> Result<Target> {
  paths::prepare(file).map(Arc::unwrap_or_clone)
}

/// The uncontended path on the caller's thread (Node's event loop, for `acquireLock`): one try
/// where it waits on nothing but system calls, or on one answer from a lock server over a
/// connection already open ([`Backend::try_acquire_here`]: bounded by the caller's timeout and
/// the server's command timeout, never a connect). `Ok(None)` means somebody holds the lock,
/// others (here or, for a lock server, anywhere) are queued for it or are taking it, or the try
/// was not made here; the caller then joins the queue with [`acquire`]. A refused try leaves no
/// place behind, so the order among queued waiters is still the order of their first request in
/// the queue.
pub fn try_acquire_here(target: &Target, options: &AcquireOptions) -> Result<Option<String>> {
  let backend = config::backend_for(target)?;
  claim(backend, target, options, Instant::now(), |request| {
    backend.try_acquire_here(target, request, options.timeout)
  })
}

/// One try through the backend, on this thread.
pub fn try_acquire(target: &Target, options: &AcquireOptions) -> Result<Option<String>> {
  let backend = config::backend_for(target)?;
  try_acquire_through(backend, target, options, Instant::now())
}

/// [`try_acquire`] through `target`'s backend, which the caller has already looked up, for a
/// caller that arrived at `arrival`.
fn try_acquire_through(
  backend: &dyn Backend,
  target: &Target,
  options: &AcquireOptions,
  arrival: Instant,
) -> Result<Option<String>> {
  claim(backend, target, options, arrival, |request| {
    backend.try_acquire(target, request)
  })
}

/// One try through `try_once` (asking `backend`, `target`'s) for a caller that arrived at
/// `arrival`, unless this process's holds or queue stand in the way; a grant is installed as this
/// process's hold.
fn claim(
  backend: &dyn Backend,
  target: &Target,
  options: &AcquireOptions,
  arrival: Instant,
  try_once: impl FnOnce(&Request) -> Result<Option<Box<dyn Grant>>>,
) -> Result<Option<String>> {
  if options.mode == LockMode::Shared {
    backend.check_shared(target)?;
  }
  {
    let mut table = table();
    let entry = table.locks.entry(&target.lock_path);
    // Anyone queued goes first (a reader never passes a queued writer).
    if entry.conflicts(options.mode) || entry.claiming || !entry.queue.is_empty() {
      return Ok(None);
    }
    entry.claiming = true;
  }
  let request = Request {
    file: target.file.clone(),
    stale_after: options.stale_after,
    mode: options.mode,
    priority: options.priority,
    arrival,
  };
  let outcome = try_once(&request);
  // The backend answered; its grant is not this process's hold yet.
  failpoint!("lock_table::claim_answered");
  let mut table = table();
  table.locks.entry(&target.lock_path).claiming = false;
  let lock_id = match outcome {
    Ok(Some(grant)) => table.install(
      &target.lock_path,
      request.file,
      request.mode,
      options.owner,
      grant,
    ),
    Ok(None) => return Ok(None),
    Err(e) => return Err(e),
  };
  drop(table);
  metrics::acquired(
    &target.file.to_string_lossy(),
    Duration::ZERO,
    false,
    options.priority,
  );
  Ok(Some(lock_id))
}

/// Called exactly once with a queued waiter's outcome, from the thread that decided it.
pub type Completion = Box<dyn FnOnce(Result<String>) + Send>;

/// Takes the lock if it is free, else joins its queue; `complete` gets the lockId or the error
/// (`ELOCKTIMEOUT` at the deadline, …) once decided, possibly right away. Called on the caller's
/// thread, so arrival order is the order of the calls; the queue serves by [`next_waiter`]. For
/// a lock server the only request made on the caller's thread is [`try_acquire_here`]'s, before
/// this (`acquireLock`); here a wait joins the queue at once, and the waiting thread's first
/// request both asks for the lock again and, refused, takes a place in the server's queue in the
/// same step. Order across processes is the order of that first request: the try before it
/// never takes a place, and a try is refused while anyone is queued, so a releaser that asks
/// again at once cannot barge in ahead of a waiter already queued. A single try (timeout 0),
/// which must leave no place behind, runs on a thread of its own.
pub fn acquire(target: Target, options: AcquireOptions, complete: Completion) {
  acquire_since(Instant::now(), target, options, complete)
}

/// [`acquire`] for a caller that asked first at `arrival` and asks again: a coalesced update
/// whose batch's wait ended at another caller's timeout. It joins the queue ranked as if it had
/// waited since `arrival` (in this process and in the ticket queue), so asking again does not
/// send it behind those who came after it; its timeout counts from now.
pub fn acquire_since(
  arrival: Instant,
  target: Target,
  options: AcquireOptions,
  complete: Completion,
) {
  let started = Instant::now();
  let backend = match config::backend_for(&target) {
    Ok(backend) => backend,
    Err(e) => return complete(Err(e)),
  };
  if options.mode == LockMode::Shared {
    if let Err(e) = backend.check_shared(&target) {
      return complete(Err(e));
    }
  }
  if backend.tries_locally() {
    return acquire_from(backend, started, arrival, target, options, complete);
  }
  if options.timeout != Some(Duration::ZERO) {
    return enqueue(started, arrival, target, options, complete);
  }
  // Counted from the call on, not from when the thread claims: a synchronous acquire made right
  // after this call (on the same event loop turn) must see it (`busy_here`), or it would queue
  // behind a grant whose caller's event loop it blocks.
  table().locks.entry(&target.lock_path).trying += 1;
  let counted = target.lock_path.clone();
  // The count ends before the caller is told (its grant is installed by then): told, it may
  // release and take the lock synchronously at once, while this thread has not gone on yet.
  let complete: Completion = Box::new(move |outcome| {
    table().locks.entry(&counted).trying -= 1;
    complete(outcome)
  });
  // Kept outside the thread's closure, so that a thread that cannot start still settles it.
  let slot = Arc::new(Mutex::new(Some(complete)));
  let in_thread = slot.clone();
  let lock_path = target.lock_path.clone();
  let spawned = std::thread::Builder::new()
    .name("flowforge-lock-try".into())
    .spawn(move || {
      let taken = in_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
      if let Some(complete) = taken {
        let owner = options.owner;
        let granted_to = target.clone();
        // The asking environment may end while this thread asks, after `end_owner` looked for
        // its holds: a grant installed for it then is given back here. (Installed before this
        // check, so an `end_owner` that this check misses finds it.)
        let complete: Completion = Box::new(move |outcome| match outcome {
          Ok(lock_id) if owner_ended(owner) => {
            release_hold(&lock_id);
            complete(Err(cancelled_error(&granted_to.file, ENDED_ENVIRONMENT)));
          }
          outcome => complete(outcome),
        });
        acquire_from(backend, started, arrival, target, options, complete);
      }
    });
  if let Err(e) = spawned {
    let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(complete) = taken {
      complete(Err(LockError::io(
        &e,
        "Cannot start a thread to ask the lock server for",
        &lock_path,
      )));
    }
  }
}

fn acquire_from(
  backend: &dyn Backend,
  started: Instant,
  arrival: Instant,
  target: Target,
  options: AcquireOptions,
  complete: Completion,
) {
  match try_acquire_through(backend, &target, &options, started) {
    Ok(Some(lock_id)) => return complete(Ok(lock_id)),
    Ok(None) => {}
    Err(e) => return complete(Err(e)),
  }
  if options.timeout == Some(Duration::ZERO) {
    metrics::timed_out(&target.file.to_string_lossy());
    return complete(Err(timeout_error(&target, Duration::ZERO)));
  }
  enqueue(started, arrival, target, options, complete);
}

/// Joins the lock's queue in this process (starting its waiting thread if needed), ranked by
/// `arrival`; its timeout counts from `started`.
fn enqueue(
  started: Instant,
  arrival: Instant,
  target: Target,
  options: AcquireOptions,
  complete: Completion,
) {
  if let Err(why) = options
    .timeout
    .map_or(Ok(()), |_| deadlines::ensure_running())
  {
    return complete(Err(LockError::new("ELOCKINTERNAL", why)));
  }
  static NEXT_WAITER: AtomicU64 = AtomicU64::new(0);
  let waiter_id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
  let mut table = table();
  let entry = table.locks.entry(&target.lock_path);
  if !entry.waiting_thread {
    let thread_target = target.clone();
    let spawned = std::thread::Builder::new()
      .name("flowforge-lock-wait".into())
      .spawn(move || wait_for_lock(thread_target));
    if let Err(e) = spawned {
      drop(table);
      return complete(Err(LockError::io(
        &e,
        "Cannot start a waiting thread for",
        &target.lock_path,
      )));
    }
    entry.waiting_thread = true;
  }
  // Registered under the table's lock, before the waiter is queued: a deadline already due
  // waits for that lock in `give_up` and then finds the waiter.
  let deadline = options.timeout.map(|timeout| {
    let target = target.clone();
    deadlines::add(started + timeout, move || {
      give_up(&target, waiter_id, timeout)
    })
  });
  entry.queue.push_back(Waiter {
    id: waiter_id,
    request: Request {
      file: target.file.clone(),
      stale_after: options.stale_after,
      mode: options.mode,
      priority: options.priority,
      arrival,
    },
    enqueued: arrival,
    priority: options.priority,
    owner: options.owner,
    complete,
    deadline,
  });
  drop(table);
  CHANGED.notify_all();
}

/// The synchronous API's acquire. Where the backend waits in this host's kernel, the caller's
/// own thread waits there, so a handoff wakes the caller directly instead of a waiting thread
/// that then wakes the caller: one wake-up instead of two, the difference between raw `flock`
/// handoff times and several times those. The deadline is an alarm signal that interrupts the
/// blocked call (thread_alarm.rs). Elsewhere (lock servers, kernel locks off, no free signal)
/// the caller blocks on the queue's answer, as the asynchronous API waits for it.
///
/// After a wait, `caller_still_there` says whether the caller can still take the lockId (its JS
/// may have been stopped meanwhile): if not, the lock goes back at once, since nobody would
/// ever release it. An uncontended acquire does not ask (it takes microseconds). A wait in the
/// kernel also asks every [`CALLER_LOOK`], and gives up once the caller has gone.
///
/// Fails at once with `ELOCKDEADLOCK` when this process holds the lock, is taking it or has
/// waiters queued for it ([`busy_here`]).
pub fn acquire_on_this_thread(
  target: &Target,
  options: AcquireOptions,
  caller_still_there: &dyn Fn() -> bool,
) -> Result<String> {
  if busy_here(target) {
    return Err(LockError::new(
      "ELOCKDEADLOCK",
      format!(
        "acquireLockSync({}) would block this thread on a lock that this process holds, is taking or is already waiting for (through the asynchronous API); it could never be released. Release it first, or use acquireLock/withLock.",
        target.file.display()
      ),
    ));
  }
  let started = Instant::now();
  let backend = config::backend_for(target)?;
  if !backend.tries_locally() || backend.waits_for_local_holder() {
    return hand_over(
      target,
      acquire_and_block(target, options),
      caller_still_there,
    );
  }
  if let Some(lock_id) = try_acquire_through(backend, target, &options, started)? {
    return Ok(lock_id);
  }
  let timeout = options.timeout;
  if timeout == Some(Duration::ZERO) {
    metrics::timed_out(&target.file.to_string_lossy());
    return Err(timeout_error(target, Duration::ZERO));
  }
  let deadline = timeout.map(|t| started + t);
  // The first look at the caller (below) wakes the wait through an alarm too.
  let first_look = started + CALLER_LOOK;
  let (Some(look), Some(alarm)) = (
    thread_alarm::arm(first_look),
    deadline.map_or(Some(None), |d| thread_alarm::arm(d).map(Some)),
  ) else {
    return hand_over(
      target,
      acquire_and_block(target, options),
      caller_still_there,
    );
  };
  {
    let mut table = table();
    let entry = table.locks.entry(&target.lock_path);
    if !entry.held.is_empty() || entry.claiming || !entry.queue.is_empty() {
      // Another thread of this process (a worker) got there first: queue behind it.
      drop(table);
      drop(alarm);
      drop(look);
      return hand_over(
        target,
        acquire_and_block(target, options),
        caller_still_there,
      );
    }
    // Others of this process queue behind us meanwhile (try_acquire sees a claim under way).
    entry.claiming = true;
  }
  let request = Request {
    file: target.file.clone(),
    stale_after: options.stale_after,
    mode: options.mode,
    priority: options.priority,
    arrival: started,
  };
  // Only now, when the call is about to block: it costs a few system calls.
  let ending = thread_alarm::interruptible_by_ending_signals();
  let signal_arrived = || ending.as_ref().is_some_and(|e| e.arrived());
  // The caller's JS may be stopped while it waits here: a worker terminated (also by
  // `process.exit()`, which then joins the worker's thread), or a `vm` watchdog. Nothing
  // interrupts a wait for that, so the wait looks now and then.
  let look = RefCell::new(Some(look));
  let next_look = Cell::new(first_look);
  let caller_gone = Cell::new(false);
  let caller_left = || {
    if caller_gone.get() || Instant::now() < next_look.get() {
      return caller_gone.get();
    }
    if !caller_still_there() {
      caller_gone.set(true);
      return true;
    }
    // The expired alarm first: the new one aims the timer at the next look.
    look.replace(None);
    let now = Instant::now();
    next_look.set(now + CALLER_LOOK);
    look.replace(thread_alarm::arm(now + CALLER_LOOK));
    false
  };
  let head = || {
    (deadline.is_none_or(|d| Instant::now() < d) && !signal_arrived() && !caller_left())
      .then(|| request.clone())
  };
  let outcome = backend.wait_acquire(target, &head);
  let cancelled_by = signal_arrived()
    .then(|| ending.as_ref().map(|e| e.last_name()))
    .flatten();
  drop(ending);
  drop(look);
  drop(alarm);
  // No notify: this path runs only where waiting threads do not wait for this process's own
  // claims (`waits_for_local_holder` is false), so the claim's end concerns none of them.
  let mut table = table();
  table.locks.entry(&target.lock_path).claiming = false;
  let file = target.file.to_string_lossy();
  match outcome {
    Ok(Some(grant)) => {
      let lock_id = table.install(
        &target.lock_path,
        request.file,
        request.mode,
        options.owner,
        grant,
      );
      drop(table);
      metrics::acquired(&file, started.elapsed(), true, options.priority);
      hand_over(target, Ok(lock_id), caller_still_there)
    }
    Ok(None) => {
      drop(table);
      if let Some(signal) = cancelled_by {
        return Err(cancelled_error(
          &target.file,
          &format!(
            "{signal} arrived while acquireLockSync waited, and the wait was given up so that the signal's listeners can run (by default the process then releases its locks and ends). Nothing was acquired; if the process goes on, call it again"
          ),
        ));
      }
      if caller_gone.get() {
        return Err(cancelled_error(&target.file, CALLER_STOPPED));
      }
      metrics::timed_out(&file);
      Err(timeout_error(target, timeout.unwrap_or_default()))
    }
    Err(e) => Err(e),
  }
}

/// The outcome of a synchronous wait, for a caller that may have gone meanwhile: a lock its
/// caller can no longer take is released at once.
fn hand_over(
  target: &Target,
  outcome: Result<String>,
  caller_still_there: &dyn Fn() -> bool,
) -> Result<String> {
  let lock_id = outcome?;
  if caller_still_there() {
    return Ok(lock_id);
  }
  release_hold(&lock_id);
  Err(cancelled_error(&target.file, CALLER_STOPPED))
}

const CALLER_STOPPED: &str = "the JS that called acquireLockSync was stopped while it waited (a vm timeout, a worker terminated), so its wait was given up and any lock it got was released at once";

/// How often a synchronous wait in the kernel looks whether its caller's JS still runs.
const CALLER_LOOK: Duration = Duration::from_millis(500);

/// Queues like [`acquire`] and blocks this thread until the answer.
fn acquire_and_block(target: &Target, options: AcquireOptions) -> Result<String> {
  let (done, outcome) = std::sync::mpsc::channel();
  acquire(
    target.clone(),
    options,
    Box::new(move |result| {
      let _ = done.send(result);
    }),
  );
  outcome.recv().unwrap_or_else(|_| {
    Err(LockError::new(
      "ELOCKINTERNAL",
      "the lock table dropped a synchronous wait without an answer",
    ))
  })
}

/// Whether this process holds `target`'s lock, has a single try asking a lock server for it or
/// has waiters queued for it: a caller that blocks its thread until it gets the lock (the
/// synchronous API) would then wait on holders or waiters whose event loop it is blocking.
fn busy_here(target: &Target) -> bool {
  table()
    .locks
    .get(&target.lock_path)
    .is_some_and(|e| !e.held.is_empty() || e.trying > 0 || !e.queue.is_empty())
}

/// How many holds a caller of `priority` arriving now would wait for: the current one (or the
/// claim in progress) plus the queued waiters that would be served before it.
pub fn ahead(target: &Target, priority: f64) -> usize {
  let table = table();
  let Some(entry) = table.locks.get(&target.lock_path) else {
    return 0;
  };
  let now = Instant::now();
  let holding = usize::from(!entry.held.is_empty() || entry.claiming);
  holding
    + entry
      .queue
      .iter()
      .filter(|w| effective_priority(w, now) >= priority)
      .count()
}

/// At a waiter's deadline: if it is still queued, it leaves with `ELOCKTIMEOUT`; if it was
/// granted meanwhile, nothing happens.
fn give_up(target: &Target, waiter_id: u64, timeout: Duration) {
  let waiter = {
    let mut table = table();
    let Some(entry) = table.locks.get_mut(&target.lock_path) else {
      return;
    };
    let Some(index) = entry.queue.iter().position(|w| w.id == waiter_id) else {
      return;
    };
    entry.queue.remove(index)
  };
  let Some(waiter) = waiter else {
    return;
  };
  metrics::timed_out(&target.file.to_string_lossy());
  // The error names the holder: a lock server is asked who, and may not answer before its
  // command timeout, while this thread expires every waiter of the process. A backend whose
  // questions are local system calls (the file backend) is asked right here.
  let server = config::backend_for(target)
    .ok()
    .filter(|backend| !backend.tries_locally());
  let target = target.clone();
  let answer = move || waiter.answer(Err(timeout_error(&target, timeout)));
  match server {
    Some(server) => answer_off_the_deadline_thread(server, Box::new(answer)),
    None => answer(),
  }
}

type Answer = Box<dyn FnOnce() + Send>;

/// Runs `answer` on the thread that answers `server`'s timeouts (one a server, started on its
/// first timeout, so that a server that does not answer delays no other server's), or here if
/// it cannot be started.
fn answer_off_the_deadline_thread(server: &'static dyn Backend, answer: Answer) {
  type Answerers = HashMap<usize, Option<mpsc::Sender<Answer>>, FxBuildHasher>;
  static ANSWERERS: LazyLock<Mutex<Answerers>> = LazyLock::new(Default::default);
  // One backend a server URL, for the process's life (`config::connected`): its address names it.
  let key = (server as *const dyn Backend).cast::<()>() as usize;
  let answerer = ANSWERERS
    .lock()
    .unwrap_or_else(|e| e.into_inner())
    .entry(key)
    .or_insert_with(|| {
      let (send, receive) = mpsc::channel::<Answer>();
      std::thread::Builder::new()
        .name("flowforge-lock-timeouts".into())
        .spawn(move || receive.into_iter().for_each(|answer| answer()))
        .ok()
        .map(|_| send)
    })
    .clone();
  match answerer {
    Some(answerer) => {
      if let Err(mpsc::SendError(answer)) = answerer.send(answer) {
        answer();
      }
    }
    None => answer(),
  }
}

/// The body of the per-lock waiting thread: waits for the lock through the backend, hands it to
/// the first waiter still queued, and ends when nobody has waited for a while.
fn wait_for_lock(target: Target) {
  let key = target.lock_path.clone();
  let backend = match config::backend_for(&target) {
    Ok(backend) => backend,
    Err(e) => return fail_waiters(&key, &e),
  };
  loop {
    if !wait_for_waiters(&key, backend.waits_for_local_holder()) {
      return;
    }
    // Waiters stay queued until served, so their deadlines can always find them; the one the
    // backend waits for is whoever would be served now (the grant goes to whoever is then, if
    // that one asked for the same mode).
    let head = || {
      table().locks.get(&key).and_then(|e| {
        next_waiter(&e.queue, Instant::now())
          .and_then(|i| e.queue.get(i))
          .map(|w| w.request.clone())
      })
    };
    let outcome = backend.wait_acquire(&target, &head);
    let mut table = table();
    let entry = table.locks.entry(&key);
    match outcome {
      Ok(Some(grant)) => {
        let Some(waiter) = take_next_in(&mut entry.queue, grant.mode()) else {
          // The waiter it was claimed for left (its deadline) or was overtaken (a higher
          // priority) by one of the other mode, or nobody waits any more: the lock goes back,
          // and the next round claims it for whoever heads the queue then.
          drop(table);
          grant.release();
          continue;
        };
        let lock_id = table.install(
          &key,
          waiter.request.file.clone(),
          waiter.request.mode,
          waiter.owner,
          grant,
        );
        drop(table);
        let file = waiter.request.file.to_string_lossy();
        metrics::acquired(&file, waiter.enqueued.elapsed(), true, waiter.priority);
        waiter.answer(Ok(lock_id));
      }
      Ok(None) => {}
      Err(e) => {
        let waiter = take_next(&mut entry.queue);
        drop(table);
        if let Some(waiter) = waiter {
          waiter.answer(Err(e));
        }
      }
    }
  }
}

/// Sleeps until the lock's queue has someone in it (and, where the backend cannot tell this
/// process's holds apart, until this process no longer holds it): true. After an idle while it
/// gives up (false: the thread is no longer registered and must end).
fn wait_for_waiters(key: &Path, local_holder_blocks: bool) -> bool {
  let mut table = table();
  let idle_since = Instant::now();
  loop {
    let entry = table.locks.entry(key);
    let blocked = local_holder_blocks && (!entry.held.is_empty() || entry.claiming);
    if !entry.queue.is_empty() && !blocked {
      return true;
    }
    let left = if entry.queue.is_empty() {
      match IDLE_WAITING_THREAD.checked_sub(idle_since.elapsed()) {
        Some(left) => left,
        None => {
          entry.waiting_thread = false;
          if entry.unused() {
            table.locks.remove(key);
          }
          return false;
        }
      }
    } else {
      IDLE_WAITING_THREAD
    };
    table = CHANGED
      .wait_timeout(table, left)
      .unwrap_or_else(|e| e.into_inner())
      .0;
  }
}

fn fail_waiters(key: &Path, error: &LockError) {
  let waiters: Vec<Waiter> = match table().locks.get_mut(key) {
    Some(entry) => {
      entry.waiting_thread = false;
      entry.queue.drain(..).collect()
    }
    None => Vec::new(),
  };
  for waiter in waiters {
    waiter.answer(Err(error.clone()));
  }
}

/// Releases the hold `lock_id` of this process, found by its lockId whatever `file` (the
/// caller's path) resolves to now, as long as it is a hold of `file` or of its lock.
/// `Ok(false)`: nothing to release (already released); `ELOCKMISMATCH` when `file`'s lock is
/// held under another lockId, or `lock_id` is this process's hold of another lock.
pub fn release(file: &str, lock_id: &str) -> Result<bool> {
  // Held as spelled (absolute, normalised): the caller passing that very string, as it usually
  // does, needs no normalising before the release, which a waiting process would wait for.
  let as_spelled = table()
    .find(lock_id)
    .is_some_and(|(_, held)| held.file.as_os_str() == file);
  let hold_of_this_file = if as_spelled {
    Some(true)
  } else {
    let spelled = paths::file_of(file)?;
    table().find(lock_id).map(|(_, held)| held.file == spelled)
  };
  match hold_of_this_file {
    None => release_not_held(&*paths::resolve(file)?, lock_id),
    Some(true) => Ok(release_hold(lock_id)),
    // Another spelling of the file, a symlinked data file, or a file sharing the lock; or a
    // lockId of another lock of this process, which must not end that hold.
    Some(false) => {
      let target = paths::resolve(file)?;
      let other_lock = table()
        .find(lock_id)
        .filter(|(lock_path, held)| !protects(lock_path, held, &target))
        .map(|(_, held)| held.file.clone());
      match other_lock {
        Some(other) => Err(LockError::new(
          "ELOCKMISMATCH",
          format!(
            "Lock on {} was not released: lockId {lock_id} is this process's hold of {}'s lock, not of this file's. Pass the lockId that acquireLock returned for this file.",
            target.file.display(),
            other.display()
          ),
        )),
        None => Ok(release_hold(lock_id)),
      }
    }
  }
}

/// Whether `held`, a hold of the lock at `lock_path`, covers `target`: taken for this file, or
/// its lock is `target`'s (the file locked through the lock path it resolves to now, or files
/// sharing a lock file).
fn protects(lock_path: &Path, held: &Held, target: &Target) -> bool {
  held.file == target.file || lock_path == target.lock_path
}

/// Ends this process's hold `lock_id`; false when there is none.
fn release_hold(lock_id: &str) -> bool {
  let Some((held, a_waiting_thread_listens)) = table().remove_hold(lock_id) else {
    return false;
  };
  end_hold(&held);
  // After the hold ends: before it, this bookkeeping would delay a waiter woken on another CPU.
  metrics::released(&held.file.to_string_lossy(), held.since.elapsed());
  // Only a waiting thread with someone queued listens (it may wait for this process's own
  // holder to end): a notify costs a system call, and waking an idle waiting thread costs a
  // context switch that competes with the process the lock is being handed to.
  if a_waiting_thread_listens {
    CHANGED.notify_all();
  }
  true
}

/// Gives the grant up under its guard, so no refresh or check can run on it afterwards; first
/// waits for the writes under it whose check has passed: each renames next, and must not land
/// after the lock was given up (over the next holder's commit).
fn end_hold(held: &Held) {
  let mut hold = guard(&held.cell);
  while hold.commits > 0 {
    // Tells a test that the release really waits for a write, at the instant it starts to.
    crate::failpoint!("release::awaits_write");
    hold = held
      .cell
      .landed
      .wait(hold)
      .unwrap_or_else(|e| e.into_inner());
  }
  let grant = hold.grant.take();
  drop(hold);
  if let Some(grant) = grant {
    grant.release();
  }
}

fn release_not_held(target: &Target, lock_id: &str) -> Result<bool> {
  if let Some(held) = table()
    .locks
    .get(&target.lock_path)
    .and_then(|e| e.held.first())
  {
    return Err(LockError::new(
      "ELOCKMISMATCH",
      format!(
        "Lock on {} was not released: lockId {lock_id} does not match the current holder's (this process holds it for {} under another lockId). Pass the lockId that acquireLock returned.",
        target.file.display(),
        held.file.display()
      ),
    ));
  }
  let info =
    config::backend_for(target)?.lock_info(target, Duration::from_millis(DEFAULT_STALE_MS))?;
  match info {
    Some(info) if info["state"] == "held" => Err(LockError::new(
      "ELOCKMISMATCH",
      format!(
        "Lock on {} was not released: it is held by {}, not under lockId {lock_id}. Only the holder can release it.",
        target.file.display(),
        describe_info(&info)
      ),
    )),
    _ => Ok(false),
  }
}

/// Process exit: releases everything this process holds, settles every queued wait with
/// `ELOCKCANCELLED`, and lets the backends tidy up. Returns how many locks were released.
pub fn release_all() -> usize {
  let entries: Vec<Entry> = {
    let mut table = table();
    table.lock_of.clear();
    let entries: Vec<(PathBuf, Entry)> = table.locks.drain().collect();
    // A single try still asking a lock server ends on its entry's count (`acquire_since`).
    for (lock_path, entry) in &entries {
      if entry.trying > 0 {
        table.locks.entry(lock_path).trying = entry.trying;
      }
    }
    entries.into_iter().map(|(_, entry)| entry).collect()
  };
  let mut released = 0;
  for entry in entries {
    for held in entry.held {
      end_hold(&held);
      released += 1;
    }
    for waiter in entry.queue {
      let cancelled = cancelled_error(
        &waiter.request.file,
        "this process is ending and has released its locks",
      );
      waiter.answer(Err(cancelled));
    }
  }
  CHANGED.notify_all();
  config::tidy_up_at_exit();
  released
}

const ENDED_ENVIRONMENT: &str =
  "the worker thread (JS environment) that asked for it ended, and its locks were released";

/// The environments that have ended (see [`end_owner`]); one id per ended worker thread.
static ENDED_OWNERS: LazyLock<Mutex<rustc_hash::FxHashSet<Owner>>> =
  LazyLock::new(Default::default);

fn owner_ended(owner: Owner) -> bool {
  owner != NO_OWNER
    && ENDED_OWNERS
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .contains(&owner)
}

/// `owner`'s environment ended (a worker thread exited or was terminated, possibly while its JS
/// waited for a lock): releases the holds taken from it and settles its queued waits with
/// `ELOCKCANCELLED`. Its JS can no longer release them, nor hear a grant that was on its way;
/// left alone they would stay held for the rest of the process's life. Returns how many holds
/// were released. Waits and holds of other environments are untouched.
pub fn end_owner(owner: Owner) -> usize {
  ENDED_OWNERS
    .lock()
    .unwrap_or_else(|e| e.into_inner())
    .insert(owner);
  LOST_LISTENERS
    .write()
    .unwrap_or_else(|e| e.into_inner())
    .remove(&owner);
  let (holds, waiters) = {
    let mut table = table();
    let Table { locks, lock_of } = &mut *table;
    let (mut holds, mut waiters) = (Vec::new(), Vec::new());
    for entry in locks.values_mut() {
      holds.extend(entry.held.extract_if(.., |h| h.owner == owner));
      let (theirs, others) = entry.queue.drain(..).partition(|w| w.owner == owner);
      entry.queue = others;
      waiters.extend::<VecDeque<Waiter>>(theirs);
    }
    for held in &holds {
      lock_of.remove(&held.lock_id);
    }
    (holds, waiters)
  };
  for held in &holds {
    end_hold(held);
    metrics::released(&held.file.to_string_lossy(), held.since.elapsed());
  }
  for waiter in waiters {
    let cancelled = cancelled_error(&waiter.request.file, ENDED_ENVIRONMENT);
    waiter.answer(Err(cancelled));
  }
  // Waiting threads look at their queues again, and whoever waits here for a hold that ended.
  CHANGED.notify_all();
  holds.len()
}

fn cancelled_error(file: &Path, why: &str) -> LockError {
  LockError::new(
    "ELOCKCANCELLED",
    format!(
      "The wait for the lock on {} was cancelled: {why}.",
      file.display()
    ),
  )
}

/// A write's pass from its check to its rename (see [`verify_held`]): while it is out, the hold
/// cannot end, so a release (`releaseLockSync`, a worker ending, the exit cleanup) waits for the
/// rename instead of letting it land after the lock went to someone else.
pub struct CommitPass {
  cell: Option<HoldCell>,
}

impl std::fmt::Debug for CommitPass {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("CommitPass")
  }
}

impl Drop for CommitPass {
  fn drop(&mut self) {
    if let Some(cell) = &self.cell {
      guard(cell).commits -= 1;
      cell.landed.notify_all();
    }
  }
}

/// Confirms, right before a write, that we still hold the lock (through the backend), under the
/// hold's guard, and for backends that issue fencing tokens that no newer holder has committed
/// (recording ours). A lock evicted while its holder stalled must not write. The pass it returns
/// keeps the hold from ending until the write has landed: drop it after the rename.
pub fn verify_held(target: &Target, lock_id: &str) -> Result<CommitPass> {
  let held = table().find(lock_id).map(|(lock_path, h)| {
    (
      h.cell.clone(),
      h.mode,
      protects(lock_path, h, target)
        .then_some(())
        .ok_or_else(|| h.file.clone()),
    )
  });
  if let Some((_, _, Err(other))) = &held {
    return Err(LockError::new(
      "ELOCKLOST",
      format!(
        "The write to {} was refused: lock {lock_id} is this process's hold of {}'s lock, not of this file's; the file was not changed. Pass the lockId that acquireLock returned for this file.",
        target.file.display(),
        other.display()
      ),
    ));
  }
  if let Some((_, LockMode::Shared, _)) = held {
    return Err(LockError::new(
      "ELOCKSHARED",
      format!(
        "The write to {} was refused: lock {lock_id} is a shared (read) lock, and a reader does not commit; the file was not changed. Write under an exclusive lock (acquireLock without mode: 'shared', withLock or updateWithLock).",
        target.file.display()
      ),
    ));
  }
  let cell = held.map(|(cell, _, _)| cell);
  let lost = |why: &str| {
    LockError::new(
      "ELOCKLOST",
      format!(
        "The lock on {} was lost before the write ({why}); the file was not changed. Retry the update.",
        target.file.display()
      ),
    )
  };
  let Some(cell) = cell else {
    return Err(lost("this process no longer holds it"));
  };
  // A test-only switch (failpoint) turns the commit check off, to show what it protects.
  if crate::failpoints::value("commit::skip_check").is_some() {
    return Ok(CommitPass { cell: None });
  }
  let mut hold = guard(&cell);
  if let Some(why) = &hold.lost {
    return Err(lost(why));
  }
  let Some(grant) = &hold.grant else {
    return Err(lost("it was released"));
  };
  grant.verify()?;
  if let Some(token) = grant.fencing_token() {
    fence::check_and_record(target, token, grant.lock_id())?;
  }
  hold.commits += 1;
  drop(hold);
  Ok(CommitPass { cell: Some(cell) })
}

/// Why this process's hold `lock_id` was found lost while held, if it was (and is still held).
pub fn lost_reason(lock_id: &str) -> Option<String> {
  let cell = table().find(lock_id).map(|(_, h)| h.cell.clone())?;
  let reason = guard(&cell).lost.clone();
  reason
}

/// The heartbeat's work: refreshes every hold that is due, each under its own guard, and marks
/// lost those the backend says are no longer ours or whose own deadline has passed. Returns
/// when it wants to run next.
fn refresh_due() -> Option<Instant> {
  let now = Instant::now();
  let due: Vec<(String, PathBuf, Owner, HoldCell, bool)> = {
    let mut table = table();
    let mut due = Vec::new();
    for entry in table.locks.values_mut() {
      for held in entry.held.iter_mut() {
        // A shortened interval applies now, not after the period planned before it.
        held.next_refresh = held.next_refresh.min(now + held.refresh_every());
        if held.next_refresh <= now {
          due.push((
            held.lock_id.clone(),
            held.file.clone(),
            held.owner,
            held.cell.clone(),
            // A grant with a refresh period of its own renews a lease on a lock server.
            held.refresh_every.is_some(),
          ));
        }
      }
    }
    due
  };
  for (lock_id, file, owner, cell, leased) in due {
    if !leased {
      refresh_hold(&lock_id, &file, owner, &cell);
      continue;
    }
    // A lease's renewal asks its server, which may not answer before its command timeout: on a
    // thread of its own, so that it holds up neither the other servers' renewals (their leases
    // would run out) nor the file backend's heartbeats. One at a time per hold.
    if cell.renewing.swap(true, Ordering::SeqCst) {
      continue;
    }
    let renew = move |lock_id: &str, file: &Path, cell: &HoldCell| {
      refresh_hold(lock_id, file, owner, cell);
      cell.renewing.store(false, Ordering::SeqCst);
    };
    let spawned = {
      let (lock_id, file, cell) = (lock_id.clone(), file.clone(), cell.clone());
      std::thread::Builder::new()
        .name("flowforge-lock-renew".into())
        .spawn(move || renew(&lock_id, &file, &cell))
    };
    if spawned.is_err() {
      // No thread to spare: renewed here, as before.
      renew(&lock_id, &file, &cell);
    }
  }
  let mut table = table();
  let mut next: Option<Instant> = None;
  for entry in table.locks.values_mut() {
    for held in entry.held.iter_mut() {
      if held.next_refresh <= now {
        held.next_refresh = now + held.refresh_every();
      }
      next = Some(next.map_or(held.next_refresh, |n| n.min(held.next_refresh)));
    }
  }
  next
}

/// Refreshes one hold under its guard, and marks it lost (telling its environment's listener)
/// if the backend says it is no longer ours or its own deadline has passed.
fn refresh_hold(lock_id: &str, file: &Path, owner: Owner, cell: &HoldCell) {
  let mut hold = guard(cell);
  if hold.lost.is_some() {
    return;
  }
  let Some(grant) = hold.grant.as_mut() else {
    return;
  };
  let lost = match grant.refresh() {
    Refreshed::Held => None,
    Refreshed::Lost(why) => Some(why),
    Refreshed::Unknown(why) => grant
      .deadline()
      .filter(|deadline| *deadline <= Instant::now())
      .map(|_| format!("its lease could not be renewed in time ({why})")),
  };
  let Some(why) = lost else {
    return;
  };
  hold.lost = Some(why.clone());
  drop(hold);
  let listener = LOST_LISTENERS
    .read()
    .unwrap_or_else(|e| e.into_inner())
    .get(&owner)
    .cloned();
  if let Some(listener) = listener {
    listener(lock_id, file, &why);
  }
}

/// What this process knows of a lock it may hold: adds `heldByThisProcess` (and the exact hold
/// time of an exclusive hold) to a backend's view of it, and to each of its `readers`.
pub fn with_local_view(lock_path: &Path, mut info: Value) -> Value {
  let here: Vec<(String, LockMode, Duration)> =
    table().locks.get(lock_path).map_or(Vec::new(), |e| {
      e.held
        .iter()
        .map(|h| (h.lock_id.clone(), h.mode, h.since.elapsed()))
        .collect()
    });
  let mark = |map: &mut serde_json::Map<String, Value>,
              hold: Option<&(String, LockMode, Duration)>| {
    if let Some((_, _, age)) = hold {
      map.insert("heldForMs".into(), Value::from(age.as_millis() as u64));
    }
    map.insert("heldByThisProcess".into(), Value::from(hold.is_some()));
  };
  if let Value::Object(map) = &mut info {
    if let Some(Value::Array(readers)) = map.get_mut("readers") {
      for reader in readers.iter_mut() {
        let id = reader["lockId"].as_str().unwrap_or("").to_string();
        if let Value::Object(reader) = reader {
          mark(reader, here.iter().find(|(lock_id, _, _)| *lock_id == id));
        }
      }
    }
    let exclusive = here
      .iter()
      .find(|(_, mode, _)| *mode == LockMode::Exclusive);
    mark(map, exclusive);
    map.insert("heldByThisProcess".into(), Value::from(!here.is_empty()));
  }
  info
}

/// The descriptor a child process must inherit to keep the hold `lock_id` (`exec`), if the
/// backend has one.
pub fn inheritable_fd(lock_id: &str) -> Option<i32> {
  let cell = table().find(lock_id).map(|(_, h)| h.cell.clone())?;
  let hold = guard(&cell);
  hold.grant.as_ref().and_then(|g| g.inheritable_fd())
}

fn timeout_error(target: &Target, waited: Duration) -> LockError {
  let here = table()
    .locks
    .get(&target.lock_path)
    .and_then(|e| e.held.iter().map(|h| h.since.elapsed()).max());
  let holder = match here {
    Some(age) => format!(
      "held by this process (pid {}) for {:.1} s. If this call runs under that hold (a lock taken with acquireLock), pass its lockId (updateWithLock(file, fn, {{ lockId }})) or do the work inside FileLockManager.withLock, so it does not wait on itself",
      identity::current().pid,
      age.as_secs_f64()
    ),
    None => match config::backend_for(target)
      .and_then(|b| b.lock_info(target, Duration::from_millis(DEFAULT_STALE_MS)))
    {
      Ok(Some(info)) => format!("held by {}", describe_info(&info)),
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

/// "pid 42 (user alice on host devbox) for 3.2 s", from a backend's view of a lock.
fn describe_info(info: &Value) -> String {
  match record::parse(info.to_string().as_bytes()) {
    Contents::Record(r) => r.describe(),
    _ => "an unknown process".to_string(),
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_support::temp_dir;
  use std::sync::mpsc;

  const WAIT: Duration = Duration::from_secs(30);

  fn project_file(name: &str) -> Target {
    let dir = temp_dir("table");
    std::fs::create_dir_all(dir.join(".flowforge")).unwrap();
    prepare(dir.join(".flowforge").join(name).to_str().unwrap()).unwrap()
  }

  /// `name` in a project whose locks are kept by the Redis `server`.
  fn redis_project_file(server: &crate::redis::test_server::RedisServer, name: &str) -> Target {
    let target = project_file(name);
    std::fs::write(
      paths::data_dir_of(&target.root).join("lock-config.json"),
      format!(r#"{{ "backend": "{}" }}"#, server.url()),
    )
    .unwrap();
    target
  }

  /// [`super::release`] of a hold of `target`, named by its file.
  fn release(target: &Target, lock_id: &str) -> Result<bool> {
    super::release(target.file.to_str().unwrap(), lock_id)
  }

  /// Takes `target`'s lock at once (it must be free); its lockId.
  fn take_now(target: &Target) -> String {
    try_acquire(target, &options(Some(Duration::ZERO)))
      .unwrap()
      .unwrap()
  }

  fn options(timeout: Option<Duration>) -> AcquireOptions {
    AcquireOptions {
      timeout,
      stale_after: Duration::from_millis(DEFAULT_STALE_MS),
      priority: 0.0,
      mode: LockMode::Exclusive,
      owner: NO_OWNER,
    }
  }

  /// Queues an acquire whose outcome arrives on the returned channel, labelled.
  fn queue(
    target: &Target,
    timeout: Option<Duration>,
    label: usize,
    done: &mpsc::Sender<(usize, Result<String>)>,
  ) {
    let done = done.clone();
    acquire(
      target.clone(),
      options(timeout),
      Box::new(move |outcome| done.send((label, outcome)).unwrap()),
    );
  }

  /// A hold is found by its lockId, but only the file it was taken for (or one sharing its
  /// lock) may end it: a lockId passed with the wrong file must not release another lock.
  #[test]
  fn a_lock_id_of_another_lock_releases_nothing() {
    let (a, b) = (project_file("a.json"), project_file("b.json"));
    let (id_a, id_b) = (take_now(&a), take_now(&b));
    assert_eq!(release(&a, &id_b).unwrap_err().code, "ELOCKMISMATCH");
    assert!(verify_held(&b, &id_b).is_ok());
    assert!(release(&b, &id_b).unwrap());
    assert!(release(&a, &id_a).unwrap());
  }

  #[test]
  fn waiters_of_one_process_are_served_in_arrival_order() {
    let target = project_file("fifo.json");
    let first = take_now(&target);
    let (done, outcomes) = mpsc::channel();
    for label in 0..5 {
      queue(&target, None, label, &done);
    }
    assert!(release(&target, &first).unwrap());
    let mut order = Vec::new();
    for _ in 0..5 {
      let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
      order.push(label);
      assert!(release(&target, &outcome.unwrap()).unwrap());
    }
    assert_eq!(order, [0, 1, 2, 3, 4]);
  }

  #[test]
  fn higher_priorities_are_served_first_and_equals_in_arrival_order() {
    let target = project_file("priority.json");
    let first = take_now(&target);
    let (done, outcomes) = mpsc::channel();
    let priorities = [0.0, 5.0, 0.0, 10.0, 5.0, -1.0, 10.0];
    for (label, priority) in priorities.iter().enumerate() {
      let done = done.clone();
      acquire(
        target.clone(),
        AcquireOptions {
          priority: *priority,
          ..options(None)
        },
        Box::new(move |outcome| done.send((label, outcome)).unwrap()),
      );
    }
    assert!(release(&target, &first).unwrap());
    let mut order = Vec::new();
    for _ in 0..priorities.len() {
      let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
      order.push(label);
      assert!(release(&target, &outcome.unwrap()).unwrap());
    }
    assert_eq!(order, [3, 6, 1, 4, 0, 2, 5]);
  }

  fn waiter(id: u64, priority: f64, enqueued: Instant) -> Waiter {
    Waiter {
      id,
      request: Request {
        file: PathBuf::from("/x"),
        stale_after: Duration::from_millis(DEFAULT_STALE_MS),
        mode: LockMode::Exclusive,
        priority,
        arrival: enqueued,
      },
      enqueued,
      priority,
      owner: NO_OWNER,
      complete: Box::new(|_| {}),
      deadline: None,
    }
  }

  /// The serving order of a queue at `now`, by id.
  fn serving_order(mut queue: VecDeque<Waiter>, now: Instant) -> Vec<u64> {
    let mut order = Vec::new();
    while let Some(index) = next_waiter(&queue, now) {
      order.push(queue.remove(index).unwrap().id);
    }
    order
  }

  #[test]
  fn a_waiter_ages_past_newer_higher_priorities() {
    let now = Instant::now() + 100 * AGING_STEP;
    let ago = |steps: f64| now - AGING_STEP.mul_f64(steps);
    // Priority 0 waiting 3.5 steps ranks 3.5: above a priority 3 that just came, below one
    // that came half a step ago with priority 4 (4.5).
    let queue = VecDeque::from([
      waiter(0, 0.0, ago(3.5)),
      waiter(1, 3.0, ago(0.0)),
      waiter(2, 4.0, ago(0.5)),
    ]);
    assert_eq!(serving_order(queue, now), [2, 0, 1]);
    // Equal priorities: arrival order, even when they came at the same instant.
    let same = ago(1.0);
    let queue = VecDeque::from([
      waiter(5, 2.0, same),
      waiter(3, 2.0, same),
      waiter(4, 2.0, ago(2.0)),
    ]);
    assert_eq!(serving_order(queue, now), [4, 3, 5]);
  }

  #[test]
  fn a_timed_out_waiter_leaves_and_the_next_one_is_served() {
    let target = project_file("timeout.json");
    let holder = take_now(&target);
    let (done, outcomes) = mpsc::channel();
    queue(&target, Some(Duration::from_millis(1)), 0, &done);
    queue(&target, None, 1, &done);
    let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 0);
    let err = outcome.unwrap_err();
    assert_eq!(err.code, "ELOCKTIMEOUT");
    assert!(
      err.message.contains("held by this process"),
      "{}",
      err.message
    );
    release(&target, &holder).unwrap();
    let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 1);
    release(&target, &outcome.unwrap()).unwrap();
  }

  /// A waiter served before its timeout cancels it: the timeout's closure (holding the lock's
  /// paths) does not stay in the deadline heap for the rest of the hour.
  #[test]
  fn a_served_waiter_cancels_its_timeout() {
    let target = project_file("served-timeout.json");
    let holder = take_now(&target);
    let (done, outcomes) = mpsc::channel();
    queue(&target, Some(Duration::from_secs(3600)), 0, &done);
    let deadline = table().locks.get(&target.lock_path).unwrap().queue[0]
      .deadline
      .as_ref()
      .unwrap()
      .key();
    assert!(deadlines::is_pending(deadline));
    release(&target, &holder).unwrap();
    let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 0);
    assert!(
      !deadlines::is_pending(deadline),
      "the served waiter's timeout is still pending"
    );
    release(&target, &outcome.unwrap()).unwrap();
  }

  fn shared() -> AcquireOptions {
    AcquireOptions {
      mode: LockMode::Shared,
      ..options(None)
    }
  }

  /// Queues an acquire in `opts`, its outcome on `done`, labelled.
  fn queue_as(
    target: &Target,
    opts: AcquireOptions,
    label: usize,
    done: &mpsc::Sender<(usize, Result<String>)>,
  ) {
    let done = done.clone();
    acquire(
      target.clone(),
      opts,
      Box::new(move |outcome| done.send((label, outcome)).unwrap()),
    );
  }

  /// An ended environment's holds are released and its queued waits cancelled; another
  /// environment's wait in the same queue then gets the lock.
  #[test]
  fn an_ended_owner_leaves_no_hold_and_no_wait_behind() {
    let (held, waits) = (
      project_file("ended-held.json"),
      project_file("ended-wait.json"),
    );
    let (ending, staying) = (1_000_001, 1_000_002);
    let as_owner = |owner| AcquireOptions {
      owner,
      ..options(Some(Duration::ZERO))
    };
    try_acquire(&held, &as_owner(ending)).unwrap().unwrap();
    let blocker = take_now(&waits);
    let (done, outcomes) = mpsc::channel();
    queue_as(
      &waits,
      AcquireOptions {
        owner: ending,
        ..options(None)
      },
      0,
      &done,
    );
    queue_as(
      &waits,
      AcquireOptions {
        owner: staying,
        ..options(None)
      },
      1,
      &done,
    );
    assert_eq!(end_owner(ending), 1);
    let (label, cancelled) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!((label, cancelled.unwrap_err().code), (0, "ELOCKCANCELLED"));
    // Free again: the ended owner's hold was released (take_now fails otherwise).
    take_now(&held);
    assert!(release(&waits, &blocker).unwrap());
    let (label, granted) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 1);
    assert!(release(&waits, &granted.unwrap()).unwrap());
  }

  /// What `getLockInfo` reports for `target` now.
  fn info_of(target: &Target) -> Value {
    config::backend_for(target)
      .unwrap()
      .lock_info(target, Duration::from_secs(30))
      .unwrap()
      .unwrap()
  }

  type Outcomes = (
    mpsc::Sender<(usize, Result<String>)>,
    mpsc::Receiver<(usize, Result<String>)>,
  );

  /// A reader holding `target` and a writer (label 0) queued and blocked behind it: the reader's
  /// lockId and the channel the writer's outcome (and those of later waiters) arrives on.
  fn writer_queued_behind_a_reader(target: &Target) -> (String, Outcomes) {
    let reader = try_acquire(target, &shared()).unwrap().unwrap();
    let (done, outcomes) = mpsc::channel();
    queue_as(target, options(None), 0, &done);
    crate::test_support::wait_for_blocked_waiter(&target.lock_path);
    (reader, (done, outcomes))
  }

  #[test]
  fn shared_holds_coexist_and_exclude_a_writer() {
    let target = project_file("readers.json");
    let first = try_acquire(&target, &shared()).unwrap().unwrap();
    let second = try_acquire(&target, &shared()).unwrap().unwrap();
    assert_ne!(first, second);
    assert!(try_acquire(&target, &options(Some(Duration::ZERO)))
      .unwrap()
      .is_none());
    let info = info_of(&target);
    assert_eq!(info["mode"], "shared");
    assert_eq!(info["readers"].as_array().unwrap().len(), 2);
    assert!(release(&target, &first).unwrap());
    assert!(try_acquire(&target, &options(Some(Duration::ZERO)))
      .unwrap()
      .is_none());
    assert!(release(&target, &second).unwrap());
    let writer = take_now(&target);
    // And a writer excludes readers.
    assert!(try_acquire(&target, &shared()).unwrap().is_none());
    release(&target, &writer).unwrap();
  }

  /// Writer preference inside one process: with readers holding and a writer queued, a reader
  /// that arrives later is not let in beside the holders: it is served after the writer.
  #[test]
  fn a_reader_behind_a_queued_writer_is_served_after_it() {
    let target = project_file("preference.json");
    let (reader, (done, outcomes)) = writer_queued_behind_a_reader(&target);
    assert!(try_acquire(&target, &shared()).unwrap().is_none());
    queue_as(&target, shared(), 1, &done);
    queue_as(&target, shared(), 2, &done);
    assert!(release(&target, &reader).unwrap());
    let (label, writer) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 0);
    let writer = writer.unwrap();
    // Nobody else holds while the writer does.
    assert!(outcomes.try_recv().is_err());
    assert!(release(&target, &writer).unwrap());
    let mut readers = Vec::new();
    for _ in 0..2 {
      let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
      readers.push((label, outcome.unwrap()));
    }
    readers.sort();
    assert_eq!(readers.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    // Both readers hold at once.
    let info = info_of(&target);
    assert_eq!(info["readers"].as_array().unwrap().len(), 2, "{info}");
    for (_, id) in readers {
      release(&target, &id).unwrap();
    }
  }

  /// The waiting thread blocks in the head's mode; when a higher priority of the other mode
  /// becomes the head meanwhile, the lock it got is given back and taken again in that mode.
  #[test]
  fn a_head_that_changes_mode_is_served_in_its_own_mode() {
    let target = project_file("switch.json");
    let (reader, (done, outcomes)) = writer_queued_behind_a_reader(&target);
    let urgent = AcquireOptions {
      priority: 10.0,
      ..shared()
    };
    queue_as(&target, urgent, 1, &done);
    assert!(release(&target, &reader).unwrap());
    let (label, first) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 1);
    let info = info_of(&target);
    assert_eq!(info["mode"], "shared");
    // Its kernel lock is a shared one: another reader's try gets in beside it.
    match crate::file::os_lock::LockFile::try_acquire_as(&target.lock_path, None, LockMode::Shared)
      .unwrap()
    {
      crate::file::os_lock::TryLock::Locked(beside) => beside.unlock(),
      crate::file::os_lock::TryLock::Busy(_) => panic!("the reader was granted an exclusive lock"),
    }
    release(&target, &first.unwrap()).unwrap();
    let (label, writer) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 0);
    release(&target, &writer.unwrap()).unwrap();
  }

  #[test]
  fn a_shared_hold_does_not_commit() {
    let target = project_file("nowrite.json");
    let id = try_acquire(&target, &shared()).unwrap().unwrap();
    let err = verify_held(&target, &id).unwrap_err();
    assert_eq!(err.code, "ELOCKSHARED");
    assert!(err.message.contains("nowrite.json"), "{}", err.message);
    assert!(release(&target, &id).unwrap());
    assert!(!release(&target, &id).unwrap());
  }

  /// A released reader file stays, blank and locked, for the next shared hold of this process;
  /// nobody counts it as a reader, and exit removes it.
  #[test]
  fn released_reader_files_are_reused_and_removed_at_exit() {
    let target = project_file("exit.json");
    let ids: Vec<String> = (0..3)
      .map(|_| try_acquire(&target, &shared()).unwrap().unwrap())
      .collect();
    let lock_dir = target.lock_path.parent().unwrap().to_path_buf();
    let files = || {
      std::fs::read_dir(&lock_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
          e.file_name()
            .to_string_lossy()
            .contains("exit.json.lock.r-")
        })
        .count()
    };
    let readers = || {
      crate::file::readers::readers(&target.lock_path, Duration::from_secs(30))
        .iter()
        .filter(|r| r.is_live())
        .count()
    };
    assert_eq!((files(), readers()), (3, 3));
    for id in &ids {
      assert!(release(&target, id).unwrap());
    }
    assert_eq!((files(), readers()), (3, 0));
    let again = try_acquire(&target, &shared()).unwrap().unwrap();
    assert_eq!((files(), readers()), (3, 1));
    release(&target, &again).unwrap();
    crate::file::readers::remove_idle(&target.lock_path);
    assert_eq!(files(), 0);
  }

  /// A synchronous caller that is gone when its wait ends (its JS was stopped) gets
  /// `ELOCKCANCELLED`, and the lock it got is free again.
  #[test]
  fn a_wait_on_the_callers_thread_gives_the_lock_back_when_the_caller_is_gone() {
    let target = project_file("sync-gone.json");
    let outsider = std::fs::File::create(&target.lock_path).unwrap();
    outsider.lock().unwrap();
    std::thread::scope(|s| {
      s.spawn(|| {
        crate::test_support::wait_for_blocked_waiter(&target.lock_path);
        outsider.unlock().unwrap();
      });
      let err = acquire_on_this_thread(&target, options(Some(WAIT)), &|| false).unwrap_err();
      assert_eq!(err.code, "ELOCKCANCELLED");
    });
    assert!(release(&target, &take_now(&target)).unwrap());
  }

  #[test]
  fn a_wait_on_the_callers_thread_times_out_or_gets_the_lock_when_another_process_frees_it() {
    let target = project_file("sync.json");
    // Another open file description, as another process would have.
    let outsider = std::fs::OpenOptions::new()
      .read(true)
      .write(true)
      .open(&target.lock_path)
      .or_else(|_| std::fs::File::create(&target.lock_path))
      .unwrap();
    outsider.lock().unwrap();
    let err = acquire_on_this_thread(&target, options(Some(Duration::from_millis(20))), &|| true)
      .unwrap_err();
    assert_eq!(err.code, "ELOCKTIMEOUT");
    let (done, outcomes) = mpsc::channel();
    std::thread::scope(|s| {
      let (target, outsider) = (&target, &outsider);
      s.spawn(move || {
        crate::test_support::wait_for_blocked_waiter(&target.lock_path);
        // While this process's synchronous caller waits, an asynchronous caller of the same
        // process queues: it neither fails nor takes the lock from under the other. Whichever
        // the kernel wakes first holds it alone; the other follows.
        queue(target, None, 1, &done);
        outsider.unlock().unwrap();
        let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
        assert_eq!(label, 1);
        assert!(release(target, &outcome.unwrap()).unwrap());
      });
      let lock_id = acquire_on_this_thread(target, options(Some(WAIT)), &|| true).unwrap();
      assert!(release(target, &lock_id).unwrap());
    });
  }

  /// A lock server's single try (timeout 0) asks from a thread of its own. While its claim was
  /// on its way, a synchronous acquire of the same lock (made on the same event loop turn)
  /// found nothing of it in the table and queued behind the grant it brought back: it waited its
  /// whole timeout (for ever without one) for a hold whose caller's event loop it blocked. The
  /// try is counted from its call on now, and the synchronous acquire fails fast.
  #[cfg(feature = "failpoints")]
  #[test]
  fn a_sync_acquire_fails_fast_while_a_single_try_asks_a_lock_server() {
    let server = crate::redis::test_server::RedisServer::start();
    let target = redis_project_file(&server, "try-in-flight.json");
    let (answered, at_answer) = mpsc::channel();
    let (go, wait_for_go) = mpsc::channel::<()>();
    let (answered, wait_for_go) = (Mutex::new(answered), Mutex::new(wait_for_go));
    fail::cfg_callback("lock_table::claim_answered", move || {
      // Only a single try's own thread stops: the other claims of this test binary go on.
      if std::thread::current().name() == Some("flowforge-lock-try") {
        let _ = answered.lock().unwrap().send(());
        let _ = wait_for_go.lock().unwrap().recv();
      }
    })
    .unwrap();
    let (done, outcome) = mpsc::channel();
    acquire(
      target.clone(),
      options(Some(Duration::ZERO)),
      Box::new(move |o| done.send(o).unwrap()),
    );
    // Redis granted the try; the grant is on its way back to the table.
    at_answer.recv_timeout(WAIT).unwrap();
    let sync = acquire_on_this_thread(&target, options(Some(Duration::from_secs(2))), &|| true);
    drop(go);
    let lock_id = outcome.recv_timeout(WAIT).unwrap().unwrap();
    fail::remove("lock_table::claim_answered");
    assert_eq!(sync.map_err(|e| e.code), Err("ELOCKDEADLOCK"));
    assert!(release(&target, &lock_id).unwrap());
  }

  /// A single try's count ended only after its caller had been told the outcome. A caller
  /// that, told it, released the lock and took it synchronously (JS runs a settled promise's
  /// reaction while the try's thread may not have gone on yet) was refused with ELOCKDEADLOCK,
  /// though the process neither held the lock nor asked for it any more. Done here inside the
  /// completion, the instant the count used to still be up.
  #[test]
  fn a_sync_acquire_right_after_a_single_try_settled_is_not_refused() {
    let server = crate::redis::test_server::RedisServer::start();
    let target = redis_project_file(&server, "try-settled.json");
    let (done, outcome) = mpsc::channel();
    let told = target.clone();
    acquire(
      target.clone(),
      options(Some(Duration::ZERO)),
      Box::new(move |granted| {
        let released = granted.and_then(|lock_id| release(&told, &lock_id));
        let again = acquire_on_this_thread(&told, options(Some(Duration::ZERO)), &|| true);
        done.send((released, again)).unwrap();
      }),
    );
    let (released, again) = outcome.recv_timeout(WAIT).unwrap();
    assert!(released.unwrap());
    let lock_id = again.map_err(|e| e.code).unwrap();
    assert!(release(&target, &lock_id).unwrap());
  }

  /// The synchronous caller's deadline also ends a wait for its turn in the ticket queue (not
  /// only one in `flock`), and its ticket goes: nobody is left queued behind a waiter gone.
  #[test]
  fn a_sync_wait_for_its_turn_in_the_queue_times_out_and_leaves_the_queue() {
    use crate::file::os_lock::{LockFile, TryLock};
    use crate::file::ticket_queue::{self, QueueFile};
    let target = project_file("sync-queue.json");
    // Another process's hold (kernel lock and holder's byte) and its waiter's earlier ticket.
    let TryLock::Locked(outsider) = LockFile::try_acquire(&target.lock_path, None).unwrap() else {
      panic!("busy")
    };
    let mut holder = QueueFile::open(&target.lock_path).unwrap();
    holder.hold(LockMode::Exclusive);
    let ahead = QueueFile::open(&target.lock_path).unwrap();
    let earlier = ahead
      .line_up(ticket_queue::key(
        0.0,
        Instant::now() - Duration::from_secs(1),
      ))
      .unwrap();
    let err = acquire_on_this_thread(&target, options(Some(Duration::from_millis(50))), &|| true)
      .unwrap_err();
    assert_eq!(err.code, "ELOCKTIMEOUT");
    outsider.unlock();
    holder.unhold();
    ahead.leave(earlier);
    let checker = QueueFile::open(&target.lock_path).unwrap();
    assert!(
      !checker.others_queued(LockMode::Exclusive),
      "a ticket was left behind"
    );
    let lock_id = acquire_on_this_thread(&target, options(Some(WAIT)), &|| true).unwrap();
    assert!(release(&target, &lock_id).unwrap());
  }

  #[test]
  fn wrong_ids_do_not_release_and_a_second_release_says_false() {
    let target = project_file("ids.json");
    let id = take_now(&target);
    assert_eq!(release(&target, "nope").unwrap_err().code, "ELOCKMISMATCH");
    verify_held(&target, &id).unwrap();
    assert!(release(&target, &id).unwrap());
    assert!(!release(&target, &id).unwrap());
    assert_eq!(verify_held(&target, &id).unwrap_err().code, "ELOCKLOST");
  }

  #[test]
  fn a_hold_is_found_by_its_lock_id_after_its_path_resolves_to_another_lock() {
    let outer = project_file("moved.json");
    let sub = outer.root.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let file = sub.join("moved.json");
    let file = file.to_str().unwrap();
    let id = take_now(&prepare(file).unwrap());
    std::fs::create_dir(sub.join(".flowforge")).unwrap();
    let now = prepare(file).unwrap();
    assert_ne!(now.lock_path, outer.lock_path);
    verify_held(&now, &id).unwrap();
    assert!(super::release(file, &id).unwrap());
    assert!(table().locks.get(&outer.lock_path).unwrap().held.is_empty());
    assert!(!table().lock_of.contains_key(&id));
  }

  #[test]
  fn a_lock_id_of_another_lock_does_not_vouch_for_a_write() {
    let target = project_file("mine.json");
    let id = take_now(&target);
    let other = prepare(target.root.join("theirs.json").to_str().unwrap()).unwrap();
    let err = verify_held(&other, &id).unwrap_err();
    assert_eq!(err.code, "ELOCKLOST");
    assert!(err.message.contains("mine.json"), "{}", err.message);
    release(&target, &id).unwrap();
  }

  #[test]
  fn one_lock_file_spelled_through_a_symlink_is_one_lock_here() {
    let target = project_file("spelled.json");
    let link = target.root.with_extension("link");
    std::os::unix::fs::symlink(&target.root, &link).unwrap();
    let linked = prepare(link.join(".flowforge/spelled.json").to_str().unwrap()).unwrap();
    let id = take_now(&linked);
    assert!(busy_here(&target));
    assert!(try_acquire(&target, &options(Some(Duration::ZERO)))
      .unwrap()
      .is_none());
    release(&target, &id).unwrap();
    assert!(!busy_here(&linked));
  }

  #[test]
  fn files_sharing_a_lock_file_queue_instead_of_failing() {
    let target = project_file("shared.json");
    let twin = prepare(
      target
        .root
        .join("elsewhere")
        .join("shared.json")
        .to_str()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(twin.lock_path, target.lock_path);
    let first = take_now(&target);
    let (done, outcomes) = mpsc::channel();
    queue(&twin, None, 7, &done);
    release(&target, &first).unwrap();
    let (label, outcome) = outcomes.recv_timeout(WAIT).unwrap();
    assert_eq!(label, 7);
    release(&twin, &outcome.unwrap()).unwrap();
  }

  #[test]
  fn a_lock_file_replaced_under_a_holder_is_lost_before_any_write() {
    let target = project_file("replaced.json");
    let id = take_now(&target);
    std::fs::remove_file(&target.lock_path).unwrap();
    std::fs::write(&target.lock_path, b"").unwrap();
    let err = verify_held(&target, &id).unwrap_err();
    assert_eq!(err.code, "ELOCKLOST");
    assert!(
      err.message.contains("removed or replaced"),
      "{}",
      err.message
    );
    release(&target, &id).unwrap();
  }
}
