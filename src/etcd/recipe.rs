//! The lock recipe on etcd 3.4, built from Lease + Txn + Watch (not etcd's Lock RPC, which on
//! 3.4 can grant a lock whose lease already expired: etcd-io/etcd#11456).
//!
//! A lock is a key prefix `dir`. Each attempt puts `dir<lease id in hex>` with its own lease;
//! the key's create_revision is its ticket and the lowest ticket holds the lock, so the
//! holder's create_revision is the fencing token (revisions only rise, cluster-wide). A waiter
//! watches only the key just ahead of it (no herd; first come, first served), re-checks on a
//! timer because watches can miss events, keeps its lease alive while it waits, and after its
//! wait re-reads its own key and gives up if that key (so its lease) is gone. Every grant
//! carries the holder's own deadline on the monotonic clock (start of the last successful
//! grant/keepalive request + ttl − margin), because etcd can keep a lease past its TTL across
//! leader changes: the deadline is the holder's, not the server's. See docs/etcd-algorithm.md.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{
  compare_create, compare_lease, key_range, op, op_range, predecessor_range, prefix_end,
  queue_range, txn_kvs, Client, Lease,
};
use super::generated::etcdserverpb::{request_op, DeleteRangeRequest, PutRequest, TxnRequest};
use super::generated::mvccpb::{event::EventType, KeyValue};
use super::{EtcdGrant, RemoteLock};
use crate::backend::Refreshed;
use crate::error::{LockError, Result};
use crate::record::{self, Contents};

/// A waiter re-reads the queue at least this often, in case its watch missed the deletion.
const RECHECK: Duration = Duration::from_secs(1);

pub(crate) struct Queue {
  pub(crate) client: Client,
  /// A lease granted ahead of time, so an uncontended acquire is a single round trip (the Txn).
  spare: Mutex<Option<Lease>>,
}

/// The key prefix of a lock: the caller's prefix, ending in exactly one `/`.
pub(crate) fn lock_dir(prefix: &str) -> String {
  format!("{}/", prefix.trim_end_matches('/'))
}

impl Queue {
  pub(crate) fn new(client: Client) -> Queue {
    Queue {
      client,
      spare: Mutex::new(None),
    }
  }

  /// Grants the first spare lease: proves at connect time that the cluster answers and can
  /// write (a lease grant goes through Raft). Then keeps the spare alive every refresh period,
  /// so that an uncontended acquire stays one round trip however long the process idles.
  pub(crate) async fn prime(self: &Arc<Self>) -> Result<()> {
    let lease = self
      .client
      .grant_lease(self.client.op_deadline(None))
      .await?;
    *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
    let engine = Arc::downgrade(self);
    let period = self.client.config.refresh;
    tokio::spawn(async move {
      loop {
        tokio::time::sleep(period).await;
        // The engine is gone: stop (its runtime is shutting down anyway).
        let Some(me) = engine.upgrade() else { return };
        me.renew_spare().await;
      }
    });
    Ok(())
  }

  #[cfg(all(test, unix))]
  pub(crate) fn spare(&self) -> Option<Lease> {
    *self.spare.lock().unwrap_or_else(|p| p.into_inner())
  }

  async fn renew_spare(self: &Arc<Self>) {
    let spare = *self.spare.lock().unwrap_or_else(|p| p.into_inner());
    let Some(lease) = spare else { return };
    let renewed = self
      .client
      .keep_alive(lease.id, self.client.op_deadline(None))
      .await;
    let mut slot = self.spare.lock().unwrap_or_else(|p| p.into_inner());
    // Only if the spare was not handed out (or replaced) meanwhile.
    if let Some(current) = slot.as_mut().filter(|s| s.id == lease.id) {
      match renewed {
        Ok(Some(deadline)) => current.deadline = current.deadline.max(deadline),
        Ok(None) => *slot = None, // expired: the next attempt grants a fresh lease
        Err(_) => {}
      }
    }
  }

