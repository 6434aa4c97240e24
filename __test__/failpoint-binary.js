'use strict'
// The addon built with the test-only `failpoints` feature, for child processes that must stop at
// a dangerous instant. Children load it through napi-rs's own override,
// NAPI_RS_NATIVE_LIBRARY_PATH, so the package under test is otherwise the same code.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { PACKAGE_ROOT } = require('./helpers')

const TARGET_DIR = path.join(PACKAGE_ROOT, 'target', 'failpoints')
const BINARY = path.join(TARGET_DIR, 'flowforge-lock.failpoints.node')

/** Builds (incrementally) and returns the path of the failpoint addon. */
function failpointBinary() {
  const build = spawnSync('cargo', ['build', '--release', '--features', 'failpoints', '--target-dir', TARGET_DIR], {
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
