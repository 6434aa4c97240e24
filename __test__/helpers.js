'use strict'
// Shared by the jest suites: temp FlowForge projects, free loopback ports and real child
// processes.
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')

const PACKAGE_ROOT = path.resolve(__dirname, '..')
const FIXTURES = path.join(__dirname, 'fixtures')

/**
 * Points this process's temp directory (TMPDIR: os.tmpdir(), Rust's std::env::temp_dir(), and
 * every child started from now on) at a fresh directory, so that a run of the tests, the bench
 * or the torture leaves nothing behind in /tmp: the caller removes it at the end. World-writable
 * with the sticky bit, as /tmp is: the unprivileged cases' children make their files there too.
 */
function useRunTmpdir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  fs.chmodSync(dir, 0o1777)
  process.env.TMPDIR = dir
  return dir
}

/** useRunTmpdir for a process that removes the directory itself when it exits. */
function useRunTmpdirUntilExit(prefix) {
  const dir = useRunTmpdir(prefix)
  process.on('exit', () => {
    try {
      fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
    } catch (err) {
      // A leftover temp directory is not the run's failure: say so and let the exit code stand.
      console.error(`could not remove ${dir}: ${err.message}`)
    }
  })
  return dir
}

/** A fresh temp dir holding `.flowforge/`, readable by every user (for the unprivileged tests). */
function makeProject(prefix = 'ffl-test-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  fs.chmodSync(dir, 0o755)
  fs.mkdirSync(path.join(dir, '.flowforge'))
  return dir
}

/** A loopback port that was free a moment ago (for a server to start on, or a client to find
 * nobody listening on). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

/**
 * Runs `node fixtures/<name>.js args…` and resolves with its exit, stdout and stderr.
 * `onLine(line, child)` sees each stdout line as it arrives.
 */
function runFixture(name, args = [], { cwd, env, uid, gid, onLine } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(FIXTURES, `${name}.js`), ...args.map(String)], {
      cwd,
      env: { ...process.env, ...env },
      uid,
      gid,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let pending = ''
    child.stdout.on('data', (chunk) => {
      stdout += chunk
      pending += chunk
      let nl
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl)
        pending = pending.slice(nl + 1)
        if (onLine) onLine(line, child)
      }
    })
    child.stderr.on('data', (chunk) => (stderr += chunk))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, pid: child.pid }))
  })
}

/** Starts a fixture and resolves once it printed `marker`, with the child and its exit promise. */
function startFixture(name, args, marker, options = {}) {
  return new Promise((resolve, reject) => {
    let child
    const exited = runFixture(name, args, {
      ...options,
      onLine: (line, c) => {
        child = c
        if (line.includes(marker)) resolve({ child, exited, line })
      },
    })
    exited.then((result) => {
      if (!child || child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`${name} ended before printing ${marker}: ${JSON.stringify(result)}`))
      }
    }, reject)
  })
}

/**
 * A starter of lock drivers (fixtures/lock-driver.js): child processes that run lock calls on
 * command. Call it at the top of a test file: every driver it started is SIGKILLed after each
 * test. `const child = await startDriver(env)`, then `await child.call('acquire', { file,
 * timeout })` resolves with the child's answer, `{ ok: true, value }` or `{ ok: false, code,
 * message }`; calls may overlap (each answer carries its command's id).
 */
function lockDrivers() {
  const started = []
  afterEach(async () => {
    await Promise.all(started.splice(0).map(({ child, exited }) => (child.kill('SIGKILL'), exited)))
  })
  return function startDriver(env = {}) {
    const child = spawn(process.execPath, [path.join(FIXTURES, 'lock-driver.js')], {
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
    started.push({ child, exited })
    const answers = new Map()
    let nextId = 0
    return new Promise((resolve, reject) => {
      const call = (op, args = {}) => {
        const id = nextId++
        child.stdin.write(`${JSON.stringify({ id, op, ...args })}\n`)
        return new Promise((answer) => answers.set(id, answer))
      }
      child.on('error', reject)
      exited.then((how) => {
        const ended = `lock-driver ended (${JSON.stringify(how)})`
        reject(new Error(`${ended} before it was ready`))
        for (const answer of answers.values()) answer({ ok: false, code: 'EDRIVEREXITED', message: ended })
      })
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        const message = JSON.parse(line)
        if (message.ready !== undefined) return resolve({ pid: message.ready, call })
        answers.get(message.id)(message)
        answers.delete(message.id)
      })
    })
  }
}

