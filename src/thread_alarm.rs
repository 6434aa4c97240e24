//! A deadline for blocking system calls on the calling thread. The synchronous API waits for a
//! lock in the kernel on the caller's own thread, so that a handoff costs one wake-up (the kernel
//! wakes the caller) instead of two (a waiting thread, then the caller). But `flock(2)` and
//! `F_OFD_SETLKW` take no timeout. As util-linux `flock -w` does with `SIGALRM`, a timer sends
//! this thread a signal at the deadline; its handler does nothing and is installed without
//! `SA_RESTART`, so the blocked call fails with `EINTR` and the waiter looks at its deadline.
//! The file backend's waiting threads use it too, to wake from a wait for their turn in the
//! ticket queue and look for waiters ahead that do not move (file/mod.rs, `STALL_LOOK`).
//!
//! Hand-written on `libc` because `nix`'s timers take only the classic signals, and every classic
//! signal may mean something to Node or to the application; this uses a real-time signal that
//! nobody in the process handles. When none is free (or someone replaced our handler), `arm`
//! says so and the caller waits on a helper thread instead, as the asynchronous API does.
//!
//! Each thread has one timer, made the first time it arms an alarm and deleted when the thread
//! ends; arming and disarming only re-aim it (`timer_settime`), since a wait arms an alarm or two
//! each time (its deadline, and the look for stalled waiters inside it) and creating and deleting
//! a timer for each cost more system calls than the rest of a lock handoff. Alarms armed at once
//! on one thread nest: the timer aims at the earliest deadline among them when one is armed, and
//! stops when the last is dropped. Dropping an inner alarm leaves the timer where it is, at or
//! before the deadlines left: a blocked call may then be interrupted before any of them, which
//! every caller already takes as "look at the deadline again", and it saves re-aiming the timer
//! at the moment a waiter gets its turn (the look inside the wait is dropped right then).
//!
//! It also lets SIGINT and SIGTERM interrupt the main thread's synchronous wait
//! ([`interruptible_by_ending_signals`]): a wait its JS listeners cannot otherwise end.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// After the deadline the signal repeats this often: a signal that lands just before the call
/// blocks (between the deadline check and the system call) interrupts nothing, the next one does.
const REPEAT: Duration = Duration::from_millis(20);

extern "C" fn interrupt_only(_: libc::c_int) {}

/// The real-time signal whose handler is ours, installed on first use, and the handler's address
/// as installed (compared later; Rust does not promise one address per function).
fn our_signal() -> Option<(libc::c_int, libc::sighandler_t)> {
  static SIGNAL: OnceLock<Option<(libc::c_int, libc::sighandler_t)>> = OnceLock::new();
  *SIGNAL.get_or_init(|| {
    let handler = interrupt_only as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SIGRTMIN + 0..2 are the ones other libraries pick first; start above them.
    let signal = (libc::SIGRTMIN() + 3..=libc::SIGRTMAX()).find(|&signal| {
      // SAFETY: sigaction with a zeroed, fully initialised struct; the handler is async-signal
      // safe (it does nothing).
      unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
          || old.sa_sigaction != libc::SIG_DFL
        {
          return false;
        }
        let mut ours: libc::sigaction = std::mem::zeroed();
        ours.sa_sigaction = handler;
        ours.sa_flags = 0; // no SA_RESTART: the point is to interrupt
        libc::sigemptyset(&mut ours.sa_mask);
        libc::sigaction(signal, &ours, std::ptr::null_mut()) == 0
      }
    });
    signal.map(|signal| (signal, handler))
  })
}