  /// A lease for a new attempt: the spare if it still has a full refresh period ahead of its
  /// deadline, else a fresh grant. The caller calls `refill` once the lease is in use, or
  /// `give_back` if it went unused.
  async fn take_lease(self: &Arc<Self>) -> Result<Lease> {
    let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(lease) = spare {
      if Instant::now() + self.client.config.refresh < lease.deadline {
        return Ok(lease);
      }
      self.revoke_later(lease.id);
    }
    self.client.grant_lease(self.client.op_deadline(None)).await
  }

  /// Grants the next spare in the background.
  fn refill(self: &Arc<Self>) {
    let me = Arc::clone(self);
    tokio::spawn(async move {
      if let Ok(lease) = me.client.grant_lease(me.client.op_deadline(None)).await {
        me.give_back(lease);
      }
    });
  }

  /// Keeps an unused lease as the spare (revoking the one it replaces).
  fn give_back(self: &Arc<Self>, lease: Lease) {
    let old = self
      .spare
      .lock()
      .unwrap_or_else(|p| p.into_inner())
      .replace(lease);
    if let Some(old) = old {
      self.revoke_later(old.id);
    }
  }

  /// Revokes in the background: the key is already deleted or unused, and an unrevoked lease
  /// only expires on its own.
  pub(crate) fn revoke_later(self: &Arc<Self>, lease: i64) {
    let me = Arc::clone(self);
    tokio::spawn(async move {
      let _ = me.client.revoke(lease, me.client.op_deadline(None)).await;
    });
  }

  fn grant(
    &self,
    dir: &str,
    key: String,
    lock_id: &str,
    token: i64,
    lease: Lease,
  ) -> Result<EtcdGrant> {
    if Instant::now() >= lease.deadline {
      return Err(LockError::new(
        "ELOCKBACKEND",
        format!(
          "etcd at {} granted the lock {dir} only after its lease's {} ms had run out; it is too slow or overloaded for this ttl.",
          self.client.config.display_endpoints(),
          self.client.config.ttl.as_millis()
        ),
      ));
    }
    Ok(EtcdGrant {
      key,
      lock_id: lock_id.to_string(),
      token: token as u64,
      deadline: lease.deadline,
      lease_id: lease.id,
    })
  }

  /// One try: holds the lock only if nobody holds it or waits for it (one Txn comparing the
  /// whole prefix empty), else leaves no trace.
  pub(crate) async fn try_acquire(
    self: &Arc<Self>,
    dir: &str,
    value: Vec<u8>,
    lock_id: &str,
  ) -> Result<Option<EtcdGrant>> {
    let lease = self.take_lease().await?;
    let key = format!("{dir}{:x}", lease.id);
    let txn = TxnRequest {
      compare: vec![compare_create(
        dir.as_bytes(),
        prefix_end(dir.as_bytes()),
        0,
      )],
      success: vec![op(request_op::Request::RequestPut(PutRequest {
        key: key.clone().into_bytes(),
        value,
        lease: lease.id,
        ..Default::default()
      }))],
      // A retry after a lost answer (the next member) finds the first attempt's put: our key.
      failure: vec![op_range(key_range(key.as_bytes()))],
    };
    let resp = match self
      .client
      .txn("take the lock", self.client.op_deadline(None), txn)
      .await
    {
      Ok(resp) => resp,
      Err(e) => {
        // The put may have landed before the answer was lost: revoking removes it either way.
        self.revoke_later(lease.id);
        return Err(e);
      }
    };
    let token = if resp.succeeded {
      resp.header.map_or(0, |h| h.revision)
    } else {
      // Our own key, put by an attempt of this Txn whose answer was lost: it was put while the
      // range was empty, so it holds the lock. Refused otherwise: the lease goes back unused.
      match txn_kvs(&resp, 0).first().filter(|kv| kv.lease == lease.id) {
        Some(ours) => ours.create_revision,
        None => {
          self.give_back(lease);
          return Ok(None);
        }
      }
    };
    self.refill();
    let grant = self.grant(dir, key, lock_id, token, lease);
    if grant.is_err() {
      self.revoke_later(lease.id);
    }
    grant.map(Some)
  }

