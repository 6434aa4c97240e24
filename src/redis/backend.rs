//! The Redis engine behind the backend seam (`crate::backend`): a [`Backend`] whose grants are
//! Redis locks with fencing tokens. Keys are `flowforge-lock:{<projectId>}:<lockName>`, both from
//! `crate::project` (the id kept inside the project, shared with the etcd backend), so every
//! machine that shares the project through a network file system finds the same keys whatever
//! path it mounts the project at.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::{guard, RedisConfig, RedisGrant, RedisLocks, RemoteLock};
use crate::backend::{server_view, Backend, Grant, Refreshed, Request};
use crate::error::{LockError, Result};
use crate::fence;
use crate::identity::now_ms;
use crate::paths::Target;
use crate::record::LockRecord;

const KEY_PREFIX: &str = "flowforge-lock";

pub struct RedisBackend {
  locks: Arc<RedisLocks>,
  /// Project root → its project id, read (or created) once per process.
  project_ids: Mutex<HashMap<PathBuf, String>>,
}

impl RedisBackend {
  /// Parses the backend URL and connects (`ELOCKBACKEND` when the server is unreachable).
  pub fn connect(url: &str) -> Result<RedisBackend> {
    let locks = RedisLocks::connect(RedisConfig::parse(url)?)?;
    Ok(RedisBackend {
      locks: Arc::new(locks),
      project_ids: Mutex::new(HashMap::new()),
    })
  }

  pub fn engine(&self) -> &RedisLocks {
    &self.locks
  }

  fn project_prefix(&self, root: &Path) -> Result<String> {
    let known = guard(&self.project_ids).get(root).cloned();
    let id = match known {
      Some(id) => id,
      None => {
        let id = crate::project::id(root)?;
        guard(&self.project_ids).insert(root.to_path_buf(), id.clone());
        id
      }
    };
    Ok(format!("{KEY_PREFIX}:{{{id}}}:"))
  }

  /// The Redis key of `target`'s lock.
  pub fn key(&self, target: &Target) -> Result<String> {
    let name = crate::project::lock_name(target);
    Ok(format!("{}{name}", self.project_prefix(&target.root)?))
  }

  fn held(&self, grant: RedisGrant, record: LockRecord) -> Box<dyn Grant> {
    Box::new(RedisHeld {
      locks: self.locks.clone(),
      grant: Some(grant),
      record,
    })
  }

  /// One try through `try_once` (the engine's try, or its try on the caller's thread).
  fn try_with(
    &self,
    target: &Target,
    request: &Request,
    try_once: impl FnOnce(&RedisLocks, &str, &LockRecord, u64) -> Result<Option<RedisGrant>>,
  ) -> Result<Option<Box<dyn Grant>>> {
    let key = self.key(target)?;
    let record = request.holder();
    let floor = fence::floor(target)?;
    Ok(try_once(&self.locks, &key, &record, floor)?.map(|grant| self.held(grant, record)))
  }
}

/// `getLockInfo`/`status`: the holder's record plus what Redis knows.
fn remote_json(lock: &RemoteLock) -> Value {
  let now = now_ms();
  let fields = json!({
    "backend": "redis",
    "key": lock.key,
    // The names the other lock servers' views use (etcd's), so `status` and callers of
    // `getLockInfo` read every backend alike. A lease replaces heartbeats: never stale.
    "lockFile": lock.key,
    "fencingToken": lock.token,
    "queueLength": lock.waiters,
    "staleReason": Value::Null,
    "heartbeatAgeMs": Value::Null,
    "lockId": lock.lock_id,
    "state": if lock.holder_connected { "held" } else { "disconnected" },
    "token": lock.token,
    "ttlLeftMs": lock.ttl_left.map(|d| d.as_millis() as u64),
    "waiters": lock.waiters,
    "holderConnected": lock.holder_connected,
    "heldForMs": lock.holder.as_ref().and_then(|r| r.acquired_at).map(|t| now.saturating_sub(t)),
  });
  server_view(lock.holder.as_ref(), fields)
}

