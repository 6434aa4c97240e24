//! Where a target file's lock lives, and whether that place is safe to use.
//!
//! A target `…/x/tasks.json` is locked through `<root>/.flowforge/.locks/tasks.json.lock`,
//! where `<root>` is `FLOWFORGE_ROOT_OVERRIDE` when set, else the nearest ancestor of the
//! target holding a `.flowforge/` directory. A file in no project is locked beside itself, as
//! `<its dir>/.<name>.lock`: where its lock lives depends on the file only, never on the
//! caller's working directory, so every process finds the same lock.
//!
//! This is decided at every acquire: a spelling's resolution is remembered, but the override's
//! value and the `.flowforge/` directories it rests on are looked at again each time. The lock
//! path is given in its directory's real path, so that this process keys one lock file one way
//! however it is spelled; the lock file itself is the one the caller's path names (a file is
//! locked by the project its path names, through symlinked directories or not; a data file that
//! is itself a symlink is followed, as the store follows it when it writes).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

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
  /// The lock file, in its directory's real path once that directory exists: a lock file
  /// reached through a symlinked directory is then one path whatever the spelling, so this
  /// process's maps keyed by lock paths (the lock table, the file backend's handles) see one
  /// lock, not two.
  pub lock_path: PathBuf,
}

/// How many spellings are remembered before the cache starts afresh.
const RESOLVE_CACHE_SIZE: usize = 1024;

/// Resolutions by the working directory they were made in (`None` for absolute paths), then by
/// the caller's spelling: two levels, so that a hit is found without building a key.
type ResolveCache =
  HashMap<Option<PathBuf>, HashMap<String, Arc<Resolution>, FastHashing>, FastHashing>;

static RESOLUTIONS: LazyLock<Mutex<ResolveCache>> = LazyLock::new(Default::default);

/// A directory's identity. A directory has one path (no hard links), so the same identity
/// reached through the same spelling is the same directory, with the same real path unless a
/// directory on the way was moved and replaced by a symlink to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirId {
  dev: u64,
  ino: u64,
}

impl DirId {
  fn of(meta: &fs::Metadata) -> DirId {
    DirId {
      dev: meta.dev(),
      ino: meta.ino(),
    }
  }
}

/// How a resolution found its root: what must still be true for it to stand.
#[derive(Debug, Clone)]
enum Found {
  /// `FLOWFORGE_ROOT_OVERRIDE` had this value (and, being relative, was taken from `cwd`).
  Override {
    value: OsString,
    cwd: Option<PathBuf>,
  },
  /// No override, and none of the `nearer` data directories (`<ancestor>/.flowforge` for each
  /// ancestor nearer to the file than its root) was a directory: the root is the nearest
  /// ancestor holding `.flowforge/` (`in_project`), or, when none did, the file's directory.
  Ancestors {
    nearer: Vec<PathBuf>,
    in_project: bool,
  },
}

/// A caller's spelling resolved: remembered, and checked again at every use ([`locate`]).
#[derive(Debug)]
struct Resolution {
  /// The target with its lock path spelled from the root as found.
  spelled: Target,
  found: Found,
  /// The file's own symbolic links as followed.
  links: LinkChain,
  /// The target with its real lock path, and the identity of the lock directory it was
  /// looked up for.
  real: Option<(DirId, Arc<Target>)>,
}

/// Where [`Resolution::place`] found the lock directory.
enum Placed {
  /// Where it was: the remembered target.
  Known(Arc<Target>),
  /// Made now, or another directory than before at that spelling: its real path looked up.
  Real(DirId, Arc<Target>),
  /// Missing, and not made (a caller that only looks).
  Missing(Arc<Target>),
  /// The project's `.flowforge/` is gone: the root no longer stands.
  RootGone,
}

