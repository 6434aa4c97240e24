//! The kernel lock (flock via std's `File::lock`/`try_lock`) held on a lock file for the whole
//! hold, so a holder that dies, even by SIGKILL, releases at once. It also owns the lock
//! file's life: opened without following symlinks, kept (emptied) on release so the next
//! acquirer reuses it, and re-checked after every lock: whoever removes a lock file does so
//! while holding its lock, and a process that then locks the removed inode must notice
//! (the path names another inode, or none) and start again on the file now at the path.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::LockMode;
use crate::error::{LockError, Result};
use crate::record::{self, Contents, LockRecord, MAX_RECORD_BYTES};

/// Set to `1` in the environment, a process takes no kernel locks at all, as on a network file
/// system that does not carry them between hosts: only records and heartbeats protect it. For
/// the torture suite's second-host simulation; never for real use.
pub const SIMULATE_NO_KERNEL_LOCKS_ENV: &str = "FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS";

pub(crate) fn kernel_locks() -> bool {
  static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
  *ENABLED.get_or_init(|| std::env::var_os(SIMULATE_NO_KERNEL_LOCKS_ENV).is_none_or(|v| v != "1"))
}

fn try_lock(file: &File, mode: LockMode) -> std::result::Result<(), fs::TryLockError> {
  match (kernel_locks(), mode) {
    (false, _) => Ok(()),
    (true, LockMode::Exclusive) => file.try_lock(),
    (true, LockMode::Shared) => file.try_lock_shared(),
  }
}

fn lock_as(file: &File, mode: LockMode) -> io::Result<()> {
  match (kernel_locks(), mode) {
    (false, _) => Ok(()),
    (true, LockMode::Exclusive) => file.lock(),
    (true, LockMode::Shared) => file.lock_shared(),
  }
}

/// An open lock file; locked or not, as the caller tracks.
#[derive(Debug)]
pub struct LockFile {
  file: File,
  path: PathBuf,
  dev: u64,
  ino: u64,
  writable: bool,
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

/// The outcome of one non-blocking try, or of a wait ([`LockFile::acquire_blocking`]).
#[derive(Debug)]
pub enum TryLock {
  Locked(LockFile),
  /// Somebody else holds it (or a signal ended the wait); the unlocked handle is handed back
  /// for reuse.
  Busy(LockFile),
}

impl LockFile {
  /// Opens the lock file, creating it if needed.
  pub fn open(path: &Path) -> Result<LockFile> {
    LockFile::open_with(path, true)
  }

  /// Opens an existing lock file; `None` when there is none.
  pub fn open_existing(path: &Path) -> Result<Option<LockFile>> {
    match LockFile::open_with(path, false) {
      Ok(lock) => Ok(Some(lock)),
      Err(e) if e.code == "ENOENT" => Ok(None),
      Err(e) => Err(e),
    }
  }

