//! The etcd lock engine: a synchronous API over the recipe in `recipe.rs`, for the backend seam.
//!
//! The engine owns a one-thread tokio runtime on a thread of its own. Every call hands a future
//! to that runtime and waits for the answer on a std channel, so it can be called from any
//! thread, including one that is itself inside another tokio runtime (where
//! `Runtime::block_on` would panic). `wait_acquire` polls the caller's `wanted()` and deadline
//! between answers, so an abort or a timeout is noticed within [`WANTED_POLL`].
//!
//! Building needs no protoc: the gRPC code is generated ahead of time into `generated/`
//! (see `scripts/gen-etcd-proto.sh`) rather than by `etcd-client`'s build script, whose
//! protoc requirement would break a build from a clean clone on machines without one.

mod backend;
mod client;
pub mod config;
mod generated;
mod recipe;
// The tests run real etcd processes and signal them: Unix only.
#[cfg(all(test, unix))]
mod test_server;
#[cfg(all(test, unix))]
mod tests;

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

pub use backend::EtcdBackend;
pub use config::EtcdConfig;
use recipe::{lock_dir, Queue};

use crate::backend::Refreshed;
use crate::error::{LockError, Result};
use crate::record::{new_lock_id, LockRecord};

/// How often a waiting caller re-checks `wanted()` and its deadline.
pub const WANTED_POLL: Duration = Duration::from_millis(50);

/// A held etcd lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdGrant {
  /// The holder's key: `<lock prefix>/<lease id in hex>`.
  pub key: String,
  pub lock_id: String,
  /// The fencing token: the key's create_revision. Rises with every grant, cluster-wide.
  pub token: u64,
  /// The holder's own deadline (monotonic): past it, the lock must be treated as lost.
  pub deadline: Instant,
  pub lease_id: i64,
}

/// A lock as others see it (`status`, `listLocks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLock {
  /// The lock's key prefix, ending in `/`.
  pub prefix: String,
  pub holder_key: String,
  /// The holder's record (None if its value is not a lock record).
  pub holder: Option<LockRecord>,
  pub token: u64,
  /// What is left of the holder's lease, as etcd counts it (whole seconds).
  pub ttl_left: Option<Duration>,
  /// How many wait behind the holder.
  pub waiters: usize,
}

pub struct EtcdLocks {
  queue: Arc<Queue>,
  runtime: EngineRuntime,
}

