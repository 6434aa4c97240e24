'use strict'
// The addon built with the test-only `failpoints` feature, for child processes that must stop at
// a dangerous instant. Children load it through napi-rs's own override,
// NAPI_RS_NATIVE_LIBRARY_PATH, so the package under test is otherwise the same code.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { PACKAGE_ROOT } = require('./helpers')

// The default target dir: `npm test` has just built the same crate with the same features for
// `cargo test --features failpoints`, so this build only links. The package's own addon was
// copied out of target/ when it was built, so it is not affected.
const TARGET_DIR = path.join(PACKAGE_ROOT, 'target')
const BINARY = path.join(TARGET_DIR, 'flowforge-lock.failpoints.node')

/** Builds (incrementally) and returns the path of the failpoint addon. */
function failpointBinary() {
  const build = spawnSync('cargo', ['build', '--release', '--features', 'failpoints'], {
    cwd: PACKAGE_ROOT,
    encoding: 'utf8',
  })
  if (build.status !== 0) throw new Error(`cargo build --features failpoints failed:\n${build.stderr}`)
  const library = process.platform === 'darwin' ? 'libflowforge_lock.dylib' : 'libflowforge_lock.so'
  fs.copyFileSync(path.join(TARGET_DIR, 'release', library), BINARY)
  return BINARY
}

/** The environment of a child that runs the failpoint addon with `failpoints` set. */
function failpointEnv(binary, failpoints) {
  return { NAPI_RS_NATIVE_LIBRARY_PATH: binary, FAILPOINTS: failpoints }
}

module.exports = { failpointBinary, failpointEnv }