/// Whether our handler is still the one installed (an application may have replaced it).
fn still_ours((signal, handler): (libc::c_int, libc::sighandler_t)) -> bool {
  // SAFETY: a query only (null new action).
  unsafe {
    let mut current: libc::sigaction = std::mem::zeroed();
    libc::sigaction(signal, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == handler
  }
}

/// This thread's timer and the alarms armed on it now.
struct ThreadTimer {
  timer: libc::timer_t,
  /// The deadlines of this thread's armed alarms (nested, so a handful at most).
  armed: Vec<Instant>,
  /// The outermost alarm found our signal blocked in this thread and unblocked it: blocked again
  /// once the last alarm is gone.
  reblock: bool,
  /// [`FORKS`] when it was made.
  generation: u64,
  /// Where the timer is aimed now (`None`: stopped); never later than the earliest armed alarm.
  aimed_at: Option<Instant>,
}

/// Counts the forks this process came out of as the child: a child inherits the thread's
/// `ThreadTimer` but not the timer it names (timers are not inherited), and that id may later
/// name a timer some other code of the child makes. The child makes its own.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_forked_child() {
  FORKS.fetch_add(1, Ordering::Relaxed);
}

thread_local! {
  static TIMER: RefCell<Option<ThreadTimer>> = const { RefCell::new(None) };
}

/// A CLOCK_MONOTONIC timer whose expiries send `signal` to this thread (not to any thread of
/// the process); `None` if the system has no timer left. The caller deletes it.
fn timer_aimed_at_this_thread(signal: libc::c_int) -> Option<libc::timer_t> {
  // SAFETY: plain libc calls on zero-initialised structs that they fill in.
  unsafe {
    let mut event: libc::sigevent = std::mem::zeroed();
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = signal;
    event.sigev_notify_thread_id = libc::gettid();
    let mut timer: libc::timer_t = std::mem::zeroed();
    (libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) == 0).then_some(timer)
  }
}

impl ThreadTimer {
  /// A timer that signals this thread (not any thread of the process) with `signal`.
  fn create(signal: libc::c_int) -> Option<ThreadTimer> {
    static WATCH_FORKS: Once = Once::new();
    // SAFETY: the handler only bumps an atomic counter, which is safe in a child after fork.
    WATCH_FORKS.call_once(|| unsafe {
      libc::pthread_atfork(None, None, Some(in_forked_child));
    });
    let generation = FORKS.load(Ordering::Relaxed);
    // Deleted by Drop, when the thread ends.
    let timer = timer_aimed_at_this_thread(signal)?;
    Some(ThreadTimer {
      timer,
      armed: Vec::new(),
      reblock: false,
      generation,
      aimed_at: None,
    })
  }

  /// Aims the timer at `deadline` (and every [`REPEAT`] after it), or stops it (`None`).
  fn aim(&mut self, deadline: Option<Instant>) -> bool {
    let schedule = match deadline {
      Some(deadline) => libc::itimerspec {
        it_interval: timespec(REPEAT),
        it_value: timespec(
          deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1)),
        ),
      },
      None => libc::itimerspec {
        it_interval: timespec(Duration::ZERO),
        it_value: timespec(Duration::ZERO),
      },
    };
    // SAFETY: the timer was created by `create` and is deleted only by Drop.
    let aimed = unsafe { libc::timer_settime(self.timer, 0, &schedule, std::ptr::null_mut()) == 0 };
    if aimed {
      self.aimed_at = deadline;
    }
    aimed
  }

  fn earliest(&self) -> Option<Instant> {
    self.armed.iter().min().copied()
  }
}

impl Drop for ThreadTimer {
  fn drop(&mut self) {
    // SAFETY: created by `create`, deleted once; the thread is ending, so no alarm of it is armed.
    unsafe {
      libc::timer_delete(self.timer);
    }
  }
}

/// The signal set holding `signal` alone.
fn only(signal: libc::c_int) -> libc::sigset_t {
  // SAFETY: sigset operations on a zero-initialised set.
  unsafe {
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, signal);
    set
  }
}

/// Unblocks `signal` in this thread; true if it was blocked.
fn unblock(signal: libc::c_int) -> bool {
  // SAFETY: pthread_sigmask only changes this thread's mask and fills in `old`.
  unsafe {
    let mut old: libc::sigset_t = std::mem::zeroed();
    libc::pthread_sigmask(libc::SIG_UNBLOCK, &only(signal), &mut old) == 0
      && libc::sigismember(&old, signal) == 1
  }
}

