//! Lock metrics of this process: every acquisition, wait, hold, timeout and stale-lock
//! recovery, overall, per file and (waits) per priority. Waits keep a window of recent samples
//! for percentiles; holds keep a short window per file, from which the adaptive timeout is made
//! (see [`adaptive_timeout`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

/// How many recent waits the percentiles are computed over.
const WAIT_WINDOW: usize = 10_000;
/// How many recent holds of a file the adaptive timeout looks at.
const HOLD_WINDOW: usize = 64;

/// The adaptive timeout before any hold of the file was seen: the package's default.
pub const ADAPTIVE_SEED: Duration = Duration::from_millis(crate::lock_table::DEFAULT_TIMEOUT_MS);
/// Bounds of the adaptive timeout; the floor is also the slack added to the expected wait.
pub const ADAPTIVE_FLOOR: Duration = Duration::from_secs(1);
pub const ADAPTIVE_CEILING: Duration = Duration::from_secs(120);
/// How many times the expected wait the adaptive timeout allows.
const ADAPTIVE_MARGIN: u32 = 3;

struct State {
  files: BTreeMap<String, Counters>,
  recent_waits_us: VecDeque<u64>,
  /// Per priority (as JS prints the number): recent waits and the counts.
  priorities: BTreeMap<String, PriorityWaits>,
  /// The last priority acquired with (its bits) and its key: acquires mostly repeat one
  /// priority, whose key is then not formatted again.
  last_priority: Option<(u64, String)>,
}

#[derive(Default)]
struct PriorityWaits {
  acquisitions: u64,
  max_wait_us: u64,
  recent_waits_us: VecDeque<u64>,
}

/// Waits of the acquisitions made with one priority, in ms.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PriorityMetrics {
  pub acquisitions: u64,
  pub p50_wait_time: f64,
  pub p99_wait_time: f64,
  pub max_wait_time: f64,
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
  recent_holds_us: VecDeque<u64>,
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
  /// What `timeout: 'adaptive'` would allow a caller arriving now (files only; see
  /// [`adaptive_timeout`]). Filled in by the caller of [`snapshot`], which knows the queues.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub adaptive_timeout_ms: Option<f64>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
  #[serde(flatten)]
  pub totals: FileMetrics,
  pub p50_wait_time: f64,
  pub p99_wait_time: f64,
  pub files: BTreeMap<String, FileMetrics>,
  /// Keyed by priority: "0", "5", "-1", "2.5".
  pub wait_by_priority: BTreeMap<String, PriorityMetrics>,
}

