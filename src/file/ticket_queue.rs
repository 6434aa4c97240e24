//! The ticket queue: fair order between the processes of one host waiting for a lock file, by
//! priority with aging and in arrival order among equals, as this process's own queue serves
//! its waiters (lock_table.rs). It lives in `<lock file>.wait` and is made only of
//! open-file-description (OFD) byte-range locks, so the kernel drops a dead process's place at
//! once; the kernel lock on the lock file itself stays the whole truth for exclusion, and a lost,
//! removed or unusable queue file only costs fairness.
//!
//! - **Byte 0, the holder's byte**: locked by whoever holds the lock, from just after it took the
//!   kernel lock until just after it gave it up: exclusively by a writer, shared by readers. A
//!   holder that came through the queue keeps its ticket as well until then (a reader's turned
//!   shared), so the waiter behind it is woken once, by the release.
//! - **A ticket**: a waiting process locks exclusively one byte at its key (below). Keys order by
//!   rank, smallest first: `key = BIAS + arrival - priority x AGING_STEP`, with `arrival` on
//!   CLOCK_MONOTONIC (shared by every process of the host). Serving the smallest `arrival -
//!   priority x step` is exactly the lock table's rule (highest `priority + waited / step`, ties
//!   to the earliest arrival), with no one re-ranking anybody as time passes. A byte already taken
//!   (two equal keys) sends the newcomer to the next free byte.
//! - **Its turn**: comes when a lock over `[0, key)` in the waiter's mode can be had at once,
//!   through a second handle: no better-ranked waiter is left and no holder is in the way (a
//!   reader's shared lock passes readers' byte 0, so consecutive readers hold together; a
//!   writer's exclusive one waits for every holder). Until then the waiter blocks on the one lock
//!   in its way that goes next (the ticket just ahead, else byte 0) and looks again: one wake-up
//!   per handoff, see `wait_turn`. Tickets are exclusive, so a reader arriving after a waiting
//!   writer is served after it: writer preference by arrival order. Its turn come, it gives that
//!   range back, takes the kernel lock (free by then) and locks the holder's byte, keeping its
//!   ticket, so a newcomer always sees somebody ahead of it.
//! - **The fast path** asks whether anyone else holds a lock on the queue file that conflicts
//!   with its mode (a holder in the way, a ticket, a waiter passing its turn) and, if so, queues
//!   behind them instead of barging in.
//! - **Stopped waiters** (SIGSTOP) keep their tickets; a waiter behind one passes it once it has
//!   seen the same lock in its way for a while with the kernel lock free (`stalled_ahead`,
//!   file/mod.rs): a ticket, or the holder's byte of a waiter stopped the instant it was granted it.
//!
//! Why a holder's byte rather than the head of the queue blocking on the kernel lock: the head
//! would be decided when it started blocking, and a better-ranked waiter arriving during the
//! hold would then race it in the kernel's unordered wake-up. With the holder's byte the head is
//! decided when the lock comes free, as in the lock table.
//!
//! OFD locks (not POSIX `F_SETLK` locks, which belong to a process): two handles of one process
//! must be able to wait for each other (a waiting thread's ticket and the same process's fast
//! path), and closing any descriptor of a file must not drop a process's locks on it. Linux only;
//! elsewhere the queue is off (fairness as the kernel's wake-up gives it).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use super::os_lock;
use crate::backend::{LockMode, AGING_STEP};

/// Held exclusively by the lock's holder for its whole hold.
const HOLDER_BYTE: i64 = 0;
/// Keys start here: above the holder's byte, and positive whatever the priority and the clock.
const BIAS: i64 = 1 << 62;
/// The first span of keys below a waiter's own searched for the one just ahead: about a
/// millisecond of arrivals.
const NEAR_KEYS: i64 = 1 << 20;
/// The priority range that ranks across processes: beyond it a priority counts as its bound.
/// A million steps of a second (11.6 days of aging) keeps every key within 2^50 of `BIAS +
/// arrival`; this process's own queue still ranks by the exact value.
pub const PRIORITY_LIMIT: f64 = 1e6;

