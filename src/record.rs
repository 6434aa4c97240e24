//! The lock-file record: the JSON a holder writes into `<root>/.flowforge/.locks/<name>.lock`
//! so that others can see who holds the lock, and judge it when kernel locks cannot
//! (another host on a network file system, or FlowForge's older JS lock that wrote records only).
//!
//! Records are padded with spaces to a multiple of [`RECORD_BLOCK`] bytes, so a heartbeat
//! rewrites the same bytes in place and the file never shrinks under a reader. Parsing is
//! tolerant: a record from an older FlowForge (`pid`, `lockId`, `timestamp`, `holder`,
//! `heartbeat`) is understood, and anything unreadable is reported, never a panic.

use serde::Serialize;
use serde_json::Value;

use crate::identity::Identity;

/// Records are written in whole blocks of this many bytes.
pub const RECORD_BLOCK: usize = 256;
/// A record larger than this is not a record of ours; it is reported as unreadable.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockRecord {
  pub lock_id: Option<String>,
  pub pid: Option<i64>,
  /// `None` marks a record written by FlowForge's legacy lock, which did not name its host.
  pub hostname: Option<String>,
  /// The holder's kernel boot id: with the hostname, what tells "this host" (see identity.rs).
  /// Records of versions before it was written have none.
  pub boot_id: Option<String>,
  pub username: Option<String>,
  pub uid: Option<u32>,
  pub process_start: Option<u64>,
  pub file: Option<String>,
  pub acquired_at: Option<u64>,
  pub heartbeat: Option<u64>,
}

/// What a lock file contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
  Empty,
  Record(LockRecord),
  Unreadable(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OnDisk<'a> {
  version: u32,
  lock_id: &'a str,
  pid: u32,
  hostname: &'a str,
  #[serde(skip_serializing_if = "Option::is_none")]
  boot_id: Option<&'a str>,
  username: &'a str,
  /// The legacy name of `username`, kept so FlowForge's older readers still understand us.
  holder: &'a str,
  uid: u32,
  process_start: Option<u64>,
  file: &'a str,
  acquired_at: u64,
  /// The legacy name of `acquiredAt`.
  timestamp: u64,
  heartbeat: u64,
}

impl LockRecord {
  pub fn new_for(identity: &Identity, lock_id: &str, file: &str, now_ms: u64) -> Self {
    LockRecord {
      lock_id: Some(lock_id.to_string()),
      pid: Some(i64::from(identity.pid)),
      hostname: Some(identity.hostname.clone()),
      boot_id: identity.boot_id.clone(),
      username: Some(identity.username.clone()),
      uid: Some(identity.uid),
      process_start: identity.process_start,
      file: Some(file.to_string()),
      acquired_at: Some(now_ms),
      heartbeat: Some(now_ms),
    }
  }

  /// The padded bytes written to disk; at least `min_len` long so that a rewrite in place
  /// covers every byte of the previous version.
  pub fn to_bytes(&self, min_len: usize) -> Vec<u8> {
    let username = self.username.as_deref().unwrap_or("");
    let acquired_at = self.acquired_at.unwrap_or(0);
    let on_disk = OnDisk {
      version: 1,
      lock_id: self.lock_id.as_deref().unwrap_or(""),
      pid: self.pid.unwrap_or(0) as u32,
      hostname: self.hostname.as_deref().unwrap_or(""),
      boot_id: self.boot_id.as_deref(),
      username,
      holder: username,
      uid: self.uid.unwrap_or(0),
      process_start: self.process_start,
      file: self.file.as_deref().unwrap_or(""),
      acquired_at,
      timestamp: acquired_at,
      heartbeat: self.heartbeat.unwrap_or(acquired_at),
    };
    // Room for the usual record, padding and all, so that neither serializing nor padding
    // grows the buffer.
    let mut bytes = Vec::with_capacity(min_len.max(2 * RECORD_BLOCK));
    serde_json::to_writer(&mut bytes, &on_disk).expect("a record always serializes");
    let wanted = (bytes.len() + 1).div_ceil(RECORD_BLOCK) * RECORD_BLOCK;
    let len = wanted.max(min_len);
    bytes.resize(len - 1, b' ');
    bytes.push(b'\n');
    bytes
  }

