//! flowforge-lock's native core, exported to Node through napi-rs.
//!
//! This file is only the export surface: it converts arguments and results, and turns a
//! [`LockError`] into a JS `Error` carrying its `code`; it also tells the lock table which JS
//! environment asks (and when that environment ends), and whether JS still runs there after a
//! synchronous wait. The logic lives in one module per concept, listed below.

#![deny(clippy::all)]

#[cfg(not(unix))]
compile_error!(
  "flowforge-lock's core is Unix-only for now (flock, O_NOFOLLOW, inode checks): a Windows \
   strategy (LockFileEx) is not written yet. Build on Linux or macOS."
);

pub mod backend;
pub mod config;
pub mod deadlines;
pub mod error;
pub mod etcd;
pub mod exec_child;
pub mod failpoints;
pub mod fence;
pub mod file;
#[cfg(test)]
mod fuzz_tests;
pub mod heartbeat;
pub mod identity;
pub mod lock_table;
pub mod metrics;
pub mod paths;
pub mod project;
pub mod record;
pub mod redis;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod thread_alarm;
pub mod versions;

use std::cell::Cell;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::{sys, Env, JsError};
use napi_derive::napi;
use serde_json::Value;

use backend::LockMode;
use error::LockError;
use lock_table::{AcquireOptions, Owner, NO_OWNER};

#[napi]
pub const DEFAULT_TIMEOUT: u32 = lock_table::DEFAULT_TIMEOUT_MS as u32;
#[napi]
pub const HEARTBEAT_INTERVAL: u32 = heartbeat::DEFAULT_INTERVAL_MS as u32;
#[napi]
pub const STALE_THRESHOLD: u32 = lock_table::DEFAULT_STALE_MS as u32;

/// A JS `Error` whose `code` is the core's code.
fn js_error(env: &Env, err: LockError) -> napi::Error {
  let js = JsError::from(napi::Error::new(err.code, err.message)).into_unknown(*env);
  napi::Error::from(js)
}

fn stale_after(stale_ms: Option<f64>) -> Duration {
  Duration::from_millis(stale_ms.map_or(lock_table::DEFAULT_STALE_MS, |ms| ms as u64))
}

thread_local! {
  /// The owner id of the JS environment on this thread (Node runs each environment, the main one
  /// or a worker's, on a thread of its own); `NO_OWNER` until its first lock request.
  static ENV_OWNER: Cell<Owner> = const { Cell::new(NO_OWNER) };
  /// The do-nothing JS function of the environment on this thread (see `js_still_runs`), once
  /// made: a reference that Node frees with the environment.
  static NOTHING: Cell<sys::napi_ref> = const { Cell::new(ptr::null_mut()) };
}

/// The calling environment's owner id. The first request of an environment registers a cleanup
/// hook that ends its holds and waits when the environment is torn down (a worker thread that
/// exits or is terminated, even in the middle of a wait): see `lock_table::end_owner`.
fn env_owner(env: &Env) -> Result<Owner> {
  let owner = ENV_OWNER.get();
  if owner != NO_OWNER {
    return Ok(owner);
  }
  static NEXT_OWNER: AtomicU64 = AtomicU64::new(NO_OWNER + 1);
  let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
  env.add_env_cleanup_hook(owner, |owner| {
    let _ = ENV_OWNER.try_with(|cell| cell.set(NO_OWNER));
    let _ = NOTHING.try_with(|cell| cell.set(ptr::null_mut()));
    lock_table::end_owner(owner);
  })?;
  ENV_OWNER.set(owner);
  Ok(owner)
}

fn options(
  env: &Env,
  timeout_ms: Option<f64>,
  stale_ms: Option<f64>,
  priority: Option<f64>,
  mode: Option<&str>,
) -> Result<AcquireOptions> {
  let mode = mode
    .map_or(Ok(LockMode::Exclusive), LockMode::parse)
    .map_err(|e| js_error(env, e))?;
  Ok(AcquireOptions {
    owner: env_owner(env)?,
    mode,
    priority: priority.filter(|p| p.is_finite()).unwrap_or(0.0),
    timeout: timeout_ms
      .filter(|ms| ms.is_finite())
      .map(|ms| Duration::from_millis(ms as u64)),
    stale_after: stale_after(stale_ms),
  })
}

