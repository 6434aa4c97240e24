//! The error type of the lock core. Every failure carries a stable, Node-style `code`
//! (`ELOCKTIMEOUT`, `EJSONPARSE`, `EACCES` …) and a message that names the file and says what
//! to do, so the binding layer only has to copy both onto a JS `Error`.

use std::fmt;
use std::io;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockError {
  pub code: &'static str,
  pub message: String,
}

pub type Result<T> = std::result::Result<T, LockError>;

impl LockError {
  pub fn new(code: &'static str, message: impl Into<String>) -> Self {
    LockError {
      code,
      message: message.into(),
    }
  }

  pub fn invalid_value(message: impl Into<String>) -> Self {
    LockError::new("ERR_INVALID_ARG_VALUE", message)
  }

  /// Wraps an OS error: the code is the errno name, the message says what we were doing
  /// and to which path, plus a hint for the errors a user can act on.
  pub fn io(err: &io::Error, doing: &str, path: &Path) -> Self {
    let code = errno_name(err);
    let hint = match code {
      "EACCES" | "EPERM" => " Check the permissions of the file and its directory.",
      "EROFS" => " The file system is read-only.",
      "ENOSPC" | "EDQUOT" | "EFBIG" => {
        " Free some disk space (or raise the quota/file-size limit) and retry."
      }
      "ENAMETOOLONG" => " Use a shorter file name.",
      "ENOTDIR" => " A component of the path is a file, not a directory.",
      _ => "",
    };
    LockError::new(code, format!("{doing} {}: {err}.{hint}", path.display()))
  }
}

impl fmt::Display for LockError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{}: {}", self.code, self.message)
  }
}

impl std::error::Error for LockError {}

/// The errno's name (`EACCES`, …), the code of an error of the operating system.
pub(crate) fn errno_name(err: &io::Error) -> &'static str {
  match err.raw_os_error() {
    Some(libc::ENOENT) => "ENOENT",
    Some(libc::EACCES) => "EACCES",
    Some(libc::EPERM) => "EPERM",
    Some(libc::EROFS) => "EROFS",
    Some(libc::ENOSPC) => "ENOSPC",
    Some(libc::EDQUOT) => "EDQUOT",
    Some(libc::EFBIG) => "EFBIG",
    Some(libc::EISDIR) => "EISDIR",
    Some(libc::ENOTDIR) => "ENOTDIR",
    Some(libc::ELOOP) => "ELOOP",
    Some(libc::ENAMETOOLONG) => "ENAMETOOLONG",
    Some(libc::EEXIST) => "EEXIST",
    Some(libc::EMFILE) => "EMFILE",
    Some(libc::ENFILE) => "ENFILE",
    Some(libc::EXDEV) => "EXDEV",
    Some(libc::EBUSY) => "EBUSY",
    Some(libc::EINVAL) => "EINVAL",
    Some(libc::ENOLCK) => "ENOLCK",
    Some(libc::EINTR) => "EINTR",
    _ => match err.kind() {
      io::ErrorKind::NotFound => "ENOENT",
      io::ErrorKind::PermissionDenied => "EACCES",
      io::ErrorKind::AlreadyExists => "EEXIST",
      _ => "EIO",
    },
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn io_errors_keep_their_errno_name_and_path() {
    let err = io::Error::from_raw_os_error(libc::ENOSPC);
    let e = LockError::io(&err, "Cannot write", Path::new("/x/tasks.json"));
    assert_eq!(e.code, "ENOSPC");
    assert!(e.message.contains("/x/tasks.json"));
    assert!(e.message.contains("disk space"));
  }
}
