//! Property-based fuzzing (proptest) of what reads untrusted input: the lock-record parser
//! (and the staleness judgement of whatever it returns) and path handling. Inputs are the
//! checked-in corpus in `fuzz/corpus/` put through a few byte-level edits, plus arbitrary
//! bytes. `FLOWFORGE_FUZZ_ITERATIONS` sets the case count (20,000 by default; `npm run torture`
//! runs 1,000,000 per target). The seed is fixed, so CI runs the same cases every time; set
//! `PROPTEST_RNG_SEED` to explore others. A failure is shrunk to a small input, printed, and
//! saved to `proptest-regressions/fuzz_tests.txt` (check it in: it is replayed first).
//!
//! No timing is asserted: what keeps a hostile record cheap is the parser's size cap
//! (`record::MAX_RECORD_BYTES`) and serde_json's nesting limit, not a stopwatch.

use std::path::{Component, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{self, Index};
use proptest::test_runner::{Config, RngSeed};

use crate::file::staleness;
use crate::identity;
use crate::paths;
use crate::record::{self, Contents, LockRecord};

fn iterations() -> u32 {
  std::env::var("FLOWFORGE_FUZZ_ITERATIONS")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(20_000)
}

/// `cases` cases from a fixed seed unless `PROPTEST_RNG_SEED` says otherwise.
fn config(cases: u32) -> Config {
  let mut config = Config::with_cases(cases);
  if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
    config.rng_seed = RngSeed::Fixed(0x5eed_0001);
  }
  config
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

/// Fragments that sit on the parser's edges: out-of-range numbers, wrong types, broken
/// escapes, invalid UTF-8, the record's own keys.
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

/// One byte-level edit; positions are `Index`es, scaled to the input's length when applied, so
/// they shrink towards the start of the input.
#[derive(Debug, Clone)]
enum Edit {
  FlipBit(Index, u8),
  Delete(Index, usize),
  Insert(Index, u8),
  Interesting(Index, Index),
  Truncate(Index),
  /// Inserts the tail of another corpus entry.
  Splice(Index, Index, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
  prop_oneof![
    (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Edit::FlipBit(at, bit)),
    (any::<Index>(), 1..=8usize).prop_map(|(at, len)| Edit::Delete(at, len)),
    (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
    (any::<Index>(), any::<Index>()).prop_map(|(at, piece)| Edit::Interesting(at, piece)),
    any::<Index>().prop_map(Edit::Truncate),
    (any::<Index>(), any::<Index>(), any::<Index>())
      .prop_map(|(at, other, from)| Edit::Splice(at, other, from)),
  ]
}

fn apply(seed: &[u8], edits: &[Edit], corpus: &[Vec<u8>]) -> Vec<u8> {
  let mut out = seed.to_vec();
  for edit in edits {
    let at = |i: &Index, out: &Vec<u8>| i.index(out.len() + 1);
    match edit {
      Edit::FlipBit(i, bit) if !out.is_empty() => {
        let i = i.index(out.len());
        out[i] ^= 1 << bit;
      }
      Edit::Delete(i, len) if !out.is_empty() => {
        let from = i.index(out.len());
        out.drain(from..(from + len).min(out.len()));
      }
      Edit::FlipBit(..) | Edit::Delete(..) => {}
      Edit::Insert(i, byte) => out.insert(at(i, &out), *byte),
      Edit::Interesting(i, piece) => {
        let at = at(i, &out);
        out.splice(at..at, piece.get(INTERESTING).iter().copied());
      }
      Edit::Truncate(i) => out.truncate(at(i, &out)),
      Edit::Splice(i, other, from) => {
        let at = at(i, &out);
        let other = other.get(corpus);
        let from = from.index(other.len() + 1);
        out.splice(at..at, other[from..].iter().copied());
      }
    }
  }
  out
}

/// Mostly corpus entries with one to four edits (they get past the parser's first checks),
/// sometimes bytes from nowhere.
fn inputs(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
  let mutated = (sample::select(corpus.clone()), vec(edit(), 1..=4))
    .prop_map(move |(seed, edits)| apply(&seed, &edits, &corpus));
  prop_oneof![4 => mutated, 1 => vec(any::<u8>(), 0..1024)]
}

/// Any text up to 40 chars (`any::<char>()` favours the awkward ones: controls, surrogate
/// neighbours, the last code points).
fn text() -> impl Strategy<Value = String> {
  vec(any::<char>(), 0..40).prop_map(|chars| chars.into_iter().collect())
}

proptest! {
  #![proptest_config(config(iterations()))]

  #[test]
  fn fuzz_record_parser_and_staleness(input in inputs(corpus("record"))) {
    let me = identity::current();
    let contents = record::parse(&input);
    for kernel_held in [false, true] {
      staleness::judge(&contents, kernel_held, me, identity::now_ms(), 30_000);
    }
    if let Contents::Record(r) = &contents {
      // Whatever parsed must survive being written and read back.
      prop_assert!(matches!(record::parse(&r.to_bytes(0)), Contents::Record(_)));
    }
  }

  #[test]
  fn fuzz_path_resolution(input in inputs(corpus("path"))) {
    let text = String::from_utf8_lossy(&input);
    if let Ok(target) = paths::resolve(&text) {
      prop_assert!(target.file.is_absolute(), "{:?} gave {:?}", text, target.file);
      // `<name>.lock` in a project, `.<name>.lock` beside a file in no project.
      let lock_name = format!("{}.lock", target.file.file_name().unwrap().to_string_lossy());
      prop_assert!(target.lock_path.to_string_lossy().ends_with(&lock_name), "{:?} locks at {:?}", text, target.lock_path);
      prop_assert!(!target.file.components().any(|c| c == Component::ParentDir));
    }
  }
}

proptest! {
  // Each case builds and parses a whole record: a tenth of the cases covers it.
  #![proptest_config(config((iterations() / 10).max(1)))]

  #[test]
  fn fuzz_record_round_trip(
    file in text(),
    hostname in text(),
    username in text(),
    acquired_at in 0..1u64 << 52,
    heartbeat in 0..1u64 << 52,
    blocks in 0..4usize,
  ) {
    let me = identity::current();
    let mut record = LockRecord::new_for(me, &record::new_lock_id(), &file, acquired_at);
    record.hostname = Some(hostname);
    record.username = Some(username);
    record.heartbeat = Some(heartbeat);
    let bytes = record.to_bytes(blocks * record::RECORD_BLOCK);
    prop_assert_eq!(record::parse(&bytes), Contents::Record(record));
  }
}
