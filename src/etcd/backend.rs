//! The etcd engine on the backend seam: `EtcdBackend` (what `FLOWFORGE_LOCK_BACKEND=etcd://…`
//! selects) and `EtcdHold`, its [`Grant`]. A lock is named on the server by its project's id and
//! its lock file's name, `/flowforge-lock/v1/<project id>/<escaped lock name>/`, so the same
//! project mounted at different paths on different machines shares its locks. The inspecting
//! calls answer in the shape of the file backend's views, plus what a lease tells.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{EtcdConfig, EtcdGrant, EtcdLocks, RemoteLock};
use crate::backend::{server_view, Backend, Grant, Refreshed, Request};
use crate::error::{LockError, Result};
use crate::fence;
use crate::identity::now_ms;
use crate::paths::Target;
use crate::project;
use crate::record::LockRecord;

/// Every key of this backend starts here; `v1` names the key layout, so a future layout can
/// live beside this one.
const ROOT: &str = "/flowforge-lock/v1/";

pub struct EtcdBackend {
  locks: Arc<EtcdLocks>,
}

impl EtcdBackend {
  /// Parses the URL and connects (a first lease proves the cluster answers): `ELOCKBACKEND`
  /// naming the endpoints when no member does.
  pub fn connect(url: &str) -> Result<EtcdBackend> {
    let locks = EtcdLocks::connect(EtcdConfig::parse(url)?)?;
    Ok(EtcdBackend {
      locks: Arc::new(locks),
    })
  }

  /// A grant becomes a hold only if its token is above every token that ever committed beside
  /// the data: revisions only rise, so a lower one means the cluster was rebuilt from empty and
  /// every commit under it would be refused.
  fn hold(&self, target: &Target, grant: EtcdGrant, record: LockRecord) -> Result<Box<dyn Grant>> {
    let floor = match fence::floor(target) {
      Ok(floor) => floor,
      Err(e) => {
        let _ = self.locks.release(grant);
        return Err(e);
      }
    };
    if grant.token <= floor {
      let token = grant.token;
      let _ = self.locks.release(grant);
      return Err(LockError::new(
        "ELOCKBACKEND",
        format!(
          "etcd at {} granted the lock on {} with revision {token}, but a write under token {floor} was already committed to it: this cluster is not the one those writes went through (rebuilt from empty, or another cluster). Point FLOWFORGE_LOCK_BACKEND at the original cluster, or, once no process of the old one can write, remove {}.fence.",
          self.locks.config().display_endpoints(),
          target.file.display(),
          target.lock_path.display()
        ),
      ));
    }
    Ok(Box::new(EtcdHold {
      locks: Arc::clone(&self.locks),
      lock_id: record.lock_id.clone().unwrap_or_default(),
      grant,
      record,
    }))
  }
}

/// The key prefix of `target`'s lock.
fn lock_prefix(target: &Target) -> Result<String> {
  Ok(format!(
    "{}{}",
    project_prefix(&target.root)?,
    escape(&project::lock_name(target))
  ))
}

fn project_prefix(root: &Path) -> Result<String> {
  Ok(format!("{ROOT}{}/", project::id(root)?))
}

/// Percent-encodes every byte but `[A-Za-z0-9._-]`: names never contain `/`, so one lock's
/// prefix (name + `/`) is never the start of another's, and distinct names stay distinct.
fn escape(name: &str) -> String {
  let mut out = String::with_capacity(name.len());
  for byte in name.bytes() {
    if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
      out.push(byte as char);
    } else {
      out.push_str(&format!("%{byte:02X}"));
    }
  }
  out
}

/// A lock as `getLockInfo`/`listLocks` show it: the holder's record and the file backend's
/// judgement fields, plus the lease's view. Leases replace heartbeats here: a holder that
/// stops renewing loses its key when the lease runs out, so a listed lock is never stale, and
/// `heartbeatAgeMs` is null (`ttlLeftMs` tells how long the lease has left).
fn view(lock: &RemoteLock) -> Value {
  let now = now_ms();
  let acquired_at = lock.holder.as_ref().and_then(|r| r.acquired_at);
  let fields = json!({
    "lockFile": lock.prefix,
    "holderKey": lock.holder_key,
    "state": "held",
    "staleReason": Value::Null,
    "heldForMs": acquired_at.map(|t| now.saturating_sub(t)),
    "heartbeatAgeMs": Value::Null,
    "fencingToken": lock.token,
    "ttlLeftMs": lock.ttl_left.map(|t| t.as_millis() as u64),
    "queueLength": lock.waiters,
    "backend": "etcd",
  });
  server_view(lock.holder.as_ref(), fields)
}

