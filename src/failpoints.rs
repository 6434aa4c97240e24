//! Failpoints: named places in the core where a test can stop a process at a dangerous instant
//! (between a temp write and its rename, between a heartbeat's check and its write, …), make a
//! call fail, or change a value. Compiled in only with the test-only cargo feature `failpoints`
//! (the `fail` crate); without it `failpoint!` is nothing and `value` is always `None`.
//!
//! Set from the environment, in the `fail` crate's syntax: `FAILPOINTS='store::before_rename=return(stop)'`
//! (several separated by `;`), or in-process by tests with `fail::cfg`/`fail::cfg_callback`.
//! The action `return(stop)` prints `FAILPOINT <name> <pid>` on stderr and stops the process
//! with SIGSTOP: the test waits for that line, then SIGKILLs or SIGCONTs it. Other arguments
//! are values read with [`value`] (for example an injected errno, or a boot id).

/// Marks a failpoint: `failpoint!("store::before_rename")`.
#[macro_export]
macro_rules! failpoint {
  ($name:literal) => {{
    #[cfg(feature = "failpoints")]
    $crate::failpoints::hit($name);
  }};
}

#[cfg(feature = "failpoints")]
fn setup() {
  use std::sync::Once;
  static SETUP: Once = Once::new();
  SETUP.call_once(|| {
    // Not `fail::FailScenario`: it holds a global lock for its lifetime, which would keep an
    // in-process test from configuring failpoints of its own.
    let Ok(spec) = std::env::var("FAILPOINTS") else {
      return;
    };
    for point in spec.split(';').filter(|p| !p.trim().is_empty()) {
      let (name, actions) = point.split_once('=').unwrap_or((point, ""));
      if let Err(e) = fail::cfg(name.trim(), actions.trim()) {
        eprintln!("flowforge-lock: bad failpoint {point:?}: {e}");
      }
    }
  });
}

/// Runs the failpoint's action; `return(stop)` stops this process until SIGCONT.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
  setup();
  if fail::eval(name, |arg| arg).flatten().as_deref() == Some("stop") {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "FAILPOINT {name} {}", std::process::id());
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
  }
}

/// The argument of a `return(arg)` failpoint, if one is set.
pub fn value(name: &str) -> Option<String> {
  #[cfg(feature = "failpoints")]
  {
    setup();
    fail::eval(name, |arg| arg).flatten()
  }
  #[cfg(not(feature = "failpoints"))]
  {
    let _ = name;
    None
  }
}
