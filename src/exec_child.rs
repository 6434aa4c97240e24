//! The process that becomes `flowforge-lock exec`'s command under a lock server
//! (lib/cli/exec-child.js). With the file backend the command inherits the locked descriptor and
//! the lock lives as long as the command. A lock server's lock ends with the wrapper instead (its
//! connection closes, or its lease is no longer renewed), and nothing the command could inherit
//! keeps it: so the command must not outlive the wrapper, even a SIGKILLed one. The kernel's
//! parent-death signal (Linux) does that, and survives the `execvp` that turns this process into
//! the command.

use std::ffi::CString;
use std::ptr;

use crate::error::LockError;

/// Asks the kernel to SIGKILL this process when its parent (the `exec` wrapper, `parent`) ends,
/// then becomes `command` with `args`. Signal dispositions and the mask go back to their defaults
/// first, as for any child Node spawns, and stdin, stdout and stderr stay open across the exec.
/// Returns only on failure: `ENOENT` (command not found), `EACCES`, `EEXEC` for any other
/// reason exec failed, or `ESRCH` when the wrapper had already ended.
pub fn become_command(parent: u32, command: &str, args: &[String]) -> LockError {
  let Some(argv) = std::iter::once(command)
    .chain(args.iter().map(String::as_str))
    .map(|arg| CString::new(arg).ok())
    .collect::<Option<Vec<CString>>>()
  else {
    return LockError::new(
      "ERR_INVALID_ARG_VALUE",
      format!("Cannot run {command}: an argument holds a NUL byte."),
    );
  };
  #[cfg(target_os = "linux")]
  // SAFETY: prctl with integer arguments only.
  unsafe {
    libc::prctl(
      libc::PR_SET_PDEATHSIG,
      libc::SIGKILL as libc::c_ulong,
      0,
      0,
      0,
    );
  }
  // The wrapper may have ended before the request was made: then nothing would signal us.
  if std::os::unix::process::parent_id() != parent {
    return LockError::new(
      "ESRCH",
      format!("Not running {command}: the flowforge-lock exec that holds its lock has ended."),
    );
  }
  // SAFETY: resetting dispositions and the mask of this thread, right before execvp.
  unsafe {
    // Handled signals go back to the default at exec by themselves; ignored ones (Node ignores
    // SIGPIPE) would stay ignored in the command.
    for signal in 1..=libc::SIGRTMAX() {
      if signal != libc::SIGKILL && signal != libc::SIGSTOP {
        libc::signal(signal, libc::SIG_DFL);
      }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::pthread_sigmask(libc::SIG_SETMASK, &none, ptr::null_mut());
    // Node marks every descriptor it inherits close-on-exec at start-up: the command's stdio
    // (all the wrapper gives it) must stay open.
    for fd in 0..3 {
      libc::fcntl(fd, libc::F_SETFD, 0);
    }
  }
  let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
  pointers.push(ptr::null());
  // SAFETY: NUL-terminated strings and a NULL-terminated array, alive across the call.
  unsafe { libc::execvp(argv[0].as_ptr(), pointers.as_ptr()) };
  let err = std::io::Error::last_os_error();
  let code = match err.raw_os_error() {
    Some(libc::ENOENT) => "ENOENT",
    Some(libc::EACCES) => "EACCES",
    _ => "EEXEC",
  };
  LockError::new(code, err.to_string())
}
