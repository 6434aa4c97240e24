//! The etcd engine against real etcd (a single member, and a three-member cluster whose leader
//! is killed mid-run). Waits are on observable events (the queue's length in etcd, a grant
//! arriving); assertions are on order and outcome, never on times.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::test_server::{wait_until, EtcdCluster, EtcdServer};
use super::*;
use crate::identity;
use crate::record::LockRecord;

fn holder(file: &str) -> LockRecord {
  LockRecord::new_for(identity::current(), &new_lock_id(), file, 1_700_000_000_000)
}

/// Short leases so that expiry tests end quickly; etcd's floor here is 1 s.
fn fast(endpoints: Vec<String>) -> EtcdConfig {
  EtcdConfig::with_ttl(endpoints, Duration::from_secs(2), None)
}

fn connect(config: EtcdConfig) -> EtcdLocks {
  EtcdLocks::connect(config).expect("connect to the test etcd")
}

fn soon() -> Option<Instant> {
  Some(Instant::now() + Duration::from_secs(60))
}

fn always() -> bool {
  true
}

/// Revokes a lease as an operator (or an expiring server) would.
fn revoke(locks: &EtcdLocks, lease: i64) {
  let queue = Arc::clone(&locks.queue);
  locks
    .run(async move {
      queue
        .client
        .revoke(lease, queue.client.op_deadline(None))
        .await
    })
    .unwrap()
    .unwrap();
}

/// The queue's keys in order, with their leases.
fn queue_leases(locks: &EtcdLocks, prefix: &str) -> Vec<i64> {
  let queue = Arc::clone(&locks.queue);
  let dir = recipe::lock_dir(prefix);
  locks
    .run(async move {
      let req = client::queue_range(dir.as_bytes(), 0);
      queue
        .client
        .range("test", queue.client.op_deadline(None), req)
        .await
    })
    .unwrap()
    .unwrap()
    .kvs
    .iter()
    .map(|kv| kv.lease)
    .collect()
}

fn waiters(locks: &EtcdLocks, prefix: &str) -> usize {
  locks.inspect(prefix).unwrap().map_or(0, |l| l.waiters)
}

#[test]
fn a_grant_carries_a_rising_token_and_the_holder_record() {
  let server = EtcdServer::start();
  let a = connect(EtcdConfig::new(vec![server.endpoint()]));
  let b = connect(EtcdConfig::new(vec![server.endpoint()]));
  let me = holder("/p/.flowforge/tasks.json");

  let g1 = a.try_acquire("/ff/t1", &me).unwrap().expect("uncontended");
  assert!(g1.token > 0);
  assert_eq!(Some(g1.lock_id.clone()), me.lock_id);
  assert!(g1.key.starts_with("/ff/t1/"));
  assert!(g1.deadline > Instant::now());
  assert_eq!(b.try_acquire("/ff/t1", &holder("x")).unwrap(), None);
  a.verify(&g1, Duration::ZERO).unwrap();

  let seen = b.inspect("/ff/t1").unwrap().expect("held");
  assert_eq!(seen.token, g1.token);
  assert_eq!(seen.holder_key, g1.key);
  assert_eq!(
    seen.holder.as_ref().and_then(|r| r.lock_id.clone()),
    me.lock_id
  );
  assert_eq!(seen.holder.as_ref().and_then(|r| r.file.clone()), me.file);
  assert_eq!(seen.waiters, 0);
  assert!(seen.ttl_left.is_some());
  let listed = b.list("/ff/").unwrap();
  assert_eq!(listed.len(), 1);
  assert_eq!(listed[0].prefix, "/ff/t1/");

  assert!(a.release(g1.clone()).unwrap());
  assert_eq!(b.inspect("/ff/t1").unwrap(), None);
  let g2 = b
    .try_acquire("/ff/t1", &holder("x"))
    .unwrap()
    .expect("free again");
  assert!(
    g2.token > g1.token,
    "tokens rise: {} then {}",
    g1.token,
    g2.token
  );
  assert!(!a.release(g1).unwrap(), "a stale grant releases nothing");
  assert!(b.release(g2).unwrap());
}