fn block(signal: libc::c_int) {
  // SAFETY: as in `unblock`.
  unsafe {
    libc::pthread_sigmask(libc::SIG_BLOCK, &only(signal), std::ptr::null_mut());
  }
}

/// An armed alarm: blocking calls of the thread that armed it fail with `EINTR` from the
/// deadline on (or from an earlier one armed inside it). Disarmed when dropped, on that thread
/// (it cannot be sent to another).
pub struct Alarm {
  deadline: Instant,
  signal: libc::c_int,
  _this_thread: PhantomData<*const ()>,
}

/// Arms an alarm for `deadline` on this thread; `None` if no signal can be used for it.
pub fn arm(deadline: Instant) -> Option<Alarm> {
  let (signal, handler) = our_signal()?;
  TIMER
    .try_with(|cell| {
      let mut slot = cell.borrow_mut();
      let forked = FORKS.load(Ordering::Relaxed);
      if let Some(inherited) = slot.take_if(|timer| timer.generation != forked) {
        // The parent's timer: nothing of this process's to delete.
        std::mem::forget(inherited);
      }
      let outermost = slot.as_ref().is_none_or(|timer| timer.armed.is_empty());
      // An alarm inside another was checked with it: nothing can have changed on this thread.
      if outermost && !still_ours((signal, handler)) {
        return None;
      }
      let timer = match slot.as_mut() {
        Some(timer) => timer,
        None => slot.insert(ThreadTimer::create(signal)?),
      };
      if outermost {
        timer.reblock = unblock(signal);
      }
      timer.armed.push(deadline);
      // Also when the timer is aimed earlier, at an inner alarm dropped since: left there, an
      // expired one would interrupt every REPEAT.
      let earliest = timer.earliest();
      if timer.aimed_at != earliest && !timer.aim(earliest) {
        timer.armed.pop();
        if outermost && timer.reblock {
          block(signal);
        }
        return None;
      }
      Some(Alarm {
        deadline,
        signal,
        _this_thread: PhantomData,
      })
    })
    .ok()
    .flatten()
}

fn timespec(d: Duration) -> libc::timespec {
  libc::timespec {
    tv_sec: d.as_secs() as libc::time_t,
    tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
  }
}

impl Drop for Alarm {
  /// Stops the timer when this was the last alarm of the thread; otherwise leaves it aimed (see
  /// the module's comment). A signal already sent is delivered to the do-nothing handler (or
  /// stays pending if the thread blocks it again).
  fn drop(&mut self) {
    let _ = TIMER.try_with(|cell| {
      let mut slot = cell.borrow_mut();
      let Some(timer) = slot.as_mut() else {
        return;
      };
      if let Some(index) = timer.armed.iter().rposition(|&d| d == self.deadline) {
        timer.armed.swap_remove(index);
      }
      if timer.armed.is_empty() {
        if timer.aimed_at.is_some() {
          timer.aim(None);
        }
        if timer.reblock {
          block(self.signal);
        }
      }
    });
  }
}

/// The signals that end a Node process through the exit cleanup (lib/exit-cleanup.js listens for
/// them, as do applications that shut down on them).
const ENDING_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Counts the ending signals delivered while a wait was interruptible; a wait compares it with
/// its value when it began.
static ENDING_SIGNALS_SEEN: AtomicU64 = AtomicU64::new(0);
/// The last of them, to name it in the error.
static LAST_ENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The handler each of [`ENDING_SIGNALS`] had before ours (libuv's, for Node's JS listeners),
/// which ours calls, and whether it takes `siginfo` (`SA_SIGINFO`).
static CHAINED_HANDLER: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static CHAINED_SIGINFO: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
/// The timer of the interruptible wait under way (0: none), which our handler aims at the
/// waiting thread.
static WAIT_TIMER: AtomicUsize = AtomicUsize::new(0);

