//! The heartbeat: one background thread per process that keeps this process's holds alive:
//! it runs the lock table's refresh (a lock file's heartbeat, a server lease's renewal) whenever
//! one is due, so that hosts that cannot see our kernel lock know we are alive, and a lock lost
//! meanwhile is noticed. The refreshing itself (what, under which guard) is the lock table's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

pub const DEFAULT_INTERVAL_MS: u64 = 5_000;
static INTERVAL_MS: AtomicU64 = AtomicU64::new(DEFAULT_INTERVAL_MS);

static THREAD: OnceLock<Option<Thread>> = OnceLock::new();
/// When the thread plans to tick next (`None`: it is not asleep on a plan).
static PLANNED: Mutex<Option<Instant>> = Mutex::new(None);

/// The file backend's heartbeat interval (tests shorten it).
pub fn set_interval(interval: Duration) {
  INTERVAL_MS.store(interval.as_millis().max(10) as u64, Ordering::Relaxed);
  wake();
}

pub fn interval() -> Duration {
  Duration::from_millis(INTERVAL_MS.load(Ordering::Relaxed))
}

/// Wakes the thread, so a new interval or a new hold is seen now, not after the old wait.
pub fn wake() {
  if let Some(Some(thread)) = THREAD.get() {
    thread.unpark();
  }
}

/// Starts the thread once, and makes sure it ticks by `due` (a new hold's first refresh): it is
/// woken only when it planned to sleep longer, so taking a lock costs the thread nothing.
/// `tick` refreshes what is due and says when it wants to run next (`None`: nothing is held;
/// the thread then sleeps one interval, or until woken).
pub fn ensure_running(tick: fn() -> Option<Instant>, due: Instant) {
  let started = THREAD.get_or_init(|| {
    // If no thread can be started, locks still exclude through the kernel; only hosts that
    // share the directory without kernel locks would see the heartbeat age.
    std::thread::Builder::new()
      .name("flowforge-lock-heartbeat".into())
      .spawn(move || run(tick, || true))
      .ok()
      .map(|handle| handle.thread().clone())
  });
  let planned = *PLANNED.lock().unwrap_or_else(|e| e.into_inner());
  if started.is_some() && planned.is_none_or(|at| due < at) {
    wake();
  }
}

/// The thread's loop: sleeps until `tick` wants to run (an early wake-up — a new hold,
/// `set_interval`, a spurious one — only ticks sooner), while `keep_going` says so.
fn run(tick: impl Fn() -> Option<Instant>, keep_going: impl Fn() -> bool) {
  let mut next = None;
  while keep_going() {
    let at = next.unwrap_or_else(|| Instant::now() + interval());
    *PLANNED.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    std::thread::park_timeout(at.saturating_duration_since(Instant::now()));
    *PLANNED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    next = tick();
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::sync::atomic::AtomicUsize;
  use std::sync::Arc;

  #[test]
  fn the_loop_runs_again_as_soon_as_a_tick_asks_and_stops_when_told() {
    let ticks = Arc::new(AtomicUsize::new(0));
    let counted = ticks.clone();
    let looked = ticks.clone();
    // Each tick asks to run again at once: with the default 5 s interval, ten ticks finishing
    // at all shows the loop follows the tick's wish, not the interval.
    let runner = std::thread::spawn(move || {
      run(
        move || {
          counted.fetch_add(1, Ordering::SeqCst);
          Some(Instant::now())
        },
        move || looked.load(Ordering::SeqCst) < 10,
      )
    });
    runner.join().unwrap();
    assert_eq!(ticks.load(Ordering::SeqCst), 10);
  }

  #[test]
  fn the_interval_has_a_floor_and_is_read_back() {
    let before = interval();
    set_interval(Duration::from_millis(1));
    assert_eq!(interval(), Duration::from_millis(10));
    set_interval(before);
    assert_eq!(interval(), before);
  }
}