/// The lease for the next acquire is granted and kept alive ahead of time, so even after idling
/// longer than a lease an uncontended acquire is the single Txn, on that lease.
#[test]
fn an_idle_engine_still_acquires_on_its_kept_alive_spare_lease() {
  let server = EtcdServer::start();
  let locks = connect(fast(vec![server.endpoint()]));
  let spare = locks.queue.spare().expect("granted at connect");
  let first_deadline = spare.deadline;
  wait_until(
    || {
      locks
        .queue
        .spare()
        .is_some_and(|s| s.deadline > first_deadline + locks.config().ttl)
    },
    "the spare lease to be renewed past its first ttl",
  );
  let g = locks
    .try_acquire("/ff/idle", &holder("i"))
    .unwrap()
    .unwrap();
  assert_eq!(g.lease_id, spare.id);
  assert!(locks.release(g).unwrap());
}

#[test]
fn waiters_are_served_first_come_first_served() {
  let server = EtcdServer::start();
  let config = EtcdConfig::new(vec![server.endpoint()]);
  let first = connect(config.clone());
  let shared = Arc::new(connect(config.clone()));
  let g0 = first
    .try_acquire("/ff/fifo", &holder("0"))
    .unwrap()
    .unwrap();
  let order = Arc::new(Mutex::new(Vec::new()));
  let mut threads = Vec::new();
  for i in 0..4 {
    // Two waiters share one engine, two have their own: order must not depend on that.
    let locks = if i % 2 == 0 {
      Arc::clone(&shared)
    } else {
      Arc::new(connect(config.clone()))
    };
    let order = Arc::clone(&order);
    threads.push(std::thread::spawn(move || {
      let g = locks
        .wait_acquire("/ff/fifo", &holder(&i.to_string()), soon(), &always)
        .unwrap()
        .expect("granted");
      order.lock().unwrap().push((i, g.token));
      assert!(locks.release(g).unwrap());
    }));
    wait_until(
      || waiters(&first, "/ff/fifo") == i + 1,
      "the waiter to join the queue",
    );
  }
  assert!(first.release(g0.clone()).unwrap());
  for t in threads {
    t.join().unwrap();
  }
  let order = order.lock().unwrap().clone();
  assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
  let tokens: Vec<u64> = std::iter::once(g0.token)
    .chain(order.iter().map(|o| o.1))
    .collect();
  assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

#[test]
fn a_revoked_lease_loses_the_lock_and_the_next_waiter_takes_over() {
  let server = EtcdServer::start();
  let config = EtcdConfig::new(vec![server.endpoint()]);
  let a = connect(config.clone());
  let b = Arc::new(connect(config));
  let mut g = a.try_acquire("/ff/revoke", &holder("a")).unwrap().unwrap();
  let waiter = {
    let b = Arc::clone(&b);
    std::thread::spawn(move || b.wait_acquire("/ff/revoke", &holder("b"), soon(), &always))
  };
  wait_until(|| waiters(&a, "/ff/revoke") == 1, "b to queue");

  revoke(&a, g.lease_id);
  let next = waiter.join().unwrap().unwrap().expect("b takes over");
  assert!(next.token > g.token);
  assert!(matches!(a.refresh(&mut g), Refreshed::Lost(_)));
  let err = a.verify(&g, Duration::ZERO).unwrap_err();
  assert_eq!(err.code, "ELOCKLOST");
  assert!(err.message.contains("/ff/revoke"), "{}", err.message);
  assert!(!a.release(g).unwrap());
  b.verify(&next, Duration::ZERO).unwrap();
  assert!(b.release(next).unwrap());
}

#[test]
fn an_expired_holder_loses_and_is_replaced() {
  let server = EtcdServer::start();
  let a = connect(fast(vec![server.endpoint()]));
  let b = connect(fast(vec![server.endpoint()]));
  // `a` stops refreshing, as a frozen or killed process would.
  let mut g = a.try_acquire("/ff/expire", &holder("a")).unwrap().unwrap();
  let next = b
    .wait_acquire("/ff/expire", &holder("b"), soon(), &always)
    .unwrap()
    .expect("b takes over once a's lease expires");
  assert!(next.token > g.token);
  assert!(
    Instant::now() >= g.deadline,
    "granted only after a's own deadline"
  );
  assert_eq!(a.verify(&g, Duration::ZERO).unwrap_err().code, "ELOCKLOST");
  assert!(matches!(a.refresh(&mut g), Refreshed::Lost(_)));
  // b, refreshing, keeps it past its first ttl.
  let mut next = next;
  let first_deadline = next.deadline;
  assert_eq!(b.refresh(&mut next), Refreshed::Held);
  assert!(next.deadline >= first_deadline);
  b.verify(&next, Duration::ZERO).unwrap();
  assert!(b.release(next).unwrap());
}

#[test]
fn a_killed_holder_engine_is_replaced_after_its_lease() {
  let server = EtcdServer::start();
  let b = connect(fast(vec![server.endpoint()]));
  let token = {
    let a = connect(fast(vec![server.endpoint()]));
    a.try_acquire("/ff/killed", &holder("a"))
      .unwrap()
      .unwrap()
      .token
    // `a` is dropped without releasing: its keepalives stop, as if the process died.
  };
  let g = b
    .wait_acquire("/ff/killed", &holder("b"), soon(), &always)
    .unwrap()
    .expect("granted after the dead holder's lease");
  assert!(g.token > token);
  assert!(b.release(g).unwrap());
}

#[test]
fn a_waiter_whose_own_lease_lapsed_fails_after_its_wait() {
  let server = EtcdServer::start();
  // A long refresh: no keepalive happens during the test, so only the post-wait re-read of
  // our own key can notice that our place is gone.
  let config = EtcdConfig::with_ttl(
    vec![server.endpoint()],
    Duration::from_secs(30),
    Some(Duration::from_secs(25)),
  );
  let a = connect(config.clone());
  let b = Arc::new(connect(config.clone()));
  let c = Arc::new(connect(config));
  let g = a.try_acquire("/ff/lapse", &holder("a")).unwrap().unwrap();
  let wait = |locks: &Arc<EtcdLocks>, name: &'static str| {
    let locks = Arc::clone(locks);
    std::thread::spawn(move || locks.wait_acquire("/ff/lapse", &holder(name), soon(), &always))
  };
  let b_wait = wait(&b, "b");
  wait_until(|| waiters(&a, "/ff/lapse") == 1, "b to queue");
  let c_wait = wait(&c, "c");
  wait_until(|| waiters(&a, "/ff/lapse") == 2, "c to queue");

  let leases = queue_leases(&a, "/ff/lapse");
  revoke(&a, leases[1]); // b's place lapses while b waits behind a
  assert!(a.release(g).unwrap());
  let err = b_wait.join().unwrap().unwrap_err();
  assert_eq!(err.code, "ELOCKLOST");
  assert!(err.message.contains("lapsed"), "{}", err.message);
  let gc = c_wait
    .join()
    .unwrap()
    .unwrap()
    .expect("c, next in line, gets it");
  assert!(c.release(gc).unwrap());
}

