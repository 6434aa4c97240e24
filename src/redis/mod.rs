//! The Redis lock engine: grants with fencing tokens, a FIFO queue of waiters across machines
//! woken through pub/sub, compare-and-PEXPIRE refresh, compare-and-delete release, and the
//! immediate release of a holder whose connection is gone. The algorithm, the scripts and the
//! deadline arithmetic are described in docs/redis-algorithm.md.
//!
//! The API is synchronous and may be called from any thread, including one that is inside
//! another tokio runtime. Requests go out on a blocking connection from the caller's own thread
//! (no hop to another thread and back: on a loaded 2-core box each hop costs as much as a
//! loopback round trip). The connection that is registered as holder or waiter, and carries the
//! pub/sub wake-ups, is a redis-rs ConnectionManager on this engine's own runtime; the few calls
//! made on it hand their work to that runtime and wait on a std channel (never `block_on` on the
//! caller's thread).

mod backend;
mod config;
mod scripts;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};

pub use backend::RedisBackend;
pub use config::{redact, RedisConfig, DEFAULT_REFRESH, DEFAULT_TTL};
use scripts::{Keys, Reply, Script};

use crate::backend::Refreshed;
use crate::error::{LockError, Result};
use crate::record::{self, LockRecord};

/// How often a waiter checks that whoever it waits for (the holder, or the first waiter) still
/// has a connection: a dead holder is found within this long. One command.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a waiter renews its place in the queue (and re-reads the lock, in case a pub/sub
/// message was lost). One round trip of two commands.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// A waiter's place lasts this long without renewal: a waiter that is frozen (its connection
/// still open) holds up the queue at most this long; one that died is removed within
/// `CHECK_EVERY` because its connection is gone.
const WAITER_TTL: Duration = Duration::from_secs(6);
/// For this long after the server refused a try on the caller's thread, acquires of that lock
/// queue at once: a lock that is contended is most likely still taken (or has waiters, whom a
/// try never passes), and a try would only add a round trip on the event loop before the
/// queue's own request. Once a second: a lock that stopped being contended gets its
/// caller-thread tries back within a second, for one wasted round trip a second while it is.
const CONTENDED_FOR: Duration = Duration::from_secs(1);
/// How often a waiting caller re-checks `wanted()` and its deadline between wake-ups (local
/// only, no command), so an abort is noticed promptly without `interrupt`.
pub const WANTED_POLL: Duration = Duration::from_millis(50);

/// A lock granted by Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisGrant {
  /// The key as given by the caller.
  pub key: String,
  pub lock_id: String,
  /// The fencing token: higher than every token granted before for this key.
  pub token: u64,
  /// Our own end of the lease, on the monotonic clock: start of the grant (or of the last
  /// successful refresh) + ttl − safety margin. Past it we count the lock as lost, whatever
  /// Redis says.
  pub deadline: Instant,
  /// The CLIENT ID of the connection registered as the holder.
  pub client_id: u64,
}

/// A lock as Redis shows it, for `status` and `getLockInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLock {
  /// The Redis key of the lock.
  pub key: String,
  pub lock_id: String,
  pub token: u64,
  /// The holder's record, when it could be read.
  pub holder: Option<LockRecord>,
  /// Lease left, as Redis counts it.
  pub ttl_left: Option<Duration>,
  /// Waiters queued behind the holder (whose own place has not expired).
  pub waiters: u64,
  /// Whether the holder's connection is still open (a dead holder is taken over at once).
  pub holder_connected: bool,
}

/// What a waiter is woken by.
enum Wake {
  /// A pub/sub message on the lock's channel: the id of the waiter the lock was handed to, with
  /// its token (or without one: that waiter is to ask for it itself).
  Turn(String, Option<u64>),
  /// Look again now: the connection was re-established (messages may have been lost), or the
  /// caller interrupted the wait.
  Check,
}

#[derive(Default)]
struct Shared {
  /// The lock channel → the one waiter of this process on that lock.
  wakers: Mutex<HashMap<String, mpsc::Sender<Wake>>>,
  /// Locks held through this connection: key → (lockId, token). After a reconnect they are
  /// re-registered under the new CLIENT ID at once, so waiters do not take them for dead.
  held: Mutex<HashMap<String, (String, u64)>>,
  /// The lock channels subscribed to.
  subscribed: Mutex<HashSet<String>>,
  /// Lock key → when the server last refused a try on the caller's thread (`try_acquire_idle`).
  refused: Mutex<HashMap<String, Instant>>,
  /// CLIENT ID of a blocker → when a waiter's `CLIENT LIST` last showed it connected.
  seen_connected: Mutex<HashMap<u64, Instant>>,
  /// Set when this user may not run CLIENT LIST: dead holders then wait for their TTL.
  no_client_list: AtomicBool,
  /// The CLIENT ID of the managed connection as last seen (0: ask); see `scripts::run`.
  client_id: AtomicU64,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
  m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who a waiter is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blocker {
  Holder { lock_id: String, client: u64 },
  Waiter { id: String, client: u64 },
}

impl Blocker {
  fn client(&self) -> u64 {
    match self {
      Blocker::Holder { client, .. } | Blocker::Waiter { client, .. } => *client,
    }
  }
}

enum Step {
  Granted {
    token: u64,
    client: u64,
  },
  /// With the lease the holder has left, when the lock is held, the CLIENT ID our place in the
  /// queue is registered under, and the last token granted so far (a hand-off to us made after
  /// this refusal carries a higher one).
  Blocked(Blocker, Option<Duration>, u64, u64),
}

/// One acquisition: the caller's key, its Redis keys, and what the grant script is given.
struct Attempt<'a> {
  key: &'a str,
  keys: Keys,
  /// The holder record's lockId (a fresh one if it has none): unique to this acquisition, so a
  /// retried grant script recognises its own grant.
  lock_id: String,
  holder_json: String,
  token_floor: u64,
}