/// The rank of a waiter of `priority` that arrived at `arrival`: smaller is served first.
pub fn key(priority: f64, arrival: Instant) -> i64 {
  let step_ns = AGING_STEP.as_nanos() as f64;
  let boost = priority.clamp(-PRIORITY_LIMIT, PRIORITY_LIMIT) * step_ns;
  BIAS + monotonic_ns(arrival) - boost as i64
}

/// `at` on CLOCK_MONOTONIC, in ns. `Instant` reads that clock on Linux but does not show its
/// value, so the clock is read once beside an `Instant` and every other `Instant` is placed from
/// there: the key of one arrival is then the same each time it is computed.
fn monotonic_ns(at: Instant) -> i64 {
  static ANCHOR: LazyLock<(Instant, i64)> = LazyLock::new(|| {
    let now = Instant::now();
    let clock = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
      .map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
    (now, clock)
  });
  let (anchor, anchor_ns) = *ANCHOR;
  if at >= anchor {
    anchor_ns + (at - anchor).as_nanos() as i64
  } else {
    anchor_ns - (anchor - at).as_nanos() as i64
  }
}

/// One open file description of a lock's queue file. Its locks belong to it: a process uses one
/// for its tickets and its hold, another to wait for its turn.
#[derive(Debug)]
pub struct QueueFile {
  file: File,
  path: PathBuf,
  dev: u64,
  ino: u64,
  /// The ticket a holder that came through the queue keeps until its release (`hold_at`).
  kept: Option<i64>,
}

impl QueueFile {
  /// The queue of a lock file, made if it does not exist yet.
  pub fn open(lock_path: &Path) -> Option<QueueFile> {
    QueueFile::at(lock_path, true)
  }

  /// The queue of a lock file, if it has one.
  pub fn existing(lock_path: &Path) -> Option<QueueFile> {
    QueueFile::at(lock_path, false)
  }

  fn at(lock_path: &Path, create: bool) -> Option<QueueFile> {
    let mut name = lock_path.as_os_str().to_os_string();
    name.push(".wait");
    let path = PathBuf::from(name);
    // Read and write: an exclusive byte-range lock needs a descriptor open for writing.
    let file = OpenOptions::new()
      .read(true)
      .write(true)
      .create(create)
      .mode(0o666)
      .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
      .open(&path)
      .ok()?;
    let meta = file.metadata().ok()?;
    Some(QueueFile {
      file,
      path,
      dev: meta.dev(),
      ino: meta.ino(),
      kept: None,
    })
  }

  /// Whether the path still names this queue file: a process tidying up may have removed it
  /// (only ever while nobody holds a lock on it: [`QueueFile::remove_if_unused`]).
  pub fn still_at_path(&self) -> bool {
    os_lock::names_inode(&self.path, self.dev, self.ino)
  }

  /// Whether `other` is a handle on the same queue file.
  pub fn same_file(&self, other: &QueueFile) -> bool {
    self.dev == other.dev && self.ino == other.ino
  }

  /// Whether another handle (another process, or another thread of ours) holds a lock on the
  /// queue that a newcomer in `mode` must queue behind: a holder, a waiter, or one passing its
  /// turn. Readers' shared holder's bytes do not stop a reader, so consecutive readers pass one
  /// after another; tickets are exclusive and stop everyone. An error counts as nobody (fairness
  /// only).
  pub fn others_queued(&self, mode: LockMode) -> bool {
    matches!(self.conflict(kind(mode), 0, 0), Ok(Some(_)))
  }

  /// Marks us as the lock's holder in `mode` (readers together, a writer alone); called right
  /// after taking the kernel lock. A failure only costs fairness: waiters then stop at the
  /// kernel lock, in its wake-up order.
  pub fn hold(&self, mode: LockMode) {
    let _ = self.set(kind(mode), HOLDER_BYTE, 1, false);
  }

  /// [`QueueFile::hold`] for a waiter whose turn came at `ticket`, which it keeps until
  /// [`QueueFile::unhold`]: the waiter behind it waits on that ticket, so it wakes once, when
  /// we are done, rather than once when we take the lock and again when we give it up. A
  /// reader's ticket turns shared, so that readers behind it pass as they pass its byte 0.
  pub fn hold_at(&mut self, ticket: i64, mode: LockMode) {
    self.hold(mode);
    if mode == LockMode::Shared {
      let _ = self.set(libc::F_RDLCK, ticket, 1, false);
    }
    self.kept = Some(ticket);
  }

