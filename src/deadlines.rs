//! Deadlines of queued waiters: one thread per process sleeps until the earliest deadline and
//! runs its expiry (which removes the waiter with `ELOCKTIMEOUT`). A waiter answered before its
//! deadline drops the deadline's registration, which cancels it and frees its expiry.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Condvar, LazyLock, Mutex, OnceLock};
use std::time::Instant;

type Expiry = Box<dyn FnOnce() + Send>;

struct Deadline {
  at: Instant,
  key: u64,
  expire: Expiry,
}

impl PartialEq for Deadline {
  fn eq(&self, other: &Self) -> bool {
    (self.at, self.key) == (other.at, other.key)
  }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
  fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
    Some(self.cmp(other))
  }
}

/// Reversed, so that the max-heap pops the earliest deadline first.
impl Ord for Deadline {
  fn cmp(&self, other: &Self) -> Ordering {
    (other.at, other.key).cmp(&(self.at, self.key))
  }
}

struct Queue {
  heap: BinaryHeap<Deadline>,
  /// The keys in `heap` still to run: a cancelled deadline leaves the heap lazily (when it
  /// comes up, or when cancelled ones outnumber the rest), so a cancel never wakes the thread.
  pending: HashSet<u64>,
  next_key: u64,
}

/// How many cancelled deadlines the heap may carry beyond the pending ones before it is
/// rebuilt without them (each rebuild is O(heap), so it happens once per that many cancels).
const CANCELLED_SLACK: usize = 64;

static QUEUE: LazyLock<(Mutex<Queue>, Condvar)> = LazyLock::new(|| {
  (
    Mutex::new(Queue {
      heap: BinaryHeap::new(),
      pending: HashSet::new(),
      next_key: 0,
    }),
    Condvar::new(),
  )
});

fn queue() -> std::sync::MutexGuard<'static, Queue> {
  QUEUE.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the deadline thread once; the error says why it could not be started.
pub fn ensure_running() -> Result<(), String> {
  static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
  STARTED
    .get_or_init(|| {
      std::thread::Builder::new()
        .name("flowforge-lock-deadlines".into())
        .spawn(run)
        .map(drop)
        .map_err(|e| format!("cannot start the lock deadline thread: {e}"))
    })
    .clone()
}

/// A deadline that has not run yet: dropping it cancels it, and its expiry (with whatever it
/// captured) is freed. Without this, every waiter served before its timeout would keep its
/// expiry in the heap until the timeout passed: at thousands of acquires a second with 30 s
/// timeouts, tens of thousands of them.
#[must_use = "dropping the registration cancels the deadline"]
pub struct Registration(u64);

#[cfg(test)]
impl Registration {
  pub fn key(&self) -> u64 {
    self.0
  }
}

/// Whether the deadline `key` is still to run (not run, not cancelled).
#[cfg(test)]
pub fn is_pending(key: u64) -> bool {
  queue().pending.contains(&key)
}

impl Drop for Registration {
  fn drop(&mut self) {
    let mut queue = queue();
    if queue.pending.remove(&self.0) && queue.heap.len() > 2 * queue.pending.len() + CANCELLED_SLACK
    {
      let Queue { heap, pending, .. } = &mut *queue;
      heap.retain(|d| pending.contains(&d.key));
    }
  }
}

/// Runs `expire` at `at` (or soon after) on the deadline thread, which [`ensure_running`] must
/// have started, unless the returned registration is dropped first.
pub fn add(at: Instant, expire: impl FnOnce() + Send + 'static) -> Registration {
  let mut queue = queue();
  let key = queue.next_key;
  queue.next_key += 1;
  // The thread sleeps until the earliest deadline: only a new earliest one needs to wake it (a
  // wake-up per acquire would cost a context switch on a busy 2-core machine for nothing).
  let earliest = queue.heap.peek().is_none_or(|d| at < d.at);
  queue.pending.insert(key);
  queue.heap.push(Deadline {
    at,
    key,
    expire: Box::new(expire),
  });
  if earliest {
    QUEUE.1.notify_one();
  }
  Registration(key)
}

fn run() {
  let mut guard = queue();
  loop {
    let now = Instant::now();
    match guard.heap.peek().map(|d| d.at) {
      None => guard = QUEUE.1.wait(guard).unwrap_or_else(|e| e.into_inner()),
      Some(at) if at > now => {
        guard = QUEUE
          .1
          .wait_timeout(guard, at - now)
          .unwrap_or_else(|e| e.into_inner())
          .0;
      }
      Some(_) => {
        let due = guard.heap.pop().expect("peeked");
        if !guard.pending.remove(&due.key) {
          continue; // cancelled
        }
        drop(guard);
        (due.expire)();
        guard = queue();
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::sync::mpsc;
  use std::time::Duration;

  #[test]
  fn expiries_run_in_deadline_order_not_insertion_order() {
    let (tx, rx) = mpsc::channel();
    ensure_running().unwrap();
    let start = Instant::now();
    let registrations: Vec<Registration> = [("late", 60u64), ("early", 20), ("middle", 40)]
      .into_iter()
      .map(|(label, ms)| {
        let tx = tx.clone();
        add(start + Duration::from_millis(ms), move || {
          tx.send((label, start.elapsed())).unwrap()
        })
      })
      .collect();
    let got: Vec<_> = (0..3)
      .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
      .collect();
    drop(registrations);
    assert_eq!(
      got.iter().map(|g| g.0).collect::<Vec<_>>(),
      ["early", "middle", "late"]
    );
    assert!(got[0].1 >= Duration::from_millis(20));
  }

  /// A cancelled deadline never runs, and what its expiry captured is freed at once (give or
  /// take the slack), not when the deadline would have come: tens of thousands of served
  /// waiters must not pile up until their timeouts. The deadline left standing still runs.
  #[test]
  fn a_cancelled_deadline_never_runs_and_frees_what_it_held() {
    ensure_running().unwrap();
    let captured = std::sync::Arc::new(());
    let (tx, rx) = mpsc::channel();
    let far = Instant::now() + Duration::from_secs(3600);
    let cancelled: Vec<Registration> = (0..10_000)
      .map(|_| {
        let (captured, tx) = (captured.clone(), tx.clone());
        add(far, move || {
          drop(captured);
          tx.send("cancelled").unwrap()
        })
      })
      .collect();
    assert_eq!(std::sync::Arc::strong_count(&captured), 10_001);
    drop(cancelled);
    // At most the slack plus as many as are pending (other tests of this process share the
    // heap, with a few waiters' deadlines at a time); all 10,000 stayed before cancelling.
    let still_held = std::sync::Arc::strong_count(&captured) - 1;
    assert!(
      still_held < 1_000,
      "cancelled expiries still held: {still_held}"
    );
    // Due at once, and queued behind nothing that was cancelled: it runs, alone.
    let _kept = add(Instant::now(), move || tx.send("kept").unwrap());
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "kept");
    assert!(rx.try_recv().is_err());
  }
}