impl Backend for RedisBackend {
  fn try_acquire(&self, target: &Target, request: &Request) -> Result<Option<Box<dyn Grant>>> {
    self.try_with(target, request, RedisLocks::try_acquire)
  }

  /// Over an idle connection only, one round trip (`RedisLocks::try_acquire_idle`).
  fn try_acquire_here(
    &self,
    target: &Target,
    request: &Request,
    within: Option<Duration>,
  ) -> Result<Option<Box<dyn Grant>>> {
    self.try_with(target, request, |locks, key, holder, floor| {
      locks.try_acquire_idle(key, holder, floor, within)
    })
  }

  /// Waits in the lock's Redis queue while anyone in this process's queue still wants the lock;
  /// the grant goes to whoever heads that queue when it comes (if nobody does, it is released).
  fn wait_acquire(
    &self,
    target: &Target,
    head: &dyn Fn() -> Option<Request>,
  ) -> Result<Option<Box<dyn Grant>>> {
    let Some(first) = head() else {
      return Ok(None);
    };
    let key = self.key(target)?;
    let floor = fence::floor(target)?;
    let wanted = || head().is_some();
    let Some(grant) = self
      .locks
      .wait_acquire(&key, &first.holder(), floor, None, &wanted)?
    else {
      return Ok(None);
    };
    match head() {
      Some(request) => {
        let mut record = request.holder();
        record.lock_id = Some(grant.lock_id.clone());
        Ok(Some(self.held(grant, record)))
      }
      None => {
        self.locks.release(grant)?;
        Ok(None)
      }
    }
  }

  fn is_locked(&self, target: &Target, _stale_after: Duration) -> Result<bool> {
    self.locks.is_held(&self.key(target)?)
  }

  fn lock_info(&self, target: &Target, _stale_after: Duration) -> Result<Option<Value>> {
    Ok(
      self
        .locks
        .inspect(&self.key(target)?)?
        .map(|l| remote_json(&l)),
    )
  }

  fn list(&self, root: &Path, _stale_after: Duration) -> Result<Vec<Value>> {
    let prefix = self.project_prefix(root)?;
    Ok(self.locks.list(&prefix)?.iter().map(remote_json).collect())
  }

  /// Nothing to remove: a lease ends on its own, and a holder whose connection is gone is taken
  /// over by the next waiter at once.
  fn cleanup(&self, root: &Path, stale_after: Duration, _dry_run: bool) -> Result<Value> {
    Ok(json!({ "removed": [], "kept": self.list(root, stale_after)? }))
  }
}

/// One held Redis lock.
struct RedisHeld {
  locks: Arc<RedisLocks>,
  /// `None` only once released.
  grant: Option<RedisGrant>,
  record: LockRecord,
}

impl Grant for RedisHeld {
  fn lock_id(&self) -> &str {
    self.grant.as_ref().map_or("", |g| g.lock_id.as_str())
  }

  fn record(&self) -> &LockRecord {
    &self.record
  }

  fn fencing_token(&self) -> Option<u64> {
    self.grant.as_ref().map(|g| g.token)
  }

  fn refresh_interval(&self) -> Option<Duration> {
    Some(self.locks.config().refresh)
  }

  fn refresh(&mut self) -> Refreshed {
    let Some(grant) = self.grant.as_mut() else {
      return Refreshed::Lost("it was released".into());
    };
    self.locks.refresh(grant)
  }

  fn deadline(&self) -> Option<std::time::Instant> {
    self.grant.as_ref().map(|g| g.deadline)
  }

  /// Redis still holds our lock with at least the safety margin of lease left, and our own
  /// deadline is that far away: the rename that follows has that long to land.
  fn verify(&self) -> Result<()> {
    match &self.grant {
      Some(grant) => self.locks.verify(grant, self.locks.config().margin()),
      None => Err(LockError::new("ELOCKLOST", "The Redis lock was released.")),
    }
  }

  fn release(mut self: Box<Self>) {
    if let Some(grant) = self.grant.take() {
      // A failure leaves the lock to its lease, or to the next waiter once our connection is
      // gone; the caller has nothing better to do with the error.
      let _ = self.locks.release(grant);
    }
  }
}
