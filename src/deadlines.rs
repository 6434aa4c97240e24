//! Deadlines of queued waiters: one thread per process sleeps until the earliest deadline and
//! runs its expiry (which removes the waiter with `ELOCKTIMEOUT` if it is still queued).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Condvar, LazyLock, Mutex, OnceLock};
use std::time::Instant;

type Expiry = Box<dyn FnOnce() + Send>;

struct Deadline {
  at: Instant,
  seq: u64,
  expire: Expiry,
}

impl PartialEq for Deadline {
  fn eq(&self, other: &Self) -> bool {
    (self.at, self.seq) == (other.at, other.seq)
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
    (other.at, other.seq).cmp(&(self.at, self.seq))
  }
}

struct Queue {
  heap: BinaryHeap<Deadline>,
  next_seq: u64,
}

static QUEUE: LazyLock<(Mutex<Queue>, Condvar)> = LazyLock::new(|| {
  (
    Mutex::new(Queue {
      heap: BinaryHeap::new(),
      next_seq: 0,
    }),
    Condvar::new(),
  )
});

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

/// Runs `expire` at `at` (or soon after) on the deadline thread, which
/// [`ensure_running`] must have started.
pub fn add(at: Instant, expire: impl FnOnce() + Send + 'static) {
  let (queue, wake) = &*QUEUE;
  let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
  let seq = queue.next_seq;
  queue.next_seq += 1;
  // The thread sleeps until the earliest deadline: only a new earliest one needs to wake it (a
  // wake-up per acquire would cost a context switch on a busy 2-core machine for nothing).
  let earliest = queue.heap.peek().is_none_or(|d| at < d.at);
  queue.heap.push(Deadline {
    at,
    seq,
    expire: Box::new(expire),
  });
  if earliest {
    wake.notify_one();
  }
}

fn run() {
  let (queue, wake) = &*QUEUE;
  let mut guard = queue.lock().unwrap_or_else(|e| e.into_inner());
  loop {
    let now = Instant::now();
    match guard.heap.peek().map(|d| d.at) {
      None => guard = wake.wait(guard).unwrap_or_else(|e| e.into_inner()),
      Some(at) if at > now => {
        guard = wake
          .wait_timeout(guard, at - now)
          .unwrap_or_else(|e| e.into_inner())
          .0;
      }
      Some(_) => {
        let due = guard.heap.pop().expect("peeked");
        drop(guard);
        (due.expire)();
        guard = queue.lock().unwrap_or_else(|e| e.into_inner());
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
    for (label, ms) in [("late", 60u64), ("early", 20), ("middle", 40)] {
      let tx = tx.clone();
      add(start + Duration::from_millis(ms), move || {
        tx.send((label, start.elapsed())).unwrap()
      });
    }
    let got: Vec<_> = (0..3)
      .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
      .collect();
    assert_eq!(
      got.iter().map(|g| g.0).collect::<Vec<_>>(),
      ["early", "middle", "late"]
    );
    assert!(got[0].1 >= Duration::from_millis(20));
  }
}
