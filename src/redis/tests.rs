//! The Redis engine against real `redis-server` processes (see `test_server`): grants and
//! fencing tokens, compare-and-delete, refresh after expiry, FIFO order across connections, dead
//! holders, a restart without persistence, the command count of a 5 s wait, unreachable servers,
//! connections the server closed while idle.
//! Tests assert order and outcome; where they wait, they wait for an observable state.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::scripts::{Keys, Script};
use super::test_server::RedisServer;
use super::*;
use crate::identity;

const KEY: &str = "flowforge-lock:{test-project}:tasks.json";

fn engine(server: &RedisServer) -> RedisLocks {
  let config = RedisConfig::parse(&format!("{}?ttl=3000&refresh=500", server.url())).unwrap();
  RedisLocks::connect(config).unwrap()
}

fn holder() -> LockRecord {
  LockRecord::new_for(
    identity::current(),
    &record::new_lock_id(),
    "/p/.flowforge/tasks.json",
    identity::now_ms(),
  )
}

/// Waits until `cond` holds: a state change made by another thread or process, checked every
/// few ms; fails after a generous bound rather than hanging.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
  let give_up = Instant::now() + Duration::from_secs(60);
  while !cond() {
    assert!(Instant::now() < give_up, "gave up waiting for: {what}");
    thread::sleep(Duration::from_millis(5));
  }
}

fn waiters(locks: &RedisLocks, key: &str) -> u64 {
  locks.inspect(key).unwrap().map_or(0, |l| l.waiters)
}

#[test]
fn a_grant_carries_a_token_that_rises_and_respects_the_floor() {
  let server = RedisServer::start();
  let (a, b) = (engine(&server), engine(&server));
  let first = a
    .try_acquire(KEY, &holder(), 0)
    .unwrap()
    .expect("free lock");
  assert_eq!(first.token, 1);
  assert!(b.try_acquire(KEY, &holder(), 0).unwrap().is_none());
  let shown = b.inspect(KEY).unwrap().expect("held");
  assert_eq!(
    (shown.lock_id.as_str(), shown.token),
    (first.lock_id.as_str(), 1)
  );
  assert!(shown.holder_connected);
  assert_eq!(
    shown.holder.unwrap().pid,
    Some(i64::from(std::process::id()))
  );
  assert!(a.release(first).unwrap());
  let second = b.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  assert_eq!(second.token, 2);
  assert!(b.release(second).unwrap());
  // A floor above Redis's counter (a token recorded beside the data) wins.
  let third = a.try_acquire(KEY, &holder(), 100).unwrap().unwrap();
  assert_eq!(third.token, 101);
  // … and a lower one does not take the counter back.
  assert!(a.release(third).unwrap());
  assert_eq!(
    a.try_acquire(KEY, &holder(), 5).unwrap().unwrap().token,
    102
  );
}

#[test]
fn release_is_compare_and_delete() {
  let server = RedisServer::start();
  let locks = engine(&server);
  let grant = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let mut stale = grant.clone();
  stale.token += 1;
  assert!(!locks.release(stale).unwrap());
  let mut other = grant.clone();
  other.lock_id = record::new_lock_id();
  assert!(!locks.release(other).unwrap());
  assert_eq!(locks.inspect(KEY).unwrap().unwrap().token, grant.token);
  assert!(locks.release(grant.clone()).unwrap());
  assert!(locks.inspect(KEY).unwrap().is_none());
  assert!(!locks.release(grant).unwrap());
}

#[test]
fn refresh_extends_but_never_reacquires_an_expired_lock() {
  let server = RedisServer::start();
  let locks = engine(&server);
  let mut grant = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let before = grant.deadline;
  assert_eq!(locks.refresh(&mut grant), Refreshed::Held);
  assert!(grant.deadline >= before);

  // Expire it in Redis (an expiry time in the past deletes the key at once).
  let mut admin = server.connection();
  let _: () = redis::cmd("PEXPIREAT")
    .arg(KEY)
    .arg(1)
    .query(&mut admin)
    .unwrap();
  let Refreshed::Lost(reason) = locks.refresh(&mut grant) else {
    panic!("an expired lock must be lost")
  };
  assert!(reason.contains("expired"), "{reason}");
  assert!(
    locks.inspect(KEY).unwrap().is_none(),
    "refresh re-acquired it"
  );

  // Taken by someone else meanwhile: lost, and theirs stays untouched.
  let theirs = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let Refreshed::Lost(reason) = locks.refresh(&mut grant) else {
    panic!("another holder's lock must not be refreshed")
  };
  assert!(
    reason.contains(&format!("token {}", theirs.token)),
    "{reason}"
  );
  assert_eq!(locks.inspect(KEY).unwrap().unwrap().lock_id, theirs.lock_id);

  // Past our own deadline the lock counts as lost without asking Redis.
  let mut late = theirs.clone();
  late.deadline = Instant::now() - Duration::from_millis(1);
  assert!(matches!(locks.refresh(&mut late), Refreshed::Lost(_)));
}

