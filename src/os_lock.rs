//! The kernel lock (flock via std's `File::lock`/`try_lock`) held on a lock file for the whole
//! hold, so a holder that dies, even by SIGKILL, releases at once. It also owns the lock
//! file's life: opened without following symlinks, removed on release while still locked,
//! and re-checked after every lock (a waiter may have locked an inode that its holder had just
//! unlinked: then it must start again on the new file).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{LockError, Result};
use crate::record::{self, Contents, LockRecord, MAX_RECORD_BYTES};

/// An exclusive kernel lock on the file currently at `path`.
#[derive(Debug)]
pub struct KernelLock {
  file: File,
  path: PathBuf,
  dev: u64,
  ino: u64,
  writable: bool,
  record_len: usize,
}

/// What a reader finds at a lock path without taking the lock for itself.
#[derive(Debug)]
pub enum Probe {
  Absent,
  /// Somebody holds the kernel lock; the record is what they wrote (possibly nothing yet).
  Held(Contents),
  /// Nobody holds the kernel lock.
  Free(Contents),
}

impl KernelLock {
  /// Takes the lock if nobody holds it; `Ok(None)` when somebody does.
  pub fn try_acquire(path: &Path) -> Result<Option<KernelLock>> {
    loop {
      let (file, writable) = open_lock_file(path, true)?;
      match file.try_lock() {
        Ok(()) => {
          if let Some(lock) = KernelLock::verify(file, path, writable)? {
            return Ok(Some(lock));
          }
        }
        Err(fs::TryLockError::WouldBlock) => return Ok(None),
        Err(fs::TryLockError::Error(e)) => return Err(LockError::io(&e, "Cannot lock", path)),
      }
    }
  }

  /// Takes the lock of an existing lock file, if nobody holds it; never creates one.
  pub fn try_acquire_existing(path: &Path) -> Result<Option<KernelLock>> {
    let (file, writable) = match open_lock_file(path, false) {
      Ok(opened) => opened,
      Err(e) if e.code == "ENOENT" => return Ok(None),
      Err(e) => return Err(e),
    };
    match file.try_lock() {
      Ok(()) => KernelLock::verify(file, path, writable),
      Err(fs::TryLockError::WouldBlock) => Ok(None),
      Err(fs::TryLockError::Error(e)) => Err(LockError::io(&e, "Cannot lock", path)),
    }
  }

  /// Waits in the kernel until the lock is ours. Only the per-key waiter thread calls this.
  pub fn acquire_blocking(path: &Path) -> Result<KernelLock> {
    loop {
      let (file, writable) = open_lock_file(path, true)?;
      match file.lock() {
        Ok(()) => {
          if let Some(lock) = KernelLock::verify(file, path, writable)? {
            return Ok(lock);
          }
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) => return Err(LockError::io(&e, "Cannot lock", path)),
      }
    }
  }

  /// The lock counts only if `path` still names the inode we locked; otherwise its holder
  /// removed it meanwhile and the caller starts again.
  fn verify(file: File, path: &Path, writable: bool) -> Result<Option<KernelLock>> {
    let locked = file
      .metadata()
      .map_err(|e| LockError::io(&e, "Cannot stat", path))?;
    match fs::symlink_metadata(path) {
      Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => Ok(Some(KernelLock {
        file,
        path: path.to_path_buf(),
        dev: locked.dev(),
        ino: locked.ino(),
        writable,
        record_len: locked.len() as usize,
      })),
      Ok(_) => Ok(None),
      Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
      Err(e) => Err(LockError::io(&e, "Cannot stat", path)),
    }
  }

  pub fn path(&self) -> &Path {
    &self.path
  }

  /// False when the lock file belongs to someone whose file we may lock but not write;
  /// such a file can only be taken over by replacing it.
  pub fn is_writable(&self) -> bool {
    self.writable
  }

  /// Whether the lock path still names our inode (someone may have deleted or replaced it).
  pub fn still_at_path(&self) -> bool {
    matches!(fs::symlink_metadata(&self.path), Ok(m) if m.dev() == self.dev && m.ino() == self.ino)
  }

  /// A second descriptor of the locked file, for writing the record off the lock table.
  pub fn duplicate(&self) -> io::Result<File> {
    self.file.try_clone()
  }

  pub fn read(&self) -> Contents {
    read_stable(&self.file)
  }

  /// Writes our record over whatever was there. Heartbeats rewrite the same number of bytes,
  /// so a reader sees either the old or the new record.
  pub fn write_record(&mut self, record: &LockRecord, sync: bool) -> Result<()> {
    let bytes = record.to_bytes(0);
    let io_err = |e: io::Error| LockError::io(&e, "Cannot write the lock record", &self.path);
    self.file.write_all_at(&bytes, 0).map_err(io_err)?;
    if self.record_len > bytes.len() {
      self.file.set_len(bytes.len() as u64).map_err(io_err)?;
    }
    self.record_len = bytes.len();
    if sync {
      self.file.sync_data().map_err(io_err)?;
    }
    Ok(())
  }

  /// Releases the lock; with `remove`, first deletes the lock file while it is still locked,
  /// so that nobody can lock a file that is about to disappear without noticing.
  pub fn release(self, remove: bool) {
    if remove && self.still_at_path() {
      let _ = fs::remove_file(&self.path);
    }
    drop(self.file);
  }
}

