//! A project's identity for lock servers: the same FlowForge project may be mounted at different
//! paths on different machines, so its locks are named on a server by an id kept inside the
//! project, `.flowforge/.locks/project-id` (random, made once, atomically), plus the lock's name.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{LockError, Result};
use crate::paths::{self, Target};
use crate::record::new_lock_id;

const ID_FILE: &str = "project-id";

/// The project's id, made on first use. Several processes making it at once agree: each writes
/// a candidate to a temp file and links it into place (a link fails if the name exists), so the
/// file is never seen half-written and whoever loses reads the winner's.
pub fn id(root: &Path) -> Result<String> {
  let lock_dir = paths::lock_dir_of(root);
  paths::ensure_lock_dir(&lock_dir)?;
  let path = lock_dir.join(ID_FILE);
  match fs::read_to_string(&path) {
    Ok(text) => return checked(&path, &text),
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
    Err(e) => return Err(LockError::io(&e, "Cannot read the project id", &path)),
  }
  let id = new_lock_id()[..16].to_string();
  let temp = lock_dir.join(format!(".{ID_FILE}.{}.tmp", std::process::id()));
  let made = OpenOptions::new()
    .write(true)
    .create(true)
    .truncate(true)
    .mode(0o644)
    .custom_flags(libc::O_NOFOLLOW)
    .open(&temp)
    .and_then(|mut file| file.write_all(format!("{id}\n").as_bytes()))
    .and_then(|_| fs::hard_link(&temp, &path));
  let _ = fs::remove_file(&temp);
  match made {
    Ok(()) => Ok(id),
    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
      let text = fs::read_to_string(&path)
        .map_err(|e| LockError::io(&e, "Cannot read the project id", &path))?;
      checked(&path, &text)
    }
    Err(e) => Err(LockError::io(&e, "Cannot create the project id", &path)),
  }
}

fn checked(path: &Path, text: &str) -> Result<String> {
  let id = text.trim();
  if is_id(id) {
    return Ok(id.to_string());
  }
  Err(LockError::new(
    "ELOCKCONFIG",
    format!(
      "{} does not hold a project id (16 hex digits). Remove it when no process of this project is running; a new id is then made.",
      path.display()
    ),
  ))
}

fn is_id(text: &str) -> bool {
  text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The lock's name within its project: the lock file's name (`tasks.json.lock`), so files that
/// share a lock file share a server lock too.
pub fn lock_name(target: &Target) -> String {
  target
    .lock_path
    .file_name()
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_id_is_made_once_and_read_back() {
    let root = crate::test_support::temp_dir("project");
    fs::create_dir_all(root.join(".flowforge")).unwrap();
    let first = id(&root).unwrap();
    assert!(is_id(&first));
    assert_eq!(id(&root).unwrap(), first);
    fs::write(paths::lock_dir_of(&root).join(ID_FILE), "garbage").unwrap();
    assert_eq!(id(&root).unwrap_err().code, "ELOCKCONFIG");
  }
}