#[test]
fn verify_checks_redis_and_our_own_deadline() {
  let server = RedisServer::start();
  let locks = engine(&server);
  let grant = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  locks.verify(&grant, Duration::from_millis(100)).unwrap();
  // More lease asked for than the 3 s TTL can give.
  let e = locks.verify(&grant, Duration::from_secs(10)).unwrap_err();
  assert_eq!(e.code, "ELOCKLOST");
  let mut late = grant.clone();
  late.deadline = Instant::now();
  let e = locks.verify(&late, Duration::from_millis(1)).unwrap_err();
  assert_eq!(e.code, "ELOCKLOST");
  assert!(e.message.contains("own lease"), "{}", e.message);
  let mut admin = server.connection();
  let _: () = redis::cmd("DEL").arg(KEY).query(&mut admin).unwrap();
  let e = locks.verify(&grant, Duration::from_millis(1)).unwrap_err();
  assert_eq!(e.code, "ELOCKLOST");
  assert!(
    e.message.contains("expired") && e.message.contains(KEY),
    "{}",
    e.message
  );
}

#[test]
fn waiters_on_separate_connections_are_served_in_arrival_order() {
  let server = RedisServer::start();
  let owner = engine(&server);
  let first = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let order = Arc::new(Mutex::new(Vec::new()));
  let mut threads = Vec::new();
  for n in 1..=4u64 {
    let locks = engine(&server);
    let order = order.clone();
    threads.push(thread::spawn(move || {
      let deadline = Some(Instant::now() + Duration::from_secs(60));
      let grant = locks
        .wait_acquire(KEY, &holder(), 0, deadline, &|| true)
        .unwrap()
        .expect("granted before the deadline");
      order.lock().unwrap().push((n, grant.token));
      assert!(locks.release(grant).unwrap());
    }));
    // The next one arrives only once this one is queued.
    wait_until("the waiter to queue", || waiters(&owner, KEY) == n);
  }
  assert!(owner.release(first).unwrap());
  for t in threads {
    t.join().unwrap();
  }
  let order = order.lock().unwrap().clone();
  assert_eq!(order, vec![(1, 2), (2, 3), (3, 4), (4, 5)]);
}

#[test]
fn a_dead_holder_is_taken_over_at_once_not_after_its_ttl() {
  let server = RedisServer::start();
  // A long lease, so that only the dead-connection rule can explain a prompt takeover.
  let config = RedisConfig::parse(&format!("{}?ttl=600000&refresh=5000", server.url())).unwrap();
  let holder_engine = RedisLocks::connect(config.clone()).unwrap();
  let waiter_engine = RedisLocks::connect(config).unwrap();
  let dead = holder_engine
    .try_acquire(KEY, &holder(), 0)
    .unwrap()
    .unwrap();
  let waiter = thread::spawn(move || {
    let deadline = Some(Instant::now() + Duration::from_secs(60));
    let grant = waiter_engine
      .wait_acquire(KEY, &holder(), 0, deadline, &|| true)
      .unwrap();
    (grant, waiter_engine)
  });
  let observer = engine(&server);
  wait_until("the waiter to queue", || waiters(&observer, KEY) == 1);
  // The holder's process dies: its connection closes.
  drop(holder_engine);
  let (grant, waiter_engine) = waiter.join().unwrap();
  let grant = grant.expect("the waiter took over within its 60 s deadline, not the 600 s TTL");
  assert_eq!(grant.token, dead.token + 1);
  // A one-shot try also removes a dead holder, once Redis has seen its connection close.
  drop(waiter_engine);
  let mut admin = server.connection();
  wait_until("Redis to drop the closed connection", || {
    let listed: String = redis::cmd("CLIENT")
      .arg("LIST")
      .arg("ID")
      .arg(grant.client_id)
      .query(&mut admin)
      .unwrap();
    listed.is_empty()
  });
  let taken = observer.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  assert_eq!(taken.token, grant.token + 1);
}

#[test]
fn a_holder_whose_connection_is_reset_registers_its_new_connection() {
  let server = RedisServer::start();
  let locks = engine(&server);
  let mut grant = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let old = grant.client_id;
  let mut admin = server.connection();
  let _: () = redis::cmd("CLIENT")
    .arg("KILL")
    .arg("ID")
    .arg(old)
    .query(&mut admin)
    .unwrap();
  // The reconnect re-registers the lock under the new connection, with no call of ours: Redis
  // shows its holder connected again (the killed one is gone from CLIENT LIST).
  wait_until("the lock to be registered under the new connection", || {
    locks
      .inspect(KEY)
      .unwrap()
      .is_some_and(|l| l.holder_connected)
  });
  // The lock is still ours (nobody waited), held by the new client.
  assert!(matches!(locks.refresh(&mut grant), Refreshed::Held));
  assert_ne!(grant.client_id, old);
  let shown = locks.inspect(KEY).unwrap().unwrap();
  assert!(shown.holder_connected);
  assert_eq!(shown.lock_id, grant.lock_id);
}