  /// Called right after giving the kernel lock up: the best-ranked waiter's turn comes. The
  /// holder's byte and a kept ticket go in one call (this handle holds nothing between them),
  /// so the waiter the ticket wakes finds the way clear.
  pub fn unhold(&mut self) {
    let end = self
      .kept
      .take()
      .map_or(HOLDER_BYTE + 1, |ticket| ticket + 1);
    let _ = self.set(libc::F_UNLCK, HOLDER_BYTE, end - HOLDER_BYTE, false);
  }

  /// Takes a ticket at `key`, or at the first free key after it; returns the ticket's key.
  pub fn line_up(&self, key: i64) -> io::Result<i64> {
    let mut key = key;
    loop {
      match self.set(libc::F_WRLCK, key, 1, false) {
        Ok(()) => return Ok(key),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
          match self.conflict(libc::F_WRLCK, key, 1)? {
            // Another waiter's ticket at the same key: the next byte.
            Some(lock) if lock.l_start == key && lock.l_len == 1 => key += 1,
            // A waiter passing its turn (it gives the range back at once) or a process removing
            // the queue file (the caller then finds the path changed): wait for it to finish.
            Some(_) => {
              self.set_blocking(libc::F_WRLCK, key, 1)?;
              return Ok(key);
            }
            None => {}
          }
        }
        Err(e) => return Err(e),
      }
    }
  }

  /// Gives a ticket back.
  pub fn leave(&self, ticket: i64) {
    let _ = self.set(libc::F_UNLCK, ticket, 1, false);
  }

  /// Blocks until every waiter ranked ahead of `ticket` has left and no holder is in the way
  /// of `mode` (a reader waits for a writer only, a writer for any holder); a dead waiter leaves
  /// at once (the kernel drops its locks). `false`: a signal interrupted the wait (a deadline,
  /// or the periodic look for stopped waiters, see `stalled_ahead`), to be resumed by the caller
  /// with the ticket kept. Called on a handle other than the ticket's: one description's own
  /// locks never conflict with each other.
  ///
  /// Each wait is for the one lock in our way that goes next: the nearest ticket ahead (a
  /// holder's kept one included), or the holder's byte when no ticket is ahead. So a handoff
  /// wakes the next waiter only, whatever the length of the queue. A single blocking request over
  /// `[0, ticket)` would say the same in one call, but the kernel chains such overlapping
  /// requests and wakes the whole chain each time the head re-blocks: measured at P=16, about 28
  /// context switches per update.
  pub fn wait_turn(&self, ticket: i64, mode: LockMode) -> io::Result<bool> {
    // What the last wait was granted, kept until the next look: that look's range covers it,
    // so a turn that comes costs one call to give everything back.
    let mut waited: Option<(i64, i64)> = None;
    loop {
      match self.set(kind(mode), HOLDER_BYTE, ticket - HOLDER_BYTE, false) {
        Ok(()) => {
          return self
            .set(libc::F_UNLCK, HOLDER_BYTE, ticket - HOLDER_BYTE, false)
            .map(|()| true)
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {}
        Err(e) => return Err(e),
      }
      // Not our turn yet: what we were granted must not stand in the way of waiters ahead.
      if let Some((start, len)) = waited.take() {
        let _ = self.set(libc::F_UNLCK, start, len, false);
      }
      // The wait is on one lock only, the holder's or our predecessor's: waiters' requests then
      // never overlap, and the kernel chains none of them.
      let (start, len) = self
        .nearest_ahead(ticket, mode)?
        .unwrap_or((HOLDER_BYTE, 1));
      match self.set(kind(mode), start, len, true) {
        Ok(()) => {
          waited = Some((start, len));
          // Granted the lock in our way (the holder's byte, or a ticket ahead), not yet looked again.
          crate::failpoint!("queue::way_granted");
        }
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(false),
        Err(e) => return Err(e),
      }
    }
  }

  /// The lock in `mode`'s way between the holder's byte and `ticket` that ends last (a waiter's
  /// ticket, a holder's kept one, or a turn being taken), clipped to that span, as `(start,
  /// len)`: the next one to leave before our turn can come. A look (`F_OFD_GETLK`) names only
  /// the first lock of a range in the kernel's list, which is about arrival order, so the
  /// search narrows the range from below first, doubling from [`NEAR_KEYS`] under our key (the
  /// waiter just ahead usually lined up within the last millisecond or so), then walks up from
  /// the lock it found, one look per lock left in between.
  fn nearest_ahead(&self, ticket: i64, mode: LockMode) -> io::Result<Option<(i64, i64)>> {
    let lowest = HOLDER_BYTE + 1;
    if ticket <= lowest
      || self
        .conflict(kind(mode), lowest, ticket - lowest)?
        .is_none()
    {
      return Ok(None);
    }
    let mut width = NEAR_KEYS;
    let mut from = loop {
      let from = ticket.saturating_sub(width).max(lowest);
      if from == lowest || self.conflict(kind(mode), from, ticket - from)?.is_some() {
        break from;
      }
      width = width.saturating_mul(2);
    };
    let mut nearest = None;
    while from < ticket {
      let Some(lock) = self.conflict(kind(mode), from, ticket - from)? else {
        break;
      };
      let start = lock.l_start.max(HOLDER_BYTE + 1);
      let end = if lock.l_len == 0 {
        ticket
      } else {
        (lock.l_start + lock.l_len).min(ticket)
      };
      nearest = Some((start, end - start));
      from = end.max(from + 1);
    }
    Ok(nearest)
  }

  /// The first lock in the way of `ticket`: the holder's byte, else a ticket ranked ahead (by its
  /// key). Seen twice over a while, the same one is not moving: a stopped process (a dead one
  /// would have left at once), which the waiter behind stops waiting for. The holder's byte is
  /// also held, for an instant, by the waiter whose turn is coming (it is granted the byte as the
  /// holder gives it up, and looks again before taking the kernel lock): the caller tells such a
  /// waiter, stopped there, from a holder by the kernel lock, which only a holder has.
  pub fn stalled_ahead(&self, ticket: i64) -> Option<Ahead> {
    match self.conflict(libc::F_WRLCK, HOLDER_BYTE, 1) {
      Ok(None) => {}
      Ok(Some(_)) => return Some(Ahead::Holder),
      Err(_) => return None,
    }
    let ahead = self.conflict(libc::F_WRLCK, HOLDER_BYTE + 1, ticket - HOLDER_BYTE - 1);
    ahead.ok().flatten().map(|lock| Ahead::Ticket(lock.l_start))
  }

  /// Removes the queue file if nobody holds a lock on it (process exit, cleanup): under an
  /// exclusive lock on the whole file, so that a newcomer's ticket either stops the removal or
  /// waits for it and then sees the path changed. Closing the handle drops that lock.
  pub fn remove_if_unused(self) {
    if self.set(libc::F_WRLCK, 0, 0, false).is_ok() && self.still_at_path() {
      let _ = fs::remove_file(&self.path);
    }
  }

  fn set_blocking(&self, kind: libc::c_int, start: i64, len: i64) -> io::Result<()> {
    loop {
      match self.set(kind, start, len, true) {
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
        other => return other,
      }
    }
  }

  fn set(&self, kind: libc::c_int, start: i64, len: i64, wait: bool) -> io::Result<()> {
    ofd::set(&self.file, &range(kind, start, len), wait)
  }

  /// The first lock of another description that would conflict with `kind` over the range.
  fn conflict(&self, kind: libc::c_int, start: i64, len: i64) -> io::Result<Option<libc::flock>> {
    let mut probe = range(kind, start, len);
    ofd::get(&self.file, &mut probe)?;
    Ok((probe.l_type != libc::F_UNLCK as libc::c_short).then_some(probe))
  }
}

