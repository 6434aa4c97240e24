'use strict'
// Child processes for the lock-server suites (etcd, Redis): fixtures that print one line per
// event, read commands on stdin, and may run in a UTS namespace of their own (a "host"); and the
// runs both suites drive through them (counter loops, a frozen holder, a cut-off holder), which
// only speak the public API and so mean the same on every lock server.
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const { PACKAGE_ROOT } = require('./helpers')

const FIXTURES = path.join(__dirname, 'fixtures')
const BIN = path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js')

/**
 * A starter whose children are all SIGKILLed after each test of the calling file, so a failed
 * assertion leaves no children (and their pipes) behind. Call it at the top of a test file.
 * `nodeArgs` go before every child's script (e.g. --unhandled-rejections=strict).
 */
function childStarter({ nodeArgs = [] } = {}) {
  const children = new Set()
  afterEach(() => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    children.clear()
  })
  /**
   * Starts `node fixtures/<name>.js args` (or, with `cli`, the flowforge-lock command) with
   * `env`; `host` runs it in a UTS namespace of its own under that hostname. `until(re)` resolves
   * with the next stdout line matching `re` (every line stays in `lines`); `send(line)` writes a
   * command.
   */
  return function start(name, args, env, { host, cli } = {}) {
    const node = [process.execPath, ...nodeArgs, cli ? BIN : path.join(FIXTURES, `${name}.js`), ...args.map(String)]
    const [cmd, ...argv] = host ? ['unshare', '--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', host, ...node] : node
    const child = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
    children.add(child)
    const lines = []
    const waiting = []
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      lines.push(line)
      for (const w of waiting.splice(0)) if (!w()) waiting.push(w)
    })
    // One cursor: each `until` looks from just after the line the previous one returned.
    let cursor = 0
    const until = (re) =>
      new Promise((resolve, reject) => {
        const look = () => {
          const i = lines.findIndex((l, j) => j >= cursor && re.test(l))
          if (i < 0) return false
          cursor = i + 1
          resolve(lines[i])
          return true
        }
        if (look()) return
        waiting.push(look)
        exited.then((how) => reject(new Error(`${name} ended (${JSON.stringify(how)}) before ${re}:\n${lines.join('\n')}\n${stderr}`)))
      })
    const send = (line) => child.stdin.write(`${line}\n`)
    return { child, lines, until, send, exited, stderr: () => stderr }
  }
}

/** The environment that has a child take its locks on the lock server at `url`. */
const backend = (url) => ({ FLOWFORGE_LOCK_BACKEND: url })

/** Runs counter workers (fixtures/*-counter.js) to the end: every one prints DONE. `midRun()`,
 * if given, runs once they are all started, before waiting for the end. */
async function runCounters(workers, midRun) {
  await Promise.all(workers.map((w) => w.until(/^READY$/)))
  for (const w of workers) w.send('go')
  if (midRun) await midRun()
  await Promise.all(workers.map((w) => w.until(/^DONE /)))
  for (const w of workers) w.child.stdin.end()
  await Promise.all(workers.map((w) => w.exited))
}

// The rest drive fixtures/etcd-worker.js, a holder commanded line by line.

/** Has `worker` take the lock (waiting up to 5 s); resolves with its fencing token. */
async function acquired(worker) {
  worker.send('acquire 5000')
  return Number((await worker.until(/^ACQUIRED /)).split(' ')[2])
}

/** The holder's view of the lock (getLockInfo through its `info` command). */
async function infoOf(worker) {
  worker.send('info')
  return JSON.parse((await worker.until(/^INFO /)).slice(5))
}

/** Resolves once the lock `holder` holds shows a waiter queued behind it on the server. */
async function untilQueued(holder) {
  while ((await infoOf(holder)).queueLength < 1);
}

/**
 * `holder` takes the lock, `next` queues for it (waiting up to 30 s), and once the lock's queue
 * on the server shows the waiter, `holder` is SIGKILLed. Resolves with the holder's fencing token
 * and when it was killed: what frees the lock then (its lease running out, or the server seeing
 * its connection close) is the caller's to check.
 */