impl<'a> Attempt<'a> {
  fn new(key: &'a str, holder: &LockRecord, token_floor: u64) -> Self {
    Attempt {
      key,
      keys: Keys::new(key),
      lock_id: holder.lock_id.clone().unwrap_or_else(record::new_lock_id),
      holder_json: holder.to_json().to_string(),
      token_floor,
    }
  }
}

/// Blocking connections for the requests made on the caller's thread. Idle ones are kept for the
/// next caller; one that failed is dropped, never reused (a late reply could still be on its way).
/// There are as many as callers at once (usually one or two), each a client of its own in Redis.
struct Pool {
  client: redis::Client,
  idle: Mutex<Vec<Pooled>>,
}

struct Pooled {
  conn: redis::Connection,
  /// The read and write timeouts set on its socket (`None`: not yet), so that a request with the
  /// same limit as the last costs no `setsockopt`.
  timeout: Option<Duration>,
}

pub struct RedisLocks {
  runtime: Option<tokio::runtime::Runtime>,
  handle: tokio::runtime::Handle,
  /// Registered as the holder of our locks and the client of our places in queues (it closes
  /// when this process dies), and subscribed to the wake-up channels.
  conn: ConnectionManager,
  pool: Pool,
  config: RedisConfig,
  shared: Arc<Shared>,
}

impl Drop for RedisLocks {
  fn drop(&mut self) {
    // Allowed from inside another runtime too (a plain drop would panic there); closes the
    // connection, so Redis releases nothing by itself but waiters see our locks' holder gone.
    if let Some(runtime) = self.runtime.take() {
      runtime.shutdown_background();
    }
  }
}