#[test]
fn a_wait_ends_at_its_deadline_or_when_no_longer_wanted_and_leaves_no_place() {
  let server = EtcdServer::start();
  let a = connect(EtcdConfig::new(vec![server.endpoint()]));
  let b = connect(EtcdConfig::new(vec![server.endpoint()]));
  let g = a
    .try_acquire("/ff/deadline", &holder("a"))
    .unwrap()
    .unwrap();
  let deadline = Instant::now() + Duration::from_millis(300);
  assert_eq!(
    b.wait_acquire("/ff/deadline", &holder("b"), Some(deadline), &always)
      .unwrap(),
    None
  );
  assert_eq!(waiters(&a, "/ff/deadline"), 0);

  let wanted = AtomicBool::new(true);
  let calls = AtomicUsize::new(0);
  let until_third_check = || {
    // The abort arrives while b waits: the third look at `wanted` says no.
    if calls.fetch_add(1, Ordering::SeqCst) >= 2 {
      wanted.store(false, Ordering::SeqCst);
    }
    wanted.load(Ordering::SeqCst)
  };
  assert_eq!(
    b.wait_acquire("/ff/deadline", &holder("b"), None, &until_third_check)
      .unwrap(),
    None
  );
  assert_eq!(waiters(&a, "/ff/deadline"), 0);
  assert!(a.release(g).unwrap());
}