#[test]
fn connections_closed_while_idle_are_replaced_without_an_error() {
  let server = RedisServer::start();
  let locks = engine(&server);
  let first = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  assert!(locks.release(first).unwrap());
  // The server drops every client but the admin's (a `timeout` setting, a proxy restart, …):
  // the engine's pooled connection and its registered one.
  let mut admin = server.connection();
  let killed: u64 = redis::cmd("CLIENT")
    .arg("KILL")
    .arg("TYPE")
    .arg("normal")
    .arg("SKIPME")
    .arg("yes")
    .query(&mut admin)
    .unwrap();
  assert!(killed >= 2, "killed {killed} clients");
  // The next request meets the dead pooled connection and goes out again on a new one.
  let grant = locks
    .try_acquire(KEY, &holder(), 0)
    .expect("no error for a connection the server closed while it was idle")
    .expect("free");
  // And the lock ends up registered under the live, re-established connection.
  wait_until(
    "the holder to be registered under a live connection",
    || {
      locks
        .inspect(KEY)
        .unwrap()
        .is_some_and(|l| l.holder_connected)
    },
  );
  assert!(locks.release(grant).unwrap());
}

#[test]
fn a_crashed_waiter_does_not_stall_the_queue() {
  let server = RedisServer::start();
  let owner = engine(&server);
  let first = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  // A waiter queues first from its own connection, then its process dies (the connection
  // closes) while its place in the queue has seconds left.
  let mut ghost = server.connection();
  let ghost_id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut ghost).unwrap();
  let args = [
    "ghost",
    &ghost_id.to_string(),
    "3000",
    "{}",
    "0",
    "wait",
    "60000",
  ];
  let _: redis::Value = redis::cmd("EVAL")
    .arg(Script::Acquire.source())
    .arg(7)
    .arg(&Keys::new(KEY).all())
    .arg(&args)
    .query(&mut ghost)
    .unwrap();
  assert_eq!(waiters(&owner, KEY), 1);
  drop(ghost);
  let next = engine(&server);
  let next_thread = thread::spawn(move || {
    let deadline = Some(Instant::now() + Duration::from_secs(30));
    next
      .wait_acquire(KEY, &holder(), 0, deadline, &|| true)
      .unwrap()
  });
  wait_until("the live waiter to queue", || waiters(&owner, KEY) == 2);
  assert!(owner.release(first).unwrap());
  let grant = next_thread.join().unwrap();
  assert!(
    grant.is_some(),
    "the live waiter got the lock, before the ghost's 60 s place ran out"
  );
  assert_eq!(waiters(&owner, KEY), 0);
}

#[test]
fn a_release_hands_the_lock_over_in_the_same_step_and_a_waiter_that_left_gives_it_back() {
  let server = RedisServer::start();
  let owner = engine(&server);
  let first = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let keys = Keys::new(KEY);
  // A waiter queued from a connection of its own, whose caller is about to give up.
  let mut quitter = server.connection();
  let quitter_id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut quitter).unwrap();
  let mut eval = |script: Script, args: &[&str]| -> redis::Value {
    redis::cmd("EVAL")
      .arg(script.source())
      .arg(7)
      .arg(&keys.all())
      .arg(args)
      .query(&mut quitter)
      .unwrap()
  };
  let client = quitter_id.to_string();
  eval(
    Script::Acquire,
    &["quitter", &client, "3000", "{}", "0", "wait", "60000"],
  );
  let next = engine(&server);
  let next_thread = thread::spawn(move || {
    next
      .wait_acquire(KEY, &holder(), 0, None, &|| true)
      .unwrap()
  });
  wait_until("the second waiter to queue", || waiters(&owner, KEY) == 2);
  assert!(owner.release(first.clone()).unwrap());
  // The release itself granted the first waiter, before that waiter did anything.
  let shown = owner.inspect(KEY).unwrap().expect("handed over");
  assert_eq!(
    (shown.lock_id.as_str(), shown.token),
    ("quitter", first.token + 1)
  );
  // It gives up: leaving gives the lock back, and it goes on to the next waiter at once.
  eval(Script::Leave, &["quitter", &keys.channel]);
  let grant = next_thread.join().unwrap().expect("granted");
  assert_eq!(grant.token, first.token + 2);
}

#[test]
fn a_waiter_that_is_no_longer_wanted_leaves_the_queue() {
  let server = RedisServer::start();
  let owner = engine(&server);
  let first = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let wanted = Arc::new(AtomicBool::new(true));
  let waiter = Arc::new(engine(&server));
  let t = {
    let (waiter, wanted) = (waiter.clone(), wanted.clone());
    thread::spawn(move || {
      let still = || wanted.load(Ordering::SeqCst);
      waiter.wait_acquire(KEY, &holder(), 0, None, &still)
    })
  };
  wait_until("the waiter to queue", || waiters(&owner, KEY) == 1);
  wanted.store(false, Ordering::SeqCst);
  waiter.interrupt(KEY);
  assert_eq!(t.join().unwrap(), Ok(None));
  wait_until("its place to go", || waiters(&owner, KEY) == 0);
  // Without an interrupt, `wanted()` is still asked between wake-ups.
  let t = {
    let (waiter, wanted) = (waiter.clone(), wanted.clone());
    wanted.store(true, Ordering::SeqCst);
    thread::spawn(move || {
      let still = || wanted.load(Ordering::SeqCst);
      waiter.wait_acquire(KEY, &holder(), 0, None, &still)
    })
  };
  wait_until("the waiter to queue again", || waiters(&owner, KEY) == 1);
  wanted.store(false, Ordering::SeqCst);
  assert_eq!(t.join().unwrap(), Ok(None));
  wait_until("its place to go again", || waiters(&owner, KEY) == 0);
  // A deadline that passes also gives up, with the lock still the owner's.
  let deadline = Some(Instant::now() + Duration::from_millis(300));
  assert_eq!(
    waiter.wait_acquire(KEY, &holder(), 0, deadline, &|| true),
    Ok(None)
  );
  assert_eq!(owner.inspect(KEY).unwrap().unwrap().token, first.token);
}