/// One non-blocking try: the lockId, or `null` when the lock is taken. `mode`: `'exclusive'`
/// (the default) or `'shared'`. `timeoutMs`, the caller's whole wait, also bounds the one answer
/// a lock server's try may wait for here (0: no try is made here; `null`: the command timeout).
#[napi]
pub fn try_acquire(
  env: Env,
  file: String,
  stale_ms: Option<f64>,
  priority: Option<f64>,
  mode: Option<String>,
  timeout_ms: Option<f64>,
) -> Result<Option<String>> {
  let opts = options(&env, timeout_ms, stale_ms, priority, mode.as_deref())?;
  paths::prepare(&file)
    .and_then(|target| lock_table::try_acquire_here(&target, &opts))
    .map_err(|e| js_error(&env, e))
}

type LockIdResolver = Box<dyn FnOnce(Env) -> Result<String> + Send>;

/// Waits for the lock; `timeoutMs` of `null` or `Infinity` waits for ever. The promise is
/// settled straight from the thread that decided it (no async runtime in between). `waitedMs`:
/// how long the caller has waited already, in an earlier wait it asks again after (it keeps its
/// rank among the waiters: see `lock_table::acquire_since`).
#[napi(ts_return_type = "Promise<string>")]
pub fn acquire<'env>(
  env: &'env Env,
  file: String,
  timeout_ms: Option<f64>,
  stale_ms: Option<f64>,
  priority: Option<f64>,
  mode: Option<String>,
  waited_ms: Option<f64>,
) -> Result<Object<'env>> {
  let opts = options(env, timeout_ms, stale_ms, priority, mode.as_deref())?;
  let target = lock_table::prepare(&file).map_err(|e| js_error(env, e))?;
  let (deferred, promise) = env.create_deferred::<String, LockIdResolver>()?;
  let complete: lock_table::Completion = Box::new(move |outcome| {
    deferred.resolve(Box::new(move |env| outcome.map_err(|e| js_error(&env, e))))
  });
  let now = std::time::Instant::now();
  let waited = waited_ms
    .filter(|ms| ms.is_finite() && *ms > 0.0)
    .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1000.0));
  let arrival = now.checked_sub(waited).unwrap_or(now);
  lock_table::acquire_since(arrival, target, opts, complete);
  Ok(promise)
}

/// Releases a lock this process holds: `true` if released, `false` if there was nothing to
/// release; a wrong lockId throws `ELOCKMISMATCH`.
#[napi]
pub fn release(env: Env, file: String, lock_id: String) -> Result<bool> {
  lock_table::release(&file, &lock_id).map_err(|e| js_error(&env, e))
}

/// Releases every lock this process holds (exit handlers); returns how many.
#[napi]
pub fn release_all() -> u32 {
  lock_table::release_all() as u32
}

#[napi]
pub fn is_locked(env: Env, file: String, stale_ms: Option<f64>) -> Result<bool> {
  lock_table::prepare(&file)
    .and_then(|target| config::backend_for(&target)?.is_locked(&target, stale_after(stale_ms)))
    .map_err(|e| js_error(&env, e))
}

#[napi(ts_return_type = "Record<string, unknown> | null")]
pub fn get_lock_info(env: Env, file: String, stale_ms: Option<f64>) -> Result<Option<Value>> {
  let info = lock_table::prepare(&file).and_then(|target| {
    let info = config::backend_for(&target)?.lock_info(&target, stale_after(stale_ms))?;
    Ok(info.map(|info| lock_table::with_local_view(&target.lock_path, info)))
  });
  info.map_err(|e| js_error(&env, e))
}

/// The lock path that `file` is locked through (files that share it share one lock).
#[napi]
pub fn lock_key(env: Env, file: String) -> Result<String> {
  paths::resolve(&file)
    .map(|target| target.lock_path.to_string_lossy().into_owned())
    .map_err(|e| js_error(&env, e))
}

/// The descriptor a child must inherit to keep holding `lockId` (`flowforge-lock exec`), or
/// `null` when the backend has none.
#[napi]
pub fn inheritable_fd(env: Env, file: String, lock_id: String) -> Result<Option<i32>> {
  paths::file_of(&file)
    .map(|_| lock_table::inheritable_fd(&lock_id))
    .map_err(|e| js_error(&env, e))
}

/// `flowforge-lock exec` under a lock server, in the process started to run the command: becomes
/// `command`, killed by the kernel when the wrapper `parent` ends (see exec_child.rs). Returns
/// only on failure, with the code `ENOENT` (command not found), `EACCES`, `EEXEC` (exec failed
/// otherwise) or `ESRCH` (the wrapper had already ended).
#[napi]
pub fn exec_with_parent_death(
  env: Env,
  parent: u32,
  command: String,
  args: Vec<String>,
) -> Result<()> {
  Err(js_error(
    &env,
    exec_child::become_command(parent, &command, &args),
  ))
}

