//! The claim file: what makes taking a lock file over an atomic step on the file system, even
//! between hosts that share the directory but not its kernel locks (an NFS mount without lock
//! support). Writing our record is read-judge-write; two hosts doing that at once could both
//! win. So a claimer first creates `<lock>.claim` with `O_CREAT | O_EXCL` (atomic on local file
//! systems and on NFSv3 and later): only one claimer at a time gets it; the others see the lock as
//! taken and look again. It is removed once the record is written and read back.
//!
//! A claim file left by a claimer that died between the two steps is removed by the next one:
//! at once when it was made on this host (its maker held the kernel lock we now hold, or its
//! pid is gone), after the stale threshold when another host made it.
//!
//! Claims are only needed where the directory can be shared by several kernels: on a network
//! file system (NFS, SMB, FUSE mounts such as sshfs, 9p, …), or where kernel locks are off. On a
//! local file system every process that sees the directory shares our kernel, whose lock is
//! then the whole truth, and an uncontended acquire skips the claim's six system calls.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{LockError, Result};
use crate::identity;

/// A claim file we made; [`Ticket::finish`] removes it.
pub struct Ticket {
  path: PathBuf,
  ino: u64,
}

/// Whether claims are needed for lock files in `lock_dir` (decided once per directory: a mount
/// appearing under a lock directory a process already uses is not seen).
pub fn needed(lock_dir: &Path) -> bool {
  use crate::paths::PathMap;
  use std::sync::{LazyLock, Mutex};
  if !super::os_lock::kernel_locks() {
    return true;
  }
  static BY_DIR: LazyLock<Mutex<PathMap<bool>>> = LazyLock::new(Default::default);
  let mut known = BY_DIR.lock().unwrap_or_else(|e| e.into_inner());
  if let Some(needed) = known.get(lock_dir) {
    return *needed;
  }
  let needed = may_be_shared_between_kernels(lock_dir);
  known.insert(lock_dir, needed);
  needed
}

/// Linux's statfs magic numbers of file systems that other machines can mount too.
#[cfg(target_os = "linux")]
fn may_be_shared_between_kernels(dir: &Path) -> bool {
  const SHARED: &[i64] = &[
    0x6969,     // nfs
    0x517b,     // smb
    0xff534d42, // cifs
    0xfe534d42, // smb2
    0x65735546, // fuse (sshfs, virtiofs, …)
    0x01021997, // 9p
    0x00c36400, // ceph
    0x5346414f, // afs
    0x01161970, // gfs2
    0x7461636f, // ocfs2
    0x0bd00bd0, // lustre
  ];
  match nix::sys::statfs::statfs(dir) {
    Ok(stat) => SHARED.contains(&stat.filesystem_type().0),
    Err(_) => true,
  }
}

/// Elsewhere we cannot tell a local file system from a shared one: claim always.
#[cfg(not(target_os = "linux"))]
fn may_be_shared_between_kernels(_dir: &Path) -> bool {
  true
}

fn claim_path(lock_path: &Path) -> PathBuf {
  let mut name = lock_path.as_os_str().to_os_string();
  name.push(".claim");
  PathBuf::from(name)
}

/// "<hostname> <boot id> <pid>": who made a claim file.
fn maker_line() -> String {
  let me = identity::current();
  format!(
    "{} {} {}\n",
    me.hostname,
    me.boot_id.as_deref().unwrap_or("-"),
    me.pid
  )
}

/// Takes the claim of `lock_path`, or `Ok(None)` when another claimer has it now.
/// `kernel_locked`: the caller holds the lock file's kernel lock, so no claimer of this host can
/// be in the middle of a claim.
pub fn take(
  lock_path: &Path,
  kernel_locked: bool,
  stale_after: Duration,
) -> Result<Option<Ticket>> {
  let path = claim_path(lock_path);
  for _ in 0..2 {
    match OpenOptions::new()
      .write(true)
      .create_new(true)
      .mode(0o644)
      .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
      .open(&path)
    {
      Ok(mut file) => {
        let ino = file
          .metadata()
          .map_err(|e| LockError::io(&e, "Cannot stat", &path))?
          .ino();
        file
          .write_all(maker_line().as_bytes())
          .map_err(|e| LockError::io(&e, "Cannot write the claim file", &path))?;
        return Ok(Some(Ticket { path, ino }));
      }
      Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
        if !remove_if_abandoned(&path, kernel_locked, stale_after) {
          return Ok(None);
        }
      }
      Err(e) => return Err(LockError::io(&e, "Cannot create the claim file", &path)),
    }
  }
  Ok(None)
}

/// Removes a claim file whose maker is gone; false when it may still be claiming.
fn remove_if_abandoned(path: &Path, kernel_locked: bool, stale_after: Duration) -> bool {
  match look(path, kernel_locked, stale_after) {
    Found::Claiming => false,
    // Removed meanwhile: try again.
    Found::Gone => true,
    Found::Abandoned(ino) => {
      if still_names(path, ino) {
        let _ = fs::remove_file(path);
      }
      true
    }
  }
}

/// Whether a claimer may be at work on `lock_path` now: its claim file is there and not
/// abandoned, so [`take`] would not get the claim. Only looks (for a dry run, which must write
/// nothing, not even a claim file).
pub fn under_way(lock_path: &Path, kernel_locked: bool, stale_after: Duration) -> bool {
  matches!(
    look(&claim_path(lock_path), kernel_locked, stale_after),
    Found::Claiming
  )
}

/// What a look at a claim file found.
enum Found {
  Gone,
  /// Its maker is gone: the claim file's inode.
  Abandoned(u64),
  /// Its maker may still be claiming.
  Claiming,
}

/// Looks at the claim file at `path` and judges its maker, changing nothing.
fn look(path: &Path, kernel_locked: bool, stale_after: Duration) -> Found {
  let Ok(file) = File::open(path) else {
    return Found::Gone;
  };
  let Ok(meta) = file.metadata() else {
    return Found::Claiming;
  };
  let mut text = String::new();
  let _ = file.take(256).read_to_string(&mut text);
  let me = identity::current();
  let mut fields = text.split_whitespace();
  let (host, boot, pid) = (fields.next(), fields.next(), fields.next());
  let this_host = host == Some(me.hostname.as_str())
    && boot.is_some_and(|b| me.boot_id.as_deref().is_none_or(|ours| ours == b));
  let abandoned = if this_host {
    kernel_locked
      || !pid
        .and_then(|p| p.parse::<i64>().ok())
        .is_some_and(identity::is_alive)
  } else {
    let age = meta
      .modified()
      .ok()
      .and_then(|t| SystemTime::now().duration_since(t).ok());
    // Half-written or another host's: only an old one is abandoned.
    age.is_some_and(|age| age > stale_after)
  };
  if abandoned {
    Found::Abandoned(meta.ino())
  } else {
    Found::Claiming
  }
}

fn still_names(path: &Path, ino: u64) -> bool {
  fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino)
}

impl Ticket {
  /// Ends the claim: true when it was still ours to the end (nobody judged it abandoned and
  /// replaced it meanwhile), in which case our record stands.
  pub fn finish(self) -> bool {
    let ours = still_names(&self.path, self.ino);
    if ours {
      let _ = fs::remove_file(&self.path);
    }
    ours
  }
}
