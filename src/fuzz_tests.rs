//! Mutational fuzzing of what reads untrusted input: the lock-record parser (and the staleness
//! judgement of whatever it returns) and path handling. Inputs start from the checked-in corpus
//! in `fuzz/corpus/` and are mutated by a seeded generator, so a failure replays exactly.
//! `FLOWFORGE_FUZZ_ITERATIONS` sets the count (`npm run torture` runs a million per target).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::file::staleness;
use crate::identity;
use crate::paths;
use crate::record::{self, Contents, LockRecord};

fn iterations() -> usize {
  std::env::var("FLOWFORGE_FUZZ_ITERATIONS")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(20_000)
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
  let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("fuzz/corpus")
    .join(kind);
  let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
    .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
    .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
    .collect();
  inputs.sort();
  assert!(!inputs.is_empty(), "empty corpus {}", dir.display());
  inputs
}

/// xorshift64*: deterministic, so a failing input can be replayed from its iteration number.
struct Rng(u64);

impl Rng {
  fn next(&mut self) -> u64 {
    self.0 ^= self.0 >> 12;
    self.0 ^= self.0 << 25;
    self.0 ^= self.0 >> 27;
    self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
  }

  fn below(&mut self, n: usize) -> usize {
    (self.next() % n.max(1) as u64) as usize
  }
}

const INTERESTING: &[&[u8]] = &[
  b"-1",
  b"0",
  b"1e309",
  b"-1e309",
  b"18446744073709551616",
  b"null",
  b"true",
  b"\"\"",
  b"{}",
  b"[]",
  b"\\u0000",
  b"\\ud800",
  b"\xff",
  b"\x00",
  b"\"pid\":",
  b"\"heartbeat\":",
  b"\"hostname\":\"",
  b"}",
  b"{",
  b",",
];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
  let mut out = input.to_vec();
  for _ in 0..1 + rng.below(4) {
    let at = rng.below(out.len() + 1);
    match rng.below(6) {
      0 if !out.is_empty() => {
        let i = rng.below(out.len());
        out[i] ^= 1 << rng.below(8);
      }
      1 if !out.is_empty() => {
        let end = (at + 1 + rng.below(8)).min(out.len());
        out.drain(at.min(out.len())..end);
      }
      2 => out.insert(at, rng.next() as u8),
      3 => {
        let piece = INTERESTING[rng.below(INTERESTING.len())];
        out.splice(at..at, piece.iter().copied());
      }
      4 => out.truncate(at),
      _ => {
        let other = &corpus[rng.below(corpus.len())];
        let from = rng.below(other.len() + 1);
        out.splice(at..at, other[from..].iter().copied());
      }
    }
  }
  out
}

#[test]
fn fuzz_record_parser_and_staleness() {
  let corpus = corpus("record");
  let me = identity::current();
  let mut rng = Rng(0x5eed_0001);
  let started = Instant::now();
  let mut slowest = Duration::ZERO;
  for _ in 0..iterations() {
    let seed = rng.below(corpus.len());
    let input = mutate(&mut rng, &corpus[seed], &corpus);
    let t = Instant::now();
    let contents = record::parse(&input);
    for kernel_held in [false, true] {
      staleness::judge(&contents, kernel_held, me, identity::now_ms(), 30_000);
    }
    if let Contents::Record(r) = &contents {
      // Whatever parsed must survive being written and read back.
      assert!(matches!(record::parse(&r.to_bytes(0)), Contents::Record(_)));
    }
    slowest = slowest.max(t.elapsed());
  }
  eprintln!(
    "record parser: {} inputs in {:?}, slowest {:?}",
    iterations(),
    started.elapsed(),
    slowest
  );
  assert!(
    slowest < Duration::from_millis(100),
    "an input took {slowest:?}"
  );
}

#[test]
fn fuzz_path_resolution() {
  let corpus = corpus("path");
  let mut rng = Rng(0x5eed_0002);
  for _ in 0..iterations() {
    let seed = rng.below(corpus.len());
    let input = mutate(&mut rng, &corpus[seed], &corpus);
    let text = String::from_utf8_lossy(&input);
    if let Ok(target) = paths::resolve(&text) {
      assert!(target.file.is_absolute(), "{text:?} gave {:?}", target.file);
      // `<name>.lock` in a project, `.<name>.lock` beside a file in no project.
      assert!(target.lock_path.to_string_lossy().ends_with(&format!(
        "{}.lock",
        target.file.file_name().unwrap().to_string_lossy()
      )));
      assert!(!target
        .file
        .components()
        .any(|c| c == std::path::Component::ParentDir));
    }
  }
}

#[test]
fn fuzz_record_round_trip() {
  let mut rng = Rng(0x5eed_0003);
  let me = identity::current();
  for i in 0..iterations() / 10 {
    let text = |rng: &mut Rng| -> String {
      (0..rng.below(40))
        .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('?'))
        .collect()
    };
    let mut record = LockRecord::new_for(
      me,
      &record::new_lock_id(),
      &text(&mut rng),
      rng.next() >> 12,
    );
    record.hostname = Some(text(&mut rng));
    record.username = Some(text(&mut rng));
    record.heartbeat = Some(rng.next() >> 12);
    let bytes = record.to_bytes(rng.below(4) * record::RECORD_BLOCK);
    assert_eq!(
      record::parse(&bytes),
      Contents::Record(record.clone()),
      "iteration {i}"
    );
  }
}
