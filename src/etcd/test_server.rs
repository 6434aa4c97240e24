//! Real etcd servers for the engine's tests: one member or a three-member cluster on free
//! loopback ports, each with a temporary data dir, ready once `/health` answers true, stopped
//! by PID (SIGKILL) and cleaned up on Drop. Fast Raft timings (50 ms heartbeat, 500 ms
//! election) keep leader changes and 1–2 s leases short.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
/// How long a member may take to start answering on this loaded machine.
const START_LIMIT: Duration = Duration::from_secs(60);

pub(crate) struct EtcdServer {
  pub(crate) name: String,
  pub(crate) client_port: u16,
  peer_port: u16,
  /// Plain-HTTP /health for a TLS member (etcd's --listen-metrics-urls).
  metrics_port: Option<u16>,
  dir: PathBuf,
  child: Option<Child>,
}

pub(crate) struct EtcdCluster {
  pub(crate) members: Vec<EtcdServer>,
}

fn free_port() -> u16 {
  let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
  listener.local_addr().expect("local addr").port()
}

fn scratch_dir(name: &str) -> PathBuf {
  static N: AtomicU32 = AtomicU32::new(0);
  let dir = std::env::temp_dir().join(format!(
    "ff-etcd-{}-{}-{name}",
    std::process::id(),
    N.fetch_add(1, Ordering::Relaxed)
  ));
  let _ = std::fs::remove_dir_all(&dir);
  std::fs::create_dir_all(&dir).expect("create the etcd test dir");
  dir
}

impl EtcdServer {
  fn new(name: &str) -> EtcdServer {
    EtcdServer {
      name: name.to_string(),
      client_port: free_port(),
      peer_port: free_port(),
      metrics_port: None,
      dir: scratch_dir(name),
      child: None,
    }
  }

  fn peer_url(&self) -> String {
    format!("http://127.0.0.1:{}", self.peer_port)
  }

  pub(crate) fn endpoint(&self) -> String {
    format!("127.0.0.1:{}", self.client_port)
  }

  fn spawn(&mut self, initial_cluster: &str, token: &str) {
    let scheme = if self.metrics_port.is_some() {
      "https"
    } else {
      "http"
    };
    let client_url = format!("{scheme}://{}", self.endpoint());
    let log = std::fs::File::create(self.dir.join("etcd.log")).expect("create the etcd log");
    let mut command = Command::new(ETCD);
    if let Some(port) = self.metrics_port {
      command
        .arg("--cert-file")
        .arg(self.dir.join("server.pem"))
        .arg("--key-file")
        .arg(self.dir.join("server.key"))
        .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{port}")]);
    }
    let child = command
      .args(["--name", &self.name])
      .arg("--data-dir")
      .arg(self.dir.join("data"))
      .args(["--listen-client-urls", &client_url])
      .args(["--advertise-client-urls", &client_url])
      .args(["--listen-peer-urls", &self.peer_url()])
      .args(["--initial-advertise-peer-urls", &self.peer_url()])
      .args(["--initial-cluster", initial_cluster])
      .args(["--initial-cluster-token", token])
      .args(["--initial-cluster-state", "new"])
      .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
      .args(["--logger", "zap", "--log-outputs", "stderr"])
      .stdin(Stdio::null())
      .stdout(log.try_clone().expect("dup the log"))
      .stderr(log)
      .spawn()
      .expect("start /usr/bin/etcd (apt-get install etcd-server)");
    self.child = Some(child);
  }

  /// True once `/health` says so; panics with the log if the process died.
  fn healthy(&mut self) -> bool {
    if let Some(status) = self
      .child
      .as_mut()
      .and_then(|c| c.try_wait().ok().flatten())
    {
      panic!(
        "etcd {} exited ({status}) during start-up:\n{}",
        self.name,
        self.log()
      );
    }
    health(self.metrics_port.unwrap_or(self.client_port))
  }

  pub(crate) fn log(&self) -> String {
    std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
  }

  /// A single member, answering.
  pub(crate) fn start() -> EtcdServer {
    let mut server = EtcdServer::new("solo");
    let cluster = format!("solo={}", server.peer_url());
    let token = format!("ff-{}", server.client_port);
    server.spawn(&cluster, &token);
    wait_until(|| server.healthy(), "the etcd member to answer /health");
    server
  }

