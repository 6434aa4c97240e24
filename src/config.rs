//! Which backend decides a project's locks. Today every project uses the file backend; the
//! distributed backends (Redis, etcd) plug in here, chosen by `FLOWFORGE_LOCK_BACKEND`,
//! `configure({ backend })` or `.flowforge/lock-config.json`.

use crate::backend::Backend;
use crate::error::Result;
use crate::file;
use crate::paths::Target;

/// The backend that decides `target`'s lock.
pub fn backend_for(_target: &Target) -> Result<&'static dyn Backend> {
  Ok(file::backend())
}

/// The backend of the project at `root` (for commands that list or clean a whole project).
pub fn backend_for_root(_root: &std::path::Path) -> Result<&'static dyn Backend> {
  Ok(file::backend())
}

/// Process exit, after every hold was released: the backends remove what this process left
/// that nobody uses (the file backend's free lock files and waiting rooms).
pub fn tidy_up_at_exit() {
  file::backend().remove_unused();
}