const NOBODY = { uid: 65534, gid: 65534 }
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0

/**
 * `test(name, fn, timeout)` for a case that runs a child process as `nobody`: only root can.
 * Not root, the case is skipped, and the reason is printed (in the test's name and on the console).
 */
function testAsNobody(name, fn, timeout) {
  if (IS_ROOT) return test(name, fn, timeout)
  const reason = `needs root to run a process as nobody (uid ${NOBODY.uid}); running as uid ${process.getuid()}`
  console.warn(`skipped: ${name}: ${reason}`)
  return test.skip(`${name} [skipped: ${reason}]`, fn)
}

let readableCopy
/**
 * A world-readable copy of what `require('flowforge-lock')` loads (package.json, the top-level
 * .js modules, the .node binary, lib/, bin/), made once per test process: for children run as
 * `nobody`, who may not be allowed to enter the checkout's directory (a clone under a 0700 home).
 */
function readablePackage() {
  if (readableCopy) return readableCopy
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-readable-'))
  for (const name of fs.readdirSync(PACKAGE_ROOT)) {
    if (name === 'package.json' || /\.(js|node)$/.test(name) || name === 'lib' || name === 'bin') {
      fs.cpSync(path.join(PACKAGE_ROOT, name), path.join(dir, name), { recursive: true })
    }
  }
  const open = (p) => {
    const stat = fs.statSync(p)
    fs.chmodSync(p, stat.isDirectory() ? 0o755 : stat.mode & 0o111 ? 0o755 : 0o644)
    if (stat.isDirectory()) for (const name of fs.readdirSync(p)) open(path.join(p, name))
  }
  open(dir)
  readableCopy = dir
  return dir
}

/** Makes `require('flowforge-lock/…')` work in `root`, as an install in a FlowForge checkout would. */
function linkPackage(root) {
  fs.mkdirSync(path.join(root, 'node_modules'), { recursive: true })
  fs.symlinkSync(PACKAGE_ROOT, path.join(root, 'node_modules', 'flowforge-lock'))
}

/**
 * Runs `node args…` with its stdin, stdout and stderr on a pseudo-terminal (util-linux `script`),
 * calling `onOutput(all output so far)` as output comes; resolves to `{ code, output }`.
 */
function runOnTerminal(args, onOutput = () => {}, env = process.env) {
  const quote = (s) => `'${String(s).replace(/'/g, "'\\''")}'`
  const command = [process.execPath, ...args].map(quote).join(' ')
  const child = spawn('script', ['-qec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env })
  let output = ''
  child.stdout.on('data', (chunk) => {
    output += chunk
    onOutput(output)
  })
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, output })))
}

/**
 * Errors made by the native core belong to Node's main realm, not to jest's sandbox, so
 * `instanceof Error` would be false there: check that it is a real Error of the right kind.
 */
function expectError(err, Kind, code) {
  expect(require('node:util').types.isNativeError(err)).toBe(true)
  expect(err.name).toBe(Kind.name)
  if (code !== undefined) expect(err.code).toBe(code)
}

module.exports = { PACKAGE_ROOT, useRunTmpdir, useRunTmpdirUntilExit, makeProject, freePort, runFixture, startFixture, lockDrivers, NOBODY, IS_ROOT, testAsNobody, readablePackage, expectError, linkPackage, runOnTerminal }