/// Every lock under the project root (`root` or the one found from the cwd).
#[napi(ts_return_type = "Array<Record<string, unknown>>")]
pub fn list_locks(env: Env, root: Option<String>, stale_ms: Option<f64>) -> Result<Vec<Value>> {
  let root = paths::root_for_dir(root.as_deref()).map_err(|e| js_error(&env, e))?;
  let views = config::backend_for_root(&root)
    .and_then(|backend| backend.list(&root, stale_after(stale_ms)))
    .map_err(|e| js_error(&env, e))?;
  Ok(
    views
      .into_iter()
      .map(|view| match view["lockFile"].as_str() {
        Some(lock_file) => {
          let lock_file = paths::real_lock_path(Path::new(lock_file));
          lock_table::with_local_view(&lock_file, view)
        }
        None => view,
      })
      .collect(),
  )
}

#[napi(
  ts_return_type = "{ root: string, removed: Array<Record<string, unknown>>, kept: Array<Record<string, unknown>> }"
)]
pub fn cleanup_stale_locks(
  env: Env,
  root: Option<String>,
  stale_ms: Option<f64>,
  dry_run: Option<bool>,
) -> Result<Value> {
  let root = paths::root_for_dir(root.as_deref()).map_err(|e| js_error(&env, e))?;
  let mut report = config::backend_for_root(&root)
    .and_then(|backend| backend.cleanup(&root, stale_after(stale_ms), dry_run.unwrap_or(false)))
    .map_err(|e| js_error(&env, e))?;
  report["root"] = Value::from(root.to_string_lossy());
  Ok(report)
}

/// The project root for `start` (default: the cwd): see `paths::root_for_dir`.
#[napi]
pub fn project_root(env: Env, start: Option<String>) -> Result<String> {
  paths::root_for_dir(start.as_deref())
    .map(|root| root.to_string_lossy().into_owned())
    .map_err(|e| js_error(&env, e))
}

/// The text of a protected file, `null` when it does not exist.
#[napi]
pub fn read_text(env: Env, file: String) -> Result<Option<String>> {
  paths::file_of(&file)
    .and_then(|file| store::read_text(&file))
    .map_err(|e| js_error(&env, e))
}

/// Always throws: the `EJSONPARSE` error for `text`, read from `file`, that JSON.parse refused.
#[napi]
pub fn throw_json_parse_error(env: Env, file: String, text: String, reason: String) -> Result<()> {
  Err(js_error(
    &env,
    store::json_parse_error(Path::new(&file), &text, &reason),
  ))
}

/// Atomically replaces the file, under the lock `lockId`, which must still be ours.
#[napi(ts_return_type = "Promise<void>")]
pub fn write_text_atomic<'env>(
  env: &'env Env,
  file: String,
  lock_id: String,
  text: String,
) -> Result<PromiseRaw<'env, ()>> {
  let target = lock_table::prepare(&file).map_err(|e| js_error(env, e))?;
  env.spawn_future_with_callback(
    async move {
      let written = tokio::task::spawn_blocking(move || {
        store::write_atomic(&target.file, &text, || {
          lock_table::verify_held(&target, &lock_id)
        })
      })
      .await
      .unwrap_or_else(|e| {
        Err(LockError::new(
          "ELOCKINTERNAL",
          format!("the write task failed: {e}"),
        ))
      });
      Ok(written)
    },
    |env, result| result.map_err(|e| js_error(env, e)),
  )
}

#[napi(ts_return_type = "Record<string, unknown>")]
pub fn get_lock_metrics() -> Value {
  let mut snapshot = metrics::snapshot();
  for (file, report) in snapshot.files.iter_mut() {
    let ahead = paths::resolve(file).map_or(0, |target| lock_table::ahead(&target, 0.0));
    report.adaptive_timeout_ms =
      Some(metrics::adaptive_timeout(file, ahead).as_secs_f64() * 1000.0);
  }
  serde_json::to_value(snapshot).unwrap_or(Value::Null)
}

/// `timeout: 'adaptive'` for a caller of `priority` arriving now: see `metrics::adaptive_timeout`.
#[napi]
pub fn adaptive_timeout(env: Env, file: String, priority: Option<f64>) -> Result<f64> {
  let target = lock_table::prepare(&file).map_err(|e| js_error(&env, e))?;
  let ahead = lock_table::ahead(&target, priority.unwrap_or(0.0));
  Ok(metrics::adaptive_timeout(&target.file.to_string_lossy(), ahead).as_secs_f64() * 1000.0)
}

#[napi]
pub fn reset_lock_metrics() {
  metrics::reset();
}

#[napi]
pub fn set_heartbeat_interval(ms: f64) {
  heartbeat::set_interval(Duration::from_millis(ms as u64));
}

