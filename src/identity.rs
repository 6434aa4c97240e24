//! Who holds a lock: this process's identity (pid, host, user, start time), and the two
//! questions asked about any other pid on this host: is it alive, and when did it start
//! (a different start time under the same pid means the pid was reused).

use std::ffi::CStr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
  pub pid: u32,
  pub hostname: String,
  pub username: String,
  pub uid: u32,
  /// Milliseconds since the epoch at which this process started, when the OS tells.
  pub process_start: Option<u64>,
}

/// The identity of this process, read once.
pub fn current() -> &'static Identity {
  static CURRENT: OnceLock<Identity> = OnceLock::new();
  CURRENT.get_or_init(|| {
    let pid = std::process::id();
    Identity {
      pid,
      hostname: hostname(),
      username: username(),
      // SAFETY: geteuid has no preconditions and cannot fail.
      uid: unsafe { libc::geteuid() },
      process_start: process_start_ms(pid),
    }
  })
}

pub fn now_ms() -> u64 {
  SystemTime::now()
    .duration_since(UNIX_EPOCH)
    .map(|d| d.as_millis() as u64)
    .unwrap_or(0)
}

fn hostname() -> String {
  let mut buf = [0u8; 256];
  // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates on success
  // and the last byte stays 0 in any case.
  let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
  if rc != 0 {
    return "localhost".to_string();
  }
  CStr::from_bytes_until_nul(&buf)
    .map(|s| s.to_string_lossy().into_owned())
    .unwrap_or_else(|_| "localhost".to_string())
}

fn username() -> String {
  // SAFETY: getpwuid_r writes into our buffers only; the returned pointer refers to `pwd`.
  unsafe {
    let mut pwd: libc::passwd = std::mem::zeroed();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = libc::getpwuid_r(
      libc::geteuid(),
      &mut pwd,
      buf.as_mut_ptr(),
      buf.len(),
      &mut result,
    );
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
      return CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned();
    }
  }
  std::env::var("USER")
    .or_else(|_| std::env::var("USERNAME"))
    .unwrap_or_else(|_| format!("uid{}", unsafe { libc::geteuid() }))
}

/// Whether a process with this pid exists on this host. Non-positive pids and pids out of
/// range are never alive: `kill(0, …)` and `kill(-1, …)` would address process groups.
pub fn is_alive(pid: i64) -> bool {
  if pid <= 0 || pid > i64::from(i32::MAX) {
    return false;
  }
  // SAFETY: signal 0 performs the permission and existence checks only.
  let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
  rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// When the process started, in ms since the epoch; `None` when it does not exist.
#[cfg(target_os = "linux")]
pub fn process_start_ms(pid: u32) -> Option<u64> {
  // Field 22 of /proc/<pid>/stat counts clock ticks since boot; the command name (field 2)
  // may contain spaces and parentheses, so fields are counted after its closing ')'.
  let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
  let after_name = &stat[stat.rfind(')')? + 1..];
  let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
  // SAFETY: sysconf has no preconditions.
  let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
  if ticks_per_sec <= 0 {
    return None;
  }
  Some(boot_time_ms()? + ticks * 1000 / ticks_per_sec as u64)
}

#[cfg(target_os = "linux")]
fn boot_time_ms() -> Option<u64> {
  static BOOT: OnceLock<Option<u64>> = OnceLock::new();
  *BOOT.get_or_init(|| {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    let secs: u64 = line[6..].trim().parse().ok()?;
    Some(secs * 1000)
  })
}

#[cfg(not(target_os = "linux"))]
pub fn process_start_ms(pid: u32) -> Option<u64> {
  use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
  let mut system = System::new();
  let pid = Pid::from_u32(pid);
  system.refresh_processes_specifics(
    ProcessesToUpdate::Some(&[pid]),
    true,
    ProcessRefreshKind::nothing(),
  );
  system.process(pid).map(|p| p.start_time() * 1000)
}

/// Two start times name the same process when they agree within this margin: the boot time
/// they are computed from is whole seconds and moves when the wall clock is stepped.
pub const START_TIME_TOLERANCE_MS: u64 = 2_000;

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn this_process_is_alive_and_has_a_start_time() {
    let me = current();
    assert!(is_alive(i64::from(me.pid)));
    let start = me.process_start.expect("start time of self");
    assert!(start <= now_ms());
    assert!(now_ms() - start < 24 * 3600 * 1000 * 365);
    assert!(!me.hostname.is_empty());
    assert!(!me.username.is_empty());
  }

  #[test]
  fn nonsense_pids_are_never_alive() {
    assert!(!is_alive(0));
    assert!(!is_alive(-1));
    assert!(!is_alive(i64::from(i32::MAX) + 1));
  }

  #[test]
  fn a_reaped_child_is_not_alive() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    // Pids are handed out in increasing order, so this one is not reused this soon.
    assert!(!is_alive(i64::from(pid)));
    assert_eq!(process_start_ms(pid), None);
  }
}
