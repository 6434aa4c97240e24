//! The atomic JSON store: reads a protected file as text, and replaces it so that a crash at
//! any instant leaves either the old or the new content: a unique temp file in the same
//! directory, fsync, a last check that the lock is still ours, rename over the target, fsync
//! of the directory. The file's mode (and owner, when we run as root) is kept.
//! Temp files of a writer that crashed are removed by the next writer of the same file.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;

use crate::error::{LockError, Result};
use crate::record::new_lock_id;

const TEMP_MARK: &str = ".ffl-";
const TEMP_SUFFIX: &str = ".tmp";

/// The file's text, or `None` when it does not exist yet.
pub fn read_text(path: &Path) -> Result<Option<String>> {
  let bytes = match fs::read(path) {
    Ok(bytes) => bytes,
    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
    Err(e) => return Err(LockError::io(&e, "Cannot read", path)),
  };
  String::from_utf8(bytes).map(Some).map_err(|e| {
    parse_error(
      path,
      &format!(
        "it is not UTF-8 text (invalid byte at offset {})",
        e.utf8_error().valid_up_to()
      ),
    )
  })
}

/// The `EJSONPARSE` error for a file whose text does not parse, with the position of the fault.
pub fn json_parse_error(path: &Path, text: &str, fallback: &str) -> LockError {
  match serde_json::from_str::<IgnoredAny>(text) {
    Err(e) => parse_error(path, &format!("{e}")),
    Ok(_) => parse_error(path, fallback),
  }
}

fn parse_error(path: &Path, what: &str) -> LockError {
  LockError::new(
    "EJSONPARSE",
    format!(
      "Cannot parse {} as JSON: {what}. The file was left unchanged; fix it or restore it from a backup, then retry.",
      path.display()
    ),
  )
}

/// Replaces `path` with `text` atomically and durably. `still_ours` runs after the new
/// content is on disk and before it becomes visible: if it fails, nothing changes.
pub fn write_atomic(
  path: &Path,
  text: &str,
  still_ours: impl FnOnce() -> Result<()>,
) -> Result<()> {
  let path = follow_symlink(path)?;
  let dir = path.parent().unwrap_or(Path::new("/"));
  let existing = match fs::metadata(&path) {
    Ok(meta) if meta.is_dir() => {
      return Err(LockError::new(
        "EISDIR",
        format!(
          "{} is a directory, not a JSON file; nothing was written.",
          path.display()
        ),
      ))
    }
    Ok(meta) => Some(meta),
    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
    Err(e) => return Err(LockError::io(&e, "Cannot stat", &path)),
  };
  if existing.is_some() && !writable(&path) {
    return Err(LockError::new(
      "EACCES",
      format!(
        "{} is read-only for this user; nothing was written. Make it writable (`chmod u+w`) to update it.",
        path.display()
      ),
    ));
  }
  ensure_dir(dir)?;
  remove_orphan_temps(&path);
  let temp = temp_path(&path);
  let result = write_temp(&temp, text, existing.as_ref())
    .and_then(|_| still_ours())
    .and_then(|_| fs::rename(&temp, &path).map_err(|e| LockError::io(&e, "Cannot replace", &path)));
  if result.is_err() {
    let _ = fs::remove_file(&temp);
    return result;
  }
  File::open(dir)
    .and_then(|d| d.sync_all())
    .map_err(|e| LockError::io(&e, "Cannot sync the directory of", &path))
}

/// Creates a missing parent directory (as FlowForge does for `.flowforge/billing/`), durably.
fn ensure_dir(dir: &Path) -> Result<()> {
  if dir.is_dir() {
    return Ok(());
  }
  fs::DirBuilder::new()
    .recursive(true)
    .mode(0o755)
    .create(dir)
    .map_err(|e| LockError::io(&e, "Cannot create the directory", dir))?;
  if let Some(parent) = dir.parent() {
    File::open(parent)
      .and_then(|d| d.sync_all())
      .map_err(|e| LockError::io(&e, "Cannot sync the directory", parent))?;
  }
  Ok(())
}

fn write_temp(temp: &Path, text: &str, existing: Option<&fs::Metadata>) -> Result<()> {
  let mode = existing.map_or(0o666, |m| m.permissions().mode() & 0o7777);
  let mut file = OpenOptions::new()
    .write(true)
    .create_new(true)
    .mode(mode)
    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    .open(temp)
    .map_err(|e| LockError::io(&e, "Cannot create a temporary file", temp))?;
  let io_err = |e: io::Error| LockError::io(&e, "Cannot write", temp);
  if let Some(meta) = existing {
    file
      .set_permissions(fs::Permissions::from_mode(mode))
      .map_err(io_err)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
      // Root keeps the file's owner, so the user can still edit it afterwards; failure to do
      // so is not worth refusing the write.
      let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
    }
  }
  file.write_all(text.as_bytes()).map_err(io_err)?;
  file.sync_all().map_err(io_err)
}