  fn open_with(path: &Path, create: bool) -> Result<LockFile> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create).mode(0o666);
    let (file, writable) = match open_lock_file(path, &options) {
      Ok(file) => (file, true),
      // Another user's lock file we may lock but not write: see `is_writable`. With no lock
      // file there, the EACCES was the directory's (we may not create in it): say that, not
      // the ENOENT of the read-only retry.
      Err(e) if e.code == "EACCES" => match open_no_follow(path, OpenOptions::new().read(true)) {
        Ok(file) => (file, false),
        Err(retry) if retry.code == "ENOENT" => return Err(e),
        Err(retry) => return Err(retry),
      },
      Err(e) => return Err(e),
    };
    LockFile::from_file(file, path, writable)
  }

  fn from_file(file: File, path: &Path, writable: bool) -> Result<LockFile> {
    let meta = check_plain_file(&file, path)?;
    Ok(LockFile {
      file,
      path: path.to_path_buf(),
      dev: meta.dev(),
      ino: meta.ino(),
      writable,
    })
  }

  /// One non-blocking try with `handle` (or a fresh one), starting again on the file now at
  /// the path whenever the locked inode turns out to have been removed.
  pub fn try_acquire(path: &Path, handle: Option<LockFile>) -> Result<TryLock> {
    LockFile::try_acquire_as(path, handle, LockMode::Exclusive)
  }

  /// [`LockFile::try_acquire`] in either mode: a shared lock (a reader's) coexists with other
  /// shared ones on their own open file descriptions, never with an exclusive one.
  pub fn try_acquire_as(path: &Path, handle: Option<LockFile>, mode: LockMode) -> Result<TryLock> {
    let mut handle = handle;
    loop {
      let lock = match handle.take() {
        Some(lock) => lock,
        None => LockFile::open(path)?,
      };
      match try_lock(&lock.file, mode) {
        Ok(()) if lock.still_at_path() => return Ok(TryLock::Locked(lock)),
        Ok(()) => drop(lock),
        Err(fs::TryLockError::WouldBlock) => return Ok(TryLock::Busy(lock)),
        Err(fs::TryLockError::Error(e)) => return Err(LockError::io(&e, "Cannot lock", path)),
      }
    }
  }

  /// Takes the lock of an existing lock file if nobody holds it; never creates one.
  pub fn try_acquire_existing(path: &Path) -> Result<Option<LockFile>> {
    let Some(lock) = LockFile::open_existing(path)? else {
      return Ok(None);
    };
    match try_lock(&lock.file, LockMode::Exclusive) {
      Ok(()) if lock.still_at_path() => Ok(Some(lock)),
      Ok(()) | Err(fs::TryLockError::WouldBlock) => Ok(None),
      Err(fs::TryLockError::Error(e)) => Err(LockError::io(&e, "Cannot lock", path)),
    }
  }

  /// Waits in the kernel until the lock is ours, in `mode`, with `handle` (one kept from an earlier
  /// hold, which saves opening the file again) or a fresh one, starting again on the file now at
  /// the path whenever the locked inode turns out to have been removed. [`TryLock::Busy`]: a
  /// signal interrupted the wait (the caller's deadline alarm, see thread_alarm.rs), and the
  /// unlocked handle comes back. The handle must be the caller's alone: a lock belongs to an
  /// open file description, so sharing one with the fast path would let both believe they hold it.
  pub fn acquire_blocking(
    path: &Path,
    handle: Option<LockFile>,
    mode: LockMode,
  ) -> Result<TryLock> {
    let mut handle = handle;
    loop {
      let lock = match handle.take() {
        Some(lock) => lock,
        None => LockFile::open(path)?,
      };
      match lock_as(&lock.file, mode) {
        Ok(()) if lock.still_at_path() => return Ok(TryLock::Locked(lock)),
        Ok(()) => drop(lock),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(TryLock::Busy(lock)),
        Err(e) => return Err(LockError::io(&e, "Cannot lock", path)),
      }
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
    names_inode(&self.path, self.dev, self.ino)
  }

  /// The raw descriptor, for a child process that must inherit the lock (`exec`).
  pub fn raw_fd(&self) -> i32 {
    use std::os::fd::AsRawFd;
    self.file.as_raw_fd()
  }

  /// The record, read by the holder (nobody else writes it meanwhile).
  pub fn read(&self) -> Contents {
    match self.read_raw() {
      Ok(bytes) => record::parse(&bytes),
      Err(why) => Contents::Unreadable(why),
    }
  }

  /// The lock file's bytes, whatever their length (a crashed holder may have left a longer
  /// record than ours).
  pub fn read_raw(&self) -> std::result::Result<Vec<u8>, String> {
    read_all(&self.file).map_err(|e| format!("cannot read the record: {e}"))
  }

  /// Writes our record over what was there, `previous_len` bytes as just read: a longer
  /// leftover is cut off, so no tail of someone else's record survives behind ours.
  /// Heartbeats rewrite the same number of bytes, so a reader sees the old or the new record.
  pub fn write_record(&mut self, record: &LockRecord, previous_len: usize) -> Result<()> {
    let bytes = record.to_bytes(0);
    let io_err = |e: io::Error| LockError::io(&e, "Cannot write the lock record", &self.path);
    self.file.write_all_at(&bytes, 0).map_err(io_err)?;
    if previous_len > bytes.len() {
      self.file.set_len(bytes.len() as u64).map_err(io_err)?;
    }
    Ok(())
  }

  /// Blanks the record in place if it is still the one carrying `lock_id` (a record taken over
  /// after we stalled is left alone): a blank record means free, and rewriting the same bytes
  /// costs no block allocation, unlike truncating and growing the file again.
  pub fn clear_if_ours(&self, lock_id: &str) {
    let Ok(mut bytes) = self.read_raw() else {
      return;
    };
    if mentions(&bytes, lock_id) {
      bytes.fill(b' ');
      let _ = self.file.write_all_at(&bytes, 0);
    }
  }

  /// Whether the record on disk still carries `lock_id` (a check on the raw bytes: no parse).
  pub fn record_mentions(&self, lock_id: &str) -> bool {
    self.read_raw().is_ok_and(|bytes| mentions(&bytes, lock_id))
  }

  /// Gives the kernel lock up and keeps the handle for the next acquire.
  pub fn unlock(&self) {
    if kernel_locks() {
      let _ = self.file.unlock();
    }
  }

  /// Removes the lock file (the caller holds its lock, so nobody can be using it) and closes.
  /// An error: the file is still there (another user's, in a sticky directory).
  pub fn remove(self) -> Result<()> {
    match self.still_at_path() {
      true => remove_file(&self.path),
      false => Ok(()),
    }
  }
}