impl RedisLocks {
  /// Connects (within the config's connect timeout). An unreachable server is `ELOCKBACKEND`.
  pub fn connect(config: RedisConfig) -> Result<RedisLocks> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
      .worker_threads(1)
      .thread_name("flowforge-lock-redis")
      .enable_all()
      .build()
      .map_err(|e| {
        LockError::new(
          "ELOCKBACKEND",
          format!("Cannot start the Redis client's thread: {e}."),
        )
      })?;
    let handle = runtime.handle().clone();
    let client = match &config.tls_ca {
      None => redis::Client::open(config.client_url()),
      Some(ca) => {
        let pem = std::fs::read(ca)
          .map_err(|e| LockError::io(&e, "Cannot read the Redis TLS CA certificate", ca))?;
        let certs = redis::TlsCertificates {
          client_tls: None,
          root_cert: Some(pem),
        };
        redis::Client::build_with_tls(config.client_url(), certs)
      }
    }
    .map_err(|e| {
      LockError::invalid_value(format!(
        "The Redis backend for {} is not usable: {e}.",
        config.addr
      ))
    })?;
    let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
    let manager_config = ConnectionManagerConfig::new()
      .set_connection_timeout(Some(config.connect_timeout))
      .set_response_timeout(Some(config.command_timeout))
      .set_number_of_retries(3)
      .set_min_delay(Duration::from_millis(50))
      .set_max_delay(Duration::from_millis(500))
      .set_push_sender(push_tx)
      .set_automatic_resubscription();
    let shared = Arc::new(Shared::default());
    let pool = Pool {
      client: client.clone(),
      idle: Mutex::new(Vec::new()),
    };
    let connecting = ConnectionManager::new_with_config(client, manager_config);
    let conn = bridge(
      &handle,
      &config,
      "connect to",
      config.connect_timeout,
      connecting,
    )?;
    handle.spawn(dispatch(push_rx, shared.clone(), conn.clone()));
    Ok(RedisLocks {
      runtime: Some(runtime),
      handle,
      conn,
      pool,
      config,
      shared,
    })
  }

  pub fn config(&self) -> &RedisConfig {
    &self.config
  }

  /// The server's version (`redis_version` of INFO server), for `doctor`.
  pub fn server_version(&self) -> Result<String> {
    let info: String = self.blocking("ask", None, |conn| {
      redis::cmd("INFO").arg("server").query(conn)
    })?;
    Ok(
      info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string(),
    )
  }

  /// One try: the grant, or `None` when the lock is held (by a live holder) or others queue for
  /// it. A holder whose connection is gone is removed first.
  pub fn try_acquire(
    &self,
    key: &str,
    holder: &LockRecord,
    token_floor: u64,
  ) -> Result<Option<RedisGrant>> {
    let attempt = Attempt::new(key, holder, token_floor);
    loop {
      let start = Instant::now();
      let step = self.step(&attempt, "try", None);
      if step.is_err() {
        self.abandon(&attempt, true);
      }
      match step? {
        Step::Granted { token, client } => {
          return Ok(Some(self.granted(&attempt, token, client, start)))
        }
        Step::Blocked(blocker, ..) => {
          if self.client_alive(blocker.client(), None)?
            || !self.take_over(&attempt.keys, &blocker, None)?
          {
            return Ok(None);
          }
        }
      }
    }
  }

  /// One try on the caller's thread, which may be Node's event loop, made only when it waits on
  /// nothing but one answer: over an idle pooled connection (a connect could take the whole
  /// connect timeout), with the registered connection's CLIENT ID known, within the command
  /// timeout (as a release) and within `within`, the caller's whole wait: a server that does not
  /// answer in that time is `ELOCKBACKEND` within the caller's timeout, as from the queue. `None`
  /// when refused, and also when not made: a wait of 0 (a single try must not hold the event
  /// loop: it runs on a thread of its own), no connection idle, the idle one found closed, or the
  /// lock looked contended (see [`CONTENDED_FOR`]). A blocker is not checked for liveness here:
  /// the waiting thread the caller then queues on checks it at once.
  pub fn try_acquire_idle(
    &self,
    key: &str,
    holder: &LockRecord,
    token_floor: u64,
    within: Option<Duration>,
  ) -> Result<Option<RedisGrant>> {
    let client = self.shared.client_id.load(Ordering::Relaxed);
    let contended = guard(&self.shared.refused)
      .get(key)
      .is_some_and(|at| at.elapsed() < CONTENDED_FOR);
    if client == 0 || contended || within == Some(Duration::ZERO) {
      return Ok(None);
    }
    let Some(conn) = guard(&self.pool.idle).pop() else {
      return Ok(None);
    };
    let attempt = Attempt::new(key, holder, token_floor);
    let keys = attempt.keys.all();
    let mut args = self.acquire_args(&attempt, "try");
    args[1] = client.to_string();
    let limit = within.map_or(self.config.command_timeout, |wait| {
      wait.min(self.config.command_timeout)
    });
    let start = Instant::now();
    let sent = self.request_on(conn, limit, |conn| {
      scripts::run_blocking(conn, Script::Acquire, &keys, &args, client)
    });
    let reply = match sent {
      Ok(reply) => reply,
      Err(e) => {
        // The grant may have been made before the connection failed.
        self.abandon(&attempt, true);
        if found_closed(&e) {
          // The waiting thread connects anew, off the event loop.
          guard(&self.pool.idle).clear();
          return Ok(None);
        }
        return Err(self.failed("run a script on", limit, &e));
      }
    };
    match step_of(&reply) {
      Step::Granted { token, client } => {
        guard(&self.shared.refused).remove(key);
        Ok(Some(self.granted(&attempt, token, client, start)))
      }
      Step::Blocked(..) => {
        let mut refused = guard(&self.shared.refused);
        refused.retain(|_, at| at.elapsed() < CONTENDED_FOR);
        refused.insert(key.to_string(), Instant::now());
        Ok(None)
      }
    }
  }

  /// Waits in the lock's queue until granted, until `deadline` (→ `None`), or until `wanted()`
  /// says no (→ `None`; checked every [`WANTED_POLL`], or at once after [`RedisLocks::interrupt`]);
  /// either way a waiter that gives up leaves the queue. One wait per lock per process at a time
  /// (the process-local queue sits in front). Wake-ups come from
  /// pub/sub; between them the waiter sends one command a second (is whoever we wait for still
  /// connected?) and renews its place every few seconds.
  pub fn wait_acquire(
    &self,
    key: &str,
    holder: &LockRecord,
    token_floor: u64,
    deadline: Option<Instant>,
    wanted: &dyn Fn() -> bool,
  ) -> Result<Option<RedisGrant>> {
    let attempt = Attempt::new(key, holder, token_floor);
    let channel = attempt.keys.channel.clone();
    let (tx, rx) = mpsc::channel();
    guard(&self.shared.wakers).insert(channel.clone(), tx);
    let outcome = self
      .subscribe(&attempt.keys, deadline)
      .and_then(|()| self.wait_in_queue(&attempt, deadline, wanted, &rx));
    guard(&self.shared.wakers).remove(&channel);
    match &outcome {
      Ok(Some(_)) => {}
      Ok(None) => self.abandon(&attempt, false),
      Err(_) => self.abandon(&attempt, true),
    }
    outcome
  }

  fn wait_in_queue(
    &self,
    attempt: &Attempt,
    deadline: Option<Instant>,
    wanted: &dyn Fn() -> bool,
    rx: &mpsc::Receiver<Wake>,
  ) -> Result<Option<RedisGrant>> {
    let keys = &attempt.keys;
    // The blocker last seen connected; a new one is checked at once, unless its connection was
    // seen connected less than CHECK_EVERY ago (the next holder of a contended lock is mostly a
    // process whose previous hold was just checked): then it is checked when that check is due.
    let mut known: Option<Blocker> = None;
    let mut look = true;
    // Another waiter's turn came (the lock changed hands): read the lock again at the next check.
    let mut stale = false;
    // When to renew our place and read the lock again: every RENEW_EVERY, and right after the
    // holder's lease would run out (a frozen holder's lock expires without any message).
    let mut next_look = Instant::now();
    let mut next_check = Instant::now() + CHECK_EVERY;
    // When our last refused request was sent, the connection it registered our place under, and
    // the last token granted before it: a lock handed to us on a release after that request was
    // granted after that instant, to that connection, with a higher token.
    let mut queued: Option<(Instant, u64, u64)> = None;
    loop {
      if !wanted() || deadline.is_some_and(|d| Instant::now() >= d) {
        return Ok(None);
      }
      let now = Instant::now();
      let check = now >= next_check;
      let mut just_checked = false;
      if look || now >= next_look || (check && stale) {
        let start = Instant::now();
        match self.step(attempt, "wait", deadline)? {
          Step::Granted { token, client } => {
            return Ok(Some(self.granted(attempt, token, client, start)))
          }
          Step::Blocked(blocker, lease_left, client, last_token) => {
            queued = Some((start, client, last_token));
            let lease_end = lease_left.map_or(RENEW_EVERY, |d| d + Duration::from_millis(5));
            next_look = start + lease_end.min(RENEW_EVERY);
            look = false;
            stale = false;
            if known.as_ref() != Some(&blocker) {
              known = None;
              next_check = match self.seen_connected(blocker.client()) {
                Some(seen) => seen + CHECK_EVERY,
                None => {
                  if !self.check_blocker(keys, &blocker, deadline)? {
                    look = true;
                    continue;
                  }
                  Instant::now() + CHECK_EVERY
                }
              };
              known = Some(blocker);
              just_checked = true;
            }
          }
        }
      }
      if check && !just_checked {
        next_check = Instant::now() + CHECK_EVERY;
        if let Some(blocker) = &known {
          if !self.check_blocker(keys, blocker, deadline)? {
            known = None;
            look = true;
            continue;
          }
        }
      }
      let wake_at = next_check.min(next_look).min(Instant::now() + WANTED_POLL);
      let until = deadline.map_or(wake_at, |d| d.min(wake_at));
      match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        Ok(Wake::Turn(id, Some(token))) if id == attempt.lock_id && wanted() => {
          if let Some(grant) = self.handed(attempt, token, queued, deadline)? {
            return Ok(Some(grant));
          }
          look = true;
        }
        Ok(Wake::Turn(id, _)) if id == attempt.lock_id => look = true,
        Ok(Wake::Turn(..)) => stale = true,
        Ok(Wake::Check) => look = true,
        Err(_) => {}
      }
    }
  }

  /// The lock was handed to us by a release (or a takeover, or a waiter that gave up) with
  /// `token`. Our lease is counted from the send of our last refused request (the grant came
  /// after it), unless that leaves less than half a lease or less than the time to our first
  /// refresh (which would find that deadline passed), or our connection changed since (the
  /// grant names the old one), or the token is not above the last one granted before that
  /// request (the message was sent before it: a hand-off read late, whose lock may have lapsed
  /// and gone to another holder since): then one compare-and-PEXPIRE confirms it and registers
  /// our connection, and the lease counts from that. `None`: it is not ours after all (look
  /// again).
  fn handed(
    &self,
    attempt: &Attempt,
    token: u64,
    queued: Option<(Instant, u64, u64)>,
    deadline: Option<Instant>,
  ) -> Result<Option<RedisGrant>> {
    let lease = self.config.ttl - self.config.margin();
    if let Some((sent, client, last_token)) = queued {
      let fresh = sent + lease >= Instant::now() + (lease / 2).max(self.config.refresh);
      let after_it = token > last_token;
      if fresh && after_it && client == self.shared.client_id.load(Ordering::Relaxed) {
        return Ok(Some(self.granted(attempt, token, client, sent)));
      }
    }
    let start = Instant::now();
    let args = [
      attempt.lock_id.clone(),
      token.to_string(),
      String::new(),
      self.config.ttl.as_millis().to_string(),
    ];
    Ok(match self.own(&attempt.keys, args, deadline)? {
      Ok((_, client)) => Some(self.granted(attempt, token, client, start)),
      Err(_) => None,
    })
  }

  /// Wakes this process's waiter on `key` (if any) so that it calls `wanted()` again now.
  pub fn interrupt(&self, key: &str) {
    if let Some(tx) = guard(&self.shared.wakers).get(&Keys::new(key).channel) {
      let _ = tx.send(Wake::Check);
    }
  }

  /// Compare-and-PEXPIRE. Never re-acquires a lock that expired.
  pub fn refresh(&self, grant: &mut RedisGrant) -> Refreshed {
    let start = Instant::now();
    if start >= grant.deadline {
      self.forget(grant);
      return Refreshed::Lost(format!(
        "our own lease on {} ended before this refresh (the last refresh that succeeded was more \
         than {} ms ago)",
        grant.key,
        (self.config.ttl - self.config.margin()).as_millis()
      ));
    }
    let keys = Keys::new(&grant.key);
    let ttl = self.config.ttl.as_millis().to_string();
    let args = [
      grant.lock_id.clone(),
      grant.token.to_string(),
      String::new(),
      ttl,
    ];
    match self.own(&keys, args, None) {
      Ok(Ok((_, client))) => {
        grant.deadline = start + self.config.ttl - self.config.margin();
        grant.client_id = client;
        Refreshed::Held
      }
      Ok(Err(reason)) => {
        self.forget(grant);
        Refreshed::Lost(reason)
      }
      Err(e) => Refreshed::Unknown(e.message),
    }
  }

  /// Right before a commit: `Ok` when Redis still holds our lock (same lockId and token) with at
  /// least `min_left` of lease, and our own deadline is at least `min_left` away; else
  /// `ELOCKLOST` saying why (a network error included: we cannot prove the lock is ours).
  pub fn verify(&self, grant: &RedisGrant, min_left: Duration) -> Result<()> {
    let lost = |why: String| {
      Err(LockError::new(
        "ELOCKLOST",
        format!(
          "The Redis lock on {} (token {}) cannot be trusted for this write: {why}. The write \
           was not made; take the lock again and retry.",
          grant.key, grant.token
        ),
      ))
    };
    let own_deadline_ok = || Instant::now() + min_left <= grant.deadline;
    if !own_deadline_ok() {
      return lost(format!(
        "our own lease ends in less than {} ms",
        min_left.as_millis()
      ));
    }
    let keys = Keys::new(&grant.key);
    let args = [
      grant.lock_id.clone(),
      grant.token.to_string(),
      String::new(),
      "0".into(),
    ];
    let deadline = Some(grant.deadline);
    match self.own(&keys, args, deadline) {
      Ok(Ok((pttl, _))) if pttl >= 0 && (pttl as u128) < min_left.as_millis() => lost(format!(
        "Redis gives it only {pttl} ms more, less than the {} ms needed",
        min_left.as_millis()
      )),
      Ok(Ok(_)) if !own_deadline_ok() => lost(format!(
        "our own lease ends in less than {} ms",
        min_left.as_millis()
      )),
      Ok(Ok(_)) => Ok(()),
      Ok(Err(reason)) => lost(reason),
      Err(e) => lost(e.message),
    }
  }

  /// Compare-and-delete; wakes the next waiter. `false` when the lock was no longer ours.
  pub fn release(&self, grant: RedisGrant) -> Result<bool> {
    self.forget(&grant);
    let keys = Keys::new(&grant.key);
    let args = vec![grant.lock_id, grant.token.to_string(), keys.channel.clone()];
    let reply = self.script(Script::Release, &keys.all(), args, None)?;
    Ok(reply.int(0) == 1)
  }

  /// Whether Redis holds the lock: one round trip (no liveness check of the holder).
  pub fn is_held(&self, key: &str) -> Result<bool> {
    let reply = self.script(Script::Inspect, &Keys::new(key).all(), vec![], None)?;
    Ok(reply.len() >= 6)
  }

  /// The lock as Redis shows it, or `None` when it is not held. A second round trip when held:
  /// whether the holder's connection is still open.
  pub fn inspect(&self, key: &str) -> Result<Option<RemoteLock>> {
    let keys = Keys::new(key);
    let reply = self.script(Script::Inspect, &keys.all(), vec![], None)?;
    if reply.len() < 6 {
      return Ok(None);
    }
    let client = reply.text(2).parse().unwrap_or(0);
    let holder = match record::parse(reply.text(3).as_bytes()) {
      record::Contents::Record(r) => Some(r),
      _ => None,
    };
    let pttl = reply.int(4);
    Ok(Some(RemoteLock {
      key: keys.lock.clone(),
      lock_id: reply.text(0),
      token: reply.text(1).parse().unwrap_or(0),
      holder,
      ttl_left: u64::try_from(pttl).ok().map(Duration::from_millis),
      waiters: u64::try_from(reply.int(5)).unwrap_or(0),
      holder_connected: self.client_alive(client, None)?,
    }))
  }

  /// Every held lock whose key starts with `key_prefix` (SCAN, never KEYS).
  pub fn list(&self, key_prefix: &str) -> Result<Vec<RemoteLock>> {
    let pattern = format!("{}*", scripts::glob_escape(key_prefix));
    let mut cursor = 0u64;
    let mut found = Vec::new();
    loop {
      let (next, keys): (u64, Vec<String>) = self.blocking("list locks on", None, |conn| {
        redis::cmd("SCAN")
          .arg(cursor)
          .arg("MATCH")
          .arg(&pattern)
          .arg("TYPE")
          .arg("hash")
          .arg("COUNT")
          .arg(500)
          .query(conn)
      })?;
      for key in keys {
        // The queue's client table is a hash too; it has no lockId and inspects as `None`.
        if let Some(lock) = self.inspect(&key)? {
          found.push(lock);
        }
      }
      if next == 0 {
        break;
      }
      cursor = next;
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
  }

  fn granted(&self, attempt: &Attempt, token: u64, client: u64, start: Instant) -> RedisGrant {
    let lock_id = attempt.lock_id.clone();
    guard(&self.shared.held).insert(attempt.key.to_string(), (lock_id.clone(), token));
    // The managed connection was re-established while the grant was on its way, so the grant
    // names the old one and the re-registration (which clears the cached id first, then goes
    // through `held`) may have missed it: register the new one now. A failure leaves it to the
    // next refresh; meanwhile a waiter may take the lock over, which fencing makes safe.
    if self.shared.client_id.load(Ordering::Relaxed) != client {
      let keys = Keys::new(attempt.key);
      let args = [
        lock_id.clone(),
        token.to_string(),
        String::new(),
        "0".into(),
      ];
      let _ = self.own(&keys, args, None);
    }
    RedisGrant {
      key: attempt.key.to_string(),
      lock_id,
      token,
      deadline: start + self.config.ttl - self.config.margin(),
      client_id: client,
    }
  }

  fn forget(&self, grant: &RedisGrant) {
    let mut held = guard(&self.shared.held);
    if held
      .get(&grant.key)
      .is_some_and(|(id, _)| *id == grant.lock_id)
    {
      held.remove(&grant.key);
    }
  }

  /// One run of the acquire script.
  fn step(&self, attempt: &Attempt, mode: &str, deadline: Option<Instant>) -> Result<Step> {
    let args = self.acquire_args(attempt, mode);
    let reply = self.script(Script::Acquire, &attempt.keys.all(), args, deadline)?;
    Ok(step_of(&reply))
  }

  /// The acquire script's arguments, the CLIENT ID (slot 1) still blank.
  fn acquire_args(&self, attempt: &Attempt, mode: &str) -> Vec<String> {
    vec![
      attempt.lock_id.clone(),
      String::new(),
      self.config.ttl.as_millis().to_string(),
      attempt.holder_json.clone(),
      attempt.token_floor.to_string(),
      mode.to_string(),
      WAITER_TTL.as_millis().to_string(),
    ]
  }

  /// `true` when the blocker is still connected; `false` after removing a dead one.
  fn check_blocker(
    &self,
    keys: &Keys,
    blocker: &Blocker,
    deadline: Option<Instant>,
  ) -> Result<bool> {
    if self.client_alive(blocker.client(), deadline)? {
      let mut seen = guard(&self.shared.seen_connected);
      seen.retain(|_, at| at.elapsed() < CHECK_EVERY);
      seen.insert(blocker.client(), Instant::now());
      return Ok(true);
    }
    self.take_over(keys, blocker, deadline)?;
    Ok(false)
  }

  /// When a waiter last saw connection `client` connected, if less than [`CHECK_EVERY`] ago.
  fn seen_connected(&self, client: u64) -> Option<Instant> {
    guard(&self.shared.seen_connected)
      .get(&client)
      .copied()
      .filter(|at| at.elapsed() < CHECK_EVERY)
  }

  /// Removes a holder (or first waiter) whose connection is gone, if it is still that one.
  fn take_over(&self, keys: &Keys, blocker: &Blocker, deadline: Option<Instant>) -> Result<bool> {
    let (kind, id) = match blocker {
      Blocker::Holder { lock_id, .. } => ("holder", lock_id),
      Blocker::Waiter { id, .. } => ("waiter", id),
    };
    let args = vec![
      kind.to_string(),
      id.clone(),
      blocker.client().to_string(),
      keys.channel.clone(),
    ];
    let reply = self.script(Script::Takeover, &keys.all(), args, deadline)?;
    Ok(reply.int(0) == 1)
  }

  /// Whether connection `client` is still open (CLIENT is not allowed in scripts, hence here).
  fn client_alive(&self, client: u64, deadline: Option<Instant>) -> Result<bool> {
    if self.shared.no_client_list.load(Ordering::Relaxed) {
      return Ok(true);
    }
    if client == 0 {
      return Ok(false);
    }
    let listed: Option<String> = self.blocking("ask", deadline, |conn| {
      let asked = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("ID")
        .arg(client)
        .query(conn);
      match asked {
        Err(e) if refused_command(&e) => Ok(None),
        other => other.map(Some),
      }
    })?;
    match listed {
      Some(listed) => Ok(!listed.trim().is_empty()),
      None => {
        // An ACL without CLIENT LIST (or a renamed CLIENT command): every holder counts as
        // connected, so a dead one is released by its TTL, as in plain Redis locks.
        self.shared.no_client_list.store(true, Ordering::Relaxed);
        Ok(true)
      }
    }
  }

  /// The refresh script: `Ok((pttl, client))` while ours, `Err(reason)` when not.
  fn own(
    &self,
    keys: &Keys,
    args: [String; 4],
    deadline: Option<Instant>,
  ) -> Result<std::result::Result<(i64, u64), String>> {
    let reply = self.script(
      Script::Refresh,
      std::slice::from_ref(&keys.lock),
      args.to_vec(),
      deadline,
    )?;
    if reply.int(0) == 1 {
      return Ok(Ok((reply.int(1), reply.client)));
    }
    Ok(Err(if reply.text(1) == "expired" {
      format!(
        "it expired in Redis (nobody refreshed it within its {} ms lease)",
        self.config.ttl.as_millis()
      )
    } else {
      format!(
        "Redis now holds it for another holder (token {})",
        reply.text(2)
      )
    }))
  }

  /// Leaves the queue; after an error also drops a grant we may have been given without
  /// hearing the reply (`lockId` is unique to this attempt, so no one else's lock matches). Not
  /// waited for: a failure here only leaves state that expires on its own.
  fn abandon(&self, attempt: &Attempt, maybe_granted: bool) {
    let (keys, lock_id) = (&attempt.keys, attempt.lock_id.as_str());
    let mut conn = self.conn.clone();
    let mut pipe = redis::pipe();
    if maybe_granted {
      let args = [lock_id, "*", &keys.channel];
      pipe.add_command(scripts::evalsha(Script::Release, &keys.all(), &args));
    }
    let args = [lock_id, &keys.channel];
    pipe
      .add_command(scripts::evalsha(Script::Leave, &keys.all(), &args))
      .ignore_errors();
    self.handle.spawn(async move {
      let _ = scripts::query(&mut conn, &pipe).await;
    });
  }

  /// Subscribes to the lock's channel the first time this engine waits for it, and stays
  /// subscribed (re-subscribed after a reconnect): the next wait costs no command, and no
  /// UNSUBSCRIBE can race with it. Messages only flow while someone queues for the lock.
  fn subscribe(&self, keys: &Keys, deadline: Option<Instant>) -> Result<()> {
    if guard(&self.shared.subscribed).contains(&keys.channel) {
      return Ok(());
    }
    let mut conn = self.conn.clone();
    let channel = keys.channel.clone();
    self.run("subscribe on", deadline, async move {
      conn.subscribe(channel).await
    })?;
    guard(&self.shared.subscribed).insert(keys.channel.clone());
    Ok(())
  }

  /// Runs `script` on a blocking connection. The scripts that record our connection
  /// (`client_slot`) are given the managed connection's CLIENT ID; if that connection was
  /// re-established meanwhile (the id changed), the script, idempotent for the same caller, runs
  /// again with the new id.
  fn script(
    &self,
    script: Script,
    keys: &[String],
    mut args: Vec<String>,
    deadline: Option<Instant>,
  ) -> Result<Reply> {
    let doing = "run a script on";
    let Some(slot) = script.client_slot() else {
      return self.blocking(doing, deadline, |conn| {
        scripts::run_blocking(conn, script, keys, &args, 0)
      });
    };
    // A connection that changes under every try gives up after a few; the caller sees the last.
    let mut attempt = 0;
    loop {
      attempt += 1;
      let id = self.client_id(deadline)?;
      args[slot] = id.to_string();
      let reply = self.blocking(doing, deadline, |conn| {
        scripts::run_blocking(conn, script, keys, &args, id)
      })?;
      if attempt == 3 || self.shared.client_id.load(Ordering::Relaxed) == id {
        return Ok(reply);
      }
    }
  }

  /// The managed connection's CLIENT ID: cached, asked again after a reconnect cleared it.
  fn client_id(&self, deadline: Option<Instant>) -> Result<u64> {
    let cached = self.shared.client_id.load(Ordering::Relaxed);
    if cached != 0 {
      return Ok(cached);
    }
    let mut conn = self.conn.clone();
    let id: u64 = self.run("ask", deadline, async move {
      redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await
    })?;
    self.shared.client_id.store(id, Ordering::Relaxed);
    Ok(id)
  }

  /// Within the caller's deadline, but never so short that a healthy server cannot answer.
  fn limit(&self, deadline: Option<Instant>) -> Duration {
    let limit = self.config.command_timeout;
    deadline.map_or(limit, |d| {
      limit.min(
        d.saturating_duration_since(Instant::now())
          .max(Duration::from_millis(100)),
      )
    })
  }

  /// Runs `f` on a blocking connection from the pool (a new one when none is idle), on this
  /// thread, within [`RedisLocks::limit`]. A kept connection that turns out closed (the server
  /// restarted, or dropped it while idle) is replaced once, with the rest of the idle ones.
  fn blocking<T>(
    &self,
    doing: &str,
    deadline: Option<Instant>,
    mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
  ) -> Result<T> {
    let mut kept = guard(&self.pool.idle).pop();
    loop {
      let limit = self.limit(deadline);
      let reused = kept.is_some();
      let conn = match kept.take() {
        Some(conn) => conn,
        None => Pooled {
          conn: self
            .pool
            .client
            .get_connection_with_timeout(limit)
            .map_err(|e| backend_error(&self.config, "connect to", &e))?,
          timeout: None,
        },
      };
      match self.request_on(conn, limit, &mut f) {
        Ok(value) => return Ok(value),
        Err(e) if reused && found_closed(&e) => guard(&self.pool.idle).clear(),
        Err(e) => return Err(self.failed(doing, limit, &e)),
      }
    }
  }

  /// Runs `f` on `conn` within `limit`. A connection that worked goes back to the pool; one that
  /// failed is dropped (a late reply could still be on its way).
  fn request_on<T>(
    &self,
    mut pooled: Pooled,
    limit: Duration,
    f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
  ) -> redis::RedisResult<T> {
    let conn = &mut pooled.conn;
    if pooled.timeout != Some(limit) {
      conn.set_read_timeout(Some(limit))?;
      conn.set_write_timeout(Some(limit))?;
      pooled.timeout = Some(limit);
    }
    let value = f(conn)?;
    guard(&self.pool.idle).push(pooled);
    Ok(value)
  }

  fn failed(&self, doing: &str, limit: Duration, e: &redis::RedisError) -> LockError {
    if e.is_timeout() {
      no_answer(&self.config, limit)
    } else {
      backend_error(&self.config, doing, e)
    }
  }

  fn run<T: Send + 'static>(
    &self,
    doing: &str,
    deadline: Option<Instant>,
    fut: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
  ) -> Result<T> {
    bridge(&self.handle, &self.config, doing, self.limit(deadline), fut)
  }
}