/// What [`QueueFile::stalled_ahead`] found first in a waiter's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
  /// The holder's byte.
  Holder,
  /// A ticket ahead, by its key.
  Ticket(i64),
}

/// The byte-range lock type of `mode`.
fn kind(mode: LockMode) -> libc::c_int {
  match mode {
    LockMode::Exclusive => libc::F_WRLCK,
    LockMode::Shared => libc::F_RDLCK,
  }
}

/// A byte range from `start`, `len` bytes long (0: to the end of the file and beyond).
fn range(kind: libc::c_int, start: i64, len: i64) -> libc::flock {
  // SAFETY: `flock` is plain data (integers); all zeroes is a valid value.
  let mut lock: libc::flock = unsafe { std::mem::zeroed() };
  lock.l_type = kind as libc::c_short;
  lock.l_whence = libc::SEEK_SET as libc::c_short;
  lock.l_start = start;
  lock.l_len = len;
  lock
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod ofd {
  use nix::fcntl::{fcntl, FcntlArg};
  use std::fs::File;
  use std::io;

  pub fn set(file: &File, lock: &libc::flock, wait: bool) -> io::Result<()> {
    let arg = if wait {
      FcntlArg::F_OFD_SETLKW(lock)
    } else {
      FcntlArg::F_OFD_SETLK(lock)
    };
    fcntl(file, arg).map(drop).map_err(io::Error::from)
  }

  pub fn get(file: &File, lock: &mut libc::flock) -> io::Result<()> {
    fcntl(file, FcntlArg::F_OFD_GETLK(lock))
      .map(drop)
      .map_err(io::Error::from)
  }
}

/// No OFD locks here: every call fails, and the file backend then waits without a queue.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod ofd {
  use std::fs::File;
  use std::io;

  pub fn set(_: &File, _: &libc::flock, _: bool) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
  }

  pub fn get(_: &File, _: &mut libc::flock) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_support::temp_dir;
  use std::time::Duration;

  fn queue_of(name: &str) -> (PathBuf, QueueFile) {
    let lock = temp_dir("queue").join(format!("{name}.lock"));
    let queue = QueueFile::open(&lock).unwrap();
    (lock, queue)
  }

  /// Whether a waiter holding `ticket` would be served now (nobody holds or ranks ahead of it).
  fn turn_now(queue: &QueueFile, ticket: i64) -> bool {
    queue.conflict(libc::F_RDLCK, 0, ticket).unwrap().is_none()
  }

  #[test]
  fn keys_rank_as_the_lock_table_does() {
    let now = Instant::now();
    let ago = |seconds: f64| now - Duration::from_secs_f64(seconds);
    // Higher priority first; among equals, arrival order.
    assert!(key(5.0, now) < key(0.0, ago(1.0)));
    assert!(key(0.0, ago(2.0)) < key(0.0, ago(1.0)));
    // Aging: priority 0 waiting 3.5 steps (3.5) passes priority 3 arriving now (3), not priority
    // 4 that came half a step ago (4.5): the lock table's own example.
    assert!(key(0.0, ago(3.5)) < key(3.0, now));
    assert!(key(4.0, ago(0.5)) < key(0.0, ago(3.5)));
    // The same arrival gives the same key each time; priorities beyond the limit are clamped.
    assert_eq!(key(1.5, ago(1.0)), key(1.5, ago(1.0)));
    assert_eq!(key(1e300, now), key(PRIORITY_LIMIT, now));
    assert!(key(-PRIORITY_LIMIT, now) > HOLDER_BYTE && key(PRIORITY_LIMIT, now) > HOLDER_BYTE);
  }

  #[test]
  fn equal_keys_take_the_next_byte_and_a_closed_handle_leaves_at_once() {
    let (lock, first) = queue_of("collide");
    let second = QueueFile::open(&lock).unwrap();
    let checker = QueueFile::open(&lock).unwrap();
    let key = key(0.0, Instant::now());
    assert!(!checker.others_queued(LockMode::Exclusive));
    assert_eq!(first.line_up(key).unwrap(), key);
    assert_eq!(second.line_up(key).unwrap(), key + 1);
    assert!(checker.others_queued(LockMode::Exclusive));
    assert!(turn_now(&checker, key) && !turn_now(&checker, key + 1));
    // Closing the description (what the kernel does for a process that dies) frees its place.
    drop(first);
    assert!(turn_now(&checker, key + 1));
    second.leave(key + 1);
    assert!(!checker.others_queued(LockMode::Exclusive));
  }

  /// The wait of each waiter is on the ticket just ahead of its own, however far back in keys
  /// (arrival time) that one lined up, and on nothing when none is ahead.
  #[test]
  fn the_ticket_just_ahead_is_found_near_or_far() {
    let (lock, checker) = queue_of("nearest");
    let base = key(0.0, Instant::now());
    let ahead = [0, 10, 5_000_000, 1 << 30, 1 << 45];
    let holders: Vec<QueueFile> = ahead
      .iter()
      .map(|offset| {
        let holder = QueueFile::open(&lock).unwrap();
        assert_eq!(holder.line_up(base + offset).unwrap(), base + offset);
        holder
      })
      .collect();
    for mode in [LockMode::Exclusive, LockMode::Shared] {
      assert_eq!(checker.nearest_ahead(base, mode).unwrap(), None);
      for (i, offset) in ahead.iter().enumerate().skip(1) {
        let previous = base + ahead[i - 1];
        let behind = base + offset;
        assert_eq!(
          checker.nearest_ahead(behind, mode).unwrap(),
          Some((previous, 1))
        );
        assert_eq!(
          checker.nearest_ahead(behind + 7, mode).unwrap(),
          Some((behind, 1))
        );
      }
    }
    drop(holders);
    assert_eq!(
      checker
        .nearest_ahead(base + (1 << 46), LockMode::Exclusive)
        .unwrap(),
      None
    );
  }

  #[test]
  fn a_turn_waits_for_the_holder_and_better_ranks_only() {
    let (lock, mut holder) = queue_of("turn");
    let (mut early, late, gate) = (
      QueueFile::open(&lock).unwrap(),
      QueueFile::open(&lock).unwrap(),
      QueueFile::open(&lock).unwrap(),
    );
    let (k_early, k_late) = (key(0.0, Instant::now()), key(0.0, Instant::now()) + 10);
    holder.hold(LockMode::Exclusive);
    early.line_up(k_early).unwrap();
    late.line_up(k_late).unwrap();
    assert!(!turn_now(&gate, k_early), "the holder's byte comes first");
    holder.unhold();
    assert!(turn_now(&gate, k_early) && !turn_now(&gate, k_late));
    // The early waiter's turn: granted at once, and given back (nothing left behind); it then
    // holds with its ticket kept, and its release clears both.
    assert!(gate.wait_turn(k_early, LockMode::Exclusive).unwrap());
    early.hold_at(k_early, LockMode::Exclusive);
    assert!(!turn_now(&gate, k_late), "the new holder comes first");
    early.unhold();
    assert!(turn_now(&gate, k_late));
  }

  #[test]
  fn a_killed_waiter_leaves_the_queue_at_once() {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, pipe, read, write, ForkResult};
    let (lock, mine) = queue_of("killed");
    let theirs = QueueFile::open(&lock).unwrap();
    let gate = QueueFile::open(&lock).unwrap();
    let k = key(0.0, Instant::now());
    let (ready_r, ready_w) = pipe().unwrap();
    // SAFETY: the child only makes system calls (no allocation, no locks) until it is killed.
    match unsafe { fork() }.unwrap() {
      ForkResult::Child => {
        let ok = theirs.line_up(k).is_ok();
        let _ = write(&ready_w, &[u8::from(ok)]);
        loop {
          nix::unistd::pause();
        }
      }
      ForkResult::Parent { child } => {
        drop(theirs);
        let mut byte = [0u8];
        assert_eq!(read(&ready_r, &mut byte).unwrap(), 1);
        assert_eq!(byte[0], 1);
        // The child's ticket stands: ours goes behind it, and our turn has not come.
        assert_eq!(mine.line_up(k).unwrap(), k + 1);
        assert!(!turn_now(&gate, k + 1));
        kill(child, Signal::SIGKILL).unwrap();
        waitpid(child, None).unwrap();
        assert!(gate.wait_turn(k + 1, LockMode::Exclusive).unwrap());
        mine.leave(k + 1);
      }
    }
  }

  /// The voluntary context switches of a process so far, once it is asleep in `fcntl` (a
  /// blocking lock request): read from /proc, waiting for that state if it is not there yet.
  fn switches_once_blocked(pid: nix::unistd::Pid) -> u64 {
    let in_fcntl = format!("{} ", libc::SYS_fcntl);
    let give_up = Instant::now() + Duration::from_secs(30);
    while Instant::now() < give_up {
      let syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
      if syscall.starts_with(&in_fcntl) {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
          .lines()
          .find(|l| l.starts_with("voluntary_ctxt_switches:"));
        return line
          .unwrap()
          .split_whitespace()
          .nth(1)
          .unwrap()
          .parse()
          .unwrap();
      }
      std::thread::sleep(Duration::from_millis(1));
    }
    let syscall = fs::read_to_string(format!("/proc/{pid}/syscall"));
    panic!("process {pid} did not block in fcntl within 30 s: {syscall:?}");
  }

  /// A handoff wakes the next waiter only, never the rest of the queue, and a waiter's turn
  /// wakes nobody: the waiter behind waits on the ticket the holder keeps. (A blocking request
  /// over `[0, ticket)` per waiter let the kernel chain the requests and wake them all, one after
  /// another, on every handoff.) Counted in each waiting process's context switches.
  #[test]
  fn a_handoff_wakes_only_the_next_waiter() {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, pipe, read, write, ForkResult, Pid};
    use std::os::fd::OwnedFd;
    struct Waiter {
      pid: Pid,
      said: OwnedFd,
      go: OwnedFd,
    }
    let (lock, mut holder) = queue_of("chain");
    holder.hold(LockMode::Exclusive);
    let first = key(0.0, Instant::now());
    let mut waiters: Vec<Waiter> = Vec::new();
    for i in 0..5 {
      let (mut ticket, turn) = (
        QueueFile::open(&lock).unwrap(),
        QueueFile::open(&lock).unwrap(),
      );
      let (said_r, said_w) = pipe().unwrap();
      let (go_r, go_w) = pipe().unwrap();
      // SAFETY: the child only makes system calls (no allocation, no locks) until it is killed.
      match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
          // Dies with the test's thread, should an assertion end it first.
          let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
          let place = ticket.line_up(first + i).unwrap();
          let _ = write(&said_w, b"q");
          if matches!(turn.wait_turn(place, LockMode::Exclusive), Ok(true)) {
            ticket.hold_at(place, LockMode::Exclusive);
            let _ = write(&said_w, b"t");
            let _ = read(&go_r, &mut [0u8]);
            ticket.unhold();
          }
          loop {
            nix::unistd::pause();
          }
        }
        ForkResult::Parent { child } => {
          let mut byte = [0u8];
          assert_eq!(read(&said_r, &mut byte).unwrap(), 1);
          assert_eq!(&byte, b"q");
          waiters.push(Waiter {
            pid: child,
            said: said_r,
            go: go_w,
          });
        }
      }
    }
    let switches = |from: usize| -> Vec<u64> {
      waiters[from..]
        .iter()
        .map(|w| switches_once_blocked(w.pid))
        .collect()
    };
    let served = |w: &Waiter| {
      let mut byte = [0u8];
      read(&w.said, &mut byte).unwrap() == 1 && &byte == b"t"
    };
    let before = switches(1);
    // The holder gives the lock up: the first in line is served; nobody else stirs.
    holder.unhold();
    assert!(served(&waiters[0]), "the first in line is served");
    let after_first = switches(1);
    // The first gives it up: the second is served; nobody further back stirs.
    write(&waiters[0].go, b"g").unwrap();
    assert!(served(&waiters[1]), "the second in line is served next");
    let after_second = switches(2);
    for w in &waiters {
      kill(w.pid, Signal::SIGKILL).unwrap();
      waitpid(w.pid, None).unwrap();
    }
    assert_eq!(after_first, before, "a turn woke waiters behind it");
    assert_eq!(
      after_second,
      before[1..],
      "a handoff woke waiters further back"
    );
  }

  #[test]
  fn the_queue_file_is_removed_only_when_unused() {
    let (lock, queue) = queue_of("remove");
    let waiter = QueueFile::open(&lock).unwrap();
    let k = key(0.0, Instant::now());
    waiter.line_up(k).unwrap();
    queue.remove_if_unused();
    assert!(waiter.still_at_path());
    waiter.leave(k);
    QueueFile::existing(&lock).unwrap().remove_if_unused();
    assert!(!waiter.still_at_path());
    assert!(QueueFile::existing(&lock).is_none());
  }
}