/// Stands in for the handler of an ending signal while the main thread waits: counts it, makes
/// sure the wait is interrupted, then runs the handler it replaced, so Node's listeners still
/// hear the signal. Async-signal-safe: atomics, `timer_settime` and the chained handler only.
extern "C" fn ending_signal(
  signal: libc::c_int,
  info: *mut libc::siginfo_t,
  context: *mut libc::c_void,
) {
  // SAFETY: errno is thread-local; saved and restored around the calls below, as a handler must.
  let errno = unsafe { *libc::__errno_location() };
  LAST_ENDING_SIGNAL.store(signal, Ordering::SeqCst);
  ENDING_SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst);
  // Counted first, then the timer: a wait that checks the count before it blocks again and
  // misses it (the signal landed between the check and the call) is interrupted by the timer,
  // which repeats until the wait ends, and then sees the count. This also reaches the waiting
  // thread when the kernel delivered the signal to another thread of the process.
  let timer = WAIT_TIMER.load(Ordering::SeqCst);
  if timer != 0 {
    let now_and_repeat = libc::itimerspec {
      it_interval: timespec(REPEAT),
      it_value: timespec(Duration::from_nanos(1)),
    };
    // SAFETY: a timer of an interruptible wait; a call that races with its deletion fails
    // (EINVAL) and changes nothing.
    unsafe {
      libc::timer_settime(
        timer as libc::timer_t,
        0,
        &now_and_repeat,
        std::ptr::null_mut(),
      );
    }
  }
  if let Some(index) = ENDING_SIGNALS.iter().position(|&s| s == signal) {
    let chained = CHAINED_HANDLER[index].load(Ordering::SeqCst);
    // SAFETY: the address and calling convention of the handler that was installed before ours
    // (stored before ours was installed); SIG_DFL and SIG_IGN are never chained.
    unsafe {
      if CHAINED_SIGINFO[index].load(Ordering::SeqCst) {
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
          std::mem::transmute(chained);
        handler(signal, info, context);
      } else if chained != 0 {
        let handler: extern "C" fn(libc::c_int) = std::mem::transmute(chained);
        handler(signal);
      }
    }
  }
  // SAFETY: as above.
  unsafe { *libc::__errno_location() = errno };
}

fn ending_signal_address() -> libc::sighandler_t {
  ending_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
    as libc::sighandler_t
}

/// While the main thread blocks in a wait, SIGINT and SIGTERM interrupt it, so the wait can end
/// and the event loop deliver the signal to its JS listeners (see [`EndingSignals::arrived`]).
///
/// Why: libuv installs its handlers for signals that JS listens for with `SA_RESTART`, so a
/// `flock` interrupted by one restarts, and the JS listener (the exit cleanup's replaces Node's
/// default action) runs only once the wait is over: a process blocked in `acquireLockSync`
/// without a timeout could not be stopped by Ctrl-C or SIGTERM. For the wait, each of these
/// signals that has a handler gets ours instead, without `SA_RESTART`; it calls the one it
/// replaced, and the old ones are restored when the wait ends (unless someone replaced ours
/// meanwhile: theirs stays). A signal with no handler (the default action ends the process) or
/// ignored is left as it is.
///
/// Only Node's main thread: JS hears signals there alone, and while a worker's thread waits the
/// main thread's event loop runs and ends the process as usual. So at most one such wait exists
/// at a time and the process-wide handlers need no counting; another thread's blocked call that
/// a signal interrupts meanwhile sees `EINTR`, which the waits of this library take as "look
/// again". A signal that arrives before the wait begins is not seen by it (the listener runs
/// once the wait ends), and neither is any when no real-time signal is free: `None`.
pub struct EndingSignals {
  seen_at_start: u64,
  /// What each of [`ENDING_SIGNALS`] had before ours, if we replaced it.
  replaced: [Option<libc::sigaction>; 2],
  timer: libc::timer_t,
  signal: libc::c_int,
  reblock: bool,
  _this_thread: PhantomData<*const ()>,
}

/// Makes the main thread's coming wait interruptible by SIGINT and SIGTERM; `None` on any other
/// thread, or without a free real-time signal.
pub fn interruptible_by_ending_signals() -> Option<EndingSignals> {
  // SAFETY: getpid and gettid have no preconditions.
  let main_thread = unsafe { libc::getpid() == libc::gettid() };
  if main_thread {
    EndingSignals::on_this_thread()
  } else {
    None
  }
}