/// Runs `fut` on the engine's runtime and waits for it on a std channel, at most `limit`.
fn bridge<T: Send + 'static>(
  handle: &tokio::runtime::Handle,
  config: &RedisConfig,
  doing: &str,
  limit: Duration,
  fut: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
) -> Result<T> {
  let (tx, rx) = mpsc::sync_channel(1);
  handle.spawn(async move {
    let _ = tx.send(tokio::time::timeout(limit, fut).await);
  });
  // The runtime enforces `limit`; the extra second only guards against a wedged runtime.
  match rx.recv_timeout(limit + Duration::from_secs(1)) {
    Ok(Ok(Ok(value))) => Ok(value),
    Ok(Ok(Err(e))) => Err(backend_error(config, doing, &e)),
    Ok(Err(_)) | Err(_) => Err(no_answer(config, limit)),
  }
}

/// What a run of the acquire script says.
fn step_of(reply: &Reply) -> Step {
  if reply.int(0) == 1 {
    return Step::Granted {
      token: u64::try_from(reply.int(1)).unwrap_or(0),
      client: reply.client,
    };
  }
  let id = reply.text(2);
  let client = reply.text(3).parse().unwrap_or(0);
  // Unknown: every hand-off is then confirmed by a round trip.
  let last_token = reply.text(5).parse().unwrap_or(u64::MAX);
  if reply.text(1) == "holder" {
    let lease_left = u64::try_from(reply.int(4)).ok().map(Duration::from_millis);
    return Step::Blocked(
      Blocker::Holder {
        lock_id: id,
        client,
      },
      lease_left,
      reply.client,
      last_token,
    );
  }
  Step::Blocked(
    Blocker::Waiter { id, client },
    None,
    reply.client,
    last_token,
  )
}

