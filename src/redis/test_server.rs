//! Test harness: a real `redis-server` on a free loopback port, without persistence
//! (`--save "" --appendonly no`), ready once it logs that it accepts connections and answers
//! PING, stopped by PID when dropped. `restart` brings it back empty on the same port.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

pub struct RedisServer {
  child: Option<Child>,
  pub port: u16,
}

impl RedisServer {
  pub fn start() -> RedisServer {
    let port = TcpListener::bind("127.0.0.1:0")
      .and_then(|l| l.local_addr())
      .expect("a free loopback port")
      .port();
    let mut server = RedisServer { child: None, port };
    server.launch();
    server
  }

  pub fn url(&self) -> String {
    format!("redis://127.0.0.1:{}", self.port)
  }

  fn launch(&mut self) {
    let mut child = Command::new("/usr/bin/redis-server")
      .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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

impl Drop for RedisServer {
  fn drop(&mut self) {
    self.stop();
  }
}
