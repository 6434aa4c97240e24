//! The atomic JSON store: reads a protected file as text, and replaces it so that a crash at
//! any instant leaves either the old or the new content: a unique temp file in the same
//! directory, fsync, a last check that the lock is still ours, rename over the target, fsync
//! of the directory. The file's mode (and owner, when we run as root) is kept. Right before the
//! rename, the file's version sidecar is told which inode comes next (versions.rs).
//!
//! The protocol is hand-written because it is the design (write-file-atomic, the nearest
//! package, neither checks a lock before its rename nor syncs the directory after it).
//! Temp files of a writer that died are removed by the next writer of the same file, after its
//! own verified commit, and only those of a process of this host that is gone: nothing touches
//! the directory before ownership is checked, and a live writer's temp is never removed.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::de::IgnoredAny;

use crate::error::{LockError, Result};
use crate::failpoint;
use crate::identity;
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
  utf8_text(path, bytes).map(Some)
}

/// The bytes read from `path` as text, or the `EJSONPARSE` error saying where they are not UTF-8.
pub(crate) fn utf8_text(path: &Path, bytes: Vec<u8>) -> Result<String> {
  String::from_utf8(bytes).map_err(|e| {
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
/// content is on disk and before it becomes visible: if it fails, nothing changes. What it
/// returns (the lock's pass, which keeps the lock from being given up meanwhile) is kept until
/// the rename has published the content.
pub fn write_atomic<Pass>(
  path: &Path,
  text: &str,
  still_ours: impl FnOnce() -> Result<Pass>,
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
  let temp = temp_path(&path);
  let result = write_temp(&temp, text, existing.as_ref())
    .and_then(|_| {
      failpoint!("store::before_verify");
      still_ours()
    })
    .and_then(|pass| {
      // The version sidecar names the new inode before the rename publishes it (versions.rs).
      crate::versions::record_commit(&path, &temp, text, existing.as_ref())?;
      failpoint!("store::before_rename");
      fs::rename(&temp, &path).map_err(|e| LockError::io(&e, "Cannot replace", &path))?;
      drop(pass);
      Ok(())
    });
  if result.is_err() {
    let _ = fs::remove_file(&temp);
    return result;
  }
  failpoint!("store::after_rename");
  remove_orphan_temps(&path);
  remove_orphan_temps(&crate::versions::sidecar_path(&path));
  sync_dir(dir).map_err(|e| not_durable(&e, &path))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
  if let Some(errno) = crate::failpoints::value("store::dir_sync") {
    return Err(io::Error::from_raw_os_error(
      errno.parse().unwrap_or(libc::EIO),
    ));
  }
  File::open(dir).and_then(|d| d.sync_all())
}

/// The rename happened, so the new content is what everyone reads now; only its durability
/// across a crash is unknown. Retrying a non-idempotent update would apply it twice: say so.
fn not_durable(err: &io::Error, path: &Path) -> LockError {
  LockError::new(
    "ENOTDURABLE",
    format!(
      "{} was written (the new content is in place), but syncing its directory failed: {err}. A crash now could bring the old content back. Do not simply retry a non-idempotent update; check the file first.",
      path.display()
    ),
  )
}

/// Makes `dir` and its missing parents (as FlowForge does for `.flowforge/billing/`), top down,
/// each synced into its parent: a crash after the commit must not take away a directory the
/// file was committed into.
fn ensure_dir(dir: &Path) -> Result<()> {
  if dir.is_dir() {
    return Ok(());
  }
  let Some(parent) = dir.parent() else {
    return Ok(());
  };
  ensure_dir(parent)?;
  match fs::DirBuilder::new().mode(0o755).create(dir) {
    // Made by another process meanwhile: synced here too, in case that one has not yet.
    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
      return Err(LockError::io(&e, "Cannot create the directory", dir))
    }
    _ => {}
  }
  sync_dir(parent).map_err(|e| LockError::io(&e, "Cannot sync the directory", parent))
}

pub(crate) fn write_temp(temp: &Path, text: &str, existing: Option<&fs::Metadata>) -> Result<()> {
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
    // The file's owner and group, as far as this user may give them: root keeps the owner, so
    // the user can still edit it afterwards; anyone keeps the group when a member of it, so the
    // rest of a team can still write a group-writable file. Failure (a writer outside the group)
    // is not worth refusing the write. Before the mode: a chown clears set-id bits.
    let owner = nix::unistd::geteuid().is_root().then(|| meta.uid());
    let _ = std::os::unix::fs::fchown(&file, owner, Some(meta.gid()));
    file
      .set_permissions(fs::Permissions::from_mode(mode))
      .map_err(io_err)?;
  }
  file.write_all(text.as_bytes()).map_err(io_err)?;
  failpoint!("store::before_temp_sync");
  file.sync_all().map_err(io_err)
}

/// Writes go to the file a symlink points to, so the link itself survives the rename.
pub(crate) fn follow_symlink(path: &Path) -> Result<PathBuf> {
  match fs::symlink_metadata(path) {
    Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path)
      .map_err(|e| LockError::io(&e, "Cannot resolve the symbolic link", path)),
    _ => Ok(path.to_path_buf()),
  }
}