impl State {
  const fn new() -> State {
    State {
      files: BTreeMap::new(),
      recent_waits_us: VecDeque::new(),
      priorities: BTreeMap::new(),
      last_priority: None,
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

  /// The waits of `priority`; its key is allocated only the first time it is seen, and formatted
  /// only when it differs from the last one's.
  fn priority(&mut self, priority: f64) -> &mut PriorityWaits {
    let bits = priority.to_bits();
    let key = match &mut self.last_priority {
      Some((last, key)) if *last == bits => key,
      last => &mut last.insert((bits, format!("{priority}"))).1,
    };
    if !self.priorities.contains_key(key.as_str()) {
      self
        .priorities
        .insert(key.clone(), PriorityWaits::default());
    }
    self
      .priorities
      .get_mut(key.as_str())
      .expect("inserted above")
  }
}

fn state() -> MutexGuard<'static, State> {
  static STATE: Mutex<State> = Mutex::new(State::new());
  // A panic elsewhere must not turn metrics into a second failure: take the data as it is.
  STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn push_window(window: &mut VecDeque<u64>, limit: usize, sample: u64) {
  if window.len() == limit {
    window.pop_front();
  }
  window.push_back(sample);
}

pub fn acquired(file: &str, wait: Duration, contended: bool, priority: f64) {
  let wait_us = wait.as_micros() as u64;
  let mut state = state();
  let by_priority = state.priority(priority);
  by_priority.acquisitions += 1;
  by_priority.max_wait_us = by_priority.max_wait_us.max(wait_us);
  push_window(&mut by_priority.recent_waits_us, WAIT_WINDOW, wait_us);
  let counters = state.file(file);
  counters.acquisitions += 1;
  counters.contended += u64::from(contended);
  counters.total_wait_us += wait_us;
  counters.max_wait_us = counters.max_wait_us.max(wait_us);
  push_window(&mut state.recent_waits_us, WAIT_WINDOW, wait_us);
}

pub fn timed_out(file: &str) {
  state().file(file).timeouts += 1;
}

pub fn released(file: &str, held: Duration) {
  let mut state = state();
  let counters = state.file(file);
  counters.holds += 1;
  counters.total_hold_us += held.as_micros() as u64;
  push_window(
    &mut counters.recent_holds_us,
    HOLD_WINDOW,
    held.as_micros() as u64,
  );
}

/// The 90th percentile of the file's recent holds, `None` before its first release.
fn typical_hold(counters: &Counters) -> Option<Duration> {
  let mut holds: Vec<u64> = counters.recent_holds_us.iter().copied().collect();
  holds.sort_unstable();
  (!holds.is_empty()).then(|| Duration::from_secs_f64(percentile_ms(&holds, 90.0) / 1000.0))
}

/// The adaptive timeout of a caller with `ahead` holds to wait for (the current holder plus the
/// waiters that would be served first): `FLOOR + MARGIN x (ahead + 1) x hold_p90`, clamped to
/// `[FLOOR, CEILING]`, hold_p90 being the 90th percentile of the file's last 64 holds in this
/// process. `ahead + 1` counts the caller's own turn, so an idle file still allows a few holds.
/// Before any hold was seen: the seed, 30 s.
pub fn adaptive_timeout(file: &str, ahead: usize) -> Duration {
  let hold = state().files.get(file).and_then(typical_hold);
  adaptive_formula(hold, ahead)
}

fn adaptive_formula(hold: Option<Duration>, ahead: usize) -> Duration {
  let Some(hold) = hold else {
    return ADAPTIVE_SEED;
  };
  let turns = u32::try_from(ahead + 1).unwrap_or(u32::MAX);
  let expected = hold.saturating_mul(ADAPTIVE_MARGIN).saturating_mul(turns);
  (ADAPTIVE_FLOOR + expected).min(ADAPTIVE_CEILING)
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
    wait_by_priority: state
      .priorities
      .iter()
      .map(|(priority, p)| {
        let mut waits: Vec<u64> = p.recent_waits_us.iter().copied().collect();
        waits.sort_unstable();
        let metrics = PriorityMetrics {
          acquisitions: p.acquisitions,
          p50_wait_time: percentile_ms(&waits, 50.0),
          p99_wait_time: percentile_ms(&waits, 99.0),
          max_wait_time: p.max_wait_us as f64 / 1000.0,
        };
        (priority.clone(), metrics)
      })
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
    adaptive_timeout_ms: None,
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
    acquired(file, Duration::from_millis(4), true, 0.0);
    acquired(file, Duration::from_millis(2), false, 0.0);
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

  #[test]
  fn waits_are_reported_per_priority() {
    let file = "/metrics-test/priorities.json";
    acquired(file, Duration::from_millis(8), true, 7.0);
    acquired(file, Duration::from_millis(2), true, 7.0);
    acquired(file, Duration::from_millis(1), true, -2.5);
    let after = snapshot();
    let seven = &after.wait_by_priority["7"];
    assert_eq!(seven.acquisitions, 2);
    assert_eq!(seven.p50_wait_time, 2.0);
    assert_eq!(seven.p99_wait_time, 8.0);
    assert_eq!(seven.max_wait_time, 8.0);
    assert_eq!(after.wait_by_priority["-2.5"].acquisitions, 1);
  }

  #[test]
  fn wait_percentiles_cover_the_last_10000_waits_only() {
    // A priority no other test uses, so that only these waits are in its window.
    let file = "/metrics-test/window.json";
    for _ in 0..WAIT_WINDOW {
      acquired(file, Duration::from_millis(50), true, 913.0);
    }
    for _ in 0..WAIT_WINDOW {
      acquired(file, Duration::from_millis(1), true, 913.0);
    }
    let waits = &snapshot().wait_by_priority["913"];
    assert_eq!(
      WAIT_WINDOW, 10_000,
      "docs/api.md says 'over the last 10,000 waits'"
    );
    assert_eq!(waits.p99_wait_time, 1.0);
    assert_eq!(waits.max_wait_time, 50.0);
  }

  #[test]
  fn priorities_taken_in_turn_keep_their_own_waits() {
    let file = "/metrics-test/in-turn.json";
    for priority in [41.5, -41.0, 41.5, 41.5, -41.0, -0.0] {
      acquired(file, Duration::from_millis(1), true, priority);
    }
    let after = snapshot();
    assert_eq!(after.wait_by_priority["41.5"].acquisitions, 3);
    assert_eq!(after.wait_by_priority["-41"].acquisitions, 2);
    assert_eq!(after.wait_by_priority["-0"].acquisitions, 1);
  }

  #[test]
  fn the_adaptive_timeout_starts_at_the_seed_and_follows_holds_and_queue() {
    let ms = Duration::from_millis;
    assert_eq!(adaptive_formula(None, 0), ms(30_000));
    assert_eq!(adaptive_formula(None, 50), ms(30_000));
    // Idle file, 100 ms holds: the floor plus 3 x 100 ms.
    assert_eq!(adaptive_formula(Some(ms(100)), 0), ms(1_300));
    // Nine ahead: ten turns.
    assert_eq!(adaptive_formula(Some(ms(100)), 9), ms(4_000));
    assert_eq!(adaptive_formula(Some(ms(100)), 10_000), ADAPTIVE_CEILING);
    let file = "/metrics-test/adaptive.json";
    assert_eq!(adaptive_timeout(file, 3), ADAPTIVE_SEED);
    for held in [10, 20, 30, 40, 50, 60, 70, 80, 90, 200] {
      released(file, ms(held));
    }
    // p90 of those ten holds is 90 ms.
    assert_eq!(adaptive_timeout(file, 0), ms(1_270));
    assert_eq!(adaptive_timeout(file, 4), ms(2_350));
  }
}