  /// "pid 42 (user alice on host devbox) for 3.2 s": who holds it, for error messages.
  pub fn describe(&self) -> String {
    let mut text = format!(
      "pid {} (user {} on host {})",
      self.pid.map_or("?".to_string(), |p| p.to_string()),
      self.username.as_deref().unwrap_or("?"),
      self.hostname.as_deref().unwrap_or("? (legacy lock)")
    );
    if let Some(since) = self.acquired_at {
      text.push_str(&format!(
        " for {:.1} s",
        crate::identity::now_ms().saturating_sub(since) as f64 / 1000.0
      ));
    }
    text
  }

  /// The JSON object shown to JS callers (`getLockInfo`, `status`).
  pub fn to_json(&self) -> Value {
    let acquired_at = self.acquired_at;
    serde_json::json!({
      "lockId": self.lock_id,
      "pid": self.pid,
      "hostname": self.hostname,
      "bootId": self.boot_id,
      "username": self.username,
      "holder": self.username,
      "uid": self.uid,
      "processStart": self.process_start,
      "file": self.file,
      "acquiredAt": acquired_at,
      "timestamp": acquired_at,
      "heartbeat": self.heartbeat,
    })
  }
}

/// A fresh 128-bit lock id, as 32 hex digits: SipHash of a counter under keys drawn once per
/// process from the OS's random source (std's `RandomState`), so ids are unpredictable and never
/// repeat, and taking a lock costs no extra system call.
pub fn new_lock_id() -> String {
  use std::hash::{BuildHasher, Hasher};
  use std::sync::atomic::{AtomicU64, Ordering};
  use std::sync::OnceLock;
  static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
  static COUNTER: AtomicU64 = AtomicU64::new(0);
  let keys = KEYS.get_or_init(std::collections::hash_map::RandomState::new);
  let n = COUNTER.fetch_add(1, Ordering::Relaxed);
  let half = |lane: u64| {
    let mut hasher = keys.build_hasher();
    hasher.write_u64(n);
    hasher.write_u64(lane);
    hasher.finish()
  };
  format!("{:016x}{:016x}", half(0), half(1))
}

/// Whether a record is blank (all ASCII whitespace), which means free: a release blanks the
/// record in place, so every uncontended acquire reads hundreds of spaces. Looked at 64 bytes at a
/// time without stopping inside a chunk, which the compiler turns into vector compares (about
/// eight times faster than a byte-by-byte `all`).
fn is_blank(bytes: &[u8]) -> bool {
  bytes.chunks(64).all(|chunk| {
    chunk
      .iter()
      .fold(true, |blank, byte| blank & byte.is_ascii_whitespace())
  })
}

pub fn parse(bytes: &[u8]) -> Contents {
  if is_blank(bytes) {
    return Contents::Empty;
  }
  if bytes.len() > MAX_RECORD_BYTES {
    return Contents::Unreadable(format!(
      "record is {} bytes, larger than any lock record",
      bytes.len()
    ));
  }
  let value: Value = match serde_json::from_slice(bytes) {
    Ok(v) => v,
    Err(e) => return Contents::Unreadable(format!("record is not JSON ({e})")),
  };
  let Value::Object(map) = value else {
    return Contents::Unreadable("record is not a JSON object".to_string());
  };
  let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
  let int = |key: &str| map.get(key).and_then(as_integer);
  let heartbeat = int("heartbeat")
    .or_else(|| int("timestamp"))
    .or_else(|| int("acquiredAt"));
  Contents::Record(LockRecord {
    lock_id: text("lockId"),
    pid: int("pid"),
    hostname: text("hostname"),
    boot_id: text("bootId"),
    username: text("username").or_else(|| text("holder")),
    uid: int("uid").and_then(|u| u32::try_from(u).ok()),
    process_start: int("processStart").and_then(|v| u64::try_from(v).ok()),
    file: text("file"),
    acquired_at: int("acquiredAt")
      .or_else(|| int("timestamp"))
      .and_then(|v| u64::try_from(v).ok()),
    heartbeat: heartbeat.and_then(|v| u64::try_from(v).ok()),
  })
}