/// The engine's runtime and its thread; dropping it stops both.
struct EngineRuntime {
  handle: Handle,
  stop: Option<tokio::sync::oneshot::Sender<()>>,
  thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineRuntime {
  fn start() -> Result<EngineRuntime> {
    let failed = |e: std::io::Error| {
      LockError::new(
        "ELOCKBACKEND",
        format!("Cannot start the etcd engine's runtime: {e}."),
      )
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
      .enable_all()
      .build()
      .map_err(failed)?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
      .name("flowforge-etcd".into())
      .spawn(move || {
        runtime.block_on(async {
          let _ = stopped.await;
        })
      })
      .map_err(failed)?;
    Ok(EngineRuntime {
      handle,
      stop: Some(stop),
      thread: Some(thread),
    })
  }
}

impl Drop for EngineRuntime {
  fn drop(&mut self) {
    if let Some(stop) = self.stop.take() {
      let _ = stop.send(());
    }
    if let Some(thread) = self.thread.take() {
      let _ = thread.join();
    }
  }
}

impl EtcdLocks {
  /// Starts the engine's runtime and proves the cluster answers by granting a first lease.
  /// No member answering → `ELOCKBACKEND` naming every endpoint tried.
  pub fn connect(config: EtcdConfig) -> Result<EtcdLocks> {
    if config.endpoints.is_empty() {
      return Err(LockError::invalid_value(
        "An etcd backend needs at least one endpoint.",
      ));
    }
    let runtime = EngineRuntime::start()?;
    let queue = run_on(&runtime.handle, async move {
      let queue = Arc::new(Queue::new(client::Client::new(config)?));
      queue.prime().await?;
      Ok(queue)
    })??;
    Ok(EtcdLocks { queue, runtime })
  }

  fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Result<T> {
    run_on(&self.runtime.handle, future)
  }

  /// One try: the lock if nobody holds it or waits for it, else `Ok(None)` (and no trace left).
  /// Uncontended, this is one round trip (a Txn on a lease granted ahead of time).
  pub fn try_acquire(&self, prefix: &str, holder: &LockRecord) -> Result<Option<EtcdGrant>> {
    let (queue, dir, value, lock_id) = self.attempt(prefix, holder);
    self.run(async move { queue.try_acquire(&dir, value, &lock_id).await })?
  }

  /// Queues for the lock and waits until granted; `Ok(None)` once `deadline` passes or
  /// `wanted()` turns false (checked every [`WANTED_POLL`]), with our place in the queue
  /// removed.
  pub fn wait_acquire(
    &self,
    prefix: &str,
    holder: &LockRecord,
    deadline: Option<Instant>,
    wanted: &dyn Fn() -> bool,
  ) -> Result<Option<EtcdGrant>> {
    let timed_out = || deadline.is_some_and(|d| Instant::now() >= d);
    let over = || !wanted() || timed_out();
    if over() {
      return Ok(None);
    }
    let (queue, dir, value, lock_id) = self.attempt(prefix, holder);
    let lease_slot = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&lease_slot);
    let (tx, rx) = mpsc::sync_channel(1);
    let task = self.runtime.handle.spawn(async move {
      let _ = tx.send(queue.wait_acquire(&dir, value, &lock_id, &slot).await);
    });
    loop {
      let wait = deadline.map_or(WANTED_POLL, |d| {
        WANTED_POLL.min(d.saturating_duration_since(Instant::now()))
      });
      match rx.recv_timeout(wait) {
        Ok(result) => return result.map(Some),
        Err(RecvTimeoutError::Timeout) if over() => break,
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => return Err(stopped()),
      }
    }
    // Give up our place. Revoking the attempt's lease deletes our key, whether the attempt was
    // still waiting or had just been granted while we decided to leave.
    task.abort();
    let lease = lease_slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(outage) = self.queue.client.outage().filter(|_| timed_out()) {
      // etcd is out of reach: say so now (the caller's deadline has come) and let the revoke
      // retry in the background; if it never lands, the lease expires on its own.
      if let Some(lease) = lease {
        let queue = Arc::clone(&self.queue);
        self
          .runtime
          .handle
          .spawn(async move { queue.revoke_later(lease) });
      }
      return Err(outage);
    }
    if let Some(lease) = lease {
      let queue = Arc::clone(&self.queue);
      let until = Instant::now() + self.config().request_timeout;
      // A failure here leaves the key until its lease expires; the caller's answer stands.
      let _ = self.run(async move { queue.client.revoke(lease, until).await });
    }
    Ok(None)
  }

  fn attempt(&self, prefix: &str, holder: &LockRecord) -> (Arc<Queue>, String, Vec<u8>, String) {
    let lock_id = holder.lock_id.clone().unwrap_or_else(new_lock_id);
    let value = holder.to_json().to_string().into_bytes();
    (Arc::clone(&self.queue), lock_dir(prefix), value, lock_id)
  }

  /// Renews the grant's lease and checks its key. `Held` moves `grant.deadline` to the start
  /// of this refresh + ttl − margin (never backwards).
  pub fn refresh(&self, grant: &mut EtcdGrant) -> Refreshed {
    let queue = Arc::clone(&self.queue);
    let current = grant.clone();
    match self.run(async move { queue.refresh(&current).await }) {
      Err(e) => Refreshed::Unknown(e.message),
      Ok((outcome, new_deadline)) => {
        if let Some(d) = new_deadline {
          grant.deadline = grant.deadline.max(d);
        }
        outcome
      }
    }
  }

  /// The fencing check just before a commit: `ELOCKLOST` unless our key still exists with our
  /// create_revision and lease, and at least `min_left` remains before our own deadline.
  pub fn verify(&self, grant: &EtcdGrant, min_left: Duration) -> Result<()> {
    let queue = Arc::clone(&self.queue);
    let grant = grant.clone();
    self.run(async move { queue.verify(&grant, min_left).await })?
  }

  /// Deletes our key (if still ours: `Ok(true)`) and revokes the lease.
  pub fn release(&self, grant: EtcdGrant) -> Result<bool> {
    let queue = Arc::clone(&self.queue);
    self.run(async move { queue.release(&grant).await })?
  }

  pub fn inspect(&self, prefix: &str) -> Result<Option<RemoteLock>> {
    let queue = Arc::clone(&self.queue);
    let dir = lock_dir(prefix);
    self.run(async move { queue.inspect(&dir).await })?
  }

  /// Every lock under `root_prefix` that has a holder.
  pub fn list(&self, root_prefix: &str) -> Result<Vec<RemoteLock>> {
    let queue = Arc::clone(&self.queue);
    let root = root_prefix.to_string();
    self.run(async move { queue.list(&root).await })?
  }

  pub fn config(&self) -> &EtcdConfig {
    &self.queue.client.config
  }
}

/// Runs `future` on the engine's runtime and blocks this thread (never the runtime's) until
/// it is done.
fn run_on<T: Send + 'static>(
  runtime: &Handle,
  future: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
  let (tx, rx) = mpsc::sync_channel(1);
  runtime.spawn(async move {
    let _ = tx.send(future.await);
  });
  rx.recv().map_err(|_| stopped())
}

fn stopped() -> LockError {
  LockError::new(
    "ELOCKBACKEND",
    "The etcd engine stopped while a call was in flight; create a new connection.",
  )
}
