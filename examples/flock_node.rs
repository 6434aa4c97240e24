//! The physical limit as a Node program meets it (`npm run bench:reads`, R3 and R4): flock(2) on
//! one open file, called from JavaScript through one bare Node-API call per lock and per unlock,
//! with nothing else in between. The distance from examples/flock_limit.rs (the same loop in
//! Rust) to this is what crossing from JavaScript costs any addon; the distance from this to
//! acquireLockSync is the library's own work. A Node addon: `cargo build --release --example
//! flock_node`, loaded with `process.dlopen`.

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;

use napi::{Error, Result};
use napi_derive::napi;

/// Opens (creating) `path`; returns its descriptor, open until the process exits.
#[napi]
pub fn open(path: String) -> Result<i32> {
  OpenOptions::new()
    .read(true)
    .write(true)
    .create(true)
    .truncate(false)
    .open(&path)
    .map(IntoRawFd::into_raw_fd)
    .map_err(|e| Error::from_reason(format!("open {path}: {e}")))
}

/// `flock(fd, LOCK_EX)`, blocking until it is granted.
#[napi]
pub fn lock(fd: i32) -> Result<()> {
  flock(fd, libc::LOCK_EX)
}

/// `flock(fd, LOCK_UN)`.
#[napi]
pub fn unlock(fd: i32) -> Result<()> {
  flock(fd, libc::LOCK_UN)
}

fn flock(fd: i32, operation: libc::c_int) -> Result<()> {
  // SAFETY: flock only reads its two integer arguments; a bad descriptor is an error return.
  if unsafe { libc::flock(fd, operation) } == 0 {
    Ok(())
  } else {
    Err(Error::from_reason(format!(
      "flock: {}",
      std::io::Error::last_os_error()
    )))
  }
}
