//! Where a target file's lock lives, and whether that place is safe to use.
//!
//! A target `…/x/tasks.json` is locked through `<root>/.flowforge/.locks/tasks.json.lock`,
//! where `<root>` is `FLOWFORGE_ROOT_OVERRIDE` when set, else the nearest ancestor of the
//! target holding a `.flowforge/` directory. A file in no project is locked beside itself, as
//! `<its dir>/.<name>.lock`: where its lock lives depends on the file only, never on the
//! caller's working directory, so every process finds the same lock.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::error::{LockError, Result};

pub const ROOT_OVERRIDE_ENV: &str = "FLOWFORGE_ROOT_OVERRIDE";
const DATA_DIR: &str = ".flowforge";
const LOCK_DIR: &str = ".locks";
pub const LOCK_SUFFIX: &str = ".lock";

/// How this process's own maps keyed by paths hash them (the lock table, the resolve cache):
/// FxHash (rustc-hash), one multiply per word. std's SipHash cost several percent of an
/// uncontended acquire and release, which look the same path up in several maps; its defence
/// against keys chosen to collide buys little here, where the keys are the files this process's
/// own callers lock.
type FastHashing = rustc_hash::FxBuildHasher;

/// A map keyed by paths as this file spells them (lock paths, lock directories): by the path's
/// bytes, since every such path is built here in one normalised spelling, so equal bytes are
/// equal paths, and hashing the bytes in one pass costs a fraction of `Path`'s
/// component-by-component hash. Its users look a path up on every acquire and release.
pub struct PathMap<V>(HashMap<OsString, V, FastHashing>);

impl<V> Default for PathMap<V> {
  fn default() -> Self {
    PathMap(HashMap::default())
  }
}

impl<V> PathMap<V> {
  pub fn get(&self, path: &Path) -> Option<&V> {
    self.0.get(path.as_os_str())
  }

  pub fn get_mut(&mut self, path: &Path) -> Option<&mut V> {
    self.0.get_mut(path.as_os_str())
  }

  pub fn insert(&mut self, path: &Path, value: V) {
    self.0.insert(path.as_os_str().to_owned(), value);
  }

  /// The value of `path`, made if there is none; the key is copied only then (the usual visit
  /// finds it there).
  pub fn entry(&mut self, path: &Path) -> &mut V
  where
    V: Default,
  {
    let key = path.as_os_str();
    if !self.0.contains_key(key) {
      self.0.insert(key.to_owned(), V::default());
    }
    self.0.get_mut(key).expect("inserted above")
  }

  pub fn remove(&mut self, path: &Path) -> Option<V> {
    self.0.remove(path.as_os_str())
  }

  pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
    self.0.values_mut()
  }

  pub fn drain(&mut self) -> impl Iterator<Item = (PathBuf, V)> + '_ {
    self
      .0
      .drain()
      .map(|(key, value)| (PathBuf::from(key), value))
  }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
  /// The target file, absolute and normalised (it need not exist).
  pub file: PathBuf,
  /// The project root, or the file's own directory for a file in no project.
  pub root: PathBuf,
  pub lock_path: PathBuf,
}

/// How long a resolved path is trusted before its root is looked up again: locking a file in
/// a loop should not repeat the same `stat`s, and a `.flowforge/` created meanwhile is seen soon.
const RESOLVE_CACHE_TTL: Duration = Duration::from_secs(1);
const RESOLVE_CACHE_SIZE: usize = 1024;

/// Resolved targets by the working directory they were resolved in (`None` for absolute paths),
/// then by the caller's spelling: two levels, so that a hit is found without building a key.
type ResolveCache =
  HashMap<Option<PathBuf>, HashMap<String, (Instant, Arc<Target>), FastHashing>, FastHashing>;

/// Checks a caller's path and works out its lock file (without touching the disk beyond
/// a few `stat`s, and those at most once a second per path).
pub fn resolve(file: &str) -> Result<Target> {
  resolve_shared(file).map(Arc::unwrap_or_clone)
}

