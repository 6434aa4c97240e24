//! Failpoints: named places in the core where a test can stop a process at a dangerous instant
//! (between a temp write and its rename, between a heartbeat's check and its write, …), make a
//! call fail, or change a value. Compiled in only with the test-only cargo feature `failpoints`
//! (the `fail` crate); without it `failpoint!` is nothing and `value` is always `None`.
//!
//! Set from the environment, in the `fail` crate's syntax: `FAILPOINTS='store::before_rename=return(stop)'`
//! (several separated by `;`), or in-process by tests with `fail::cfg`/`fail::cfg_callback`.
//! Three actions print `FAILPOINT <name> <pid>` on stderr, the event a test waits for:
//! - `return(stop)` then stops the whole process with SIGSTOP; the test SIGKILLs or SIGCONTs it.
//! - `return(wait <fifo>)` then blocks only the thread that hit it, until the FIFO `<fifo>` (made
//!   here if missing) has been opened for writing and closed: the rest of the process goes on,
//!   so the test can drive it (a release in the same process) while that thread is held.
//! - `return(announce)` goes straight on: the line only tells the test that the point was reached.
//!
//! Other arguments are values read with [`value`] (for example an injected errno, or a boot id).

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

/// What a hit does once it has printed its line.
#[cfg(feature = "failpoints")]
enum Then<'a> {
  Stop,
  Wait(&'a std::path::Path),
  GoOn,
}

/// Runs the failpoint's action (see the module's documentation).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
  use std::io::Write;
  setup();
  let Some(action) = fail::eval(name, |arg| arg).flatten() else {
    return;
  };
  let then = match action.as_str() {
    "stop" => Then::Stop,
    "announce" => Then::GoOn,
    other => match other.strip_prefix("wait ") {
      Some(fifo) => Then::Wait(std::path::Path::new(fifo)),
      // A value read with `value`, not an action.
      None => return,
    },
  };
  if let Then::Wait(fifo) = then {
    // Made before the line is printed, so the test can open it as soon as it reads the line.
    match nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::S_IRWXU) {
      Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
      Err(e) => panic!(
        "failpoint {name}: cannot make the FIFO {}: {e}",
        fifo.display()
      ),
    }
  }
  // One write, so the line reaches the test whole even when another thread writes to stderr.
  let line = format!("FAILPOINT {name} {}\n", std::process::id());
  let _ = std::io::stderr().write_all(line.as_bytes());
  match then {
    Then::Stop => {
      let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
    // Opening a FIFO for reading blocks until a writer opens it; the read ends when it closes.
    Then::Wait(fifo) => {
      if let Err(e) = std::fs::read(fifo) {
        panic!(
          "failpoint {name}: cannot wait on the FIFO {}: {e}",
          fifo.display()
        );
      }
    }
    Then::GoOn => {}
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