fn writable(path: &Path) -> bool {
  use nix::unistd::{faccessat, AccessFlags};
  faccessat(
    nix::fcntl::AT_FDCWD,
    path,
    AccessFlags::W_OK,
    nix::fcntl::AtFlags::AT_EACCESS,
  )
  .is_ok()
}

fn temp_prefix(path: &Path) -> String {
  let name = path
    .file_name()
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default();
  format!(".{name}{TEMP_MARK}")
}

/// Eight hex digits naming this host (hostname and boot), so a temp file's pid is only ever
/// judged on the host where it means something.
fn host_tag() -> &'static str {
  static TAG: OnceLock<String> = OnceLock::new();
  TAG.get_or_init(|| {
    let me = identity::current();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&me.hostname, &me.boot_id).hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
  })
}

/// `.<name>.ffl-<host>-<pid>-<unique>.tmp`
pub(crate) fn temp_path(path: &Path) -> PathBuf {
  let unique = &new_lock_id()[..12];
  path.with_file_name(format!(
    "{}{}-{}-{unique}{TEMP_SUFFIX}",
    temp_prefix(path),
    host_tag(),
    std::process::id()
  ))
}

/// The pid of a temp file written on this host, if `name` is one of ours for this file.
fn writer_pid_here(prefix: &str, name: &str) -> Option<i64> {
  let rest = name.strip_prefix(prefix)?.strip_suffix(TEMP_SUFFIX)?;
  let rest = rest.strip_prefix(host_tag())?.strip_prefix('-')?;
  rest.split('-').next()?.parse().ok()
}

/// Removes the temp files of this file left by writers of this host that are gone (they died
/// before their rename). A live writer's temp, or another host's, is never touched.
fn remove_orphan_temps(path: &Path) {
  let prefix = temp_prefix(path);
  let Ok(entries) = fs::read_dir(path.parent().unwrap_or(Path::new("/"))) else {
    return;
  };
  for entry in entries.flatten() {
    let name = entry.file_name();
    let Some(pid) = writer_pid_here(&prefix, &name.to_string_lossy()) else {
      continue;
    };
    if !identity::is_alive(pid) {
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
  fn a_file_in_several_missing_directories_is_written() {
    let path = temp_dir("store").join("billing/2026/11/time-tracking.json");
    write_atomic(&path, "{}\n", || Ok(())).unwrap();
    assert_eq!(read_text(&path).unwrap().unwrap(), "{}\n");
  }

  #[test]
  fn a_failed_ownership_check_changes_nothing_and_leaves_no_temp() {
    let dir = temp_dir("store");
    let path = dir.join("tasks.json");
    fs::write(&path, "old").unwrap();
    let err = write_atomic(&path, "new", || {
      Err::<(), _>(LockError::new("ELOCKLOST", "lost"))
    })
    .unwrap_err();
    assert_eq!(err.code, "ELOCKLOST");
    assert_eq!(fs::read_to_string(&path).unwrap(), "old");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
  }

  #[test]
  fn orphan_temps_of_a_dead_writer_are_removed_and_live_or_foreign_ones_kept() {
    let dir = temp_dir("store");
    let path = dir.join("tasks.json");
    let tag = host_tag();
    let orphan = dir.join(format!(".tasks.json.ffl-{tag}-{}-abcdef.tmp", i32::MAX));
    let live = dir.join(format!(
      ".tasks.json.ffl-{tag}-{}-abcdef.tmp",
      std::process::id()
    ));
    let foreign = dir.join(format!(".tasks.json.ffl-0othr0st-{}-abcdef.tmp", i32::MAX));
    let unrelated = dir.join(format!(".other.json.ffl-{tag}-{}-x.tmp", i32::MAX));
    for file in [&orphan, &live, &foreign, &unrelated] {
      fs::write(file, "half").unwrap();
    }
    write_atomic(&path, "{}", || Ok(())).unwrap();
    assert!(!orphan.exists());
    assert!(live.exists() && foreign.exists() && unrelated.exists());
  }

  /// Issue 9, hole 3: a writer that has lost its lock must not delete the real holder's
  /// in-flight temp file. The holder is held between its temp write and its rename (its
  /// ownership check is the hook), while the loser runs a whole write that fails its check.
  #[test]
  fn a_writer_that_lost_its_lock_leaves_the_holders_temp_alone() {
    use std::sync::mpsc;
    let dir = temp_dir("store");
    let path = dir.join("tasks.json");
    fs::write(&path, "old").unwrap();
    let (at_check, holder_paused) = mpsc::channel();
    let (go, resume) = mpsc::channel::<()>();
    let holder_path = path.clone();
    let holder = std::thread::spawn(move || {
      write_atomic(&holder_path, "holder's", || {
        at_check.send(()).unwrap();
        resume.recv().unwrap();
        Ok(())
      })
    });
    holder_paused.recv().unwrap();
    let temps = || {
      fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
          e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")
        })
        .count()
    };
    assert_eq!(temps(), 1);
    let lost = write_atomic(&path, "loser's", || {
      Err::<(), _>(LockError::new("ELOCKLOST", "lost"))
    });
    assert_eq!(lost.unwrap_err().code, "ELOCKLOST");
    assert_eq!(temps(), 1, "the holder's temp file must survive");
    go.send(()).unwrap();
    holder.join().unwrap().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "holder's");
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
