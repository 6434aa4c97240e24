//! Dangerous instants of the core, reached with failpoints (`--features failpoints`) in this
//! process: each test holds one thread exactly at the instant issue 9 names, does what another
//! process could do meanwhile, and checks that no data or lock record is lost. The tests of this
//! binary run one at a time: failpoints and the lock table are process-wide.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowforge_lock::backend::LockMode;
use flowforge_lock::file::os_lock::{LockFile, TryLock};
use flowforge_lock::heartbeat;
use flowforge_lock::identity;
use flowforge_lock::lock_table::{self, AcquireOptions};
use flowforge_lock::paths::Target;
use flowforge_lock::record::{Contents, LockRecord};
use flowforge_lock::store;

static SERIAL: Mutex<()> = Mutex::new(());
const WAIT: Duration = Duration::from_secs(30);

fn serial() -> std::sync::MutexGuard<'static, ()> {
  SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn project() -> PathBuf {
  static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
  let dir = std::env::temp_dir().join(format!(
    "ffl-failpoints-{}-{}",
    std::process::id(),
    NEXT.fetch_add(1, Ordering::Relaxed)
  ));
  std::fs::create_dir_all(dir.join(".flowforge")).unwrap();
  dir
}

fn hold(file: &Path) -> (Target, String) {
  let target = lock_table::prepare(file.to_str().unwrap()).unwrap();
  let options = AcquireOptions {
    priority: 0.0,
    timeout: Some(Duration::ZERO),
    stale_after: Duration::from_secs(30),
    mode: Default::default(),
    owner: lock_table::NO_OWNER,
  };
  let id = lock_table::try_acquire(&target, &options).unwrap().unwrap();
  (target, id)
}

/// Makes `name` stop the thread that reaches it, once: returns (reached, resume).
fn pause_once(name: &str) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
  let (reached, at) = mpsc::channel();
  let (resume, go) = mpsc::channel::<()>();
  let go = Mutex::new(go);
  let fired = AtomicBool::new(false);
  fail::cfg_callback(name, move || {
    if !fired.swap(true, Ordering::SeqCst) {
      reached.send(()).unwrap();
      go.lock().unwrap().recv().unwrap();
    }
  })
  .unwrap();
  (at, resume)
}

/// Hole 1: the heartbeat checked "still ours", then wrote after the lock table let go; a release
/// and another process's claim in between had their record overwritten by the stale heartbeat.
/// The heartbeat is held between its check and its write while the lock is released and another
/// holder (another open file description, as another process has) claims it.
#[test]
fn a_heartbeat_never_writes_over_the_next_holders_record() {
  let _serial = serial();
  let dir = project();
  let (target, id) = hold(&dir.join(".flowforge/tasks.json"));
  let (reached, resume) = pause_once("heartbeat::before_write");
  heartbeat::set_interval(Duration::from_millis(10));
  reached
    .recv_timeout(WAIT)
    .expect("the heartbeat reached its write");

  let releasing = target.clone();
  let releaser =
    std::thread::spawn(move || lock_table::release(releasing.file.to_str().unwrap(), &id).unwrap());
  let lock_path = target.lock_path.clone();
  let (claimed, successor_claimed) = mpsc::channel();
  let successor = std::thread::spawn(move || loop {
    if let TryLock::Locked(mut lock) = LockFile::try_acquire(&lock_path, None).unwrap() {
      let len = lock.read_raw().unwrap().len();
      let record = LockRecord::new_for(identity::current(), "successor", "/next", 1);
      lock.write_record(&record, len).unwrap();
      claimed.send(()).unwrap();
      return lock;
    }
    std::thread::yield_now();
  });
  // Before the fix the successor claims at once; after it, not until the heartbeat is done.
  let _ = successor_claimed.recv_timeout(Duration::from_millis(300));
  fail::remove("heartbeat::before_write");
  resume.send(()).unwrap();
  assert!(releaser.join().unwrap());
  let successor = successor.join().unwrap();
  heartbeat::set_interval(Duration::from_millis(heartbeat::DEFAULT_INTERVAL_MS));
  match successor.read() {
    Contents::Record(r) => assert_eq!(r.lock_id.as_deref(), Some("successor")),
    other => panic!("the successor's record was overwritten: {other:?}"),
  }
}