/// [`resolve`], sharing the cached target instead of copying its three paths: for the calls
/// made on every acquire and release.
pub fn resolve_shared(file: &str) -> Result<Arc<Target>> {
  static CACHE: LazyLock<Mutex<ResolveCache>> = LazyLock::new(Default::default);
  // A relative path means something else after a chdir: the cwd is part of the key.
  let cwd = if Path::new(file).is_absolute() {
    None
  } else {
    Some(current_dir()?)
  };
  if let Some((at, target)) = CACHE
    .lock()
    .unwrap_or_else(|e| e.into_inner())
    .get(&cwd)
    .and_then(|by_file| by_file.get(file))
  {
    if at.elapsed() < RESOLVE_CACHE_TTL {
      return Ok(target.clone());
    }
  }
  let target = Arc::new(resolve_uncached(file)?);
  let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
  if cache.values().map(HashMap::len).sum::<usize>() >= RESOLVE_CACHE_SIZE {
    cache.clear();
  }
  let by_file = cache.entry(cwd).or_default();
  by_file.insert(file.to_string(), (Instant::now(), target.clone()));
  Ok(target)
}

fn resolve_uncached(file: &str) -> Result<Target> {
  resolve_uncached_from(&current_dir()?, file)
}

fn resolve_uncached_from(cwd: &Path, file: &str) -> Result<Target> {
  if file.is_empty() {
    return Err(LockError::invalid_value(
      "The file path must be a non-empty string. Received ''",
    ));
  }
  if file.contains('\0') {
    return Err(LockError::invalid_value(format!(
      "The file path must not contain null bytes. Received {file:?}"
    )));
  }
  let absolute = normalize(&cwd.join(file));
  let Some(name) = absolute.file_name() else {
    return Err(LockError::invalid_value(format!(
      "The file path {file:?} does not name a file"
    )));
  };
  if absolute.is_dir() {
    return Err(LockError::new(
      "EISDIR",
      format!(
        "{} is a directory; a lock protects a file. Pass the path of a file inside it.",
        absolute.display()
      ),
    ));
  }
  let project = root_override(cwd).or_else(|| find_root(&absolute));
  let (root, lock_path) = match project {
    Some(root) => {
      let mut lock_name = name.to_os_string();
      lock_name.push(LOCK_SUFFIX);
      let lock_path = lock_dir_of(&root).join(lock_name);
      (root, lock_path)
    }
    None => {
      let dir = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
      let mut lock_name = std::ffi::OsString::from(".");
      lock_name.push(name);
      lock_name.push(LOCK_SUFFIX);
      let lock_path = dir.join(lock_name);
      (dir, lock_path)
    }
  };
  Ok(Target {
    file: absolute,
    root,
    lock_path,
  })
}

/// The project root for commands given no file: `root` when given, else the override, else the
/// nearest ancestor of the cwd holding `.flowforge/`, else the cwd.
pub fn root_for_dir(root: Option<&str>) -> Result<PathBuf> {
  let cwd = current_dir()?;
  if let Some(root) = root {
    return Ok(normalize(&cwd.join(root)));
  }
  if let Some(root) = root_override(&cwd) {
    return Ok(root);
  }
  Ok(
    cwd
      .ancestors()
      .find(|a| a.join(DATA_DIR).is_dir())
      .map(Path::to_path_buf)
      .unwrap_or(cwd),
  )
}

pub fn data_dir_of(root: &Path) -> PathBuf {
  root.join(DATA_DIR)
}

pub fn lock_dir_of(root: &Path) -> PathBuf {
  data_dir_of(root).join(LOCK_DIR)
}

/// Creates the lock directory if needed (never world-writable), and refuses one that others
/// could tamper with: world-writable without the sticky bit. For a file in no project the lock
/// directory is the file's own, which must exist.
pub fn ensure_lock_dir(lock_dir: &Path) -> Result<()> {
  match fs::metadata(lock_dir) {
    Ok(meta) => check_lock_dir(lock_dir, &meta),
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
      .recursive(true)
      .mode(0o755)
      .create(lock_dir)
      .map_err(|e| LockError::io(&e, "Cannot create the lock directory", lock_dir))
      .and_then(|_| {
        let meta = fs::metadata(lock_dir)
          .map_err(|e| LockError::io(&e, "Cannot read the lock directory", lock_dir))?;
        check_lock_dir(lock_dir, &meta)
      }),
    Err(e) => Err(LockError::io(
      &e,
      "Cannot read the lock directory",
      lock_dir,
    )),
  }
}