#[test]
fn calls_work_from_inside_another_tokio_runtime() {
  let server = EtcdServer::start();
  let locks = connect(EtcdConfig::new(vec![server.endpoint()]));
  let outer = tokio::runtime::Builder::new_current_thread()
    .build()
    .unwrap();
  let g = outer.block_on(async {
    locks
      .try_acquire("/ff/nested", &holder("n"))
      .unwrap()
      .unwrap()
  });
  assert!(outer.block_on(async { locks.release(g).unwrap() }));
}

#[test]
fn unreachable_endpoints_fail_with_elockbackend_naming_them() {
  // Ports nobody listens on (bound, then released).
  let ports: Vec<u16> = (0..2)
    .map(|_| {
      std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
    })
    .collect();
  let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
  let mut config = EtcdConfig::new(endpoints.clone());
  config.timeout = Duration::from_millis(1500);
  let err = EtcdLocks::connect(config).err().expect("nobody answers");
  assert_eq!(err.code, "ELOCKBACKEND");
  for e in &endpoints {
    assert!(err.message.contains(e.as_str()), "{}", err.message);
  }

  // A member that dies after the connect: calls fail the same way, and a waiter whose
  // deadline comes while etcd is away says so instead of reporting a busy lock.
  let mut server = EtcdServer::start();
  let mut config = EtcdConfig::new(vec![server.endpoint()]);
  config.timeout = Duration::from_millis(1500);
  let locks = connect(config);
  let g = locks
    .try_acquire("/ff/gone", &holder("a"))
    .unwrap()
    .unwrap();
  server.kill();
  let err = locks.try_acquire("/ff/gone", &holder("b")).unwrap_err();
  assert_eq!(err.code, "ELOCKBACKEND");
  assert!(err.message.contains(&server.endpoint()), "{}", err.message);
  assert!(matches!(
    locks.refresh(&mut g.clone()),
    Refreshed::Unknown(_)
  ));
  assert_eq!(
    locks.verify(&g, Duration::ZERO).unwrap_err().code,
    "ELOCKBACKEND"
  );
  let deadline = Some(Instant::now() + Duration::from_millis(500));
  let err = locks
    .wait_acquire("/ff/gone", &holder("c"), deadline, &always)
    .unwrap_err();
  assert_eq!(err.code, "ELOCKBACKEND");
}

#[test]
fn etcds_with_a_private_ca_works_and_an_unknown_ca_is_refused() {
  let (server, ca) = EtcdServer::start_tls();
  let url = format!("etcds://{}?ca={}", server.endpoint(), ca.display());
  let locks = connect(EtcdConfig::parse(&url).unwrap());
  let g = locks.try_acquire("/ff/tls", &holder("t")).unwrap().unwrap();
  assert!(locks.release(g).unwrap());

  let mut untrusted = EtcdConfig::parse(&format!("etcds://{}", server.endpoint())).unwrap();
  untrusted.timeout = Duration::from_millis(1500);
  let err = EtcdLocks::connect(untrusted)
    .err()
    .expect("the test CA is not a system root");
  assert_eq!(err.code, "ELOCKBACKEND");
  assert!(err.message.contains(&server.endpoint()), "{}", err.message);
}

