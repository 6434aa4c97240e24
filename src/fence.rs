//! Fencing tokens kept beside the data: `<lock file>.fence` holds the highest token that ever
//! committed a write under that lock, and the lockId of the hold that committed it (`"<token>
//! <lockId>"`): a lock server restarted without persistence could hand one token out twice, and
//! two holds under one token must not both commit. A backend that issues tokens (Redis, etcd) has every commit
//! check, just before its rename, that no newer holder has committed (the file's token is not
//! above ours) and then record ours, so a holder that lost its lock while frozen cannot write
//! over its successor's data. The token file also survives the lock server: after a server
//! restart without persistence, new grants start above it (see `floor`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{LockError, Result};
use crate::paths::Target;

fn fence_path(target: &Target) -> PathBuf {
  let mut name = target.lock_path.as_os_str().to_os_string();
  name.push(".fence");
  PathBuf::from(name)
}

/// The highest token recorded for `target`'s lock (0 when none was).
pub fn floor(target: &Target) -> Result<u64> {
  Ok(read(&fence_path(target))?.0)
}

/// The recorded token and the lockId that committed under it (files of older versions hold the
/// token alone).
fn read(path: &Path) -> Result<(u64, Option<String>)> {
  match fs::read_to_string(path) {
    Ok(text) => {
      let mut fields = text.split_whitespace();
      let token = fields.next().and_then(|t| t.parse().ok());
      let holder = fields.next().map(str::to_string);
      token.map(|token| (token, holder)).ok_or_else(|| {
      LockError::new(
        "EFENCE",
        format!(
          "The fencing token file {} does not hold a number ({:?}); nothing was written. Remove it only if no other machine is writing: the next grant records a fresh one.",
          path.display(),
          text.chars().take(40).collect::<String>()
        ),
      )
      })
    }
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, None)),
    Err(e) => Err(LockError::io(
      &e,
      "Cannot read the fencing token file",
      path,
    )),
  }
}

/// Before a commit under `token` by the hold `lock_id`: refuses with `ELOCKLOST` if a newer
/// holder has committed already, or another hold under the same token, else records ours
/// (atomically: temp file, fsync, rename).
pub fn check_and_record(target: &Target, token: u64, lock_id: &str) -> Result<()> {
  let path = fence_path(target);
  let (seen, committer) = read(&path)?;
  if seen == token && committer.as_deref().is_some_and(|c| c != lock_id) {
    return Err(LockError::new(
      "ELOCKLOST",
      format!(
        "The lock on {} was lost before the write: another hold committed under the same fencing token {token} (the lock server handed it out twice, as after a restart without persistence); the file was not changed. Retry the update.",
        target.file.display()
      ),
    ));
  }
  if seen > token {
    return Err(LockError::new(
      "ELOCKLOST",
      format!(
        "The lock on {} was lost before the write: a newer holder (fencing token {seen}) has committed since our grant (token {token}); the file was not changed. Retry the update.",
        target.file.display()
      ),
    ));
  }
  if seen == token && committer.is_some() {
    return Ok(());
  }
  let mut temp = path.as_os_str().to_os_string();
  temp.push(format!(".{}.tmp", std::process::id()));
  let temp = PathBuf::from(temp);
  let written = OpenOptions::new()
    .write(true)
    .create(true)
    .truncate(true)
    .mode(0o644)
    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    .open(&temp)
    .and_then(|mut file: File| {
      file.write_all(format!("{token} {lock_id}\n").as_bytes())?;
      file.sync_all()
    })
    .and_then(|_| fs::rename(&temp, &path));
  written.map_err(|e| {
    let _ = fs::remove_file(&temp);
    LockError::io(&e, "Cannot record the fencing token in", &path)
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  fn target() -> Target {
    let dir = crate::test_support::temp_dir("fence");
    std::fs::create_dir_all(dir.join(".flowforge/.locks")).unwrap();
    let target = crate::paths::resolve(dir.join(".flowforge/tasks.json").to_str().unwrap());
    std::sync::Arc::unwrap_or_clone(target.unwrap())
  }

  #[test]
  fn tokens_only_move_forward_and_an_older_holder_is_refused() {
    let target = target();
    assert_eq!(floor(&target).unwrap(), 0);
    check_and_record(&target, 5, "a").unwrap();
    check_and_record(&target, 5, "a").unwrap();
    assert_eq!(floor(&target).unwrap(), 5);
    check_and_record(&target, 9, "b").unwrap();
    let err = check_and_record(&target, 5, "a").unwrap_err();
    assert_eq!(err.code, "ELOCKLOST");
    assert!(err.message.contains("token 9"), "{}", err.message);
    assert_eq!(floor(&target).unwrap(), 9);
  }

  #[test]
  fn a_garbled_token_file_is_refused_not_trusted() {
    let target = target();
    std::fs::write(fence_path(&target), "not a number").unwrap();
    assert_eq!(
      check_and_record(&target, 3, "a").unwrap_err().code,
      "EFENCE"
    );
  }

  /// A server restarted without persistence may grant one token twice: only one of the two
  /// holds may commit under it.
  #[test]
  fn two_holds_under_one_token_cannot_both_commit() {
    let target = target();
    check_and_record(&target, 77, "first").unwrap();
    let err = check_and_record(&target, 77, "second").unwrap_err();
    assert_eq!(err.code, "ELOCKLOST");
    assert!(
      err.message.contains("same fencing token 77"),
      "{}",
      err.message
    );
    check_and_record(&target, 77, "first").unwrap();
    // A file of an older version (token alone) is taken as it is, and then names its committer.
    std::fs::write(fence_path(&target), "80\n").unwrap();
    check_and_record(&target, 80, "third").unwrap();
    assert_eq!(
      check_and_record(&target, 80, "fourth").unwrap_err().code,
      "ELOCKLOST"
    );
  }
}