  /// Joins the queue and waits until first. `lease_slot` tells the caller which lease to
  /// revoke if it abandons the wait (deadline, abort) while this future is cancelled.
  pub(crate) async fn wait_acquire(
    self: &Arc<Self>,
    dir: &str,
    value: Vec<u8>,
    lock_id: &str,
    lease_slot: &Mutex<Option<i64>>,
  ) -> Result<EtcdGrant> {
    let mut lease = self.take_lease().await?;
    *lease_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease.id);
    self.refill();
    let result = self.queue_and_wait(dir, value, lock_id, &mut lease).await;
    if result.is_err() {
      self.revoke_later(lease.id);
    }
    result
  }

  async fn queue_and_wait(
    &self,
    dir: &str,
    value: Vec<u8>,
    lock_id: &str,
    lease: &mut Lease,
  ) -> Result<EtcdGrant> {
    let client = &self.client;
    let key = format!("{dir}{:x}", lease.id);
    let own = key.as_bytes();
    // Put our key if it is not there yet, else read it back: a Txn retried after a lost answer
    // keeps its place in the queue. Both branches also read the head of the queue.
    let txn = TxnRequest {
      compare: vec![compare_create(own, Vec::new(), 0)],
      success: vec![
        op(request_op::Request::RequestPut(PutRequest {
          key: own.to_vec(),
          value,
          lease: lease.id,
          ..Default::default()
        })),
        op_range(queue_range(dir.as_bytes(), 1)),
      ],
      failure: vec![
        op_range(key_range(own)),
        op_range(queue_range(dir.as_bytes(), 1)),
      ],
    };
    let resp = client
      .txn("join the lock queue", client.op_deadline(None), txn)
      .await?;
    let my_rev = if resp.succeeded {
      resp.header.map_or(0, |h| h.revision)
    } else {
      txn_kvs(&resp, 0).first().map_or(0, |kv| kv.create_revision)
    };
    let head = txn_kvs(&resp, 1).first().map(|kv| kv.create_revision);
    let mut next_keepalive = Instant::now() + client.config.refresh;
    if head != Some(my_rev) {
      loop {
        let ahead = client
          .range(
            "read the lock queue",
            client.op_deadline(None),
            predecessor_range(dir.as_bytes(), my_rev),
          )
          .await?;
        let Some(pred) = ahead.kvs.first() else { break };
        let from = ahead.header.map_or(0, |h| h.revision) + 1;
        self
          .wait_for_delete(dir, &pred.key, from, lease, &mut next_keepalive)
          .await?;
      }
    }
    // The wait is over: our key must still be there with our lease, and the lease within the
    // deadline we keep for it. Otherwise our place lapsed while we waited (paused process,
    // etcd out of reach for longer than the ttl), and the lock may have passed over us.
    let mine = client
      .range(
        "re-read our place in the lock queue",
        client.op_deadline(None),
        key_range(own),
      )
      .await?;
    let intact = mine
      .kvs
      .first()
      .is_some_and(|kv| kv.create_revision == my_rev && kv.lease == lease.id);
    if !intact || Instant::now() >= lease.deadline {
      return Err(lost(
        dir,
        my_rev,
        "our place in its queue lapsed while we waited (our lease expired: the process was paused, or etcd was out of reach, for longer than the ttl)",
      ));
    }
    self.grant(dir, key, lock_id, my_rev, *lease)
  }

  /// Waits until `pred` is deleted (watch), or the re-check timer fires, keeping our lease
  /// alive meanwhile. Returning means "look at the queue again", never "you hold it".
  async fn wait_for_delete(
    &self,
    dir: &str,
    pred: &[u8],
    from_revision: i64,
    lease: &mut Lease,
    next_keepalive: &mut Instant,
  ) -> Result<()> {
    let client = &self.client;
    let recheck = tokio::time::sleep(RECHECK.min(client.config.refresh));
    tokio::pin!(recheck);
    let (mut _keep_open, mut stream) = match client
      .watch_deletes(pred, from_revision, client.op_deadline(None))
      .await
    {
      Ok((tx, stream)) => (Some(tx), Some(stream)),
      Err(_) => (None, None), // the re-check (a Range, with failover) will tell what is wrong
    };
    loop {
      tokio::select! {
        message = async { stream.as_mut().expect("guarded").message().await }, if stream.is_some() => {
          match message {
            Ok(Some(resp)) => {
              let deleted = resp.events.iter().any(|e| e.r#type == EventType::Delete as i32);
              if deleted || resp.canceled || resp.compact_revision != 0 {
                return Ok(());
              }
            }
            // The stream broke: try another member next time, and wait for the re-check.
            Ok(None) | Err(_) => {
              client.rotate();
              stream = None;
              _keep_open = None;
            }
          }
        }
        _ = &mut recheck => return Ok(()),
        _ = tokio::time::sleep_until((*next_keepalive).into()) => {
          *next_keepalive = Instant::now() + client.config.refresh;
          match client.keep_alive(lease.id, client.op_deadline(None)).await {
            Ok(Some(deadline)) => lease.deadline = lease.deadline.max(deadline),
            Ok(None) => {
              return Err(lost(dir, 0, "our lease expired while we waited in its queue"));
            }
            // Unknown: the post-wait check and the deadline decide.
            Err(_) => {}
          }
        }
      }
    }
  }

  pub(crate) async fn refresh(&self, grant: &EtcdGrant) -> (Refreshed, Option<Instant>) {
    let client = &self.client;
    let deadline = client.op_deadline(None);
    let (alive, mine) = tokio::join!(
      client.keep_alive(grant.lease_id, deadline),
      client.range(
        "re-read the lock's key",
        deadline,
        key_range(grant.key.as_bytes())
      )
    );
    match (alive, mine) {
      (Err(e), _) | (_, Err(e)) => (Refreshed::Unknown(e.message), None),
      (Ok(None), _) => (
        Refreshed::Lost(format!(
          "the etcd lease of {} (token {}) expired or was revoked",
          grant.key, grant.token
        )),
        None,
      ),
      (Ok(Some(new_deadline)), Ok(mine)) => {
        if is_ours(mine.kvs.first(), grant) {
          (Refreshed::Held, Some(new_deadline))
        } else {
          (
            Refreshed::Lost(format!(
              "the etcd key {} (token {}) was deleted",
              grant.key, grant.token
            )),
            None,
          )
        }
      }
    }
  }

  /// The fencing check before a commit: our key still exists with our create_revision and
  /// lease (a Txn, so linearizable), and our own deadline leaves `min_left`.
  pub(crate) async fn verify(&self, grant: &EtcdGrant, min_left: Duration) -> Result<()> {
    let dir = grant_dir(grant);
    let in_time = || Instant::now() + min_left <= grant.deadline;
    if !in_time() {
      return Err(lost(dir, grant.token as i64, &past_deadline(min_left)));
    }
    let key = grant.key.as_bytes();
    let txn = TxnRequest {
      compare: vec![
        compare_create(key, Vec::new(), grant.token as i64),
        compare_lease(key, grant.lease_id),
      ],
      success: vec![],
      failure: vec![],
    };
    let until = self
      .client
      .op_deadline(grant.deadline.checked_sub(min_left));
    let resp = self
      .client
      .txn("check the lock before writing", until, txn)
      .await;
    match resp {
      _ if !in_time() => Err(lost(dir, grant.token as i64, &past_deadline(min_left))),
      Err(e) => Err(e),
      Ok(r) if !r.succeeded => Err(lost(
        dir,
        grant.token as i64,
        "its etcd key is gone (lease expired or revoked, or the key deleted)",
      )),
      Ok(_) => Ok(()),
    }
  }

  /// Deletes our key if it is still ours (Ok(true)), then revokes the lease in the background.
  pub(crate) async fn release(self: &Arc<Self>, grant: &EtcdGrant) -> Result<bool> {
    let key = grant.key.as_bytes();
    let txn = TxnRequest {
      compare: vec![compare_create(key, Vec::new(), grant.token as i64)],
      success: vec![op(request_op::Request::RequestDeleteRange(
        DeleteRangeRequest {
          key: key.to_vec(),
          ..Default::default()
        },
      ))],
      failure: vec![],
    };
    let resp = self
      .client
      .txn("release the lock", self.client.op_deadline(None), txn)
      .await;
    self.revoke_later(grant.lease_id);
    Ok(resp?.succeeded)
  }

  pub(crate) async fn inspect(&self, dir: &str) -> Result<Option<RemoteLock>> {
    let client = &self.client;
    let queue = client
      .range(
        "read the lock queue",
        client.op_deadline(None),
        queue_range(dir.as_bytes(), 0),
      )
      .await?;
    match queue.kvs.split_first() {
      None => Ok(None),
      Some((holder, waiters)) => Ok(Some(self.describe(dir, holder, waiters.len()).await?)),
    }
  }

  pub(crate) async fn list(&self, root: &str) -> Result<Vec<RemoteLock>> {
    let client = &self.client;
    let all = client
      .range(
        "list the locks",
        client.op_deadline(None),
        queue_range(root.as_bytes(), 0),
      )
      .await?;
    // Keys arrive oldest first, so the first key seen under each lock prefix is its holder.
    let mut locks: BTreeMap<String, (KeyValue, usize)> = BTreeMap::new();
    for kv in all.kvs {
      let key = String::from_utf8_lossy(&kv.key);
      let Some((dir, _)) = key.rsplit_once('/') else {
        continue;
      };
      locks
        .entry(format!("{dir}/"))
        .and_modify(|(_, waiters)| *waiters += 1)
        .or_insert((kv, 0));
    }
    let mut out = Vec::with_capacity(locks.len());
    for (dir, (holder, waiters)) in locks {
      out.push(self.describe(&dir, &holder, waiters).await?);
    }
    Ok(out)
  }

  async fn describe(&self, dir: &str, holder: &KeyValue, waiters: usize) -> Result<RemoteLock> {
    let ttl_left = self
      .client
      .time_to_live(holder.lease, self.client.op_deadline(None))
      .await?;
    Ok(RemoteLock {
      prefix: dir.to_string(),
      holder_key: String::from_utf8_lossy(&holder.key).into_owned(),
      holder: match record::parse(&holder.value) {
        Contents::Record(r) => Some(r),
        Contents::Empty | Contents::Unreadable(_) => None,
      },
      token: holder.create_revision as u64,
      ttl_left,
      waiters,
    })
  }
}

fn is_ours(kv: Option<&KeyValue>, grant: &EtcdGrant) -> bool {
  kv.is_some_and(|kv| kv.create_revision as u64 == grant.token && kv.lease == grant.lease_id)
}

fn grant_dir(grant: &EtcdGrant) -> &str {
  grant
    .key
    .rsplit_once('/')
    .map_or(grant.key.as_str(), |(dir, _)| dir)
}

fn past_deadline(min_left: Duration) -> String {
  format!(
    "less than {} ms is left before its lease deadline (refreshes failed or came too late)",
    min_left.as_millis()
  )
}

fn lost(dir: &str, token: i64, why: &str) -> LockError {
  let token = if token > 0 {
    format!(" (token {token})")
  } else {
    String::new()
  };
  LockError::new(
    "ELOCKLOST",
    format!(
      "The etcd lock {dir}{token} is not held: {why}. Nothing was written under it; take the lock again and retry."
    ),
  )
}