fn no_answer(config: &RedisConfig, limit: Duration) -> LockError {
  LockError::new(
    "ELOCKBACKEND",
    format!(
      "Redis at {} did not answer within {} ms. Check that redis-server is running there and \
       reachable from this machine (or choose another backend with FLOWFORGE_LOCK_BACKEND).",
      config.addr,
      limit.as_millis()
    ),
  )
}

/// A kept connection turned out closed while idle: the request got no answer (the scripts are
/// idempotent for the same attempt, so it may be sent again on a new connection).
fn found_closed(e: &redis::RedisError) -> bool {
  e.is_connection_dropped() && !e.is_timeout()
}

/// The server refuses the command itself: the ACL forbids it, or it was renamed away.
fn refused_command(e: &redis::RedisError) -> bool {
  e.code() == Some("NOPERM") || e.detail().is_some_and(|d| d.contains("unknown command"))
}

fn backend_error(config: &RedisConfig, doing: &str, e: &redis::RedisError) -> LockError {
  let hint = match e.kind() {
    redis::ErrorKind::AuthenticationFailed => {
      "Check the user name and password in the backend URL."
    }
    _ if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() => {
      "Check that redis-server is running there and reachable from this machine (or choose \
       another backend with FLOWFORGE_LOCK_BACKEND)."
    }
    _ => "Check the server's log; flowforge-lock needs Redis 7.0 or newer with Lua scripting.",
  };
  LockError::new(
    "ELOCKBACKEND",
    format!("Could not {doing} Redis at {}: {e}. {hint}", config.addr),
  )
}