/// Registers this JS environment's listener for the locks it took that are lost while held:
/// `(lockId, file, reason)`. It does not keep the event loop alive.
#[napi(ts_args_type = "callback: (lockId: string, file: string, reason: string) => void")]
pub fn on_lock_lost(
  env: Env,
  callback: Function<FnArgs<(String, String, String)>, ()>,
) -> Result<()> {
  let owner = env_owner(&env)?;
  let listener = callback
    .build_threadsafe_function::<FnArgs<(String, String, String)>>()
    .weak::<true>()
    .callee_handled::<false>()
    .build()?;
  lock_table::on_lost(owner, move |lock_id, file, why| {
    let args = (
      lock_id.to_string(),
      file.to_string_lossy().into_owned(),
      why.to_string(),
    );
    listener.call(args.into(), ThreadsafeFunctionCallMode::NonBlocking);
  });
  Ok(())
}

/// Why this process's hold `lockId` was found lost while held (as told to `onLockLost`), or
/// `null`: a watch begun after the loss was told.
#[napi]
pub fn lost_reason(lock_id: String) -> Option<String> {
  lock_table::lost_reason(&lock_id)
}

/// Throws `ELOCKLOST` unless this process still holds `lockId` on `file` (checked with the
/// backend, as before a commit).
#[napi]
pub fn verify_held(env: Env, file: String, lock_id: String) -> Result<()> {
  paths::resolve(&file)
    .and_then(|target| lock_table::verify_held(&target, &lock_id))
    .map(drop)
    .map_err(|e| js_error(&env, e))
}

/// `configure({ backend })`: the lock backend of every project in this process, as a URL
/// (`"file"`, `"redis://host:6379"`, …); `null` goes back to `FLOWFORGE_LOCK_BACKEND` and the
/// project's `.flowforge/lock-config.json`.
#[napi]
pub fn configure_backend(env: Env, url: Option<String>) -> Result<()> {
  config::configure(url.as_deref()).map_err(|e| js_error(&env, e))
}

/// A lock-free read (`readJSON`): the text (`null` when the file does not exist), the cache key
/// of the inode it came from, and with `withVersion` its version (see versions.rs).
#[napi(object)]
pub struct VersionedText {
  pub text: Option<String>,
  pub key: Option<String>,
  pub version: Option<f64>,
  pub foreign_write: bool,
}

#[napi]
pub fn read_versioned(env: Env, file: String, with_version: bool) -> Result<VersionedText> {
  let snapshot = paths::file_of(&file)
    .and_then(|file| versions::read(&file, with_version))
    .map_err(|e| js_error(&env, e))?;
  Ok(VersionedText {
    text: snapshot.text,
    key: snapshot.identity.map(|id| id.key()),
    version: snapshot.state.map(|s| s.version as f64),
    foreign_write: snapshot.state.is_some_and(|s| s.foreign),
  })
}

#[napi(object)]
pub struct FileVersion {
  pub version: f64,
  pub foreign_write: bool,
}

/// The file's version now (checked under the lock for `ifVersion`).
#[napi]
pub fn current_version(env: Env, file: String) -> Result<FileVersion> {
  paths::file_of(&file)
    .and_then(|file| versions::current(&file))
    .map(|s| FileVersion {
      version: s.version as f64,
      foreign_write: s.foreign,
    })
    .map_err(|e| js_error(&env, e))
}

/// Blocks the calling thread until the lock is ours (the lockId) or the timeout passes
/// (`ELOCKTIMEOUT`); the wait happens on this thread (see `acquire_on_this_thread`). Fails at once with
/// `ELOCKDEADLOCK` when this process already holds the lock, is taking it (a lock server's single
/// try) or has waiters queued for it: they need the event loop this call blocks.
#[napi]
pub fn acquire_sync(
  env: Env,
  file: String,
  timeout_ms: Option<f64>,
  stale_ms: Option<f64>,
  priority: Option<f64>,
  mode: Option<String>,
) -> Result<String> {
  let opts = options(&env, timeout_ms, stale_ms, priority, mode.as_deref())?;
  let target = paths::prepare(&file).map_err(|e| js_error(&env, e))?;
  lock_table::acquire_on_this_thread(&target, opts, &|| js_still_runs(&env))
    .map_err(|e| js_error(&env, e))
}