  /// A single member serving clients over TLS with a certificate for 127.0.0.1 from a fresh
  /// test CA; returns the CA's PEM file too.
  pub(crate) fn start_tls() -> (EtcdServer, PathBuf) {
    let mut server = EtcdServer::new("tls");
    server.metrics_port = Some(free_port());
    let dir = server.dir.clone();
    std::fs::write(
      dir.join("ext.cnf"),
      "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the cert extensions");
    let openssl = |args: &str| {
      let status = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
      assert!(status.success(), "openssl {args}");
    };
    openssl(
      "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ff-test-ca",
    );
    openssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    openssl("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf");
    let cluster = format!("tls={}", server.peer_url());
    let token = format!("ff-{}", server.client_port);
    server.spawn(&cluster, &token);
    wait_until(|| server.healthy(), "the TLS etcd member to answer /health");
    (server, dir.join("ca.pem"))
  }

  /// SIGSTOP: a frozen member, whose connections stay open and silent.
  pub(crate) fn pause(&self) {
    if let Some(child) = &self.child {
      // SAFETY: kill(2) on our own child's PID.
      unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };
    }
  }

  /// SIGKILL, like a crashed or powered-off member.
  pub(crate) fn kill(&mut self) {
    if let Some(mut child) = self.child.take() {
      let _ = child.kill();
      let _ = child.wait();
    }
  }

  /// This member's Raft id and the leader it believes in, from `etcdctl endpoint status`.
  pub(crate) fn status(&self) -> Option<(u64, u64)> {
    let out = Command::new(ETCDCTL)
      .args(["--endpoints", &self.endpoint(), "--command-timeout=2s"])
      .args(["endpoint", "status", "-w", "json"])
      .env("ETCDCTL_API", "3")
      .output()
      .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let status = &json.get(0)?["Status"];
    Some((
      status["header"]["member_id"].as_u64()?,
      status["leader"].as_u64()?,
    ))
  }
}

impl Drop for EtcdServer {
  fn drop(&mut self) {
    self.kill();
    let _ = std::fs::remove_dir_all(&self.dir);
  }
}

impl EtcdCluster {
  /// Three members, all answering /health (which needs an elected leader).
  pub(crate) fn start() -> EtcdCluster {
    let mut members: Vec<EtcdServer> = ["m1", "m2", "m3"]
      .iter()
      .map(|n| EtcdServer::new(n))
      .collect();
    let cluster: Vec<String> = members
      .iter()
      .map(|m| format!("{}={}", m.name, m.peer_url()))
      .collect();
    let token = format!("ff-{}", members[0].client_port);
    for m in &mut members {
      m.spawn(&cluster.join(","), &token);
    }
    wait_until(
      || members.iter_mut().all(|m| m.healthy()),
      "all three etcd members to answer /health",
    );
    EtcdCluster { members }
  }

  pub(crate) fn endpoints(&self) -> Vec<String> {
    self.members.iter().map(EtcdServer::endpoint).collect()
  }

  /// The index of the member every live member agrees is the leader.
  pub(crate) fn leader(&self) -> usize {
    let mut found = None;
    wait_until(
      || {
        let statuses: Vec<(u64, u64)> = self
          .members
          .iter()
          .filter(|m| m.child.is_some())
          .filter_map(EtcdServer::status)
          .collect();
        let leader = statuses.first().map(|s| s.1);
        found = leader
          .filter(|l| *l != 0 && statuses.iter().all(|s| s.1 == *l))
          .and_then(|l| {
            self
              .members
              .iter()
              .position(|m| m.child.is_some() && m.status().is_some_and(|s| s.0 == l))
          });
        found.is_some()
      },
      "the etcd members to agree on a leader",
    );
    found.expect("a leader")
  }
}

/// GET /health on a client port: etcd answers `{"health":"true"}` once it can serve.
fn health(port: u16) -> bool {
  let Ok(mut stream) = TcpStream::connect_timeout(
    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    Duration::from_millis(500),
  ) else {
    return false;
  };
  let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
  let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
  if stream.write_all(request.as_bytes()).is_err() {
    return false;
  }
  let mut answer = String::new();
  let _ = stream.read_to_string(&mut answer);
  answer.contains("\"health\":\"true\"")
}

/// Polls an observable condition (a server answering) until it holds.
pub(crate) fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
  let limit = Instant::now() + START_LIMIT;
  while !condition() {
    assert!(Instant::now() < limit, "timed out waiting for {what}");
    std::thread::sleep(Duration::from_millis(20));
  }
}
