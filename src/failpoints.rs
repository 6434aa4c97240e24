//! Failpoints: named places in the core where a test can stop a process at a dangerous instant
//! (between a temp write and its rename, between a heartbeat's check and its write, …), make a
//! call fail, or change a value. Compiled in only with the test-only cargo feature `failpoints`
//! (the `fail` crate); without it `failpoint!` is nothing and `value` is always `None`.
//!
//! Set from the environment as the `fail` crate reads it: `FAILPOINTS='store::before_rename=return(stop)'`.
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
    // The scenario lives as long as the process: failpoints are configured once, from the env.
    std::mem::forget(fail::FailScenario::setup());
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