/// Integers as numbers (possibly written as floats by JS) or as numeric strings.
fn as_integer(value: &Value) -> Option<i64> {
  match value {
    Value::Number(n) => n.as_i64().or_else(|| {
      n.as_f64()
        .filter(|f| f.is_finite() && f.abs() < 9.0e15)
        .map(|f| f as i64)
    }),
    Value::String(s) => s.trim().parse().ok(),
    _ => None,
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::identity;

  fn sample() -> LockRecord {
    LockRecord::new_for(
      identity::current(),
      "abc123",
      "/p/.flowforge/tasks.json",
      1_700_000_000_000,
    )
  }

  #[test]
  fn written_records_are_padded_blocks_that_parse_back() {
    let record = sample();
    let bytes = record.to_bytes(0);
    assert_eq!(bytes.len() % RECORD_BLOCK, 0);
    assert_eq!(*bytes.last().unwrap(), b'\n');
    assert_eq!(parse(&bytes), Contents::Record(record));
  }

  #[test]
  fn lock_ids_are_128_random_bits() {
    let a = new_lock_id();
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(a, new_lock_id());
  }

  #[test]
  fn a_rewrite_is_never_shorter_than_asked() {
    let bytes = sample().to_bytes(4 * RECORD_BLOCK);
    assert_eq!(bytes.len(), 4 * RECORD_BLOCK);
  }

  #[test]
  fn legacy_flowforge_records_are_understood() {
    let legacy = br#"{"pid":"4242","lockId":"x","timestamp":1700000000000.0,"holder":"alice","file":"tasks.json","heartbeat":1700000005000}"#;
    let Contents::Record(r) = parse(legacy) else {
      panic!("not a record")
    };
    assert_eq!(r.pid, Some(4242));
    assert_eq!(r.hostname, None);
    assert_eq!(r.username.as_deref(), Some("alice"));
    assert_eq!(r.acquired_at, Some(1_700_000_000_000));
    assert_eq!(r.heartbeat, Some(1_700_000_005_000));
  }

  #[test]
  fn garbage_is_reported_not_fatal() {
    assert_eq!(parse(b""), Contents::Empty);
    assert_eq!(parse(b"  \n"), Contents::Empty);
    for bad in [&b"{\"pid\":"[..], b"[]", b"\xff\xfe\x00", b"null", b"42"] {
      assert!(matches!(parse(bad), Contents::Unreadable(_)), "{bad:?}");
    }
    let huge = vec![b'x'; MAX_RECORD_BYTES + 1];
    assert!(matches!(parse(&huge), Contents::Unreadable(_)));
  }

  #[test]
  fn a_blank_record_is_whitespace_only_wherever_a_byte_stands_out() {
    for len in [1, 63, 64, 65, 2 * RECORD_BLOCK, 2 * RECORD_BLOCK + 7] {
      let mut bytes = vec![b' '; len];
      assert_eq!(parse(&bytes), Contents::Empty);
      for at in 0..len {
        for other in [b'\n', b'\t', b'\r', 0x0c] {
          bytes[at] = other;
          assert_eq!(
            parse(&bytes),
            Contents::Empty,
            "{other:#x} at {at} of {len}"
          );
        }
        for stray in [b'x', 0, 0x0b, 0xa0] {
          bytes[at] = stray;
          assert!(
            matches!(parse(&bytes), Contents::Unreadable(_)),
            "{stray:#x} at {at} of {len}"
          );
        }
        bytes[at] = b' ';
      }
    }
  }

  #[test]
  fn wrong_types_become_missing_fields() {
    let Contents::Record(r) = parse(br#"{"pid":{"a":1},"heartbeat":"soon","hostname":7}"#) else {
      panic!("not a record")
    };
    assert_eq!(r.pid, None);
    assert_eq!(r.heartbeat, None);
    assert_eq!(r.hostname, None);
  }
}