impl Resolution {
  /// Whether the root found is still the root: the override unchanged, and no `.flowforge/`
  /// made since in an ancestor nearer than the root. The root's own `.flowforge/` is looked at
  /// with the lock directory inside it ([`Resolution::place`]).
  fn stands(&self) -> bool {
    let links_unchanged = self
      .links
      .iter()
      .all(|(path, link)| fs::read_link(path).ok() == *link);
    let value = override_value();
    links_unchanged
      && match &self.found {
        Found::Override { value: was, cwd } => {
          value.as_ref() == Some(was)
            && cwd
              .as_ref()
              .is_none_or(|cwd| std::env::current_dir().is_ok_and(|now| now == *cwd))
        }
        Found::Ancestors { nearer, .. } => value.is_none() && !nearer.iter().any(|d| d.is_dir()),
      }
  }

  /// Looks at the lock directory (making it when `make`, and then checking that it is safe):
  /// the target with the directory's real path.
  fn place(&self, make: bool) -> Result<Placed> {
    let lock_dir = self
      .spelled
      .lock_path
      .parent()
      .expect("lock paths have a parent");
    let meta = match fs::metadata(lock_dir) {
      Ok(meta) => meta,
      Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
        if self.root_gone() {
          return Ok(Placed::RootGone);
        }
        if !make {
          return Ok(Placed::Missing(Arc::new(self.spelled.clone())));
        }
        match self.make_lock_dir(lock_dir) {
          Ok(()) => {}
          Err(e) if e.kind() == ErrorKind::NotFound && self.in_project() => {
            return Ok(Placed::RootGone)
          }
          Err(e) => {
            return Err(LockError::io(
              &e,
              "Cannot create the lock directory",
              lock_dir,
            ))
          }
        }
        fs::metadata(lock_dir)
          .map_err(|e| LockError::io(&e, "Cannot read the lock directory", lock_dir))?
      }
      Err(e) => {
        return Err(LockError::io(
          &e,
          "Cannot read the lock directory",
          lock_dir,
        ))
      }
    };
    if make {
      check_lock_dir(lock_dir, &meta)?;
    }
    // realpath costs a system call per component: the real path is kept while the spelling
    // leads to the same directory, and the real path does too (no look when they are one path).
    let id = DirId::of(&meta);
    if let Some((known, target)) = &self.real {
      let real_dir = target.lock_path.parent().expect("lock paths have a parent");
      if *known == id
        && (real_dir == lock_dir || fs::metadata(real_dir).is_ok_and(|m| DirId::of(&m) == id))
      {
        return Ok(Placed::Known(target.clone()));
      }
    }
    let real_dir = fs::canonicalize(lock_dir)
      .map_err(|e| LockError::io(&e, "Cannot read the lock directory", lock_dir))?;
    let mut target = self.spelled.clone();
    target.lock_path = real_dir.join(
      self
        .spelled
        .lock_path
        .file_name()
        .expect("lock paths name a file"),
    );
    Ok(Placed::Real(id, Arc::new(target)))
  }

  fn in_project(&self) -> bool {
    matches!(
      self.found,
      Found::Ancestors {
        in_project: true,
        ..
      }
    )
  }

  /// A project found by its `.flowforge/` that has none any more.
  fn root_gone(&self) -> bool {
    self.in_project() && !data_dir_of(&self.spelled.root).is_dir()
  }

  /// Makes the missing lock directory (never world-writable). In a project found by its
  /// `.flowforge/`, only `.locks` is made, inside that `.flowforge/`: one removed since the root
  /// was found is not made again behind the user's back (the caller resolves again). An
  /// override names its root outright, and a file in no project is locked in its own
  /// directory: those are made with their parents.
  fn make_lock_dir(&self, lock_dir: &Path) -> std::io::Result<()> {
    let made = fs::DirBuilder::new()
      .recursive(!self.in_project())
      .mode(0o755)
      .create(lock_dir);
    match made {
      Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
      other => other,
    }
  }
}

/// Checks a caller's path and works out its lock file, making nothing: the lock path is in its
/// directory's real path when that directory exists.
///
/// A spelling's resolution is remembered, and checked at every call: the root override's value,
/// and that no ancestor nearer than the root has a `.flowforge/` (one `stat` each; one for a
/// file in `<root>/.flowforge/`), so two processes never lock one file through two lock files
/// because one of them remembered.
pub fn resolve(file: &str) -> Result<Arc<Target>> {
  locate(file, false)
}

