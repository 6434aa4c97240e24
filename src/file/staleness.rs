//! When a lock record still means "held". On one host the kernel lock is the truth; a record
//! written by another host is respected while its heartbeat is fresh, because a network file
//! system may not carry kernel locks between hosts; a record from FlowForge's older lock
//! (no hostname, no kernel lock) is respected while its pid lives and its heartbeat is fresh.

use crate::identity::{self, Identity, START_TIME_TOLERANCE_MS};
use crate::record::{Contents, LockRecord};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
  Live,
  /// A released lock file: empty, and nobody holds its kernel lock.
  Free,
  Stale(String),
}

/// Judges a lock file's contents. `kernel_held` tells whether some process on this host holds
/// the kernel lock on it (other than the caller).
pub fn judge(
  contents: &Contents,
  kernel_held: bool,
  me: &Identity,
  now_ms: u64,
  stale_after_ms: u64,
) -> Verdict {
  if kernel_held {
    return Verdict::Live;
  }
  let record = match contents {
    Contents::Empty => return Verdict::Free,
    Contents::Unreadable(why) => {
      return Verdict::Stale(format!("{why}, and nobody holds its kernel lock"))
    }
    Contents::Record(record) => record,
  };
  match record.hostname.as_deref() {
    Some(_) if is_this_host(record, me) => judge_same_host(record),
    Some(host) if host == me.hostname => judge_by_heartbeat(
      record,
      now_ms,
      stale_after_ms,
      &format!("host {host} (another boot or machine of that name)"),
    ),
    Some(host) => judge_by_heartbeat(record, now_ms, stale_after_ms, &format!("host {host}")),
    None => {
      let pid = record.pid.unwrap_or(0);
      if !identity::is_alive(pid) {
        return Verdict::Stale(format!("legacy record of process {pid}, which is gone"));
      }
      judge_by_heartbeat(record, now_ms, stale_after_ms, "a legacy FlowForge lock")
    }
  }
}

/// Whether the record was written under this kernel, whose locks we see: same hostname, and
/// the same boot id when the record names one (records of older versions do not).
fn is_this_host(record: &LockRecord, me: &Identity) -> bool {
  record.hostname.as_deref() == Some(me.hostname.as_str())
    && match (&record.boot_id, &me.boot_id) {
      (Some(theirs), Some(ours)) => theirs == ours,
      _ => true,
    }
}

/// Same host, kernel lock free: the holder released or died. Say which, for the report.
fn judge_same_host(record: &LockRecord) -> Verdict {
  let pid = record.pid.unwrap_or(0);
  if !identity::is_alive(pid) {
    return Verdict::Stale(format!("process {pid} is gone"));
  }
  let now_start = u32::try_from(pid).ok().and_then(identity::process_start_ms);
  match (record.process_start, now_start) {
    (Some(then), Some(now)) if then.abs_diff(now) > START_TIME_TOLERANCE_MS => Verdict::Stale(
      format!("pid {pid} now belongs to another process (pid reused)"),
    ),
    _ => Verdict::Stale(format!("process {pid} no longer holds the kernel lock")),
  }
}