/// A waiter whose member freezes (its watch goes silent, nothing is ever delivered) is still
/// served when the holder releases through another member: the timed re-check fails over.
#[test]
fn a_waiter_on_a_frozen_member_is_still_served() {
  let cluster = EtcdCluster::start();
  let e = cluster.endpoints();
  // The holder's lease must outlast the set-up on a loaded box (nothing refreshes it here); the
  // waiter's short timings are what the test is about.
  let a = connect(EtcdConfig::with_ttl(
    vec![e[1].clone(), e[2].clone()],
    Duration::from_secs(30),
    None,
  ));
  let b = Arc::new(connect(fast(vec![
    e[0].clone(),
    e[1].clone(),
    e[2].clone(),
  ])));
  let g = a.try_acquire("/ff/frozen", &holder("a")).unwrap().unwrap();
  let waiter = {
    let b = Arc::clone(&b);
    std::thread::spawn(move || b.wait_acquire("/ff/frozen", &holder("b"), soon(), &always))
  };
  wait_until(|| waiters(&a, "/ff/frozen") == 1, "b to queue");
  cluster.members[0].pause();
  assert!(a.release(g.clone()).unwrap());
  let next = waiter.join().unwrap().unwrap().expect("b is served");
  assert!(next.token > g.token);
  assert!(b.release(next).unwrap());
}

/// Three workers, each with its own engine on all three members, update a shared counter under
/// the lock; the leader is SIGKILLed mid-run. Each holder's time as holder ends at its release
/// or its own deadline, whichever comes first: those spans never overlap, tokens only rise,
/// every fenced update lands (no lost update), and work resumes after the election.
#[test]
fn three_members_leader_killed_mid_run() {
  let mut cluster = EtcdCluster::start();
  let endpoints = cluster.endpoints();
  const TARGET: usize = 60;
  let counter = Arc::new(Mutex::new(0usize));
  let commits = Arc::new(AtomicUsize::new(0));
  let spans = Arc::new(Mutex::new(Vec::<(Instant, Instant, u64)>::new()));
  let (progress, progressed) = mpsc::channel::<()>();
  let mut workers = Vec::new();
  for w in 0..3 {
    let (counter, commits, spans, progress) = (
      Arc::clone(&counter),
      Arc::clone(&commits),
      Arc::clone(&spans),
      progress.clone(),
    );
    let mut config = fast(endpoints.clone());
    config.timeout = Duration::from_secs(10);
    workers.push(std::thread::spawn(move || {
      let locks = connect(config);
      let mut errors = 0;
      while commits.load(Ordering::SeqCst) < TARGET {
        let g = match locks.wait_acquire("/ff/cluster", &holder(&w.to_string()), soon(), &always) {
          Ok(Some(g)) => g,
          Ok(None) => panic!("worker {w} waited a minute"),
          Err(_) => {
            errors += 1; // the election window: etcd says "no leader" for a moment
            assert!(errors < 50, "worker {w} never got back in");
            continue;
          }
        };
        let start = Instant::now();
        let seen = *counter.lock().unwrap();
        let fenced = locks.verify(&g, g.deadline.saturating_duration_since(Instant::now()) / 2);
        if fenced.is_ok() && Instant::now() < g.deadline {
          *counter.lock().unwrap() = seen + 1;
          commits.fetch_add(1, Ordering::SeqCst);
        }
        let end = Instant::now().min(g.deadline);
        spans.lock().unwrap().push((start, end, g.token));
        let _ = locks.release(g);
        let _ = progress.send(());
      }
    }));
  }
  drop(progress);
  for _ in 0..TARGET / 3 {
    progressed.recv().expect("workers make progress");
  }
  let leader = cluster.leader();
  cluster.members[leader].kill();
  let at_kill = commits.load(Ordering::SeqCst);
  for t in workers {
    t.join().unwrap();
  }
  let done = commits.load(Ordering::SeqCst);
  assert!(done >= TARGET);
  assert!(
    at_kill < TARGET,
    "the leader died mid-run ({at_kill} of {TARGET} done), and work resumed"
  );
  assert_eq!(*counter.lock().unwrap(), done, "no update lost");
  let mut spans = spans.lock().unwrap().clone();
  spans.sort();
  for pair in spans.windows(2) {
    let ((_, end, t1), (start, _, t2)) = (pair[0], pair[1]);
    assert!(end <= start, "two holders at once: tokens {t1} and {t2}");
    assert!(t1 < t2, "token reused or going back: {t1} then {t2}");
  }
}