/// Routes pub/sub messages to the waiting threads, and on a reconnect wakes every waiter (a
/// message may have been lost) and re-registers the locks we hold under the new CLIENT ID.
async fn dispatch(
  mut rx: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
  shared: Arc<Shared>,
  conn: ConnectionManager,
) {
  while let Some(push) = rx.recv().await {
    match push.kind {
      PushKind::Message => {
        let text = |v: Option<&Value>| match v {
          Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
          _ => String::new(),
        };
        let channel = text(push.data.first());
        if let Some(tx) = guard(&shared.wakers).get(&channel) {
          let message = text(push.data.get(1));
          let wake = match message.split_once(' ') {
            Some((id, token)) => Wake::Turn(id.to_string(), token.parse().ok()),
            None => Wake::Turn(message, None),
          };
          let _ = tx.send(wake);
        }
      }
      PushKind::Disconnection => {
        shared.client_id.store(0, Ordering::Relaxed);
        for tx in guard(&shared.wakers).values() {
          let _ = tx.send(Wake::Check);
        }
        let held: Vec<_> = guard(&shared.held)
          .iter()
          .map(|(k, v)| (k.clone(), v.clone()))
          .collect();
        for (key, (lock_id, token)) in held {
          let mut conn = conn.clone();
          let shared = shared.clone();
          tokio::spawn(async move {
            let keys = [Keys::new(&key).lock];
            // The refresh script without touching the lease: lockId, token, CLIENT ID, ttl 0.
            let args = vec![
              lock_id.clone(),
              token.to_string(),
              String::new(),
              "0".into(),
            ];
            let run = scripts::reregister(&mut conn, &keys, args, &shared.client_id);
            if let Ok(reply) = run.await {
              if reply.int(0) != 1 {
                let mut held = guard(&shared.held);
                if held.get(&key).is_some_and(|(id, _)| *id == lock_id) {
                  held.remove(&key);
                }
              }
            }
          });
        }
      }
      _ => {}
    }
  }
}