impl Backend for EtcdBackend {
  fn try_acquire(&self, target: &Target, request: &Request) -> Result<Option<Box<dyn Grant>>> {
    let prefix = lock_prefix(target)?;
    let record = request.holder();
    match self.locks.try_acquire(&prefix, &record)? {
      Some(grant) => self.hold(target, grant, record).map(Some),
      None => Ok(None),
    }
  }

  /// Queues in etcd on behalf of this process's queue; the wait ends when granted or when
  /// nobody here waits any more (`head()` turns `None`: a timeout or an abort).
  fn wait_acquire(
    &self,
    target: &Target,
    head: &dyn Fn() -> Option<Request>,
  ) -> Result<Option<Box<dyn Grant>>> {
    let Some(first) = head() else {
      return Ok(None);
    };
    let prefix = lock_prefix(target)?;
    let queued = first.holder();
    let wanted = || head().is_some();
    let Some(grant) = self.locks.wait_acquire(&prefix, &queued, None, &wanted)? else {
      return Ok(None);
    };
    // The record names whoever heads the queue now (its file may differ from the first's);
    // with nobody left, the lock table releases the grant.
    let record = match head() {
      Some(request) if request.file != first.file => LockRecord {
        lock_id: queued.lock_id.clone(),
        ..request.holder()
      },
      _ => queued,
    };
    self.hold(target, grant, record).map(Some)
  }

  fn is_locked(&self, target: &Target, _stale_after: Duration) -> Result<bool> {
    Ok(self.locks.inspect(&lock_prefix(target)?)?.is_some())
  }

  fn lock_info(&self, target: &Target, _stale_after: Duration) -> Result<Option<Value>> {
    Ok(
      self
        .locks
        .inspect(&lock_prefix(target)?)?
        .map(|lock| view(&lock)),
    )
  }

  /// The held locks only: etcd keeps nothing of a free lock.
  fn list(&self, root: &Path, _stale_after: Duration) -> Result<Vec<Value>> {
    let locks = self.locks.list(&project_prefix(root)?)?;
    Ok(locks.iter().map(view).collect())
  }

  /// Removes nothing: every key lives on a lease, and etcd deletes it when the lease runs out.
  /// The held ones are reported kept, with why.
  fn cleanup(&self, root: &Path, _stale_after: Duration, _dry_run: bool) -> Result<Value> {
    let kept: Vec<Value> = self
      .locks
      .list(&project_prefix(root)?)?
      .iter()
      .map(|lock| {
        let mut view = view(lock);
        view["reason"] = json!(
          "held: its etcd lease is live (etcd deletes the key by itself when the lease runs out)"
        );
        view
      })
      .collect();
    Ok(json!({ "removed": [], "kept": kept }))
  }
}

/// A held etcd lock.
struct EtcdHold {
  locks: Arc<EtcdLocks>,
  lock_id: String,
  grant: EtcdGrant,
  record: LockRecord,
}

impl Grant for EtcdHold {
  fn lock_id(&self) -> &str {
    &self.lock_id
  }

  fn record(&self) -> &LockRecord {
    &self.record
  }

  fn fencing_token(&self) -> Option<u64> {
    Some(self.grant.token)
  }

  fn refresh_interval(&self) -> Option<Duration> {
    Some(self.locks.config().refresh)
  }

  fn refresh(&mut self) -> Refreshed {
    self.locks.refresh(&mut self.grant)
  }

  fn deadline(&self) -> Option<Instant> {
    Some(self.grant.deadline)
  }

  /// The key is still ours, and at least the margin is left before our own deadline: the
  /// rename that follows this check must land while the lease surely holds.
  fn verify(&self) -> Result<()> {
    self.locks.verify(&self.grant, self.locks.config().margin)
  }

  fn release(self: Box<Self>) {
    // A failed release leaves our key until its lease runs out: the lock frees itself.
    let EtcdHold { locks, grant, .. } = *self;
    let _ = locks.release(grant);
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn escaped_names_never_prefix_one_another() {
    assert_eq!(escape("tasks.json.lock"), "tasks.json.lock");
    assert_eq!(escape("a b/%.lock"), "a%20b%2F%25.lock");
    assert_eq!(escape("é"), "%C3%A9");
    let names = ["a", "a/", "a%2F", "a/b", "a.b"];
    for x in names {
      for y in names {
        if x != y {
          assert!(!format!("{}/", escape(y)).starts_with(&format!("{}/", escape(x))));
        }
      }
    }
  }
}

// Against a real etcd member: the seam's calls, the views' shape, and the token floor.
#[cfg(all(test, unix))]
mod real_etcd {
  use std::sync::mpsc;