/// [`resolve`] for a caller about to lock: the lock directory is made if missing (see
/// [`Resolution::make_lock_dir`]), and refused if others could tamper with it
/// ([`check_lock_dir`]).
pub fn prepare(file: &str) -> Result<Arc<Target>> {
  locate(file, true)
}

/// The caller's path made absolute and normalised, checked as [`resolve`] checks it, for calls
/// that touch the file itself and no lock (reads, which follow a symlinked file when they open
/// it): no look at the disk, so a link changed since is followed afresh.
pub fn file_of(file: &str) -> Result<PathBuf> {
  match cwd_key(file)? {
    Some(cwd) => absolute_file(&cwd, file),
    None => absolute_file(Path::new("/"), file),
  }
}

fn not_a_file(file: &str) -> LockError {
  LockError::invalid_value(format!("The file path {file:?} does not name a file"))
}

/// `file` (the caller's spelling) checked, and made absolute from `cwd` and normalised; refused
/// when it names no file (empty, a NUL byte, the root).
fn absolute_file(cwd: &Path, file: &str) -> Result<PathBuf> {
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
  if absolute.file_name().is_none() {
    return Err(not_a_file(file));
  }
  Ok(absolute)
}

/// The working directory a spelling's resolution depends on: `None` for an absolute path; a
/// relative one means something else after a chdir.
fn cwd_key(file: &str) -> Result<Option<PathBuf>> {
  if Path::new(file).is_absolute() {
    Ok(None)
  } else {
    current_dir().map(Some)
  }
}

fn remembered(cwd: &Option<PathBuf>, file: &str) -> Option<Arc<Resolution>> {
  RESOLUTIONS
    .lock()
    .unwrap_or_else(|e| e.into_inner())
    .get(cwd)
    .and_then(|by_file| by_file.get(file))
    .cloned()
}

fn remember(cwd: Option<PathBuf>, file: &str, resolution: Arc<Resolution>) {
  let mut cache = RESOLUTIONS.lock().unwrap_or_else(|e| e.into_inner());
  if cache.values().map(HashMap::len).sum::<usize>() >= RESOLVE_CACHE_SIZE {
    cache.clear();
  }
  cache
    .entry(cwd)
    .or_default()
    .insert(file.to_string(), resolution);
}

fn locate(file: &str, make: bool) -> Result<Arc<Target>> {
  let cwd = cwd_key(file)?;
  let (mut resolution, mut changed) = match remembered(&cwd, file) {
    Some(resolution) if resolution.stands() => (resolution, false),
    _ => (Arc::new(resolve_afresh(cwd.as_deref(), file)?), true),
  };
  loop {
    let target = match resolution.place(make)? {
      Placed::Known(target) | Placed::Missing(target) => target,
      Placed::Real(id, target) => {
        resolution = Arc::new(Resolution {
          spelled: resolution.spelled.clone(),
          found: resolution.found.clone(),
          links: resolution.links.clone(),
          real: Some((id, target.clone())),
        });
        changed = true;
        target
      }
      Placed::RootGone if !changed => {
        resolution = Arc::new(resolve_afresh(cwd.as_deref(), file)?);
        changed = true;
        continue;
      }
      Placed::RootGone => {
        // Removed again between finding it and making the lock directory in it.
        let data_dir = data_dir_of(&resolution.spelled.root);
        return Err(LockError::new(
          "ENOENT",
          format!(
            "Cannot create the lock directory: {} was removed while the lock was being taken. Retry.",
            data_dir.display()
          ),
        ));
      }
    };
    if changed {
      remember(cwd, file, resolution);
    }
    return Ok(target);
  }
}

fn resolve_afresh(cwd: Option<&Path>, file: &str) -> Result<Resolution> {
  match cwd {
    Some(cwd) => resolve_from(cwd, file),
    None => resolve_from(&current_dir()?, file),
  }
}