impl EndingSignals {
  fn on_this_thread() -> Option<EndingSignals> {
    let ours = our_signal()?;
    if !still_ours(ours) {
      return None;
    }
    let signal = ours.0;
    // With our signal, whose handler does nothing; deleted by Drop.
    let timer = timer_aimed_at_this_thread(signal)?;
    // SAFETY: sigaction queries and installs on zero-initialised structs.
    unsafe {
      let mut interruptible = EndingSignals {
        seen_at_start: ENDING_SIGNALS_SEEN.load(Ordering::SeqCst),
        replaced: [None, None],
        timer,
        signal,
        reblock: unblock(signal),
        _this_thread: PhantomData,
      };
      WAIT_TIMER.store(timer as usize, Ordering::SeqCst);
      for (index, &ending) in ENDING_SIGNALS.iter().enumerate() {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(ending, std::ptr::null(), &mut old) != 0
          || old.sa_sigaction == libc::SIG_DFL
          || old.sa_sigaction == libc::SIG_IGN
          || old.sa_sigaction == ending_signal_address()
        {
          continue;
        }
        CHAINED_HANDLER[index].store(old.sa_sigaction, Ordering::SeqCst);
        CHAINED_SIGINFO[index].store(old.sa_flags & libc::SA_SIGINFO != 0, Ordering::SeqCst);
        let mut replacement = old;
        replacement.sa_sigaction = ending_signal_address();
        replacement.sa_flags = (old.sa_flags | libc::SA_SIGINFO) & !libc::SA_RESTART;
        if libc::sigaction(ending, &replacement, std::ptr::null_mut()) == 0 {
          interruptible.replaced[index] = Some(old);
        }
      }
      // No handler replaced: the default action of these signals ends the process by itself.
      if interruptible.replaced.iter().all(Option::is_none) {
        return None;
      }
      Some(interruptible)
    }
  }

  /// Whether SIGINT or SIGTERM arrived since the wait began: it must end now.
  pub fn arrived(&self) -> bool {
    ENDING_SIGNALS_SEEN.load(Ordering::SeqCst) != self.seen_at_start
  }

  /// The name of the last one that arrived ("SIGTERM"), for messages.
  pub fn last_name(&self) -> &'static str {
    match LAST_ENDING_SIGNAL.load(Ordering::SeqCst) {
      libc::SIGINT => "SIGINT",
      _ => "SIGTERM",
    }
  }
}