/// Commands the client sends itself (never from inside a script), from INFO commandstats.
fn client_commands(server: &RedisServer) -> u64 {
  let info: String = redis::cmd("INFO")
    .arg("commandstats")
    .query(&mut server.connection())
    .unwrap();
  let direct = [
    "evalsha",
    "eval",
    "script|load",
    "client|id",
    "client|list",
    "subscribe",
    "unsubscribe",
    "ping",
    "hello",
    "client|setinfo",
    "select",
  ];
  info
    .lines()
    .filter_map(|l| l.strip_prefix("cmdstat_"))
    .filter_map(|l| l.split_once(":calls="))
    .filter(|(name, _)| direct.contains(name))
    .map(|(_, rest)| rest.split(',').next().unwrap().parse::<u64>().unwrap())
    .sum()
}

#[test]
fn a_five_second_wait_sends_only_a_handful_of_commands() {
  let server = RedisServer::start();
  // A lease longer than the wait, so that the owner needs no refresh meanwhile.
  let config = RedisConfig::parse(&format!("{}?ttl=60000&refresh=5000", server.url())).unwrap();
  let owner = RedisLocks::connect(config.clone()).unwrap();
  let waiter = RedisLocks::connect(config).unwrap();
  let grant = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let before = client_commands(&server);
  let deadline = Some(Instant::now() + Duration::from_secs(5));
  assert_eq!(
    waiter.wait_acquire(KEY, &holder(), 0, deadline, &|| true),
    Ok(None)
  );
  // Leaving the queue is sent in the background: wait for the queue to empty (read with ZCARD,
  // which is not counted).
  let mut admin = server.connection();
  let queue = format!("{KEY}:q");
  wait_until("the waiter to leave", || {
    redis::cmd("ZCARD")
      .arg(&queue)
      .query::<u64>(&mut admin)
      .unwrap()
      == 0
  });
  let sent = client_commands(&server) - before;
  eprintln!("commands sent by a 5 s wait: {sent}");
  // 1 s liveness checks (1 command), 3 s renewals (2), subscribe/unsubscribe, leave.
  assert!(sent <= 16, "a 5 s wait sent {sent} commands");
  assert!(owner.release(grant).unwrap());
}

/// The try made on the caller's thread (Node's event loop): none without an idle pooled
/// connection and a known CLIENT ID (a fresh engine would have to connect and ask), else one
/// EVALSHA; a refused one leaves no place in the queue.
#[test]
fn a_try_on_the_callers_thread_sends_one_command_over_an_idle_connection_or_none() {
  let server = RedisServer::start();
  let (a, b) = (engine(&server), engine(&server));
  let before = client_commands(&server);
  assert!(a
    .try_acquire_idle(KEY, &holder(), 0, None)
    .unwrap()
    .is_none());
  assert_eq!(client_commands(&server), before);
  // An ordinary try and release: the CLIENT ID is known and a pooled connection idle.
  let first = a.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  assert!(a.release(first).unwrap());
  let before = client_commands(&server);
  let grant = a
    .try_acquire_idle(KEY, &holder(), 0, None)
    .unwrap()
    .expect("free lock");
  assert_eq!(client_commands(&server) - before, 1);
  assert_eq!(grant.token, 2);
  assert!(b.try_acquire(KEY, &holder(), 0).unwrap().is_none());
  let before = client_commands(&server);
  assert!(b
    .try_acquire_idle(KEY, &holder(), 0, None)
    .unwrap()
    .is_none());
  assert_eq!(client_commands(&server) - before, 1);
  assert_eq!(waiters(&b, KEY), 0);
  assert!(a.release(grant).unwrap());
}

#[test]
fn a_restart_without_persistence_never_reuses_a_token() {
  let mut server = RedisServer::start();
  let locks = engine(&server);
  let mut last = 0;
  for _ in 0..3 {
    let g = locks.try_acquire(KEY, &holder(), last).unwrap().unwrap();
    assert!(g.token > last);
    last = g.token;
    assert!(locks.release(g).unwrap());
  }
  // Held across the restart, never committed: the token beside the data stays at `last`.
  let mut held = locks.try_acquire(KEY, &holder(), last).unwrap().unwrap();
  assert_eq!(held.token, last + 1);

  server.stop();
  let e = locks.try_acquire(KEY, &holder(), last).unwrap_err();
  assert_eq!(e.code, "ELOCKBACKEND");
  assert!(
    e.message.contains(&format!("127.0.0.1:{}", server.port)),
    "{}",
    e.message
  );
  assert!(matches!(locks.refresh(&mut held), Refreshed::Unknown(_)));
  assert_eq!(
    locks.verify(&held, Duration::ZERO).unwrap_err().code,
    "ELOCKLOST"
  );

  server.restart();
  // The first call after the outage may still meet the broken connection; then work resumes.
  let mut resumed = None;
  for _ in 0..5 {
    match locks.try_acquire(KEY, &holder(), last) {
      Ok(g) => {
        resumed = g;
        break;
      }
      Err(e) => assert_eq!(e.code, "ELOCKBACKEND"),
    }
  }
  let g = resumed.expect("work resumes after the restart");
  // The floor alone would give `held`'s token again; the lost counter resumes far above it.
  assert_eq!(
    g.token,
    last + (1 << 20),
    "the count resumes above the floor and every grant made before the loss"
  );
  assert!(g.token > held.token);
  // The lock held before the restart is gone from Redis: lost, never silently re-acquired.
  assert!(matches!(locks.refresh(&mut held), Refreshed::Lost(_)));
}

