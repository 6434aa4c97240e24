//! Test harness: a real `redis-server` on a free loopback port, without persistence
//! (`--save "" --appendonly no`), ready once it logs that it accepts connections and answers
//! PING, stopped by PID when dropped. `restart` brings it back empty on the same port.
//! `start_tls` serves TLS only, with a certificate for 127.0.0.1 from a throw-away CA.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct RedisServer {
  child: Option<Child>,
  pub port: u16,
  /// The directory of the TLS files (`ca.pem`, `server.pem`, `server.key`), for `start_tls`.
  tls: Option<PathBuf>,
}

impl RedisServer {
  pub fn start() -> RedisServer {
    let mut server = RedisServer {
      child: None,
      port: free_port(),
      tls: None,
    };
    server.launch();
    server
  }

  /// A TLS-only server; its CA is `ca_file()`. The files are made with the openssl CLI in `dir`.
  pub fn start_tls(dir: &Path) -> RedisServer {
    let openssl = |args: &[&str]| {
      let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
      assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
      );
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1";
    let run = |line: String| openssl(&line.split(' ').collect::<Vec<_>>());
    run(format!(
      "req -x509 {key} -keyout ca.key -out ca.pem -subj /CN=flowforge-test-ca"
    ));
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(format!(
      "req {key} -keyout server.key -out server.csr -subj /CN=127.0.0.1"
    ));
    run("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile san.ext".to_string());
    let mut server = RedisServer {
      child: None,
      port: free_port(),
      tls: Some(dir.to_path_buf()),
    };
    server.launch();
    server
  }

  pub fn ca_file(&self) -> PathBuf {
    self.tls.as_ref().expect("a TLS server").join("ca.pem")
  }

  pub fn url(&self) -> String {
    format!("redis://127.0.0.1:{}", self.port)
  }

  fn launch(&mut self) {
    let port = self.port.to_string();
    let mut command = Command::new("/usr/bin/redis-server");
    match &self.tls {
      None => command.args(["--port", &port]),
      Some(dir) => command
        .args([
          "--port",
          "0",
          "--tls-port",
          &port,
          "--tls-auth-clients",
          "no",
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem")),
    };
    // If this test process dies without running Drop (killed by a timeout), so does the server.
    // SAFETY: between fork and exec, prctl is async-signal-safe and touches no shared state.
    unsafe {
      command.pre_exec(|| {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
          .map_err(std::io::Error::from)
      });
    }
    let mut child = command
      .args(["--bind", "127.0.0.1"])
      .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
      .args(["--loglevel", "notice", "--logfile", ""])
      .stdout(Stdio::piped())
      .stderr(Stdio::null())
      .spawn()
      .expect("start /usr/bin/redis-server");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut log = Vec::new();
    for line in lines.by_ref() {
      let line = line.unwrap_or_default();
      let ready = line.contains("Ready to accept connections");
      log.push(line);
      if ready {
        break;
      }
    }
    assert!(
      log.last().is_some_and(|l| l.contains("Ready to accept")),
      "redis-server on port {} did not start:\n{}",
      self.port,
      log.join("\n")
    );
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    self.child = Some(child);
    if self.tls.is_some() {
      return;
    }
    let pong: String = redis::cmd("PING")
      .query(&mut self.connection())
      .expect("PING");
    assert_eq!(pong, "PONG");
  }

  /// A plain connection for the test's own commands.
  pub fn connection(&self) -> redis::Connection {
    redis::Client::open(self.url())
      .and_then(|c| c.get_connection())
      .expect("connect to the test's redis-server")
  }

  pub fn stop(&mut self) {
    if let Some(mut child) = self.child.take() {
      let _ = child.kill();
      let _ = child.wait();
    }
  }

  /// Stops it and starts it again on the same port, empty (no persistence).
  pub fn restart(&mut self) {
    self.stop();
    self.launch();
  }
}

fn free_port() -> u16 {
  TcpListener::bind("127.0.0.1:0")
    .and_then(|l| l.local_addr())
    .expect("a free loopback port")
    .port()
}

impl Drop for RedisServer {
  fn drop(&mut self) {
    self.stop();
  }
}