/// A loopback TCP proxy to `target` that always passes the client's bytes on, and the server's
/// answers only while `answers` is set (else it drops them): a request that arrives and is
/// applied, whose answer is lost on the way back.
fn answer_dropping_proxy(target: String) -> (String, Arc<AtomicBool>) {
  use std::io::{Read, Write};
  use std::net::{TcpListener, TcpStream};
  let listener = TcpListener::bind("127.0.0.1:0").unwrap();
  let addr = listener.local_addr().unwrap().to_string();
  let answers = Arc::new(AtomicBool::new(true));
  let passing = Arc::clone(&answers);
  std::thread::spawn(move || {
    for client in listener.incoming() {
      let Ok(client) = client else { return };
      let Ok(server) = TcpStream::connect(&target) else {
        continue;
      };
      let pipe = |mut from: TcpStream, mut to: TcpStream, gate: Option<Arc<AtomicBool>>| {
        std::thread::spawn(move || {
          let mut buf = [0u8; 16 * 1024];
          loop {
            let n = match from.read(&mut buf) {
              Ok(0) | Err(_) => break,
              Ok(n) => n,
            };
            if gate.as_ref().is_none_or(|g| g.load(Ordering::SeqCst))
              && to.write_all(&buf[..n]).is_err()
            {
              break;
            }
          }
          let _ = to.shutdown(std::net::Shutdown::Write);
        });
      };
      pipe(
        client.try_clone().unwrap(),
        server.try_clone().unwrap(),
        None,
      );
      pipe(server, client, Some(Arc::clone(&passing)));
    }
  });
  (addr, answers)
}

/// A single try whose Txn was applied but whose answer was lost is retried (on the next
/// member): the retry finds the try's own key in the lock's range. That key is the lock, taken
/// by this try: it must come back as the grant, not be left behind as a holder nobody knows of
/// (its lease, given back as the spare, would be kept alive by this engine for as long as it
/// stays the spare, and the lock with it).
#[test]
fn a_try_whose_answer_was_lost_is_granted_not_left_behind() {
  let server = EtcdServer::start();
  let (proxy, answers) = answer_dropping_proxy(server.endpoint());
  // The proxy first: the spare lease is granted through it, so it is the member in use.
  let locks = connect(fast(vec![proxy, server.endpoint()]));
  let other = connect(fast(vec![server.endpoint()]));
  answers.store(false, Ordering::SeqCst);
  let outcome = locks.try_acquire("/ff/lost-answer", &holder("a")).unwrap();
  let in_etcd = queue_leases(&other, "/ff/lost-answer");
  let grant = outcome.unwrap_or_else(|| {
    panic!("the try was refused, and etcd holds the lock for its keys {in_etcd:?}")
  });
  assert_eq!(in_etcd, vec![grant.lease_id]);
  locks.verify(&grant, Duration::ZERO).unwrap();
  assert!(locks.release(grant).unwrap());
  assert!(other
    .try_acquire("/ff/lost-answer", &holder("b"))
    .unwrap()
    .is_some());
}
