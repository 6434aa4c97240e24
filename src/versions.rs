//! Versions of protected files, and the lock-free read that pairs a file's content with its
//! version. Owned here: the version sidecar, its format and its rules; the store calls
//! [`record_commit`] on every commit.
//!
//! Why a sidecar, and why identities. The version cannot live inside the user's JSON
//! (FlowForge's schemas forbid extra keys), and a reader takes no lock, so it must be able to
//! tell from what it read alone which version it holds. Every commit of the store creates a new
//! inode (temp file + rename), so an inode's identity (device, inode, size, mtime in ns) names
//! one committed content among the inodes that exist together. (Not over time: a freed inode
//! number comes back, and where mtime is the kernel's coarse clock — ext2/3, or any file system
//! before Linux 6.13 — commits k and k+2 of one size within one tick get one identity. So a
//! reader holds its descriptor open until it has judged the sidecar, which keeps its inode's
//! number from being handed out again meanwhile.) The sidecar `.<name>.flowforge-version`,
//! beside the file, says "identity X is version N, and the identity before it, Y, was version
//! N-1". The store writes
//! it atomically (its own temp file, fsync, rename) after the data's temp file is synced and its
//! lock checked, and before the data's rename. So at every instant the file on disk is either
//! the sidecar's `file` (the commit went through) or its `prev` (the commit is in flight, or
//! died between the two renames): a reader who opened, fstat'ed and read ONE descriptor can
//! always name the version of what it read, and a reader never waits for anybody.
//!
//! An identity cannot tell a foreign program's write in place that keeps the size within one
//! tick of the clock that stamps mtime (or that puts the mtime back) from the commit before it, so
//! the sidecar also keeps a hash of the committed content (XXH3-64), and whoever judges a file
//! whose identity is the sidecar's compares the hash of what is there: a reader hashes what it
//! read, `ifVersion` and the next commit read the file once more under the lock.
//!
//! The version rule (docs/reads.md):
//! - no file and no sidecar: version 0 (a create with `ifVersion: 0` is allowed);
//! - the file is the sidecar's `file` (or `prev.file`): that version;
//! - otherwise the file was changed by someone outside this library (an editor, `git checkout`,
//!   a deletion): version = the sidecar's version + 1, flagged `foreignWrite`, and so is an
//!   existing file with no sidecar yet (version 0). The library cannot vouch for a foreign
//!   state, so `ifVersion` refuses it (`EVERSION`) until the library commits the file again; the
//!   next commit counts the foreign change as one version and its own as the next.
//! - a sidecar that is not exactly what this module writes (garbled, fuzzed, truncated, too
//!   big, inconsistent) is refused with `EVERSIONCORRUPT`, by readers and writers alike: never
//!   trusted, never silently replaced (which could hand out an old number again).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LockError, Result};
use crate::failpoint;
use crate::store;

const SIDECAR_SUFFIX: &str = ".flowforge-version";
const FORMAT: u32 = 2;
/// Sidecars of earlier builds have no content hash: their file is judged by its identity alone
/// until the next commit writes the current format.
const FORMAT_WITHOUT_HASH: u32 = 1;
/// A real sidecar is under 300 bytes; anything far bigger is not one of ours.
const MAX_SIDECAR_BYTES: u64 = 4096;
/// A reader that keeps racing commits (its file replaced between its read and the sidecar's)
/// tries again; each try costs one commit of progress to the writers, so this bound is never
/// reached in practice, and when it is, the read says so instead of guessing.
const MAX_READ_ATTEMPTS: usize = 1000;

/// What names one committed content: a new inode per commit, and its size and mtime against
/// inode reuse and writes in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Identity {
  pub dev: u64,
  pub ino: u64,
  pub size: u64,
  pub mtime_ns: i64,
}

impl Identity {
  pub fn of(meta: &fs::Metadata) -> Self {
    Identity {
      dev: meta.dev(),
      ino: meta.ino(),
      size: meta.size(),
      mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    }
  }