pub fn check_lock_dir(lock_dir: &Path, meta: &fs::Metadata) -> Result<()> {
  if !meta.is_dir() {
    return Err(LockError::new(
      "ENOTDIR",
      format!(
        "The lock directory {} is not a directory. Move that file away so the lock directory can be created.",
        lock_dir.display()
      ),
    ));
  }
  let mode = meta.permissions().mode();
  if mode & 0o002 != 0 && mode & 0o1000 == 0 {
    return Err(LockError::new(
      "ELOCKDIRUNSAFE",
      format!(
        "The lock directory {} is world-writable without the sticky bit (mode {:o}), so any user could replace lock files. Run `chmod o-w {}` (or `chmod +t` for a shared directory).",
        lock_dir.display(),
        mode & 0o7777,
        lock_dir.display()
      ),
    ));
  }
  Ok(())
}

fn current_dir() -> Result<PathBuf> {
  std::env::current_dir()
    .map_err(|e| LockError::io(&e, "Cannot read the current directory", Path::new(".")))
}

fn root_override(cwd: &Path) -> Option<PathBuf> {
  let value = std::env::var_os(ROOT_OVERRIDE_ENV).filter(|v| !v.is_empty())?;
  Some(normalize(&cwd.join(value)))
}

fn find_root(file: &Path) -> Option<PathBuf> {
  file
    .parent()?
    .ancestors()
    .find(|a| a.join(DATA_DIR).is_dir())
    .map(Path::to_path_buf)
}

/// Removes `.` and resolves `..` lexically, so one file has one spelling.
fn normalize(path: &Path) -> PathBuf {
  let mut out = PathBuf::new();
  for component in path.components() {
    match component {
      Component::CurDir => {}
      Component::ParentDir => {
        out.pop();
      }
      other => out.push(other),
    }
  }
  out
}

#[cfg(test)]
mod tests {
  use super::*;

  fn temp_project() -> PathBuf {
    let dir = crate::test_support::temp_dir("paths");
    fs::create_dir_all(dir.join(".flowforge/billing")).unwrap();
    dir
  }

  #[test]
  fn lock_files_are_named_by_basename_under_the_nearest_root() {
    let dir = temp_project();
    let target = resolve(
      dir
        .join(".flowforge/billing/time-tracking.json")
        .to_str()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(target.root, dir);
    assert_eq!(
      target.lock_path,
      dir.join(".flowforge/.locks/time-tracking.json.lock")
    );
    let dotted = resolve(
      dir
        .join(".flowforge/billing/../tasks.json")
        .to_str()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(dotted.file, dir.join(".flowforge/tasks.json"));
    // One spelling, byte for byte, whatever the caller's (the lock table compares bytes).
    let spelled = resolve(
      dir
        .join(".flowforge//billing/./../tasks.json/")
        .to_str()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
      spelled.lock_path.as_os_str(),
      dir.join(".flowforge/.locks/tasks.json.lock").as_os_str()
    );
  }

  #[test]
  fn a_file_in_no_project_is_locked_beside_itself_whatever_the_cwd() {
    let dir = crate::test_support::temp_dir("paths-loose");
    let file = dir.join("notes.json");
    let from_here = resolve(file.to_str().unwrap()).unwrap();
    assert_eq!(from_here.lock_path, dir.join(".notes.json.lock"));
    // The same file named relative to another working directory: the same lock.
    let relative = resolve_uncached_from(&dir, "notes.json").unwrap();
    assert_eq!(relative.lock_path, from_here.lock_path);
  }

  #[test]
  fn bad_paths_are_rejected_with_codes() {
    assert_eq!(resolve("").unwrap_err().code, "ERR_INVALID_ARG_VALUE");
    assert_eq!(resolve("a\0b").unwrap_err().code, "ERR_INVALID_ARG_VALUE");
    assert_eq!(resolve("/").unwrap_err().code, "ERR_INVALID_ARG_VALUE");
    let dir = temp_project();
    assert_eq!(resolve(dir.to_str().unwrap()).unwrap_err().code, "EISDIR");
  }

  #[test]
  fn world_writable_lock_dirs_need_the_sticky_bit() {
    let dir = temp_project();
    let locks = lock_dir_of(&dir);
    ensure_lock_dir(&locks).unwrap();
    assert_eq!(
      fs::metadata(&locks).unwrap().permissions().mode() & 0o002,
      0
    );
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(ensure_lock_dir(&locks).unwrap_err().code, "ELOCKDIRUNSAFE");
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o1777)).unwrap();
    ensure_lock_dir(&locks).unwrap();
  }
}