/// Removes a lock, queue or reader file; one already gone is no error. The error says why it is
/// still there (in a sticky lock directory only the file's owner, or root, may remove it).
pub(crate) fn remove_file(path: &Path) -> Result<()> {
  match fs::remove_file(path) {
    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(LockError::new(
      crate::error::errno_name(&e),
      format!(
        "Cannot remove {}: {e}. Only its owner (or root) may remove it from this directory: run the cleanup as that user.",
        path.display()
      ),
    )),
    Err(e) => Err(LockError::io(&e, "Cannot remove", path)),
    Ok(()) => Ok(()),
  }
}

/// Whether `path` (not followed if a symlink) names the inode `dev`/`ino`: the check made after
/// every lock of a kept handle (lock, queue and reader files). It asks the kernel for the inode
/// alone: a stat asking for the change time makes Linux (6.13+, multigrain timestamps) stamp the
/// file's next write with a fine-grained time, so the record write that follows every such check
/// would also write the inode to the journal; without it, writes within one clock tick do not.
#[cfg(target_os = "linux")]
pub(crate) fn names_inode(path: &Path, dev: u64, ino: u64) -> bool {
  use rustix::fs::{makedev, statx, AtFlags, StatxFlags, CWD};
  use rustix::io::Errno;
  match statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::INO) {
    Ok(st) => st.stx_ino == ino && makedev(st.stx_dev_major, st.stx_dev_minor) == dev,
    // No statx (a kernel before 4.11, or a seccomp filter that refuses it): std's stat.
    Err(Errno::NOSYS | Errno::PERM) => {
      matches!(fs::symlink_metadata(path), Ok(m) if m.dev() == dev && m.ino() == ino)
    }
    Err(_) => false,
  }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn names_inode(path: &Path, dev: u64, ino: u64) -> bool {
  matches!(fs::symlink_metadata(path), Ok(m) if m.dev() == dev && m.ino() == ino)
}

/// Whether `lock_id` occurs in a record's raw bytes (every release asks this of its record).
pub(crate) fn mentions(bytes: &[u8], lock_id: &str) -> bool {
  !lock_id.is_empty() && memchr::memmem::find(bytes, lock_id.as_bytes()).is_some()
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

/// Whether nobody holds the kernel lock of `path`, in either mode: taken exclusively for an
/// instant on a description of its own (flock has no query). No lock file: nobody holds it.
pub(crate) fn kernel_lock_free(path: &Path) -> bool {
  match open_no_follow(path, OpenOptions::new().read(true)) {
    Ok(file) => file.try_lock().is_ok(),
    Err(e) => e.code == "ENOENT",
  }
}

/// The lock file's own handle, kept between holds: opened with `O_NOATIME` where allowed (the
/// file's owner, or root), since under `relatime` every read of the record after a write would
/// otherwise update the access time, one more inode write to the journal per acquire and release.
fn open_lock_file(path: &Path, options: &OpenOptions) -> Result<File> {
  match open_no_follow_with(path, options, libc::O_NOATIME) {
    Err(e) if e.code == "EPERM" => open_no_follow(path, options),
    opened => opened,
  }
}

pub(crate) fn open_no_follow(path: &Path, options: &OpenOptions) -> Result<File> {
  open_no_follow_with(path, options, 0)
}

fn open_no_follow_with(path: &Path, options: &OpenOptions, flags: libc::c_int) -> Result<File> {
  let mut options = options.clone();
  options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | flags);
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
    } else if e.raw_os_error() == Some(libc::EISDIR) {
      not_a_plain_file(path)
    } else {
      LockError::io(&e, "Cannot open the lock file", path)
    }
  })
}