impl Drop for EndingSignals {
  fn drop(&mut self) {
    // SAFETY: sigaction queries and restores of what `on_this_thread` replaced; the timer was
    // made there and is deleted once, after no handler can be given it any more.
    unsafe {
      for (index, replaced) in self.replaced.iter().enumerate() {
        let Some(old) = replaced else {
          continue;
        };
        // One call puts the old handler back and tells what was there: ours, unless someone
        // replaced it meanwhile, whose handler then goes back in a second call. (A query before
        // the restore would cost every wait a system call after its wake-up. The price, only for
        // a handler installed during the wait, which only native code on another thread can do:
        // a signal between the two calls reaches the old handler, libuv's.)
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(ENDING_SIGNALS[index], old, &mut current) == 0
          && current.sa_sigaction != ending_signal_address()
        {
          libc::sigaction(ENDING_SIGNALS[index], &current, std::ptr::null_mut());
        }
      }
      WAIT_TIMER.store(0, Ordering::SeqCst);
      libc::timer_delete(self.timer);
    }
    if self.reblock {
      block(self.signal);
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::fs::File;

  /// A file locked through `holder`, and a second handle on it whose `lock()` blocks.
  fn held_and_waiter(name: &str) -> (File, File) {
    let path = crate::test_support::temp_dir("alarm").join(name);
    let holder = File::create(&path).unwrap();
    holder.lock().unwrap();
    let waiter = File::open(&path).unwrap();
    (holder, waiter)
  }

  #[test]
  fn a_blocked_flock_returns_eintr_at_the_deadline() {
    let (_holder, waiter) = held_and_waiter("x.lock");
    let started = Instant::now();
    let alarm = arm(started + Duration::from_millis(30)).expect("a free real-time signal");
    let outcome = waiter.lock();
    drop(alarm);
    let err = outcome.expect_err("the holder still holds it");
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
    assert!(started.elapsed() >= Duration::from_millis(30));
  }

  #[test]
  fn a_disarmed_alarm_interrupts_nothing_later() {
    let path = crate::test_support::temp_dir("alarm").join("x.lock");
    drop(arm(Instant::now()).expect("a free real-time signal"));
    // Had the timer outlived the drop, this thread would now be interrupted every REPEAT.
    let holder = File::create(&path).unwrap();
    std::thread::scope(|s| {
      holder.lock().unwrap();
      let released = s.spawn(|| {
        crate::test_support::wait_for_blocked_flock(&path);
        holder.unlock().unwrap();
      });
      File::open(&path).unwrap().lock().unwrap();
      released.join().unwrap();
    });
  }

  /// A look armed inside a wait (the ticket queue's stall look inside a synchronous caller's
  /// deadline) interrupts first. Dropped, it may go on interrupting (early, which callers take as
  /// "look again"), but the next look armed is aimed at anew, and the outer deadline still holds.
  #[test]
  fn nested_alarms_interrupt_at_the_earliest_and_a_new_look_is_aimed_anew() {
    let (_holder, waiter) = held_and_waiter("nested.lock");
    let interrupted = || {
      waiter
        .lock()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::Interrupted)
    };
    let started = Instant::now();
    let outer = arm(started + Duration::from_millis(400)).expect("a free real-time signal");
    let first = arm(started + Duration::from_millis(20)).expect("nested");
    assert!(interrupted());
    assert!(started.elapsed() >= Duration::from_millis(20));
    drop(first);
    // The expired look repeats every REPEAT until the next look is armed; that one is aimed at.
    let again = Instant::now();
    let second = arm(again + Duration::from_millis(150)).expect("nested");
    assert!(interrupted());
    assert!(again.elapsed() >= Duration::from_millis(150));
    drop(second);
    while started.elapsed() < Duration::from_millis(400) {
      assert!(interrupted());
    }
    drop(outer);
  }

  static SIGTERMS_HEARD: AtomicU64 = AtomicU64::new(0);

  extern "C" fn hear_sigterm(_: libc::c_int) {
    SIGTERMS_HEARD.fetch_add(1, Ordering::SeqCst);
  }

  /// SIGTERM's handler as libuv installs it for a JS listener (with `SA_RESTART`), or whatever
  /// `handler` says; returns the one it replaces.
  fn set_sigterm(handler: libc::sigaction) -> libc::sigaction {
    // SAFETY: sigaction with fully initialised structs.
    unsafe {
      let mut old: libc::sigaction = std::mem::zeroed();
      assert_eq!(libc::sigaction(libc::SIGTERM, &handler, &mut old), 0);
      old
    }
  }

  fn restarting_listener() -> libc::sigaction {
    // SAFETY: a zeroed sigaction filled in; the handler only bumps an atomic.
    unsafe {
      let mut listener: libc::sigaction = std::mem::zeroed();
      listener.sa_sigaction = hear_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
      listener.sa_flags = libc::SA_RESTART;
      libc::sigemptyset(&mut listener.sa_mask);
      listener
    }
  }

  /// SIGTERM aimed at this thread alone (`tgkill`), so the other tests' threads never see it.
  fn sigterm_this_thread(tid: libc::pid_t) {
    // SAFETY: sends a signal whose handler (ours, or the listener above) only counts.
    unsafe {
      libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGTERM);
    }
  }