/// Looks at a lock file without keeping any lock: a shared kernel lock taken for an instant
/// tells whether an exclusive holder exists.
pub fn probe(path: &Path) -> Result<Probe> {
  let file = match open_no_follow(path, OpenOptions::new().read(true)) {
    Ok(file) => file,
    Err(e) if e.code == "ENOENT" => return Ok(Probe::Absent),
    Err(e) => return Err(e),
  };
  check_plain_file(&file, path)?;
  match file.try_lock_shared() {
    Ok(()) => Ok(Probe::Free(read_stable(&file))),
    Err(fs::TryLockError::WouldBlock) => Ok(Probe::Held(read_stable(&file))),
    Err(fs::TryLockError::Error(e)) => Err(LockError::io(&e, "Cannot lock", path)),
  }
}

/// Opens for read and write when we may, else read-only (a lock can be taken on a file we may
/// only read; see [`KernelLock::is_writable`]).
fn open_lock_file(path: &Path, create: bool) -> Result<(File, bool)> {
  let mut options = OpenOptions::new();
  options.read(true).write(true).create(create).mode(0o666);
  let (file, writable) = match open_no_follow(path, &options) {
    Ok(file) => (file, true),
    Err(e) if e.code == "EACCES" => (open_no_follow(path, OpenOptions::new().read(true))?, false),
    Err(e) => return Err(e),
  };
  check_plain_file(&file, path)?;
  Ok((file, writable))
}

fn open_no_follow(path: &Path, options: &OpenOptions) -> Result<File> {
  let mut options = options.clone();
  options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
  options.open(path).map_err(|e| {
    if e.raw_os_error() == Some(libc::ELOOP) {
      LockError::new(
        "ELOCKSYMLINK",
        format!(
          "Refusing the lock file {}: it is a symbolic link, which could redirect lock writes to another file. Remove it (`rm {}`) and retry.",
          path.display(),
          path.display()
        ),
      )
    } else {
      LockError::io(&e, "Cannot open the lock file", path)
    }
  })
}

/// A lock file must be a plain file with one name: a FIFO, a device or a hard link to some
/// other file would turn our record writes into writes elsewhere.
fn check_plain_file(file: &File, path: &Path) -> Result<()> {
  let meta = file
    .metadata()
    .map_err(|e| LockError::io(&e, "Cannot stat", path))?;
  if !meta.file_type().is_file() || meta.nlink() > 1 {
    return Err(LockError::new(
      "ELOCKFILEUNSAFE",
      format!(
        "Refusing the lock file {}: it is not a plain file with a single name. Remove it and retry.",
        path.display()
      ),
    ));
  }
  Ok(())
}

/// Reads the record until two reads agree, so a reader racing a heartbeat never acts on a
/// torn record.
fn read_stable(file: &File) -> Contents {
  let read = || read_all(file).map_err(|e| format!("cannot read the record: {e}"));
  let mut previous = read();
  for _ in 0..8 {
    let current = read();
    if current == previous {
      break;
    }
    std::thread::sleep(Duration::from_micros(200));
    previous = current;
  }
  match previous {
    Ok(bytes) => record::parse(&bytes),
    Err(why) => Contents::Unreadable(why),
  }
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
  let mut buf = vec![0u8; 4096];
  let mut len = 0;
  loop {
    if len == buf.len() {
      if buf.len() > MAX_RECORD_BYTES {
        break;
      }
      buf.resize(buf.len() * 2, 0);
    }
    match file.read_at(&mut buf[len..], len as u64) {
      Ok(0) => break,
      Ok(n) => len += n,
      Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
      Err(e) => return Err(e),
    }
  }
  buf.truncate(len);
  Ok(buf)
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::identity;
  use crate::test_support::temp_dir;

  #[test]
  fn one_holder_at_a_time_and_release_removes_the_file() {
    let path = temp_dir("oslock").join("tasks.json.lock");
    let first = KernelLock::try_acquire(&path).unwrap().expect("free lock");
    assert!(KernelLock::try_acquire(&path).unwrap().is_none());
    assert!(matches!(
      probe(&path).unwrap(),
      Probe::Held(Contents::Empty)
    ));
    first.release(true);
    assert!(!path.exists());
    assert!(matches!(probe(&path).unwrap(), Probe::Absent));
  }

  #[test]
  fn a_waiter_on_an_unlinked_inode_starts_again() {
    let path = temp_dir("oslock").join("race.lock");
    let holder = KernelLock::try_acquire(&path).unwrap().unwrap();
    let waiter_path = path.clone();
    let waiter = std::thread::spawn(move || KernelLock::acquire_blocking(&waiter_path).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    holder.release(true);
    let lock = waiter.join().unwrap();
    assert!(lock.still_at_path());
    assert!(path.exists());
  }

  #[test]
  fn records_round_trip_and_shrink_cleanly() {
    let path = temp_dir("oslock").join("r.lock");
    fs::write(&path, vec![b'x'; 5000]).unwrap();
    let mut lock = KernelLock::try_acquire(&path).unwrap().unwrap();
    assert!(matches!(lock.read(), Contents::Unreadable(_)));
    let record = LockRecord::new_for(identity::current(), "id1", "/t", 1);
    lock.write_record(&record, false).unwrap();
    assert_eq!(lock.read(), Contents::Record(record));
    assert_eq!(
      fs::metadata(&path).unwrap().len() as usize % record::RECORD_BLOCK,
      0
    );
  }

  #[test]
  fn symlinks_and_hard_links_are_refused_and_their_targets_untouched() {
    let dir = temp_dir("oslock");
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let link = dir.join("tasks.json.lock");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert_eq!(
      KernelLock::try_acquire(&link).unwrap_err().code,
      "ELOCKSYMLINK"
    );
    let hard = dir.join("time.json.lock");
    fs::hard_link(&victim, &hard).unwrap();
    assert_eq!(
      KernelLock::try_acquire(&hard).unwrap_err().code,
      "ELOCKFILEUNSAFE"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
  }
}