/// Hole 4: a failed directory sync after a successful rename is not a failed write: the new
/// content is in place, and the error must say so (ENOTDURABLE), so nobody retries blindly.
#[test]
fn a_failed_directory_sync_after_the_rename_says_written() {
  let _serial = serial();
  let path = project().join(".flowforge/tasks.json");
  std::fs::write(&path, "old").unwrap();
  fail::cfg("store::dir_sync", "return(5)").unwrap();
  let result = store::write_atomic(&path, "new", || Ok(()));
  fail::remove("store::dir_sync");
  let err = result.unwrap_err();
  assert_eq!(err.code, "ENOTDURABLE");
  assert!(err.message.contains("was written"), "{}", err.message);
  assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
}

/// At exit every queued wait is settled (ELOCKCANCELLED), not dropped to hang for ever.
#[test]
fn release_all_settles_every_queued_wait() {
  let _serial = serial();
  let dir = project();
  let (target, _id) = hold(&dir.join(".flowforge/sessions.json"));
  let (done, outcome) = mpsc::channel();
  lock_table::acquire(
    target,
    AcquireOptions {
      priority: 0.0,
      timeout: None,
      stale_after: Duration::from_secs(30),
      mode: Default::default(),
      owner: lock_table::NO_OWNER,
    },
    Box::new(move |result| done.send(result).unwrap()),
  );
  assert_eq!(lock_table::release_all(), 1);
  let err = outcome.recv_timeout(WAIT).unwrap().unwrap_err();
  assert_eq!(err.code, "ELOCKCANCELLED");
}

/// A lock found lost while held is reported once to the listener (the JS layer's AbortSignal).
#[test]
fn a_lock_lost_while_held_is_reported() {
  let _serial = serial();
  let dir = project();
  let (target, id) = hold(&dir.join(".flowforge/lost.json"));
  let heard = Arc::new(Mutex::new(Vec::new()));
  let (told, reported) = mpsc::channel();
  let log = heard.clone();
  let told = Mutex::new(told);
  lock_table::on_lost(lock_table::NO_OWNER, move |lock_id, _file, why| {
    log
      .lock()
      .unwrap()
      .push((lock_id.to_string(), why.to_string()));
    let _ = told.lock().unwrap().send(());
  });
  std::fs::remove_file(&target.lock_path).unwrap();
  heartbeat::set_interval(Duration::from_millis(10));
  reported.recv_timeout(WAIT).expect("the loss was reported");
  heartbeat::set_interval(Duration::from_millis(heartbeat::DEFAULT_INTERVAL_MS));
  let heard = heard.lock().unwrap().clone();
  assert_eq!(heard.len(), 1);
  assert_eq!(heard[0].0, id);
  assert!(heard[0].1.contains("removed or replaced"), "{}", heard[0].1);
  assert_eq!(
    lock_table::verify_held(&target, &id).unwrap_err().code,
    "ELOCKLOST"
  );
  lock_table::release(target.file.to_str().unwrap(), &id).unwrap();
}

fn waiting(mode: LockMode, priority: f64, timeout: Option<Duration>) -> AcquireOptions {
  AcquireOptions {
    priority,
    timeout,
    stale_after: Duration::from_secs(30),
    mode,
    owner: lock_table::NO_OWNER,
  }
}

type Outcome = mpsc::Receiver<flowforge_lock::error::Result<String>>;

/// Queues a wait in this process's lock table; its answer arrives on the receiver.
fn queue(target: &Target, options: AcquireOptions) -> Outcome {
  let (done, outcome) = mpsc::channel();
  lock_table::acquire(
    target.clone(),
    options,
    Box::new(move |result| done.send(result).unwrap()),
  );
  outcome
}