  /// The read cache's key (lib/read.js builds the same string from a bigint `fs.stat`).
  pub fn key(&self) -> String {
    format!("{}:{}:{}:{}", self.dev, self.ino, self.size, self.mtime_ns)
  }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Prev {
  version: u64,
  /// The previous state was a foreign write (or a file never committed by the library).
  foreign: bool,
  /// `None`: the file did not exist (this commit creates it).
  file: Option<Identity>,
}

/// What the sidecar says; on disk followed by `check`, a hash of exactly these fields as
/// serialised, so a flipped digit (a version, an inode) is refused instead of believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Sidecar {
  format: u32,
  version: u64,
  file: Identity,
  /// [`content_hash`] of `file`'s content (`None` in format 1 only).
  #[serde(skip_serializing_if = "Option::is_none")]
  hash: Option<String>,
  prev: Prev,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
  format: u32,
  version: u64,
  file: Identity,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  hash: Option<String>,
  prev: Prev,
  check: String,
}

/// FNV-1a, 64 bits: it guards against corruption and fuzzing, not against malice (whoever can
/// write the sidecar can write the file itself), so six lines beat a dependency.
fn check_of(sidecar: &Sidecar) -> String {
  let text = serde_json::to_string(sidecar).expect("a sidecar always serialises");
  let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
  });
  format!("{hash:016x}")
}

/// The hash the sidecar keeps of a committed content.
fn content_hash(bytes: &[u8]) -> String {
  format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

fn to_text(sidecar: &Sidecar) -> String {
  let stored = Stored {
    format: sidecar.format,
    version: sidecar.version,
    file: sidecar.file,
    hash: sidecar.hash.clone(),
    prev: sidecar.prev.clone(),
    check: check_of(sidecar),
  };
  serde_json::to_string(&stored).expect("a sidecar always serialises")
}

/// A file's version as the rule above gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
  pub version: u64,
  pub foreign: bool,
}

/// One lock-free read: the content, its identity, and (when asked for) its version.
#[derive(Debug)]
pub struct Snapshot {
  /// `None`: the file does not exist.
  pub text: Option<String>,
  pub identity: Option<Identity>,
  pub state: Option<State>,
}

pub fn sidecar_path(file: &Path) -> PathBuf {
  let name = file
    .file_name()
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default();
  file.with_file_name(format!(".{name}{SIDECAR_SUFFIX}"))
}

fn corrupt(sidecar: &Path, what: &str) -> LockError {
  LockError::new(
    "EVERSIONCORRUPT",
    format!(
      "The version sidecar {} is not valid ({what}); it is not trusted and the file was not changed. Versions cannot be vouched for until it is repaired: delete it to restart the file's versions (callers holding an old version should re-read).",
      sidecar.display()
    ),
  )
}