fn judge_by_heartbeat(
  record: &LockRecord,
  now_ms: u64,
  stale_after_ms: u64,
  whose: &str,
) -> Verdict {
  let Some(heartbeat) = record.heartbeat else {
    return Verdict::Stale(format!("record of {whose} has no heartbeat"));
  };
  if heartbeat > now_ms.saturating_add(stale_after_ms) {
    return Verdict::Stale(format!(
      "heartbeat of {whose} is {} s in the future",
      (heartbeat - now_ms) / 1000
    ));
  }
  let age = now_ms.saturating_sub(heartbeat);
  if age > stale_after_ms {
    Verdict::Stale(format!("no heartbeat from {whose} for {} s", age / 1000))
  } else {
    Verdict::Live
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const STALE: u64 = 30_000;
  const NOW: u64 = 1_800_000_000_000;

  fn record(host: Option<&str>, pid: i64, heartbeat: u64) -> Contents {
    Contents::Record(LockRecord {
      lock_id: Some("x".into()),
      pid: Some(pid),
      hostname: host.map(str::to_string),
      boot_id: identity::current().boot_id.clone(),
      heartbeat: Some(heartbeat),
      process_start: identity::current().process_start,
      ..LockRecord::default()
    })
  }

  #[test]
  fn a_held_kernel_lock_is_always_live() {
    let me = identity::current();
    assert_eq!(judge(&Contents::Empty, true, me, NOW, STALE), Verdict::Live);
    assert_eq!(
      judge(&record(Some("elsewhere"), 1, 0), true, me, NOW, STALE),
      Verdict::Live
    );
  }

  #[test]
  fn same_host_records_without_kernel_lock_are_stale() {
    let me = identity::current();
    let mine = record(Some(&me.hostname), i64::from(me.pid), NOW);
    assert!(
      matches!(judge(&mine, false, me, NOW, STALE), Verdict::Stale(why) if why.contains("kernel lock"))
    );
    let dead = record(Some(&me.hostname), i64::from(i32::MAX), NOW);
    assert!(
      matches!(judge(&dead, false, me, NOW, STALE), Verdict::Stale(why) if why.contains("gone"))
    );
    let Contents::Record(mut reused) = mine else {
      unreachable!()
    };
    reused.process_start = Some(1);
    assert!(
      matches!(judge(&Contents::Record(reused), false, me, NOW, STALE), Verdict::Stale(why) if why.contains("reused"))
    );
  }

  #[test]
  fn same_hostname_with_another_boot_id_is_another_host() {
    let me = identity::current();
    let Contents::Record(mut twin) = record(Some(&me.hostname), i64::from(i32::MAX), NOW) else {
      unreachable!()
    };
    twin.boot_id = Some("another-boot".into());
    // A dead pid here means nothing there: the heartbeat is fresh, so the lock is live.
    assert_eq!(
      judge(&Contents::Record(twin.clone()), false, me, NOW, STALE),
      Verdict::Live
    );
    twin.heartbeat = Some(NOW - 31_000);
    assert!(matches!(
      judge(&Contents::Record(twin), false, me, NOW, STALE),
      Verdict::Stale(why) if why.contains("another boot")
    ));
  }

  /// `staleThreshold` as large as a caller may pass (`1e300` ms saturates to `u64::MAX`): "never
  /// stale", not a sum that wraps and makes every fresh heartbeat look like one from the future.
  #[test]
  fn the_largest_stale_threshold_keeps_a_fresh_foreign_lock_live() {
    let me = identity::current();
    assert_eq!(
      judge(&record(Some("other"), 7, NOW), false, me, NOW, u64::MAX),
      Verdict::Live
    );
  }

  #[test]
  fn foreign_hosts_are_judged_by_heartbeat() {
    let me = identity::current();
    assert_eq!(
      judge(
        &record(Some("other"), 7, NOW - 29_000),
        false,
        me,
        NOW,
        STALE
      ),
      Verdict::Live
    );
    assert!(matches!(
      judge(
        &record(Some("other"), 7, NOW - 31_000),
        false,
        me,
        NOW,
        STALE
      ),
      Verdict::Stale(_)
    ));
    assert!(matches!(
      judge(&record(Some("other"), 7, NOW + 3_600_000), false, me, NOW, STALE),
      Verdict::Stale(why) if why.contains("future")
    ));
  }

  #[test]
  fn legacy_records_need_a_live_pid_and_a_fresh_heartbeat() {
    let me = identity::current();
    let alive = i64::from(me.pid);
    assert_eq!(
      judge(&record(None, alive, NOW), false, me, NOW, STALE),
      Verdict::Live
    );
    assert!(matches!(
      judge(&record(None, alive, NOW - 60_000), false, me, NOW, STALE),
      Verdict::Stale(_)
    ));
    assert!(matches!(
      judge(&record(None, 0, NOW), false, me, NOW, STALE),
      Verdict::Stale(_)
    ));
  }

  #[test]
  fn an_empty_unlocked_file_is_free_and_junk_is_stale() {
    let me = identity::current();
    assert_eq!(
      judge(&Contents::Empty, false, me, NOW, STALE),
      Verdict::Free
    );
    assert!(matches!(
      judge(
        &Contents::Unreadable("garbage".into()),
        false,
        me,
        NOW,
        STALE
      ),
      Verdict::Stale(_)
    ));
  }
}