/// Whether another process's reader (another open file description) could hold the lock now.
fn a_reader_elsewhere_could_hold(target: &Target) -> bool {
  match LockFile::try_acquire_as(&target.lock_path, None, LockMode::Shared).unwrap() {
    TryLock::Locked(lock) => {
      lock.unlock();
      true
    }
    TryLock::Busy(_) => false,
  }
}

/// Another process holds the lock: returns its handle, to let go when the test is ready.
fn held_elsewhere(target: &Target) -> LockFile {
  match LockFile::try_acquire(&target.lock_path, None).unwrap() {
    TryLock::Locked(lock) => lock,
    TryLock::Busy(_) => panic!("{} is free at first", target.lock_path.display()),
  }
}

/// The waiting thread claims the lock for the writer heading the queue; the writer's deadline
/// passes mid-claim. The exclusive grant must not go to the reader queued behind it (recorded
/// as a read lock, it would shut other processes' readers out while it lasts).
#[test]
fn a_writers_grant_is_never_handed_to_a_reader() {
  let _serial = serial();
  let dir = project();
  let target = lock_table::prepare(dir.join(".flowforge/tasks.json").to_str().unwrap()).unwrap();
  let other = held_elsewhere(&target);
  let (reached, resume) = pause_once("claim::judged");
  let writer = queue(
    &target,
    waiting(LockMode::Exclusive, 0.0, Some(Duration::from_secs(5))),
  );
  let reader = queue(&target, waiting(LockMode::Shared, 0.0, None));
  other.unlock();
  reached
    .recv_timeout(WAIT)
    .expect("the claim for the writer begins");
  assert!(
    writer.try_recv().is_err(),
    "inconclusive: the writer timed out before its claim began"
  );
  assert_eq!(
    writer.recv_timeout(WAIT).unwrap().unwrap_err().code,
    "ELOCKTIMEOUT"
  );
  resume.send(()).unwrap();
  let reader_id = reader
    .recv_timeout(WAIT)
    .unwrap()
    .expect("the reader is granted");
  fail::remove("claim::judged");
  let beside = a_reader_elsewhere_could_hold(&target);
  let record = std::fs::read_to_string(&target.lock_path).unwrap();
  lock_table::release(target.file.to_str().unwrap(), &reader_id).unwrap();
  assert!(
    beside,
    "another process's reader is shut out by a read lock"
  );
  assert!(
    !record.contains(&reader_id),
    "a writer's record stands for a reader: {record}"
  );
}

/// The waiting thread claims a read lock for the reader heading the queue; a writer of higher
/// priority joins meanwhile. The shared grant must not go to the writer: recorded as exclusive,
/// it would let the writer commit beside other processes' readers.
#[test]
fn a_readers_grant_is_never_handed_to_a_writer() {
  let _serial = serial();
  let dir = project();
  let target = lock_table::prepare(dir.join(".flowforge/tasks.json").to_str().unwrap()).unwrap();
  let other = held_elsewhere(&target);
  let (reached, resume) = pause_once("claim::shared_judged");
  let reader = queue(&target, waiting(LockMode::Shared, 0.0, None));
  other.unlock();
  reached
    .recv_timeout(WAIT)
    .expect("the claim for the reader begins");
  let writer = queue(&target, waiting(LockMode::Exclusive, 10.0, None));
  resume.send(()).unwrap();
  let writer_id = writer
    .recv_timeout(WAIT)
    .unwrap()
    .expect("the writer is granted");
  fail::remove("claim::shared_judged");
  let beside = a_reader_elsewhere_could_hold(&target);
  let verified = lock_table::verify_held(&target, &writer_id).is_ok();
  let record = std::fs::read_to_string(&target.lock_path).unwrap();
  lock_table::release(target.file.to_str().unwrap(), &writer_id).unwrap();
  let reader_id = reader
    .recv_timeout(WAIT)
    .unwrap()
    .expect("the reader follows");
  lock_table::release(target.file.to_str().unwrap(), &reader_id).unwrap();
  assert!(
    !beside,
    "another process's reader holds beside the writer (verified: {verified})"
  );
  assert!(
    record.contains(&writer_id),
    "the lock file does not name the writer: {record}"
  );
}
