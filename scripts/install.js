#!/usr/bin/env node
'use strict'
// The package's `install` step, run by npm when a project installs flowforge-lock.
//
// 1. In the library's own checkout (not under node_modules/, or a git work tree) it does nothing: `prepare`
//    builds the addon there with the napi-rs CLI, once.
// 2. If a prebuilt binary loads (the platform package npm installed as an optional
//    dependency, e.g. flowforge-lock-linux-x64-gnu), it does nothing.
// 3. Otherwise, with a Rust toolchain >= MIN_RUST on PATH, it compiles the shipped sources with
//    plain `cargo build --release` (the napi-rs CLI is a devDependency, not available here) and
//    puts the library where native.js looks first: flowforge-lock.<platform>.node in this
//    package's directory. Then it checks the package really loads.
// 4. Otherwise the install fails with one message: this platform, the platforms that have
//    prebuilt binaries, and how to install Rust. Never an install that succeeds into a module
//    that throws on require.
//
// CARGO_TARGET_DIR, if set, is used as cargo's target dir (and kept); otherwise a temporary
// one is made and removed afterwards.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { currentPlatform, declaredPlatforms, localBinaryName, rootPackage } = require('./platform.js')

const PACKAGE_DIR = path.resolve(__dirname, '..')
const MIN_RUST = [1, 89, 0]
const RUSTUP = 'curl https://sh.rustup.rs -sSf | sh'

/** Progress lines: on stderr, and on the terminal when there is one (npm hides script output). */
function say(line) {
  process.stderr.write(`${line}\n`)
  if (process.env.npm_config_foreground_scripts === 'true') return
  try {
    const fd = fs.openSync('/dev/tty', 'w')
    fs.writeSync(fd, `${line}\n`)
    fs.closeSync(fd)
  } catch {
    // no terminal: stderr only (npm prints it if the install fails)
  }
}

/** Loads the package in a fresh process: `{ ok, error }` (the first line of what went wrong). */
function loads() {
  const run = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(path.join(PACKAGE_DIR, 'index.js'))})`], {
    encoding: 'utf8',
    cwd: PACKAGE_DIR,
  })
  if (run.status === 0) return { ok: true }
  const lines = `${run.stderr}`.split('\n').filter((l) => /Error|error/.test(l))
  return { ok: false, error: lines.slice(0, 3).join('\n    ') || `exit ${run.status}` }
}

function versionOf(command) {
  const run = spawnSync(command, ['--version'], { encoding: 'utf8' })
  if (run.error || run.status !== 0) return null
  const match = /(\d+)\.(\d+)\.(\d+)/.exec(run.stdout)
  return match ? { text: run.stdout.trim(), numbers: match.slice(1, 4).map(Number) } : null
}

const atLeast = (v, min) => {
  for (let i = 0; i < 3; i++) if (v[i] !== min[i]) return v[i] > min[i]
  return true
}

class InstallError extends Error {}
/** Ends the install with this message (after any `finally` cleanup) and exit status 1. */
function fail(lines) {
  throw new InstallError(lines.join('\n'))
}

/** Why this platform's prebuilt package did not do it: missing, or present but not loading. */
function prebuiltProblem(prebuilt, error) {
  try {
    require.resolve(`${prebuilt.packageName}/package.json`, { paths: [PACKAGE_DIR] })
  } catch {
    return `  This platform's package, ${prebuilt.packageName}, is not installed (npm installs it as an optional dependency: omitted, or not reachable?).`
  }
  return `  This platform's package, ${prebuilt.packageName}, is installed but does not load:\n    ${error}`
}

function main() {
  const ownCheckout = !PACKAGE_DIR.split(path.sep).includes('node_modules') || fs.existsSync(path.join(PACKAGE_DIR, '.git'))
  if (ownCheckout) return
  const first = loads()
  if (first.ok) return

  const here = currentPlatform()
  const platforms = declaredPlatforms(rootPackage())
  const prebuilt = platforms.find((p) => p.name === here.name)
  const cargo = versionOf('cargo')
  const rustc = versionOf('rustc')
  const minText = MIN_RUST.slice(0, 2).join('.')
  if (!cargo || !rustc || !atLeast(rustc.numbers, MIN_RUST)) {
    const found = !cargo || !rustc ? 'none' : `${rustc.text}, older than ${minText}`
    fail([
      `flowforge-lock: cannot install on ${here.name} (${here.triple}): no prebuilt binary loads, and no Rust toolchain >= ${minText} to build one.`,
      `  Prebuilt binaries exist for: ${platforms.map((p) => p.name).join(', ')}.`,
      prebuilt ? prebuiltProblem(prebuilt, first.error) : `  There is none for ${here.name}.`,
      `  Building from source needs Rust >= ${minText} (cargo and rustc on PATH); found ${found}.`,
      `  Install Rust with${cargo && rustc ? ' (or update it: rustup update)' : ''}:`,
      `    ${RUSTUP}`,
      `  then open a new shell (or run: . "$HOME/.cargo/env") and install flowforge-lock again.`,
    ])
  }

  say(`flowforge-lock: no prebuilt binary loads on ${here.name} (${here.triple}): compiling the Rust addon from source`)
  say(`flowforge-lock: with ${rustc.text}; this may take a minute or two...`)
  const ownTargetDir = !process.env.CARGO_TARGET_DIR
  const targetDir = process.env.CARGO_TARGET_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'flowforge-lock-build-'))
  try {
    const build = spawnSync('cargo', ['build', '--release', '--locked', '--target-dir', targetDir], {
      cwd: PACKAGE_DIR,
      stdio: ['ignore', 'inherit', 'inherit'],
    })
    if (build.status !== 0) {
      fail([
        `flowforge-lock: cannot install: \`cargo build --release\` failed (exit ${build.status ?? build.signal}) in ${PACKAGE_DIR}; its output is above.`,
        `  platform: ${here.name} (${here.triple}); prebuilt binaries: ${platforms.map((p) => p.name).join(', ')}`,
      ])
    }
    // cargo names the cdylib after the crate: libflowforge_lock.so / .dylib.
    const built = path.join(targetDir, 'release', process.platform === 'darwin' ? 'libflowforge_lock.dylib' : 'libflowforge_lock.so')
    const dest = path.join(PACKAGE_DIR, localBinaryName(here.name))
    const temp = `${dest}.${process.pid}.tmp`
    fs.copyFileSync(built, temp)
    fs.renameSync(temp, dest)
  } finally {
    if (ownTargetDir) fs.rmSync(targetDir, { recursive: true, force: true })
  }
  const after = loads()
  if (!after.ok) {
    fail([`flowforge-lock: cannot install: built from source, but the package still does not load:`, `    ${after.error}`])
  }
  say(`flowforge-lock: built ${localBinaryName(here.name)} from source`)
}

try {
  main()
} catch (err) {
  process.stderr.write(`\n${err instanceof InstallError ? err.message : `flowforge-lock: cannot install: ${err.stack}`}\n\n`)
  process.exit(1)
}