/// Writes go to the file a symlink points to, so the link itself survives the rename.
fn follow_symlink(path: &Path) -> Result<PathBuf> {
  match fs::symlink_metadata(path) {
    Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path)
      .map_err(|e| LockError::io(&e, "Cannot resolve the symbolic link", path)),
    _ => Ok(path.to_path_buf()),
  }
}

fn writable(path: &Path) -> bool {
  let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
    return false;
  };
  // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
  unsafe {
    libc::faccessat(
      libc::AT_FDCWD,
      c_path.as_ptr(),
      libc::W_OK,
      libc::AT_EACCESS,
    ) == 0
  }
}

fn temp_prefix(path: &Path) -> String {
  let name = path
    .file_name()
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default();
  format!(".{name}{TEMP_MARK}")
}

fn temp_path(path: &Path) -> PathBuf {
  let unique = &new_lock_id()[..12];
  path.with_file_name(format!(
    "{}{}-{unique}{TEMP_SUFFIX}",
    temp_prefix(path),
    std::process::id()
  ))
}

/// Our writes to this file are serialised by its lock, which the caller holds: any temp file
/// of ours still there was left by a writer that died before its rename.
fn remove_orphan_temps(path: &Path) {
  let prefix = temp_prefix(path);
  let Ok(entries) = fs::read_dir(path.parent().unwrap_or(Path::new("/"))) else {
    return;
  };
  for entry in entries.flatten() {
    let name = entry.file_name();
    let name = name.to_string_lossy();
    if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
      let _ = fs::remove_file(entry.path());
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_support::temp_dir;

  #[test]
  fn writes_replace_the_file_and_keep_its_mode() {
    let path = temp_dir("store").join("tasks.json");
    fs::write(&path, "{}").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    write_atomic(&path, "{\"a\":1}\n", || Ok(())).unwrap();
    assert_eq!(read_text(&path).unwrap().unwrap(), "{\"a\":1}\n");
    assert_eq!(
      fs::metadata(&path).unwrap().permissions().mode() & 0o777,
      0o600
    );
  }

  #[test]
  fn a_failed_ownership_check_changes_nothing_and_leaves_no_temp() {
    let dir = temp_dir("store");
    let path = dir.join("tasks.json");
    fs::write(&path, "old").unwrap();
    let err = write_atomic(&path, "new", || Err(LockError::new("ELOCKLOST", "lost"))).unwrap_err();
    assert_eq!(err.code, "ELOCKLOST");
    assert_eq!(fs::read_to_string(&path).unwrap(), "old");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
  }

  #[test]
  fn orphan_temps_of_a_crashed_writer_are_removed() {
    let dir = temp_dir("store");
    let path = dir.join("tasks.json");
    let orphan = dir.join(".tasks.json.ffl-99999-abcdef.tmp");
    let unrelated = dir.join(".other.json.ffl-1-x.tmp");
    fs::write(&orphan, "half").unwrap();
    fs::write(&unrelated, "not ours to judge").unwrap();
    write_atomic(&path, "{}", || Ok(())).unwrap();
    assert!(!orphan.exists());
    assert!(unrelated.exists());
  }

  #[test]
  fn writes_through_a_symlink_keep_the_link() {
    let dir = temp_dir("store");
    let real = dir.join("real.json");
    let link = dir.join("tasks.json");
    fs::write(&real, "{}").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    write_atomic(&link, "[1]", || Ok(())).unwrap();
    assert!(fs::symlink_metadata(&link)
      .unwrap()
      .file_type()
      .is_symlink());
    assert_eq!(fs::read_to_string(&real).unwrap(), "[1]");
  }

  #[test]
  fn bad_json_and_bad_text_are_explained() {
    let path = Path::new("/p/tasks.json");
    let err = json_parse_error(path, "{\n  \"a\": }", "unexpected");
    assert_eq!(err.code, "EJSONPARSE");
    assert!(err.message.contains("line 2"), "{}", err.message);
    assert!(err.message.contains("/p/tasks.json"));
    let file = temp_dir("store").join("latin1.json");
    fs::write(&file, b"{\"a\":\"\xe9\"}").unwrap();
    assert_eq!(read_text(&file).unwrap_err().code, "EJSONPARSE");
  }

  #[test]
  fn missing_parent_directories_are_created() {
    let path = temp_dir("store").join("billing").join("time-tracking.json");
    write_atomic(&path, "{}", || Ok(())).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "{}");
  }

  #[test]
  fn missing_files_read_as_none_and_directories_are_refused() {
    let dir = temp_dir("store");
    assert_eq!(read_text(&dir.join("nope.json")).unwrap(), None);
    assert_eq!(read_text(&dir).unwrap_err().code, "EISDIR");
    assert_eq!(
      write_atomic(&dir, "{}", || Ok(())).unwrap_err().code,
      "EISDIR"
    );
  }
}