#[test]
fn an_unreachable_server_is_a_backend_error_naming_it() {
  let closed = TcpListener::bind("127.0.0.1:0").unwrap();
  let port = closed.local_addr().unwrap().port();
  drop(closed);
  let config = RedisConfig::parse(&format!("redis://127.0.0.1:{port}?connectTimeout=500")).unwrap();
  let e = RedisLocks::connect(config)
    .err()
    .expect("nothing listens there");
  assert_eq!(e.code, "ELOCKBACKEND");
  assert!(
    e.message.contains(&format!("127.0.0.1:{port}")),
    "{}",
    e.message
  );

  // A server that accepts and never answers: the connect timeout bounds the wait.
  let silent = TcpListener::bind("127.0.0.1:0").unwrap();
  let port = silent.local_addr().unwrap().port();
  let config = RedisConfig::parse(&format!("redis://127.0.0.1:{port}?connectTimeout=300")).unwrap();
  let e = RedisLocks::connect(config).err().expect("it never answers");
  assert_eq!(e.code, "ELOCKBACKEND");
  assert!(
    e.message.contains(&format!("127.0.0.1:{port}")),
    "{}",
    e.message
  );

  // A server that goes away while we wait: the wait ends with the error, not a hang.
  let mut server = RedisServer::start();
  let owner = engine(&server);
  let waiter = engine(&server);
  owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  server.stop();
  let deadline = Some(Instant::now() + Duration::from_secs(30));
  let e = waiter
    .wait_acquire(KEY, &holder(), 0, deadline, &|| true)
    .unwrap_err();
  assert_eq!(e.code, "ELOCKBACKEND");
  assert!(
    e.message.contains(&format!("127.0.0.1:{}", server.port)),
    "{}",
    e.message
  );
}

#[test]
fn usable_from_inside_another_tokio_runtime() {
  let server = RedisServer::start();
  let outer = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .unwrap();
  outer.block_on(async {
    let locks = engine(&server);
    let grant = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
    assert!(locks.release(grant).unwrap());
    // Dropping it here must not panic either.
    drop(locks);
  });
}

#[test]
fn list_scans_the_locks_under_a_prefix() {
  let server = RedisServer::start();
  let locks = engine(&server);
  let a = locks
    .try_acquire("flowforge-lock:{p1}:a.json", &holder(), 0)
    .unwrap()
    .unwrap();
  let b = locks
    .try_acquire("flowforge-lock:{p1}:b.json", &holder(), 0)
    .unwrap()
    .unwrap();
  locks
    .try_acquire("flowforge-lock:{p2}:a.json", &holder(), 0)
    .unwrap()
    .unwrap();
  // A queued waiter adds the queue's keys; they are not locks.
  let waiter = engine(&server);
  let deadline = Some(Instant::now() + Duration::from_millis(300));
  assert_eq!(
    waiter.wait_acquire(
      "flowforge-lock:{p1}:a.json",
      &holder(),
      0,
      deadline,
      &|| true
    ),
    Ok(None)
  );
  let listed = locks.list("flowforge-lock:{p1}:").unwrap();
  let ids: Vec<_> = listed.iter().map(|l| l.lock_id.clone()).collect();
  assert_eq!(ids, vec![a.lock_id, b.lock_id]);
  assert!(listed
    .iter()
    .all(|l| l.holder.is_some() && l.holder_connected));
}