  use super::super::test_server::{wait_until, EtcdServer};
  use super::*;
  use crate::lock_table;

  fn project_file(name: &str) -> Target {
    let root = crate::test_support::temp_dir("etcd-backend");
    std::fs::create_dir_all(root.join(".flowforge")).unwrap();
    lock_table::prepare(&root.join(name).to_string_lossy()).unwrap()
  }

  fn request(target: &Target) -> Request {
    Request {
      file: target.file.clone(),
      stale_after: Duration::from_secs(30),
      mode: crate::backend::LockMode::Exclusive,
      priority: 0.0,
      arrival: std::time::Instant::now(),
    }
  }

  #[test]
  fn grants_views_waits_and_releases_through_the_seam() {
    let server = EtcdServer::start();
    let backend = EtcdBackend::connect(&format!("etcd://{}?ttl=2000", server.endpoint())).unwrap();
    let target = project_file("tasks.json");
    let held = backend
      .try_acquire(&target, &request(&target))
      .unwrap()
      .expect("free lock");
    let token = held.fencing_token().unwrap();
    assert!(token > 0);
    assert!(held.deadline().unwrap() > Instant::now());
    held.verify().unwrap();
    assert!(backend
      .try_acquire(&target, &request(&target))
      .unwrap()
      .is_none());

    let info = backend.lock_info(&target, Duration::ZERO).unwrap().unwrap();
    assert_eq!(info["fencingToken"], token);
    assert_eq!(info["backend"], "etcd");
    assert_eq!(info["state"], "held");
    assert_eq!(info["lockId"], held.lock_id());
    assert_eq!(info["file"], target.file.to_string_lossy().as_ref());
    let prefix = info["lockFile"].as_str().unwrap();
    assert!(prefix.starts_with(ROOT) && prefix.ends_with("/tasks.json.lock/"));
    assert_eq!(backend.list(&target.root, Duration::ZERO).unwrap().len(), 1);
    let report = backend
      .cleanup(&target.root, Duration::ZERO, false)
      .unwrap();
    assert_eq!(report["removed"].as_array().unwrap().len(), 0);
    assert_eq!(report["kept"].as_array().unwrap().len(), 1);

    // A waiter queues behind the holder; the grant's record names whoever heads the queue
    // when it comes (here another file sharing the lock).
    let other_file = target.root.join("elsewhere.json");
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
      let waiting = scope.spawn(|| {
        let head = || {
          Some(Request {
            file: other_file.clone(),
            stale_after: Duration::from_secs(30),
            mode: crate::backend::LockMode::Exclusive,
            priority: 0.0,
            arrival: std::time::Instant::now(),
          })
        };
        let grant = backend.wait_acquire(&target, &head).unwrap().unwrap();
        tx.send(()).unwrap();
        grant
      });
      wait_until(
        || backend.lock_info(&target, Duration::ZERO).unwrap().unwrap()["queueLength"] == 1,
        "the waiter to queue in etcd",
      );
      assert!(rx.try_recv().is_err());
      held.release();
      let next = waiting.join().unwrap();
      assert!(next.fencing_token().unwrap() > token);
      assert_eq!(
        next.record().file.as_deref(),
        Some(other_file.to_string_lossy().as_ref())
      );
      next.release();
    });
    assert!(!backend.is_locked(&target, Duration::ZERO).unwrap());
    // Nobody waits any more: the wait ends without a grant.
    assert!(backend.wait_acquire(&target, &|| None).unwrap().is_none());
  }

  #[test]
  fn a_token_below_the_one_beside_the_data_is_refused() {
    let server = EtcdServer::start();
    let backend = EtcdBackend::connect(&format!("etcd://{}?ttl=2000", server.endpoint())).unwrap();
    let target = project_file("tasks.json");
    fence::check_and_record(&target, 1 << 40, "an-earlier-hold").unwrap();
    let err = backend
      .try_acquire(&target, &request(&target))
      .err()
      .expect("refused");
    assert_eq!(err.code, "ELOCKBACKEND");
    assert!(err.message.contains(".fence"), "{}", err.message);
    assert!(!backend.is_locked(&target, Duration::ZERO).unwrap());
  }
}