async function killHolderBeforeWaiter(holder, next) {
  await Promise.all([holder.until(/^READY$/), next.until(/^READY$/)])
  const first = await acquired(holder)
  next.send('acquire 30000')
  await untilQueued(holder)
  const killedAt = Date.now()
  holder.child.kill('SIGKILL')
  expect(await holder.exited).toEqual({ code: null, signal: 'SIGKILL' })
  return { first, killedAt }
}

/**
 * `worker`'s lock server is not there (nobody listens at `address`): asked for the lock (waiting
 * up to 10 s), it must be told ELOCKBACKEND naming `address`. `report(answer, ms)` first sees the
 * answer and how long it took. Resolves with how the worker exited once told to end.
 */
async function askUnreachable(worker, address, report) {
  await worker.until(/^READY$/)
  const asked = Date.now()
  worker.send('acquire 10000')
  const line = await worker.until(/^(ACQUIRED|ERR) /)
  report(line, Date.now() - asked)
  expect(line).toMatch(/^ERR ELOCKBACKEND /)
  expect(line).toContain(address)
  worker.child.stdin.end()
  return worker.exited
}

/**
 * Rounds of: A takes the lock and reads; A is frozen (SIGSTOP) past its lease, so only the
 * lease's end can free the lock; B, waiting, gets it and commits an increment; A resumes and
 * writes its increment of the old value. `a` and `b` work on the counter file `file`. Resolves
 * with the lost updates (increments reported done − the final count) and how each late write
 * ended ('WROTE', or 'ERR <code>').
 */
async function frozenRounds(a, b, file, rounds) {
  await Promise.all([a.until(/^READY$/), b.until(/^READY$/)])
  let done = 0
  const late = []
  for (let round = 0; round < rounds; round++) {
    a.send('acquire 30000')
    await a.until(/^ACQUIRED /)
    a.send('read')
    const seen = Number((await a.until(/^READ /)).split(' ')[1])
    a.child.kill('SIGSTOP')
    b.send('inc 30000')
    const inc = await b.until(/^(INC|ERR) /)
    if (inc.startsWith('INC')) done += 1
    a.child.kill('SIGCONT')
    a.send(`write ${seen + 1}`)
    const outcome = await a.until(/^(WROTE|ERR) /)
    late.push(outcome.startsWith('WROTE') ? 'WROTE' : outcome.split(' ').slice(0, 2).join(' '))
    if (outcome.startsWith('WROTE')) done += 1
    a.send('release')
    await a.until(/^RELEASED /)
  }
  for (const w of [a, b]) w.child.stdin.end()
  await Promise.all([a.exited, b.exited])
  expect(b.lines.filter((l) => l.startsWith('INC'))).toHaveLength(rounds)
  return { lost: done - JSON.parse(fs.readFileSync(file, 'utf8')).count, late }
}

/**
 * `cutOff` holds the lock through `proxy`, `other` queues for it straight at the server; then
 * the proxy drops everything. The cut-off holder must learn it lost the lock (its AbortSignal
 * aborts: `onLost(its LOST line)`; then the check a write would make refuses with ELOCKLOST),
 * and `other` must get the lock with a higher token.
 */
async function cutOffHolder(cutOff, other, proxy, onLost) {
  await Promise.all([cutOff.until(/^READY$/), other.until(/^READY$/)])
  cutOff.send('hold 5000')
  const first = Number((await cutOff.until(/^HOLDING /)).split(' ')[2])
  other.send('acquire 30000')
  proxy.drop()
  onLost(await cutOff.until(/^LOST /))
  expect(await cutOff.until(/^(HELD|ERR) /)).toMatch(/^ERR ELOCKLOST /)
  const second = Number((await other.until(/^ACQUIRED /)).split(' ')[2])
  expect(second).toBeGreaterThan(first)
  cutOff.child.kill('SIGKILL')
  other.child.stdin.end()
  await Promise.all([cutOff.exited, other.exited])
}

module.exports = { childStarter, backend, runCounters, acquired, infoOf, untilQueued, killHolderBeforeWaiter, askUnreachable, frozenRounds, cutOffHolder }
