//! Who holds a lock: this process's identity (pid, host, boot, user, start time), and the two
//! questions asked about any other pid on this host: is it alive, and when did it start (a
//! different start time under the same pid means the pid was reused).
//!
//! "This host" means "shares our kernel's locks": the hostname together with the kernel's boot
//! id, since two machines may well have one hostname (cloned VMs, default container names).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
  pub pid: u32,
  pub hostname: String,
  /// The running kernel's boot id; `None` where the platform does not tell.
  pub boot_id: Option<String>,
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
      boot_id: boot_id(),
      username: username(),
      uid: nix::unistd::geteuid().as_raw(),
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
  nix::unistd::gethostname()
    .ok()
    .and_then(|name| name.into_string().ok())
    .filter(|name| !name.is_empty())
    .unwrap_or_else(|| "localhost".to_string())
}

/// The kernel's boot id (a test can pretend to be another boot of a same-named host with the
/// `identity::boot_id` failpoint).
fn boot_id() -> Option<String> {
  if let Some(simulated) = crate::failpoints::value("identity::boot_id") {
    return Some(simulated);
  }
  platform_boot_id()
}

#[cfg(target_os = "linux")]
fn platform_boot_id() -> Option<String> {
  procfs::sys::kernel::random::boot_id().ok()
}

/// macOS: `kern.bootsessionuuid` would do; until that is wired, hostname alone decides.
#[cfg(not(target_os = "linux"))]
fn platform_boot_id() -> Option<String> {
  None
}

fn username() -> String {
  let uid = nix::unistd::geteuid();
  if let Ok(Some(user)) = nix::unistd::User::from_uid(uid) {
    return user.name;
  }
  std::env::var("USER")
    .or_else(|_| std::env::var("USERNAME"))
    .unwrap_or_else(|_| format!("uid{uid}"))
}

/// Whether a process with this pid exists on this host. Non-positive pids and pids out of
/// range are never alive: `kill(0, …)` and `kill(-1, …)` would address process groups.
pub fn is_alive(pid: i64) -> bool {
  let Ok(pid) = i32::try_from(pid) else {
    return false;
  };
  if pid <= 0 {
    return false;
  }
  match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
    Ok(()) => true,
    Err(errno) => errno == nix::errno::Errno::EPERM,
  }
}

/// When the process started, in ms since the epoch; `None` when it does not exist.
#[cfg(target_os = "linux")]
pub fn process_start_ms(pid: u32) -> Option<u64> {
  let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
    .ok()?
    .stat()
    .ok()?;
  let ticks_per_sec = procfs::ticks_per_second();
  if ticks_per_sec == 0 {
    return None;
  }
  Some(boot_time_ms()? + stat.starttime * 1000 / ticks_per_sec)
}

#[cfg(target_os = "linux")]
fn boot_time_ms() -> Option<u64> {
  static BOOT: OnceLock<Option<u64>> = OnceLock::new();
  *BOOT.get_or_init(|| procfs::boot_time_secs().ok().map(|secs| secs * 1000))
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
    #[cfg(target_os = "linux")]
    assert_eq!(me.boot_id.as_ref().map(String::len), Some(36));
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
