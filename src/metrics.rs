//! Lock metrics of this process: every acquisition, wait, hold, timeout and stale-lock
//! recovery, overall and per file. Waits keep a window of recent samples for percentiles.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

/// How many recent waits the percentiles are computed over.
const WAIT_WINDOW: usize = 10_000;

struct State {
  files: BTreeMap<String, Counters>,
  recent_waits_us: VecDeque<u64>,
}

#[derive(Default, Clone)]
struct Counters {
  acquisitions: u64,
  contended: u64,
  timeouts: u64,
  total_wait_us: u64,
  max_wait_us: u64,
  holds: u64,
  total_hold_us: u64,
  stale_recovered: u64,
}

impl Counters {
  fn add(&mut self, other: &Counters) {
    self.acquisitions += other.acquisitions;
    self.contended += other.contended;
    self.timeouts += other.timeouts;
    self.total_wait_us += other.total_wait_us;
    self.max_wait_us = self.max_wait_us.max(other.max_wait_us);
    self.holds += other.holds;
    self.total_hold_us += other.total_hold_us;
    self.stale_recovered += other.stale_recovered;
  }
}

/// Times in milliseconds, as FlowForge's `getLockMetrics()` reports them.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileMetrics {
  pub acquisitions: u64,
  pub contended_acquisitions: u64,
  pub total_timeouts: u64,
  pub average_wait_time: f64,
  pub max_wait_time: f64,
  pub average_hold_time: f64,
  pub stale_locks_recovered: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
  #[serde(flatten)]
  pub totals: FileMetrics,
  pub p50_wait_time: f64,
  pub p99_wait_time: f64,
  pub files: BTreeMap<String, FileMetrics>,
}

impl State {
  const fn new() -> State {
    State {
      files: BTreeMap::new(),
      recent_waits_us: VecDeque::new(),
    }
  }
}

impl State {
  /// The file's counters; the key is allocated only the first time a file is seen, since
  /// this runs on every acquire.
  fn file(&mut self, file: &str) -> &mut Counters {
    if !self.files.contains_key(file) {
      self.files.insert(file.to_string(), Counters::default());
    }
    self.files.get_mut(file).expect("inserted above")
  }
}

fn state() -> MutexGuard<'static, State> {
  static STATE: Mutex<State> = Mutex::new(State::new());
  // A panic elsewhere must not turn metrics into a second failure: take the data as it is.
  STATE.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn acquired(file: &str, wait: Duration, contended: bool) {
  let wait_us = wait.as_micros() as u64;
  let mut state = state();
  let counters = state.file(file);
  counters.acquisitions += 1;
  counters.contended += u64::from(contended);
  counters.total_wait_us += wait_us;
  counters.max_wait_us = counters.max_wait_us.max(wait_us);
  if state.recent_waits_us.len() == WAIT_WINDOW {
    state.recent_waits_us.pop_front();
  }
  state.recent_waits_us.push_back(wait_us);
}

pub fn timed_out(file: &str) {
  state().file(file).timeouts += 1;
}

pub fn released(file: &str, held: Duration) {
  let mut state = state();
  let counters = state.file(file);
  counters.holds += 1;
  counters.total_hold_us += held.as_micros() as u64;
}

pub fn stale_recovered(file: &str) {
  state().file(file).stale_recovered += 1;
}

pub fn reset() {
  *state() = State::new();
}

pub fn snapshot() -> Snapshot {
  let state = state();
  let mut totals = Counters::default();
  for counters in state.files.values() {
    totals.add(counters);
  }
  let mut waits: Vec<u64> = state.recent_waits_us.iter().copied().collect();
  waits.sort_unstable();
  Snapshot {
    totals: report(&totals),
    p50_wait_time: percentile_ms(&waits, 50.0),
    p99_wait_time: percentile_ms(&waits, 99.0),
    files: state
      .files
      .iter()
      .map(|(f, c)| (f.clone(), report(c)))
      .collect(),
  }
}

fn report(c: &Counters) -> FileMetrics {
  FileMetrics {
    acquisitions: c.acquisitions,
    contended_acquisitions: c.contended,
    total_timeouts: c.timeouts,
    average_wait_time: mean_ms(c.total_wait_us, c.acquisitions),
    max_wait_time: c.max_wait_us as f64 / 1000.0,
    average_hold_time: mean_ms(c.total_hold_us, c.holds),
    stale_locks_recovered: c.stale_recovered,
  }
}

fn mean_ms(total_us: u64, count: u64) -> f64 {
  if count == 0 {
    0.0
  } else {
    total_us as f64 / count as f64 / 1000.0
  }
}

fn percentile_ms(sorted_us: &[u64], pct: f64) -> f64 {
  if sorted_us.is_empty() {
    return 0.0;
  }
  let rank = ((pct / 100.0) * sorted_us.len() as f64).ceil() as usize;
  sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn percentiles_use_nearest_rank() {
    let waits: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
    assert_eq!(percentile_ms(&waits, 50.0), 50.0);
    assert_eq!(percentile_ms(&waits, 99.0), 99.0);
    assert_eq!(percentile_ms(&[], 99.0), 0.0);
  }

  #[test]
  fn counters_add_up_per_file_and_overall() {
    // Other tests in this binary take locks too, so compare before and after.
    let file = "/metrics-test/tasks.json";
    let before = snapshot();
    acquired(file, Duration::from_millis(4), true);
    acquired(file, Duration::from_millis(2), false);
    timed_out(file);
    released(file, Duration::from_millis(10));
    stale_recovered(file);
    let after = snapshot();
    let f = &after.files[file];
    assert_eq!(f.acquisitions, 2);
    assert_eq!(f.contended_acquisitions, 1);
    assert_eq!(f.total_timeouts, 1);
    assert_eq!(f.average_wait_time, 3.0);
    assert_eq!(f.max_wait_time, 4.0);
    assert_eq!(f.average_hold_time, 10.0);
    assert_eq!(f.stale_locks_recovered, 1);
    assert!(after.totals.acquisitions >= before.totals.acquisitions + 2);
  }
}