#[test]
fn rediss_with_a_private_ca_and_a_plain_server_refused() {
  let dir = crate::test_support::temp_dir("redis-tls");
  let server = RedisServer::start_tls(&dir);
  let url = format!(
    "rediss://127.0.0.1:{}?ca={}",
    server.port,
    server.ca_file().display()
  );
  let locks = RedisLocks::connect(RedisConfig::parse(&url).unwrap()).unwrap();
  let grant = locks.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  assert_eq!(grant.token, 1);
  assert!(locks.release(grant).unwrap());
  assert!(locks.server_version().unwrap().starts_with('7'));

  // Without the CA the server's certificate is not trusted: a backend error, not a panic.
  let url = format!("rediss://127.0.0.1:{}?connectTimeout=2000", server.port);
  let e = RedisLocks::connect(RedisConfig::parse(&url).unwrap())
    .err()
    .unwrap();
  assert_eq!(e.code, "ELOCKBACKEND");
  // TLS spoken to a plain server.
  let plain = RedisServer::start();
  let url = format!("rediss://127.0.0.1:{}?connectTimeout=2000", plain.port);
  let e = RedisLocks::connect(RedisConfig::parse(&url).unwrap())
    .err()
    .unwrap();
  assert_eq!(e.code, "ELOCKBACKEND");
  assert!(
    e.message.contains(&format!("127.0.0.1:{}", plain.port)),
    "{}",
    e.message
  );
  let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_lost_wake_up_is_covered_by_the_timed_recheck() {
  let server = RedisServer::start();
  let owner = engine(&server);
  owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let waiter = engine(&server);
  let t = thread::spawn(move || {
    let deadline = Some(Instant::now() + Duration::from_secs(30));
    waiter.wait_acquire(KEY, &holder(), 0, deadline, &|| true)
  });
  wait_until("the waiter to queue", || waiters(&owner, KEY) == 1);
  // The lock vanishes without any message (as when the release's PUBLISH is lost).
  let _: () = redis::cmd("DEL")
    .arg(KEY)
    .query(&mut server.connection())
    .unwrap();
  let grant = t.join().unwrap().unwrap();
  assert_eq!(grant.map(|g| g.token), Some(2));
}

/// A waiter's thread held up (here in `wanted()`, as by a long GC pause or a loaded box) while
/// the lock is handed to it: the handed lock's lease runs out, another holder takes the lock,
/// and only then does the waiter read the hand-off message. That message is stale: the waiter
/// looks again, finds the lock held, and must not take the old grant as its own.
#[test]
fn a_handoff_message_read_after_the_lock_moved_on_is_not_a_grant() {
  let server = RedisServer::start();
  let owner = engine(&server);
  let first = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let waiter = HeldUpWaiter::start(Arc::new(engine(&server)));
  let (t, gate, stopped) = (waiter.thread, waiter.gate, waiter.stopped);
  wait_until("the waiter to queue", || waiters(&owner, KEY) == 1);
  let held_up = gate.lock().unwrap();
  wait_until("the waiter's thread to be held up", || {
    stopped.load(Ordering::SeqCst)
  });
  // The release hands the lock to the waiter (token 2) and publishes it.
  assert!(owner.release(first).unwrap());
  assert_eq!(owner.inspect(KEY).unwrap().unwrap().token, 2);
  // Its lease (3 s) runs out unused; another process takes the lock (token 3).
  let other = engine(&server);
  let mut taken = None;
  wait_until("the handed lock to lapse and be taken", || {
    taken = other.try_acquire(KEY, &holder(), 0).unwrap();
    taken.is_some()
  });
  let taken = taken.unwrap();
  assert_eq!(taken.token, 3);
  drop(held_up);
  // The waiter looks again and queues behind the new holder.
  wait_until("the waiter to queue again", || waiters(&owner, KEY) == 1);
  assert!(other.release(taken.clone()).unwrap());
  let grant = t.join().unwrap().unwrap().expect("granted");
  assert!(
    grant.token > taken.token,
    "the waiter took the stale hand-off (token {}) while token {} was held",
    grant.token,
    taken.token
  );
  owner_verifies(&server, &grant);
}

/// A thread waiting for `KEY` through `engine` that the test can hold up: while the test holds
/// `gate`, the waiter's next `wanted()` sets `stopped` and blocks until the gate is let go.
struct HeldUpWaiter {
  thread: thread::JoinHandle<Result<Option<RedisGrant>>>,
  gate: Arc<Mutex<()>>,
  stopped: Arc<AtomicBool>,
}

impl HeldUpWaiter {
  fn start(engine: Arc<RedisLocks>) -> HeldUpWaiter {
    let gate = Arc::new(Mutex::new(()));
    let stopped = Arc::new(AtomicBool::new(false));
    let thread = {
      let (gate, stopped) = (gate.clone(), stopped.clone());
      thread::spawn(move || {
        let wanted = || {
          if gate.try_lock().is_err() {
            stopped.store(true, Ordering::SeqCst);
            drop(gate.lock().unwrap());
          }
          true
        };
        engine.wait_acquire(KEY, &holder(), 0, None, &wanted)
      })
    };
    HeldUpWaiter {
      thread,
      gate,
      stopped,
    }
  }
}

/// A waiter that finds the lock already handed to it ("ours already": the hand-off message was
/// lost, or read only after the waiter's next look) counts its lease from that look. Redis must
/// count it from there too: the lease handed over earlier would run out in Redis before the
/// waiter's own deadline, and the next holder would be granted while the waiter still counts
/// the lock as its own.
#[test]
fn a_lock_found_already_handed_over_is_held_no_longer_than_redis_keeps_it() {
  let server = RedisServer::start();
  let owner = engine(&server);
  let first = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  // Kept alive past the wait: its connection closing would hand the lock on at once.
  let waiter = Arc::new(engine(&server));
  let held_up_waiter = HeldUpWaiter::start(waiter.clone());
  let (t, gate, stopped) = (
    held_up_waiter.thread,
    held_up_waiter.gate,
    held_up_waiter.stopped,
  );
  wait_until("the waiter to queue", || waiters(&owner, KEY) == 1);
  // The waiter looks again when the owner's lease would end; the owner releases well before.
  let ttl_left = || owner.inspect(KEY).unwrap().and_then(|l| l.ttl_left);
  wait_until("a third of the owner's lease to be gone", || {
    ttl_left().is_some_and(|left| left <= Duration::from_millis(2000))
  });
  let held_up = gate.lock().unwrap();
  wait_until("the waiter's thread to be held up", || {
    stopped.load(Ordering::SeqCst)
  });
  let owner_left = ttl_left().unwrap();
  assert!(owner.release(first).unwrap());
  assert_eq!(owner.inspect(KEY).unwrap().unwrap().token, 2);
  // Past the end of the owner's lease (the waiter's next look is due), with the handed lease
  // still running in Redis.
  let handed_left = Duration::from_millis(3000) - owner_left - Duration::from_millis(100);
  wait_until("the waiter's next look to be due", || {
    ttl_left().is_some_and(|left| left <= handed_left)
  });
  drop(held_up);
  let grant = t.join().unwrap().unwrap().expect("granted");
  assert_eq!(grant.token, 2);
  // The next holder is granted only once Redis lets the lease go.
  let other = engine(&server);
  let mut next = None;
  wait_until("the lease to run out and the lock to be taken", || {
    next = other.try_acquire(KEY, &holder(), 0).unwrap();
    next.is_some()
  });
  assert!(
    Instant::now() >= grant.deadline,
    "token {} was granted while the holder of token {} still counted the lock as its own",
    next.unwrap().token,
    grant.token
  );
}

/// `grant` is the lock as Redis holds it now.
fn owner_verifies(server: &RedisServer, grant: &RedisGrant) {
  let shown = engine(server).inspect(KEY).unwrap().expect("held");
  assert_eq!(
    (shown.lock_id.as_str(), shown.token),
    (grant.lock_id.as_str(), grant.token)
  );
}

#[test]
fn a_frozen_holder_loses_the_lock_at_its_ttl_and_learns_it() {
  let server = RedisServer::start();
  // The holder stays connected but never refreshes (frozen); ttl 3 s.
  let frozen = engine(&server);
  let mut stale = frozen.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let next = engine(&server);
  let deadline = Some(Instant::now() + Duration::from_secs(30));
  let grant = next
    .wait_acquire(KEY, &holder(), 0, deadline, &|| true)
    .unwrap()
    .expect("granted once the frozen holder's lease ran out");
  assert_eq!(grant.token, stale.token + 1);
  // Its own deadline (ttl − margin) passed before Redis let the lease go.
  assert!(Instant::now() >= stale.deadline);
  assert_eq!(
    frozen.verify(&stale, Duration::ZERO).unwrap_err().code,
    "ELOCKLOST"
  );
  stale.deadline = Instant::now() + Duration::from_secs(60);
  let Refreshed::Lost(reason) = frozen.refresh(&mut stale) else {
    panic!("a frozen holder's refresh must not succeed")
  };
  assert!(
    reason.contains(&format!("token {}", grant.token)),
    "{reason}"
  );
}

#[test]
fn without_client_list_a_dead_holder_waits_for_its_ttl() {
  let server = RedisServer::start();
  let mut admin = server.connection();
  let _: () = redis::cmd("ACL")
    .arg(&[
      "SETUSER",
      "limited",
      "on",
      ">pw",
      "~*",
      "&*",
      "+@all",
      "-client|list",
    ])
    .query(&mut admin)
    .unwrap();
  let url = format!(
    "redis://limited:pw@127.0.0.1:{}?ttl=1000&refresh=300",
    server.port
  );
  let config = RedisConfig::parse(&url).unwrap();
  let dead_holder = RedisLocks::connect(config.clone()).unwrap();
  let first = dead_holder.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  drop(dead_holder);
  let locks = RedisLocks::connect(config).unwrap();
  // Cannot tell that the holder is gone: the lock is busy until its 1 s lease runs out.
  assert!(locks.try_acquire(KEY, &holder(), 0).unwrap().is_none());
  let deadline = Some(Instant::now() + Duration::from_secs(30));
  let grant = locks
    .wait_acquire(KEY, &holder(), 0, deadline, &|| true)
    .unwrap()
    .unwrap();
  assert_eq!(grant.token, first.token + 1);
}

#[test]
fn the_engine_can_be_shared_between_threads() {
  fn shareable<T: Send + Sync>() {}
  shareable::<RedisLocks>();
  shareable::<RedisGrant>();
}

#[test]
fn contended_handoffs_never_overlap_and_tokens_only_rise() {
  let server = RedisServer::start();
  let inside = Arc::new(AtomicBool::new(false));
  let last_token = Arc::new(Mutex::new(0u64));
  let threads: Vec<_> = (0..4)
    .map(|_| {
      let locks = engine(&server);
      let (inside, last_token) = (inside.clone(), last_token.clone());
      thread::spawn(move || {
        for _ in 0..25 {
          let deadline = Some(Instant::now() + Duration::from_secs(60));
          let grant = locks
            .wait_acquire(KEY, &holder(), 0, deadline, &|| true)
            .unwrap()
            .expect("granted");
          assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
          {
            let mut last = last_token.lock().unwrap();
            assert!(grant.token > *last, "token {} after {}", grant.token, *last);
            *last = grant.token;
          }
          locks.verify(&grant, Duration::from_millis(100)).unwrap();
          inside.store(false, Ordering::SeqCst);
          assert!(locks.release(grant).unwrap());
        }
      })
    })
    .collect();
  for t in threads {
    t.join().unwrap();
  }
  assert_eq!(*last_token.lock().unwrap(), 100);
}

/// A project directory with its data dir, and the target of one of its files.
fn project_target(name: &str) -> (std::path::PathBuf, crate::paths::Target) {
  let root = crate::test_support::temp_dir("redis-backend");
  std::fs::create_dir_all(root.join(".flowforge")).unwrap();
  let file = root.join(".flowforge").join(name);
  let target = crate::lock_table::prepare(&file.to_string_lossy()).unwrap();
  (root, target)
}

#[test]
fn behind_the_backend_seam_grants_carry_tokens_above_the_fence_file() {
  use crate::backend::{Backend, Request};
  let server = RedisServer::start();
  let url = format!("{}?ttl=3000&refresh=500", server.url());
  let (a, b) = (
    RedisBackend::connect(&url).unwrap(),
    RedisBackend::connect(&url).unwrap(),
  );
  let (root, target) = project_target("tasks.json");
  let request = Request {
    file: target.file.clone(),
    stale_after: Duration::from_secs(30),
    mode: crate::backend::LockMode::Exclusive,
    priority: 0.0,
    arrival: std::time::Instant::now(),
  };
  // A token recorded beside the data is the floor; with no counter in Redis (a restart lost
  // it), the count resumes 2^20 above it.
  crate::fence::check_and_record(&target, 41, "an-earlier-hold").unwrap();
  let token = 41 + (1 << 20);
  let grant = a.try_acquire(&target, &request).unwrap().expect("free");
  assert_eq!(grant.fencing_token(), Some(token));
  assert_eq!(grant.refresh_interval(), Some(Duration::from_millis(500)));
  grant.verify().unwrap();
  assert!(b.try_acquire(&target, &request).unwrap().is_none());
  assert!(b.is_locked(&target, Duration::from_secs(30)).unwrap());
  let info = b
    .lock_info(&target, Duration::from_secs(30))
    .unwrap()
    .unwrap();
  assert_eq!(info["token"], token);
  assert_eq!(info["fencingToken"], token);
  assert_eq!(info["lockId"], grant.lock_id());
  assert_eq!(info["state"], "held");
  assert_eq!(info["file"], target.file.to_string_lossy().as_ref());
  // Both "machines" found the same project id, so they share the key.
  let listed = b.list(&root, Duration::from_secs(30)).unwrap();
  assert_eq!(listed.len(), 1);
  assert!(
    std::fs::read_to_string(crate::paths::lock_dir_of(&root).join("project-id"))
      .unwrap()
      .trim()
      .len()
      == 16
  );

  // A waiter behind the seam gets it when the holder releases, for whoever heads its queue.
  let waiting = thread::spawn({
    let target = target.clone();
    let request = request.clone();
    move || {
      let head = || Some(request.clone());
      b.wait_acquire(&target, &head)
        .unwrap()
        .map(|g| g.fencing_token())
    }
  });
  wait_until("the waiter to queue", || {
    a.engine()
      .inspect(&a.key(&target).unwrap())
      .unwrap()
      .is_some_and(|l| l.waiters == 1)
  });
  grant.release();
  assert_eq!(waiting.join().unwrap(), Some(Some(token + 1)));
  let _ = std::fs::remove_dir_all(root);
}

/// A hand-off read a while after the waiter's request is taken on trust only if the lease it
/// counts from that request outlasts the first refresh: with `refresh` above half the lease (a
/// valid setting), trusting "half a lease left" handed the holder a deadline its first refresh
/// came too late for, and the heartbeat reported a lock lost that it held.
#[test]
fn a_trusted_handoff_leaves_the_holder_time_for_its_first_refresh() {
  let server = RedisServer::start();
  let config = RedisConfig::parse(&format!("{}?ttl=3000&refresh=2000", server.url())).unwrap();
  let owner = engine(&server);
  let first = owner.try_acquire(KEY, &holder(), 0).unwrap().unwrap();
  let waiter = RedisLocks::connect(config.clone()).unwrap();
  let t = thread::spawn(move || waiter.wait_acquire(KEY, &holder(), 0, None, &|| true));
  wait_until("the waiter to queue", || waiters(&owner, KEY) == 1);
  // Handed over 0.8 s after its request (it waits for the message meanwhile: the holder's lease
  // has 2 s more): more than half of the 2.7 s lease is left, less than the 2 s to the first
  // refresh. (A slower box reads it later, past half a lease: then it is confirmed anyway.)
  let queued_by = Instant::now();
  wait_until("0.8 s since the request", || {
    queued_by.elapsed() >= Duration::from_millis(800)
  });
  assert!(owner.release(first).unwrap());
  let grant = t.join().unwrap().unwrap().expect("granted");
  let left = grant.deadline.saturating_duration_since(Instant::now());
  assert!(
    left >= config.refresh,
    "the holder's deadline is {left:?} away, before its first refresh ({:?})",
    config.refresh
  );
}