fn resolve_from(cwd: &Path, file: &str) -> Result<Resolution> {
  let (absolute, links) = follow_file_links(absolute_file(cwd, file)?)?;
  // A link can lead to the root, which names no file.
  let Some(name) = absolute.file_name() else {
    return Err(not_a_file(file));
  };
  if absolute.is_dir() {
    return Err(is_a_directory(&absolute));
  }
  let (root, lock_path, found) = match override_value() {
    Some(value) => {
      let cwd = Path::new(&value).is_relative().then(|| cwd.to_path_buf());
      let root = normalize(&cwd.as_deref().unwrap_or(Path::new("/")).join(&value));
      (
        root.clone(),
        project_lock_path(&root, name),
        Found::Override { value, cwd },
      )
    }
    None => {
      let mut nearer = Vec::new();
      let dir = absolute.parent().unwrap_or(Path::new("/"));
      let project = dir.ancestors().find(|a| {
        let data_dir = data_dir_of(a);
        let found = data_dir.is_dir();
        if !found {
          nearer.push(data_dir);
        }
        found
      });
      let found = |in_project| Found::Ancestors { nearer, in_project };
      match project {
        Some(root) => (
          root.to_path_buf(),
          project_lock_path(root, name),
          found(true),
        ),
        None => {
          let mut lock_name = OsString::from(".");
          lock_name.push(name);
          lock_name.push(LOCK_SUFFIX);
          (dir.to_path_buf(), dir.join(lock_name), found(false))
        }
      }
    }
  };
  Ok(Resolution {
    spelled: Target {
      file: absolute.clone(),
      root,
      lock_path,
    },
    found,
    links,
    real: None,
  })
}

fn is_a_directory(path: &Path) -> LockError {
  LockError::new(
    "EISDIR",
    format!(
      "{} is a directory; a lock protects a file. Pass the path of a file inside it.",
      path.display()
    ),
  )
}

/// Each path of a file's chain of symbolic links with what it linked to (the last one: `None`,
/// not a link).
type LinkChain = Vec<(PathBuf, Option<PathBuf>)>;

/// Symbolic links followed for one file before giving up, as the kernel's own limit.
const MAX_FILE_LINKS: usize = 40;

/// Follows `path`'s own symbolic links (not its directories'), as the store follows them when
/// it writes: a data file that links into another project is that project's file, locked by
/// its lock. Directories stay as spelled: `.flowforge` linked from several worktrees to one
/// shared directory keeps its locks in the shared `.locks/`, where older tools lock them too.
/// Returns the file and the chain, each path with what it linked to.
fn follow_file_links(path: PathBuf) -> Result<(PathBuf, LinkChain)> {
  let mut chain = Vec::new();
  let mut current = path;
  loop {
    let link = fs::read_link(&current).ok();
    chain.push((current.clone(), link.clone()));
    let Some(link) = link else {
      return Ok((current, chain));
    };
    if chain.len() > MAX_FILE_LINKS {
      return Err(LockError::new(
        "ELOOP",
        format!(
          "{} leads through more than {MAX_FILE_LINKS} symbolic links. Point it at the data file directly.",
          chain[0].0.display()
        ),
      ));
    }
    // A relative link is read from the link's real directory, as the kernel reads it.
    let dir = current.parent().unwrap_or(Path::new("/"));
    let base = if link.is_relative() {
      fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
    } else {
      PathBuf::new()
    };
    current = normalize(&base.join(link));
  }
}

fn project_lock_path(root: &Path, name: &OsStr) -> PathBuf {
  let mut lock_name = name.to_os_string();
  lock_name.push(LOCK_SUFFIX);
  lock_dir_of(root).join(lock_name)
}

