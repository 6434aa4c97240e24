//! The physical limit for `npm run bench` (cargo build --release --example flock_limit): the same scenarios as a raw flock(2) loop with no
//! library in between (std's File::lock, which is flock on Unix). Prints one JSON line.
//!
//!   flock_limit cycle <lockfile> <n>             A: lock+unlock of one open file, per-cycle µs
//!   flock_limit counter <lockfile> <data> <n>    B: n read-increment-write cycles, waits in µs
//!   flock_limit pingpong <lockfile> <rounds>     C: hold 1-10 ms, release, wait 1 ms; [acquired, released] µs

use std::fs::{self, File, OpenOptions};
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};

fn open(path: &str) -> File {
  OpenOptions::new()
    .read(true)
    .write(true)
    .create(true)
    .truncate(false)
    .open(path)
    .expect("open lock file")
}

/// Now on CLOCK_MONOTONIC, in µs: one clock for every process of the host (Node's
/// `process.hrtime`), so one process's release and another's grant can be subtracted.
fn monotonic_us() -> f64 {
  let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
  now.tv_sec() as f64 * 1e6 + now.tv_nsec() as f64 / 1e3
}

/// A small xorshift: hold times need variety, not cryptography.
fn next_random(state: &mut u64) -> u64 {
  *state ^= *state << 13;
  *state ^= *state >> 7;
  *state ^= *state << 17;
  *state
}

fn main() {
  let args: Vec<String> = std::env::args().collect();
  let arg = |i: usize| args.get(i).expect("missing argument").as_str();
  match arg(1) {
    "cycle" => {
      let file = open(arg(2));
      let n: usize = arg(3).parse().unwrap();
      let mut cycles = Vec::with_capacity(n);
      for _ in 0..n {
        let start = Instant::now();
        file.lock().unwrap();
        file.unlock().unwrap();
        cycles.push(start.elapsed().as_nanos() as f64 / 1000.0);
      }
      println!("{{\"cyclesUs\":{cycles:?}}}");
    }
    "counter" => {
      let file = open(arg(2));
      let data = arg(3);
      let n: usize = arg(4).parse().unwrap();
      let mut waits = Vec::with_capacity(n);
      // bench/run.js's barrier: one lock first (as the Node workers do, for their set-up), then
      // start on a line on stdin, and stay after the result until it ends.
      file.lock().unwrap();
      file.unlock().unwrap();
      println!("READY");
      let mut line = String::new();
      std::io::stdin().read_line(&mut line).unwrap();
      for _ in 0..n {
        let start = Instant::now();
        file.lock().unwrap();
        waits.push(start.elapsed().as_nanos() as f64 / 1000.0);
        let text = fs::read_to_string(data).unwrap();
        let count: u64 = text
          .trim_start_matches("{\"count\":")
          .trim_end_matches('}')
          .parse()
          .unwrap();
        fs::write(data, format!("{{\"count\":{}}}", count + 1)).unwrap();
        file.unlock().unwrap();
      }
      println!("{{\"waitsUs\":{waits:?}}}");
      std::io::copy(&mut std::io::stdin(), &mut std::io::sink()).unwrap();
    }
    "pingpong" => {
      let file = open(arg(2));
      let rounds: usize = arg(3).parse().unwrap();
      let mut seed = u64::from(std::process::id()) | 1;
      let mut events = Vec::with_capacity(rounds);
      for _ in 0..rounds {
        file.lock().unwrap();
        let acquired = monotonic_us();
        std::thread::sleep(Duration::from_micros(1000 + next_random(&mut seed) % 9000));
        let released = monotonic_us();
        file.unlock().unwrap();
        events.push(format!("[{acquired},{released}]"));
        std::thread::sleep(Duration::from_millis(1));
      }
      println!(
        "{{\"pid\":{},\"events\":[{}]}}",
        std::process::id(),
        events.join(",")
      );
    }
    other => panic!("unknown mode {other}"),
  }
}