/// A lock file must be a plain file with one name: a FIFO, a device or a hard link to some
/// other file would turn our record writes into writes elsewhere.
pub(crate) fn check_plain_file(file: &File, path: &Path) -> Result<fs::Metadata> {
  let meta = file
    .metadata()
    .map_err(|e| LockError::io(&e, "Cannot stat", path))?;
  if !meta.file_type().is_file() || meta.nlink() > 1 {
    return Err(not_a_plain_file(path));
  }
  Ok(meta)
}

/// A lock path that is a directory, a FIFO, a device or a hard link to some other file.
fn not_a_plain_file(path: &Path) -> LockError {
  LockError::new(
    "ELOCKFILEUNSAFE",
    format!(
      "Refusing the lock file {}: it is not a plain file with a single name. Remove it and retry.",
      path.display()
    ),
  )
}

/// Reads the record until two reads agree, so a reader racing a heartbeat never acts on a
/// torn record.
pub(crate) fn read_stable(file: &File) -> Contents {
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
  let mut buf = vec![0u8; 1024];
  let mut len = 0;
  loop {
    if len == buf.len() {
      if buf.len() > MAX_RECORD_BYTES {
        break;
      }
      buf.resize(buf.len() * 4, 0);
    }
    let want = buf.len() - len;
    match file.read_at(&mut buf[len..], len as u64) {
      Ok(0) => break,
      // A short read of a regular file means its end: no need to ask again.
      Ok(n) if n < want => {
        len += n;
        break;
      }
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

  fn locked(path: &Path) -> LockFile {
    match LockFile::try_acquire(path, None).unwrap() {
      TryLock::Locked(lock) => lock,
      TryLock::Busy(_) => panic!("{} is busy", path.display()),
    }
  }

  #[test]
  fn one_holder_at_a_time_and_the_file_stays_for_reuse() {
    let path = temp_dir("oslock").join("tasks.json.lock");
    let first = locked(&path);
    assert!(matches!(
      LockFile::try_acquire(&path, None).unwrap(),
      TryLock::Busy(_)
    ));
    assert!(matches!(
      probe(&path).unwrap(),
      Probe::Held(Contents::Empty)
    ));
    first.unlock();
    assert!(matches!(
      probe(&path).unwrap(),
      Probe::Free(Contents::Empty)
    ));
    let again = LockFile::try_acquire(&path, Some(first)).unwrap();
    assert!(matches!(again, TryLock::Locked(_)));
  }

  #[test]
  fn shared_holds_coexist_and_exclude_an_exclusive_one() {
    let path = temp_dir("oslock").join("shared.lock");
    let shared = |handle| LockFile::try_acquire_as(&path, handle, LockMode::Shared).unwrap();
    let TryLock::Locked(first) = shared(None) else {
      panic!("free")
    };
    let TryLock::Locked(second) = shared(None) else {
      panic!("shared with the first")
    };
    assert!(matches!(
      LockFile::try_acquire(&path, None).unwrap(),
      TryLock::Busy(_)
    ));
    // A probe (getLockInfo) does not mistake readers for an exclusive holder.
    assert!(matches!(probe(&path).unwrap(), Probe::Free(_)));
    first.unlock();
    second.unlock();
    let TryLock::Locked(writer) = LockFile::try_acquire(&path, None).unwrap() else {
      panic!("readers are gone")
    };
    assert!(matches!(shared(None), TryLock::Busy(_)));
    writer.unlock();
  }

  #[test]
  fn a_waiter_on_a_removed_inode_starts_again() {
    let path = temp_dir("oslock").join("race.lock");
    // The waiter's handle is one kept from an earlier hold of the file about to be removed.
    let kept = locked(&path);
    kept.unlock();
    let holder = locked(&path);
    let waiter_path = path.clone();
    let waiter = std::thread::spawn(move || {
      match LockFile::acquire_blocking(&waiter_path, Some(kept), LockMode::Exclusive).unwrap() {
        TryLock::Locked(lock) => lock,
        TryLock::Busy(_) => panic!("nothing interrupts this wait"),
      }
    });
    crate::test_support::wait_for_blocked_flock(&path);
    holder.remove().unwrap();
    let lock = waiter.join().unwrap();
    assert!(lock.still_at_path());
    assert!(path.exists());
  }

  #[test]
  fn a_cached_handle_of_a_removed_file_is_replaced() {
    let path = temp_dir("oslock").join("cached.lock");
    let cached = locked(&path);
    cached.unlock();
    let remover = locked(&path);
    remover.remove().unwrap();
    match LockFile::try_acquire(&path, Some(cached)).unwrap() {
      TryLock::Locked(lock) => assert!(lock.still_at_path()),
      TryLock::Busy(_) => panic!("nobody holds it"),
    }
  }

  #[test]
  fn records_round_trip_shrink_and_clear() {
    let path = temp_dir("oslock").join("r.lock");
    fs::write(&path, vec![b'x'; 5000]).unwrap();
    let mut lock = locked(&path);
    assert!(matches!(lock.read(), Contents::Unreadable(_)));
    let record = LockRecord::new_for(identity::current(), "id1", "/t", 1);
    lock.write_record(&record, 5000).unwrap();
    assert_eq!(lock.read(), Contents::Record(record));
    assert_eq!(
      fs::metadata(&path).unwrap().len() as usize % record::RECORD_BLOCK,
      0
    );
    assert!(lock.record_mentions("id1"));
    lock.clear_if_ours("someone-else");
    assert!(lock.record_mentions("id1"));
    lock.clear_if_ours("id1");
    assert_eq!(lock.read(), Contents::Empty);
    assert!(!lock.record_mentions("id1"));
  }

  /// Issue 9, hole 2: a handle kept from an earlier hold must not trust the length it last
  /// wrote. A holder that crashed meanwhile may have left a longer record; ours must not end
  /// up with that record's tail behind it (unreadable, so every later check would fail).
  #[test]
  fn a_longer_record_left_by_another_holder_leaves_no_tail() {
    let path = temp_dir("oslock").join("tail.lock");
    let mut ours = locked(&path);
    let short = LockRecord::new_for(identity::current(), "short", "/t", 1);
    ours.write_record(&short, 0).unwrap();
    ours.clear_if_ours("short");
    ours.unlock();
    // Another process's holder, with a record several blocks long, dies holding the lock.
    let mut theirs = locked(&path);
    let mut long = LockRecord::new_for(identity::current(), "long", "/t", 1);
    long.file = Some("/a/very/long/path/".repeat(40));
    theirs.write_record(&long, 0).unwrap();
    drop(theirs);
    // Our kept handle takes the lock again and writes its record over what was left.
    let TryLock::Locked(mut again) = LockFile::try_acquire(&path, Some(ours)).unwrap() else {
      panic!("nobody holds it")
    };
    let left = again.read_raw().unwrap();
    let mine = LockRecord::new_for(identity::current(), "mine", "/t", 2);
    again.write_record(&mine, left.len()).unwrap();
    assert_eq!(again.read(), Contents::Record(mine));
    assert!(again.record_mentions("mine"));
  }

  /// Under `relatime` a read after a write updates the access time, an inode write to the
  /// journal at every acquire and release: the kept handle reads without touching it.
  #[test]
  fn reading_the_record_leaves_the_access_time_alone() {
    let path = temp_dir("oslock").join("atime.lock");
    let mut lock = locked(&path);
    let record = LockRecord::new_for(identity::current(), "atime", "/t", 1);
    lock.write_record(&record, 0).unwrap();
    let long_ago = std::time::UNIX_EPOCH + Duration::from_secs(1);
    File::open(&path)
      .unwrap()
      .set_times(fs::FileTimes::new().set_accessed(long_ago))
      .unwrap();
    assert_eq!(lock.read(), Contents::Record(record));
    assert_eq!(fs::metadata(&path).unwrap().accessed().unwrap(), long_ago);
  }

  #[test]
  fn symlinks_and_hard_links_are_refused_and_their_targets_untouched() {
    let dir = temp_dir("oslock");
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let link = dir.join("tasks.json.lock");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert_eq!(
      LockFile::try_acquire(&link, None).unwrap_err().code,
      "ELOCKSYMLINK"
    );
    let hard = dir.join("time.json.lock");
    fs::hard_link(&victim, &hard).unwrap();
    assert_eq!(
      LockFile::try_acquire(&hard, None).unwrap_err().code,
      "ELOCKFILEUNSAFE"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
  }
}