/// `lock_file` (an existing lock file) in its directory's real path, as [`Target::lock_path`]
/// has it: for lock files found by listing a lock directory.
pub fn real_lock_path(lock_file: &Path) -> PathBuf {
  match (lock_file.parent(), lock_file.file_name()) {
    (Some(dir), Some(name)) => {
      fs::canonicalize(dir).map_or_else(|_| lock_file.to_path_buf(), |dir| dir.join(name))
    }
    _ => lock_file.to_path_buf(),
  }
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

/// Creates the lock directory of a root given outright (a lock server's project id lives there)
/// if needed, never world-writable, and refuses one that others could tamper with:
/// world-writable without the sticky bit.
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

/// `FLOWFORGE_ROOT_OVERRIDE`, when set and not empty.
fn override_value() -> Option<OsString> {
  std::env::var_os(ROOT_OVERRIDE_ENV).filter(|v| !v.is_empty())
}

fn root_override(cwd: &Path) -> Option<PathBuf> {
  Some(normalize(&cwd.join(override_value()?)))
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
    let relative = resolve_from(&dir, "notes.json").unwrap();
    assert_eq!(relative.spelled.lock_path, from_here.lock_path);
  }

  #[test]
  fn bad_paths_are_rejected_with_codes() {
    assert_eq!(resolve("").unwrap_err().code, "ERR_INVALID_ARG_VALUE");
    assert_eq!(resolve("a\0b").unwrap_err().code, "ERR_INVALID_ARG_VALUE");
    assert_eq!(resolve("/").unwrap_err().code, "ERR_INVALID_ARG_VALUE");
    // The same answers without resolving, for calls that touch the file or find a hold by lockId.
    for bad in [
      "",
      "a\0b",
      "/",
      "/a/..",
      "/a/b/../..",
      "../../../../../../../../../../..",
    ] {
      assert_eq!(
        file_of(bad).unwrap_err().code,
        "ERR_INVALID_ARG_VALUE",
        "{bad:?}"
      );
    }
    for good in ["/a/b/..", "/a/./b/", "a", "x/../y"] {
      file_of(good).unwrap();
    }
    let dir = temp_project();
    assert_eq!(resolve(dir.to_str().unwrap()).unwrap_err().code, "EISDIR");
  }

  #[test]
  fn a_data_file_linked_in_a_loop_is_refused_with_eloop() {
    let dir = temp_project();
    let (a, b) = (dir.join(".flowforge/a.json"), dir.join(".flowforge/b.json"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = resolve(a.to_str().unwrap()).unwrap_err();
    assert_eq!(err.code, "ELOOP");
    assert!(err.message.contains("a.json"), "{}", err.message);
  }

  #[test]
  fn a_flowforge_made_nearer_the_file_applies_at_the_next_call() {
    let dir = temp_project();
    fs::create_dir(dir.join("sub")).unwrap();
    let file = dir.join("sub/data.json");
    let file = file.to_str().unwrap();
    assert_eq!(prepare(file).unwrap().root, dir);
    fs::create_dir(dir.join("sub/.flowforge")).unwrap();
    let nested = prepare(file).unwrap();
    assert_eq!(nested.root, dir.join("sub"));
    assert_eq!(
      nested.lock_path,
      dir.join("sub/.flowforge/.locks/data.json.lock")
    );
  }

  #[test]
  fn a_removed_flowforge_is_not_made_again_and_the_next_root_up_locks_its_files() {
    let outer = temp_project();
    let inner = outer.join("inner");
    fs::create_dir_all(inner.join(".flowforge")).unwrap();
    let file = inner.join("data.json");
    let file = file.to_str().unwrap();
    assert_eq!(prepare(file).unwrap().root, inner);
    fs::remove_dir_all(inner.join(".flowforge")).unwrap();
    // Looking makes nothing, and preparing to lock makes only the next root's lock directory.
    assert_eq!(resolve(file).unwrap().root, outer);
    assert_eq!(prepare(file).unwrap().root, outer);
    assert!(!inner.join(".flowforge").exists());
  }

  #[test]
  fn a_lock_directory_reached_through_a_symlink_is_one_lock_path() {
    let dir = temp_project();
    let link = dir.with_extension("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let direct = prepare(dir.join(".flowforge/tasks.json").to_str().unwrap()).unwrap();
    let linked = prepare(link.join(".flowforge/tasks.json").to_str().unwrap()).unwrap();
    assert_eq!(linked.lock_path, direct.lock_path);
    assert_eq!(linked.file, link.join(".flowforge/tasks.json"));
    // A worktree's .flowforge linked to a shared one: its files keep their worktree as root
    // (where they are named), and lock in the shared .locks/.
    let worktree = crate::test_support::temp_dir("paths-worktree");
    std::os::unix::fs::symlink(dir.join(".flowforge"), worktree.join(".flowforge")).unwrap();
    let shared = prepare(worktree.join(".flowforge/tasks.json").to_str().unwrap()).unwrap();
    assert_eq!(shared.root, worktree);
    assert_eq!(shared.lock_path, direct.lock_path);
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