  /// With a listener installed with `SA_RESTART` (libuv's way), SIGTERM interrupts a blocked
  /// `flock` while the wait is interruptible: at once when it lands during the call, and through
  /// the repeating timer when it lands just before the call blocks. The listener hears it each
  /// time, and is restored as it was when the wait ends. (One test: SIGTERM's handler is the
  /// process's.)
  #[test]
  fn an_ending_signal_interrupts_an_interruptible_wait_and_still_reaches_its_listener() {
    let previous = set_sigterm(restarting_listener());
    let path = crate::test_support::temp_dir("alarm").join("ending.lock");
    let holder = File::create(&path).unwrap();
    holder.lock().unwrap();
    let waiter = File::open(&path).unwrap();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let interrupted = || {
      waiter
        .lock()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::Interrupted)
    };
    // During the call.
    let during = EndingSignals::on_this_thread().expect("a free real-time signal");
    std::thread::scope(|s| {
      s.spawn(|| {
        crate::test_support::wait_for_blocked_flock(&path);
        sigterm_this_thread(tid);
      });
      assert!(interrupted());
    });
    assert!(during.arrived());
    drop(during);
    // Just before the call: counted by our handler, and the call it did not interrupt is.
    let before = EndingSignals::on_this_thread().expect("a free real-time signal");
    assert!(!before.arrived());
    sigterm_this_thread(tid);
    assert!(before.arrived());
    assert!(interrupted());
    drop(before);
    assert_eq!(SIGTERMS_HEARD.load(Ordering::SeqCst), 2);
    let restored = set_sigterm(restarting_listener());
    assert_eq!(restored.sa_sigaction, restarting_listener().sa_sigaction);
    assert_eq!(restored.sa_flags & libc::SA_RESTART, libc::SA_RESTART);
    // A handler installed meanwhile (the application's own) stays when the wait ends.
    let replaced_meanwhile = EndingSignals::on_this_thread().expect("a free real-time signal");
    let mut theirs = restarting_listener();
    theirs.sa_sigaction = ignore_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
    set_sigterm(theirs);
    drop(replaced_meanwhile);
    assert_eq!(set_sigterm(previous).sa_sigaction, theirs.sa_sigaction);
  }

  extern "C" fn ignore_sigterm(_: libc::c_int) {}

  /// POSIX timers of the process that signal thread `tid` (/proc/self/timers lists them all).
  fn timers_of(tid: libc::pid_t) -> usize {
    let listing = std::fs::read_to_string("/proc/self/timers").unwrap();
    let ours = format!("notify: signal/tid.{tid}");
    listing.lines().filter(|line| line.trim() == ours).count()
  }

  #[test]
  fn a_thread_makes_one_timer_for_all_its_alarms_and_deletes_it_when_it_ends() {
    let tid = std::thread::spawn(|| {
      // SAFETY: gettid has no preconditions.
      let tid = unsafe { libc::gettid() };
      for _ in 0..50 {
        let outer = arm(Instant::now() + Duration::from_secs(60)).expect("a free signal");
        drop(arm(Instant::now() + Duration::from_secs(1)).expect("nested"));
        drop(outer);
      }
      assert_eq!(timers_of(tid), 1);
      tid
    })
    .join()
    .unwrap();
    assert_eq!(timers_of(tid), 0);
  }

  /// A child process made by `fork` after this thread made its timer makes its own: the
  /// parent's id names no timer in the child (timers are not inherited).
  #[test]
  fn a_forked_child_makes_its_own_timer() {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let (_holder, waiter) = held_and_waiter("fork.lock");
    drop(arm(Instant::now() + Duration::from_secs(60)).expect("a free real-time signal"));
    // SAFETY: the child arms an alarm, blocks on the lock and exits; glibc makes malloc usable
    // in a child of a threaded parent.
    match unsafe { fork() }.unwrap() {
      ForkResult::Child => {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let alarm = arm(Instant::now() + Duration::from_millis(20));
        let interrupted = alarm.is_some()
          && waiter
            .lock()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::Interrupted)
          && timers_of(tid) == 1;
        drop(alarm);
        // SAFETY: ends the child at once, without the parent's exit handlers.
        unsafe { libc::_exit(i32::from(!interrupted)) }
      }
      ForkResult::Parent { child } => {
        assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
      }
    }
  }
}