/// Calls `callback()`, the work done under the hold `lockId` (withLockSync's and
/// updateWithLockSync's; it catches what the work throws), and returns its result. If JS stops
/// while it runs (a `vm` timeout's watchdog), no `finally` of the caller runs and nobody will
/// ever release the hold, which the heartbeat would keep alive for the rest of the process's
/// life: it is released here.
#[napi]
pub fn call_under_hold<'env>(
  env: &'env Env,
  file: String,
  lock_id: String,
  callback: Function<'env, (), Unknown<'env>>,
) -> Result<Unknown<'env>> {
  let raw = env.raw();
  // Called through Node-API itself: napi-rs's `Function::call`, given the RangeError of a JS
  // stack already full at the callback's entry, crashed the process (SIGSEGV in V8).
  // SAFETY: Node-API calls on this environment's thread, inside its native call, with
  // out-pointers they fill in.
  unsafe {
    let (mut receiver, mut result) = (ptr::null_mut(), ptr::null_mut());
    if sys::napi_get_undefined(raw, &mut receiver) == sys::Status::napi_ok
      && sys::napi_call_function(raw, receiver, callback.raw(), 0, ptr::null(), &mut result)
        == sys::Status::napi_ok
    {
      return Ok(Unknown::from_raw_unchecked(raw, result));
    }
    // What the call threw, set aside while `js_still_runs` calls JS, then thrown again.
    let mut pending = false;
    let mut thrown = ptr::null_mut();
    if sys::napi_is_exception_pending(raw, &mut pending) == sys::Status::napi_ok && pending {
      sys::napi_get_and_clear_last_exception(raw, &mut thrown);
    }
    if !js_still_runs(env) {
      // Nobody is left to hear about a failure. (With the JS stack full this is the callback's
      // own throw, after which its caller only releases: released here a moment sooner.)
      let _ = lock_table::release(&file, &lock_id);
    }
    if !thrown.is_null() {
      sys::napi_throw(raw, thrown);
    }
  }
  Err(Error::new(
    Status::PendingException,
    format!("the work under the hold of {file} was stopped"),
  ))
}

/// Whether JS still runs in this environment, asked after a blocking wait: the JS that called
/// may have been stopped meanwhile (a `vm` timeout's watchdog terminates execution; a worker is
/// being terminated), and would never see the lockId. Node-API has no question for that, but
/// calling any JS function fails exactly then: this environment's do-nothing function (made by
/// the first such question, whose script fails just as well). The failure is also recorded as
/// Node-API's pending exception: cleared, so that the termination goes on as V8 started it.
fn js_still_runs(env: &Env) -> bool {
  let raw = env.raw();
  // SAFETY: Node-API calls on this environment's thread, inside one of its native calls, with
  // out-pointers they fill in; the reference is this environment's (reset when it ends).
  unsafe {
    let mut nothing = NOTHING.get();
    if nothing.is_null() {
      let Ok(function) = env.run_script::<_, Unknown>("(function () {})") else {
        return forget_failure(raw);
      };
      if sys::napi_create_reference(raw, function.raw(), 1, &mut nothing) != sys::Status::napi_ok {
        return forget_failure(raw);
      }
      NOTHING.set(nothing);
    }
    let (mut function, mut receiver, mut result) =
      (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    let called = sys::napi_get_reference_value(raw, nothing, &mut function) == sys::Status::napi_ok
      && sys::napi_get_undefined(raw, &mut receiver) == sys::Status::napi_ok
      && sys::napi_call_function(raw, receiver, function, 0, ptr::null(), &mut result)
        == sys::Status::napi_ok;
    called || forget_failure(raw)
  }
}

/// Clears the pending exception a failed call into JS left in Node-API's record; false.
///
/// # Safety
/// On the environment's thread, inside one of its native calls.
unsafe fn forget_failure(raw: sys::napi_env) -> bool {
  let mut exception = ptr::null_mut();
  // SAFETY: as the caller promises.
  unsafe { sys::napi_get_and_clear_last_exception(raw, &mut exception) };
  false
}

/// `writeTextAtomic` on the calling thread (the synchronous API).
#[napi]
pub fn write_text_atomic_sync(env: Env, file: String, lock_id: String, text: String) -> Result<()> {
  lock_table::prepare(&file)
    .and_then(|target| {
      store::write_atomic(&target.file, &text, || {
        lock_table::verify_held(&target, &lock_id)
      })
    })
    .map_err(|e| js_error(&env, e))
}

/// `doctor`: `{ backend, version }` of the project at `root` (or the one around the working
/// directory): the backend's URL (`"file"` by default) and a lock server's version, asked over a
/// fresh connection; an unreachable server throws `ELOCKBACKEND`.
#[napi]
pub fn backend_health(env: Env, root: Option<String>) -> Result<Value> {
  paths::root_for_dir(root.as_deref())
    .and_then(|root| config::health(&root))
    .map_err(|e| js_error(&env, e))
}