fn parse_sidecar(sidecar: &Path, bytes: &[u8]) -> Result<Sidecar> {
  let stored: Stored =
    serde_json::from_slice(bytes).map_err(|e| corrupt(sidecar, &format!("{e}")))?;
  let parsed = Sidecar {
    format: stored.format,
    version: stored.version,
    file: stored.file,
    hash: stored.hash,
    prev: stored.prev,
  };
  if check_of(&parsed) != stored.check {
    return Err(corrupt(sidecar, "its check does not match its content"));
  }
  match (parsed.format, &parsed.hash) {
    (FORMAT, Some(hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {}
    (FORMAT, _) => return Err(corrupt(sidecar, "its content hash is missing or malformed")),
    (FORMAT_WITHOUT_HASH, None) => {}
    (FORMAT_WITHOUT_HASH, Some(_)) => return Err(corrupt(sidecar, "format 1 has no content hash")),
    (format, _) => return Err(corrupt(sidecar, &format!("unknown format {format}"))),
  }
  if parsed.version == 0 {
    return Err(corrupt(sidecar, "version 0 is never committed"));
  }
  if parsed.prev.version + 1 != parsed.version {
    return Err(corrupt(
      sidecar,
      "its previous version is not one below its version",
    ));
  }
  if parsed.prev.file == Some(parsed.file) {
    return Err(corrupt(
      sidecar,
      "its previous and current files are the same",
    ));
  }
  Ok(parsed)
}

/// The file's sidecar, `None` when it has none; never trusted unless it is exactly ours.
fn read_sidecar(file: &Path) -> Result<Option<Sidecar>> {
  let path = sidecar_path(file);
  let opened = fs::OpenOptions::new()
    .read(true)
    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
    .open(&path);
  let mut handle = match opened {
    Ok(handle) => handle,
    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
      return Err(corrupt(&path, "it is a symbolic link"))
    }
    Err(e) => return Err(LockError::io(&e, "Cannot read", &path)),
  };
  let meta = handle
    .metadata()
    .map_err(|e| LockError::io(&e, "Cannot stat", &path))?;
  if !meta.is_file() {
    return Err(corrupt(&path, "it is not a regular file"));
  }
  if meta.len() > MAX_SIDECAR_BYTES {
    return Err(corrupt(&path, &format!("{} bytes", meta.len())));
  }
  let mut bytes = Vec::with_capacity(meta.len() as usize);
  (&mut handle)
    .take(MAX_SIDECAR_BYTES + 1)
    .read_to_end(&mut bytes)
    .map_err(|e| LockError::io(&e, "Cannot read", &path))?;
  parse_sidecar(&path, &bytes).map(Some)
}

/// The version of the file whose identity is `file` (`None`: missing), and whether the sidecar
/// vouches for it (`false`: a foreign write, or a reader that raced a commit). `content_hash`
/// gives the hash of that file's content (`None`: it is no longer that file), asked only when
/// its identity is the sidecar's and the sidecar has a hash.
fn judge(
  file: Option<Identity>,
  sidecar: Option<&Sidecar>,
  content_hash: &mut dyn FnMut() -> Result<Option<String>>,
) -> Result<(State, bool)> {
  let vouched = |version, foreign| Ok((State { version, foreign }, true));
  let Some(s) = sidecar else {
    return match file {
      None => vouched(0, false),
      Some(_) => Ok((
        State {
          version: 0,
          foreign: true,
        },
        false,
      )),
    };
  };
  match file {
    Some(id) if id == s.file && (s.hash.is_none() || content_hash()? == s.hash) => {
      return vouched(s.version, false)
    }
    Some(id) if s.prev.file == Some(id) => return vouched(s.prev.version, s.prev.foreign),
    // The commit that creates the file is between its two renames.
    None if s.prev.file.is_none() => return vouched(s.prev.version, s.prev.foreign),
    _ => {}
  }
  Ok((
    State {
      version: s.version + 1,
      foreign: true,
    },
    false,
  ))
}

/// [`judge`] of the file at `path` as `now` found it, under the lock: its content is read again
/// when the sidecar's hash must be compared.
fn judge_on_disk(
  path: &Path,
  now: Option<Identity>,
  sidecar: Option<&Sidecar>,
) -> Result<(State, bool)> {
  judge(now, sidecar, &mut || {
    now.map_or(Ok(None), |id| content_hash_if_still(path, id))
  })
}

/// The content hash of the file at `path` if it is still the inode `identity` (`None`: it is
/// not, or is gone): one descriptor, whatever bytes it holds (a foreign write need not be text).
fn content_hash_if_still(path: &Path, identity: Identity) -> Result<Option<String>> {
  // Non-blocking: a FIFO put in the file's place since its stat must not hang the commit.
  let opened = fs::OpenOptions::new()
    .read(true)
    .custom_flags(libc::O_NONBLOCK)
    .open(path);
  let mut handle = match opened {
    Ok(handle) => handle,
    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
    Err(e) => return Err(LockError::io(&e, "Cannot read", path)),
  };
  let meta = handle
    .metadata()
    .map_err(|e| LockError::io(&e, "Cannot stat", path))?;
  if Identity::of(&meta) != identity {
    return Ok(None);
  }
  let mut bytes = Vec::with_capacity(meta.len() as usize);
  handle
    .read_to_end(&mut bytes)
    .map_err(|e| LockError::io(&e, "Cannot read", path))?;
  Ok(Some(content_hash(&bytes)))
}

fn identity_at(path: &Path) -> Result<Option<Identity>> {
  match fs::metadata(path) {
    Ok(meta) => Ok(Some(Identity::of(&meta))),
    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
    Err(e) => Err(LockError::io(&e, "Cannot stat", path)),
  }
}

/// The file's version now (for `ifVersion`, under the lock, where no commit of ours can race).
pub fn current(file: &Path) -> Result<State> {
  let file = store::follow_symlink(file)?;
  let sidecar = read_sidecar(&file)?;
  let (state, _) = judge_on_disk(&file, identity_at(&file)?, sidecar.as_ref())?;
  Ok(state)
}

/// Reads the file through one descriptor (open, fstat, read): a whole committed content, since
/// commits replace the file by rename. With `with_version`, pairs it with its version; a read
/// that raced a commit (the sidecar moved on past what it read) starts again.
pub fn read(file: &Path, with_version: bool) -> Result<Snapshot> {
  let file = store::follow_symlink(file)?;
  for _ in 0..MAX_READ_ATTEMPTS {
    // The descriptor stays open until the sidecar is judged: while it is, no other file can be
    // given its inode number, so an identity the sidecar names is this very inode, never a later
    // commit's that came back with the same number, size and (coarse) mtime.
    let (text, identity, _held_open) = match read_one_fd(&file)? {
      Some((text, id, handle)) => (Some(text), Some(id), Some(handle)),
      None => (None, None, None),
    };
    if !with_version {
      return Ok(Snapshot {
        text,
        identity,
        state: None,
      });
    }
    // A reader paused between its read and its look at the sidecar (commits land meanwhile).
    failpoint!("versions::after_read");
    let sidecar = read_sidecar(&file)?;
    let (state, vouched) = judge(identity, sidecar.as_ref(), &mut || {
      Ok(text.as_deref().map(|text| content_hash(text.as_bytes())))
    })?;
    // Not vouched for: either somebody outside replaced the file, or a commit (or two) of ours
    // went through between our read and the sidecar's. Only the second changes the path.
    if vouched || identity_at(&file)? == identity {
      return Ok(Snapshot {
        text,
        identity,
        state: Some(state),
      });
    }
  }
  Err(LockError::new(
    "EVERSIONBUSY",
    format!(
      "{} was replaced {MAX_READ_ATTEMPTS} times while being read; its version could not be paired with its content. Retry the read.",
      file.display()
    ),
  ))
}

fn read_one_fd(file: &Path) -> Result<Option<(String, Identity, File)>> {
  let mut handle = match File::open(file) {
    Ok(handle) => handle,
    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
    Err(e) if e.raw_os_error() == Some(libc::EISDIR) => return Err(is_dir(file)),
    Err(e) => return Err(LockError::io(&e, "Cannot read", file)),
  };
  let meta = handle
    .metadata()
    .map_err(|e| LockError::io(&e, "Cannot stat", file))?;
  if meta.is_dir() {
    return Err(is_dir(file));
  }
  let mut bytes = Vec::with_capacity(meta.len() as usize);
  handle
    .read_to_end(&mut bytes)
    .map_err(|e| LockError::io(&e, "Cannot read", file))?;
  let text = store::utf8_text(file, bytes)?;
  Ok(Some((text, Identity::of(&meta), handle)))
}

fn is_dir(file: &Path) -> LockError {
  LockError::new(
    "EISDIR",
    format!("{} is a directory, not a JSON file.", file.display()),
  )
}

/// The store's hook, under the lock, after `temp` (the new content) is synced and the lock
/// checked, before the rename that publishes it: the sidecar now names `temp`'s inode as the
/// next version (`text`, its content) and the file in place as the one before it. `existing` is
/// the file's metadata, whose mode and owner the sidecar takes.
pub fn record_commit(
  file: &Path,
  temp: &Path,
  text: &str,
  existing: Option<&fs::Metadata>,
) -> Result<()> {
  let sidecar_file = sidecar_path(file);
  let old = read_sidecar(file)?;
  let now = existing.map(Identity::of);
  let (state, _) = judge_on_disk(file, now, old.as_ref())?;
  let next = temp_identity(temp)?;
  let sidecar = Sidecar {
    format: FORMAT,
    version: state.version + 1,
    file: next,
    hash: Some(content_hash(text.as_bytes())),
    prev: Prev {
      version: state.version,
      foreign: state.foreign,
      file: now,
    },
  };
  let text = to_text(&sidecar);
  let temp_sidecar = store::temp_path(&sidecar_file);
  let written = store::write_temp(&temp_sidecar, &text, existing).and_then(|_| {
    fs::rename(&temp_sidecar, &sidecar_file)
      .map_err(|e| LockError::io(&e, "Cannot replace", &sidecar_file))
  });
  if written.is_err() {
    let _ = fs::remove_file(&temp_sidecar);
  }
  written
}

fn temp_identity(temp: &Path) -> Result<Identity> {
  fs::symlink_metadata(temp)
    .map(|m| Identity::of(&m))
    .map_err(|e| LockError::io(&e, "Cannot stat", temp))
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_support::temp_dir;

  fn commit(path: &Path, text: &str) {
    store::write_atomic(path, text, || Ok(())).unwrap();
  }

  fn state(version: u64, foreign: bool) -> State {
    State { version, foreign }
  }

  fn version(path: &Path) -> State {
    read(path, true).unwrap().state.unwrap()
  }

  #[test]
  fn every_commit_adds_one_and_the_file_is_never_touched() {
    let path = temp_dir("versions").join("tasks.json");
    assert_eq!(version(&path), state(0, false));
    for n in 1..=3 {
      commit(&path, &format!("{{\"n\":{n}}}"));
      let snap = read(&path, true).unwrap();
      assert_eq!(snap.text.unwrap(), format!("{{\"n\":{n}}}"));
      assert_eq!(snap.state.unwrap(), state(n, false));
    }
    assert_eq!(current(&path).unwrap().version, 3);
  }

  #[test]
  fn a_commit_that_died_between_its_two_renames_leaves_the_previous_version() {
    let path = temp_dir("versions").join("tasks.json");
    commit(&path, "{}");
    // The sidecar names the next inode (here: a temp file that never got renamed).
    let temp = path.with_file_name("next");
    fs::write(&temp, "[1]").unwrap();
    record_commit(&path, &temp, "[1]", Some(&fs::metadata(&path).unwrap())).unwrap();
    assert_eq!(version(&path), state(1, false));
  }

  #[test]
  fn foreign_writes_and_unversioned_files_are_flagged_then_counted() {
    let path = temp_dir("versions").join("tasks.json");
    fs::write(&path, "{}").unwrap();
    assert_eq!(version(&path), state(0, true));
    commit(&path, "[1]");
    assert_eq!(version(&path).version, 1);
    fs::write(path.with_file_name("x"), "[22]").unwrap();
    fs::rename(path.with_file_name("x"), &path).unwrap();
    assert_eq!(version(&path), state(2, true));
    commit(&path, "[3]");
    assert_eq!(version(&path), state(3, false));
  }

  #[test]
  fn garbled_sidecars_are_refused_by_readers_and_writers() {
    let path = temp_dir("versions").join("tasks.json");
    commit(&path, "{}");
    let sidecar = sidecar_path(&path);
    let good = fs::read_to_string(&sidecar).unwrap();
    let bad = [
      String::new(),
      good[..good.len() / 2].to_string(),
      good.replace("\"format\":2", "\"format\":3"),
      // The current format without its content hash, and format 1 with one.
      rewritten(&good, 2, None),
      rewritten(&good, 1, Some("0123456789abcdef")),
      rewritten(&good, 2, Some("not a hash")),
      good.replace("\"version\":1", "\"version\":7"),
      good.replace("\"check\":\"", "\"check\":\"0"),
      good.replace("\"check\"", "\"extra\":1,\"check\""),
      "x".repeat(5000),
    ];
    for text in bad {
      fs::write(&sidecar, &text).unwrap();
      assert_eq!(read(&path, true).unwrap_err().code, "EVERSIONCORRUPT");
      let refused = store::write_atomic(&path, "[9]", || Ok(())).unwrap_err();
      assert_eq!(refused.code, "EVERSIONCORRUPT", "{text}");
      assert_eq!(fs::read_to_string(&path).unwrap(), "{}");
      // A read without a version never looks at it.
      assert_eq!(read(&path, false).unwrap().text.unwrap(), "{}");
    }
  }

  /// `text` (a sidecar) with another format and content hash, under a valid check.
  fn rewritten(text: &str, format: u32, hash: Option<&str>) -> String {
    let mut sidecar = parse_sidecar(Path::new("sidecar"), text.as_bytes()).unwrap();
    sidecar.format = format;
    sidecar.hash = hash.map(str::to_string);
    to_text(&sidecar)
  }

  #[test]
  fn a_foreign_write_that_keeps_the_identity_is_told_by_the_content_hash() {
    let path = temp_dir("versions").join("tasks.json");
    commit(&path, "[1]");
    let committed = fs::metadata(&path).unwrap();
    // In place, the same size, and the mtime of the commit (as within one tick of a coarse clock).
    let handle = fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&handle, b"[2]", 0).unwrap();
    handle
      .set_times(fs::FileTimes::new().set_modified(committed.modified().unwrap()))
      .unwrap();
    assert_eq!(
      Identity::of(&fs::metadata(&path).unwrap()),
      Identity::of(&committed)
    );
    let foreign = state(2, true);
    assert_eq!(version(&path), foreign);
    assert_eq!(current(&path).unwrap(), foreign);
    commit(&path, "[3]");
    assert_eq!(version(&path), state(3, false));
  }

  #[test]
  fn a_sidecar_without_a_content_hash_is_read_and_the_next_commit_adds_one() {
    let path = temp_dir("versions").join("tasks.json");
    commit(&path, "{}");
    let sidecar = sidecar_path(&path);
    let earlier_build = rewritten(&fs::read_to_string(&sidecar).unwrap(), 1, None);
    fs::write(&sidecar, earlier_build).unwrap();
    assert_eq!(version(&path), state(1, false));
    commit(&path, "[]");
    assert_eq!(version(&path).version, 2);
    let now = parse_sidecar(&sidecar, &fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!((now.format, now.hash), (FORMAT, Some(content_hash(b"[]"))));
  }

  fn a_sidecar() -> Sidecar {
    let id = |ino| Identity {
      dev: 2049,
      ino,
      size: 4096,
      mtime_ns: 1_764_000_000_123_456_789,
    };
    Sidecar {
      format: FORMAT,
      version: 42,
      file: id(7),
      hash: Some(content_hash(b"{}")),
      prev: Prev {
        version: 41,
        foreign: false,
        file: Some(id(6)),
      },
    }
  }

  proptest::proptest! {
    /// Any edit of a real sidecar (a byte changed, cut, or inserted) is refused unless it left
    /// the same content (whitespace): a believed sidecar always says exactly what was written.
    #[test]
    fn edited_sidecars_are_refused_or_unchanged(
      at in 0usize..400,
      byte in proptest::num::u8::ANY,
      how in 0u8..3,
    ) {
      let good = a_sidecar();
      let mut bytes = to_text(&good).into_bytes();
      let at = at % bytes.len();
      match how {
        0 => bytes[at] = byte,
        1 => bytes.truncate(at),
        _ => bytes.insert(at, byte),
      }
      if let Ok(parsed) = parse_sidecar(Path::new("/p/.t.json.flowforge-version"), &bytes) {
        proptest::prop_assert_eq!(parsed, good);
      }
    }
  }
}
