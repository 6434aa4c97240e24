//! Which backend decides a project's locks: the file backend unless a lock server is named,
//! first by `configure({ backend })` in this process, else by `FLOWFORGE_LOCK_BACKEND`, else by
//! the project's `.flowforge/lock-config.json` (`{ "backend": "redis://host:6379" }`).
//! A backend URL is connected once per process and kept; the choice for a project is looked up
//! again at most once a second, so a changed config applies to new locks soon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::error::{LockError, Result};
use crate::file;
use crate::paths::{self, Target};

pub const BACKEND_ENV: &str = "FLOWFORGE_LOCK_BACKEND";
const PROJECT_CONFIG: &str = "lock-config.json";
const CHOICE_TTL: Duration = Duration::from_secs(1);

type Choice = (Instant, &'static dyn Backend);

struct State {
  configured: Option<String>,
  /// Connected backends by URL: one connection (pool) per server per process.
  connected: HashMap<String, &'static dyn Backend>,
  /// The choice per project root, with when it was made.
  chosen: HashMap<PathBuf, Choice>,
}

fn state() -> MutexGuard<'static, State> {
  static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| {
    Mutex::new(State {
      configured: None,
      connected: HashMap::new(),
      chosen: HashMap::new(),
    })
  });
  STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `configure({ backend })`: the backend of every project in this process (`None`: back to the
/// environment and the project's config). The URL is checked now, connected on first use.
pub fn configure(url: Option<&str>) -> Result<()> {
  if let Some(url) = url {
    check_url(url)?;
  }
  let mut state = state();
  state.configured = url.map(str::to_string);
  state.chosen.clear();
  Ok(())
}

/// The backend that decides `target`'s lock.
pub fn backend_for(target: &Target) -> Result<&'static dyn Backend> {
  backend_for_root(&target.root)
}

/// The backend of the project at `root`.
pub fn backend_for_root(root: &Path) -> Result<&'static dyn Backend> {
  if let Some((at, backend)) = state().chosen.get(root) {
    if at.elapsed() < CHOICE_TTL {
      return Ok(*backend);
    }
  }
  let url = chosen_url(root)?;
  let backend = match url.as_deref() {
    None | Some("file") => file::backend() as &'static dyn Backend,
    Some(url) => connected(url)?,
  };
  state()
    .chosen
    .insert(root.to_path_buf(), (Instant::now(), backend));
  Ok(backend)
}

/// The backend URL that applies to the project at `root` (`None`: the file backend).
fn chosen_url(root: &Path) -> Result<Option<String>> {
  let configured = state().configured.clone();
  match configured {
    Some(url) => Ok(Some(url)),
    None => match std::env::var(BACKEND_ENV).ok().filter(|v| !v.is_empty()) {
      Some(url) => Ok(Some(url)),
      None => project_backend(root),
    },
  }
}

/// `doctor`: the backend of the project at `root` (its URL, password hidden) and, for a lock
/// server, its version. It connects afresh, so an unreachable server is an error now
/// (`ELOCKBACKEND` naming the address), not at the first lock.
pub fn health(root: &Path) -> Result<serde_json::Value> {
  let url = match chosen_url(root)? {
    Some(url) if url != "file" => url,
    _ => return Ok(serde_json::json!({ "backend": "file", "version": null })),
  };
  check_url(&url)?;
  let version = match scheme(&url) {
    "redis" | "rediss" => Some(
      crate::redis::RedisBackend::connect(&url)?
        .engine()
        .server_version()?,
    ),
    _ => {
      crate::etcd::EtcdBackend::connect(&url)?;
      None
    }
  };
  Ok(serde_json::json!({ "backend": crate::redis::redact(&url), "version": version }))
}

/// The `backend` of `<root>/.flowforge/lock-config.json`, if the file exists.
fn project_backend(root: &Path) -> Result<Option<String>> {
  let path = paths::data_dir_of(root).join(PROJECT_CONFIG);
  let text = match std::fs::read_to_string(&path) {
    Ok(text) => text,
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
    Err(e) => {
      return Err(LockError::io(
        &e,
        "Cannot read the lock configuration",
        &path,
      ))
    }
  };
  let bad = |why: String| {
    LockError::new(
      "ELOCKCONFIG",
      format!(
        "{} is not a valid lock configuration: {why}. Expected {{ \"backend\": \"file\" | \"redis://host:port\" | \"etcd://host:port\" }}.",
        path.display()
      ),
    )
  };
  let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
  match value.get("backend") {
    None => Ok(None),
    Some(serde_json::Value::String(url)) => {
      check_url(url).map_err(|e| bad(e.message))?;
      Ok(Some(url.clone()))
    }
    Some(other) => Err(bad(format!("\"backend\" is {other}, not a string"))),
  }
}

fn scheme(url: &str) -> &str {
  url.split_once("://").map_or(url, |(scheme, _)| scheme)
}

fn check_url(url: &str) -> Result<()> {
  match scheme(url) {
    "file" => Ok(()),
    "etcd" | "etcds" => crate::etcd::EtcdConfig::parse(url).map(|_| ()),
    "redis" | "rediss" => crate::redis::RedisConfig::parse(url).map(|_| ()),
    other => Err(LockError::invalid_value(format!(
      "Unknown lock backend {other:?} in {url:?}: use \"file\" (the default), redis://host:port or etcd://host:port."
    ))),
  }
}

/// The backend for a server URL, connected once per process.
fn connected(url: &str) -> Result<&'static dyn Backend> {
  if let Some(backend) = state().connected.get(url) {
    return Ok(*backend);
  }
  check_url(url)?;
  let backend: &'static dyn Backend = match scheme(url) {
    "etcd" | "etcds" => Box::leak(Box::new(crate::etcd::EtcdBackend::connect(url)?)),
    "redis" | "rediss" => Box::leak(Box::new(crate::redis::RedisBackend::connect(url)?)),
    _ => {
      return Err(LockError::invalid_value(format!(
        "No backend for {url:?} in this build."
      )))
    }
  };
  // Two first uses at once may both connect; the first stays, the other is leaked unused.
  Ok(*state().connected.entry(url.to_string()).or_insert(backend))
}

/// Process exit, after every hold was released: the backends remove what this process left
/// that nobody uses (the file backend's free lock files, queue files and idle reader files).
pub fn tidy_up_at_exit() {
  file::backend().remove_unused();
}
