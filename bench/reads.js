#!/usr/bin/env node
'use strict'
// Issue 12's bench: lock-free reads, the read cache and the synchronous API, each beside its
// baseline in the same run. Prints a table with ratios; `--smoke` is a short run; `--only R3,R4`
// runs those scenarios alone; `--json` also prints the raw figures as one JSON line.
//
//   R1 readJSON (no cache) while another process holds the lock for seconds, vs an unlocked
//      fs.readFileSync + JSON.parse of the same file (goal: no worse).
//   R2 cached readJSON of an unchanged 1 MiB tasks.json vs JSON.parse(fs.readFileSync())
//      (goal: >= 20x faster).
//   R3 handoff between two processes with acquireLockSync/releaseLockSync vs raw flock(2)
//      (hold 1-10 ms, release, wait 1 ms) (goal: within 2x), the raw loop twice: in Rust
//      (examples/flock_limit.rs, the kernel's own figure) and in Node calling flock through a
//      bare Node-API addon (examples/flock_node.rs, the floor for any Node program).
//   R4 uncontended acquireLockSync + releaseLockSync cycle vs a raw flock lock+unlock cycle,
//      the same two ways (goal: within 2x).
//   R5 readers + a writer in separate processes: reads/s and writes/s when the readers take
//      shared locks vs the same readers with exclusive locks (each read holds its lock for the
//      parse plus 1 ms of "rendering").
//   R6 a writer's wait for its lock while 4 reader processes stream shared holds (5 ms each,
//      always overlapping, so the lock is never free of readers): p50/max, to show it is bounded
//      by about one reader's hold (writer preference), not starved.
//
// Child modes (run by this script): `sync-pingpong|flock-pingpong <file> <rounds>`,
// `sync-cycle|flock-cycle <file> <n>`,
// `rw-reader <file> <mode> <ms> <holdMs>`, `rw-writer <file> <ms> <gapMs>`.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')
const { table } = require('../lib/table.js')
const { useRunTmpdirUntilExit } = require('../__test__/helpers.js')

const ROOT = path.resolve(__dirname, '..')
const FLOCK = path.join(ROOT, 'target', 'release', 'examples', 'flock_limit')
const FLOCK_ADDON = path.join(ROOT, 'target', 'release', 'examples', 'libflock_node.so')
const SMOKE = process.argv.includes('--smoke')
// `--only R3,R4` runs those scenarios alone (the others take most of the run's time).
const ONLY = process.argv.includes('--only') ? new Set(process.argv[process.argv.indexOf('--only') + 1].split(',')) : null
const ran = (scenario) => !ONLY || ONLY.has(scenario)
const N = SMOKE ? { reads: 300, cached: 2000, rounds: 40, cycles: 2000, rwMs: 600 } : { reads: 3000, cached: 20000, rounds: 300, cycles: 20000, rwMs: 4000 }

// CLOCK_MONOTONIC, as flock_limit's: one clock for every process of the host, so one process's
// release and another's grant subtract exactly (performance.timeOrigin is an estimate per process,
// a few µs apart between processes).
const nowUs = () => Number(process.hrtime.bigint()) / 1e3
// One cell for every sleep: a fresh SharedArrayBuffer per call would put an allocation between a
// release and the releaser's sleep, inside the handoff R3 times (raw flock's loop has none).
const SLEEP_CELL = new Int32Array(new SharedArrayBuffer(4))
const sleepSync = (ms) => Atomics.wait(SLEEP_CELL, 0, 0, ms)
const median = (xs) => pct(xs, 50)
function pct(xs, p) {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

function project() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-bench-reads-'))
  fs.mkdirSync(path.join(root, '.flowforge'))
  return root
}

/** A FlowForge-like tasks.json of about `bytes` bytes. */
function tasksDoc(bytes) {
  const tasks = []
  for (let id = 1; JSON.stringify(tasks).length < bytes; id++) {
    tasks.push({ id, title: `Task ${id}: make the thing work`, status: id % 3 ? 'ready' : 'done', priority: id % 5, labels: ['bench', `l${id % 7}`], timeSpent: id * 0.25, description: 'x'.repeat(120) })
  }
  return { version: '2.0.0', tasks, metadata: { created: new Date(0).toISOString() } }
}

/** µs per call of `fn`, each call timed alone. */
function timeEach(n, fn) {
  const us = []
  for (let i = 0; i < Math.min(50, n); i++) fn()
  for (let i = 0; i < n; i++) {
    const start = performance.now()
    fn()
    us.push((performance.now() - start) * 1000)
  }
  return us
}

/** Runs a child (node script or flock_limit) and resolves with its one JSON line. */
function runJson(command, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args.map(String), { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk) => (out += chunk))
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`${command} ${args.join(' ')} exited ${code}`))))
  })
}

function handoffs(reports) {
  const events = reports.flatMap((r) => r.events.map(([acquired, released]) => ({ pid: r.pid, acquired, released }))).sort((a, b) => a.acquired - b.acquired)
  const out = []
  for (let i = 1; i < events.length; i++) if (events[i].pid !== events[i - 1].pid) out.push(events[i].acquired - events[i - 1].released)
  return out
}

async function r1ReadsUnderALock() {
  const lib = require('../file-lock-integration.js')
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  await lib.updateWithLock(file, () => tasksDoc(64 * 1024))
  const holder = spawn(process.execPath, [path.join(ROOT, '__test__', 'fixtures', 'hold-lock.js'), file], { stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise((resolve, reject) => {
    holder.stdout.on('data', (chunk) => String(chunk).includes('LOCKED') && resolve())
    holder.on('exit', () => reject(new Error('hold-lock ended before LOCKED')))
  })
  const started = performance.now()
  const ours = timeEach(N.reads, () => lib.readJSONSync(file, { cache: false }))
  const versioned = []
  for (let i = 0; i < N.reads; i++) {
    const start = performance.now()
    await lib.readJSONVersioned(file, { cache: false })
    versioned.push((performance.now() - start) * 1000)
  }
  const heldForMs = performance.now() - started
  holder.kill('SIGKILL')
  const raw = timeEach(N.reads, () => JSON.parse(fs.readFileSync(file, 'utf8')))
  return { bytes: fs.statSync(file).size, readJsonP50Us: median(ours), readJsonP99Us: pct(ours, 99), versionedP50Us: median(versioned), rawP50Us: median(raw), rawP99Us: pct(raw, 99), lockHeldForMs: heldForMs }
}

async function r2CachedRead() {
  const lib = require('../file-lock-integration.js')
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  await lib.updateWithLock(file, () => tasksDoc(1024 * 1024))
  const cached = timeEach(N.cached, () => lib.readJSONSync(file))
  const raw = timeEach(Math.max(50, N.cached / 50), () => JSON.parse(fs.readFileSync(file, 'utf8')))
  const bounded = timeEach(N.cached, () => lib.readJSONSync(file, { maxAgeMs: 1000 }))
  return { bytes: fs.statSync(file).size, cachedP50Us: median(cached), maxAgeP50Us: median(bounded), rawP50Us: median(raw) }
}

async function r3Handoff() {
  const root = project()
  const ours = path.join(root, '.flowforge', 'handoff.json')
  const flockFile = path.join(root, '.flowforge', 'handoff.flock')
  const me = __filename
  const sync = await Promise.all([0, 1].map(() => runJson(process.execPath, [me, 'sync-pingpong', ours, N.rounds])))
  const raw = await Promise.all([0, 1].map(() => runJson(FLOCK, ['pingpong', flockFile, N.rounds])))
  const rawNode = await Promise.all([0, 1].map(() => runJson(process.execPath, [me, 'flock-pingpong', `${flockFile}-node`, N.rounds])))
  // The asynchronous API in the same run (bench/worker.js, as scenario C of bench/run.js).
  const asyncFile = path.join(root, '.flowforge', 'handoff-async.json')
  const viaAsync = await Promise.all([0, 1].map(() => runJson(process.execPath, [path.join(__dirname, 'worker.js'), 'pingpong', 'flowforge-lock', asyncFile, N.rounds])))
  const a = handoffs(sync)
  const b = handoffs(raw)
  const c = handoffs(viaAsync)
  const d = handoffs(rawNode)
  return { syncP50Us: median(a), syncP99Us: pct(a, 99), flockP50Us: median(b), flockP99Us: pct(b, 99), nodeFlockP50Us: median(d), nodeFlockP99Us: pct(d, 99), asyncP50Us: median(c), handoffs: a.length }
}

async function r4Cycle() {
  const root = project()
  const ours = await runJson(process.execPath, [__filename, 'sync-cycle', path.join(root, '.flowforge', 'cycle.json'), N.cycles])
  const raw = await runJson(FLOCK, ['cycle', path.join(root, '.flowforge', 'cycle.flock'), N.cycles])
  const rawNode = await runJson(process.execPath, [__filename, 'flock-cycle', path.join(root, '.flowforge', 'cycle-node.flock'), N.cycles])
  const viaAsync = await runJson(process.execPath, [path.join(__dirname, 'worker.js'), 'cycle', 'flowforge-lock', path.join(root, '.flowforge', 'cycle-async.json'), N.cycles])
  return { syncP50Us: median(ours.cyclesUs), syncP99Us: pct(ours.cyclesUs, 99), flockP50Us: median(raw.cyclesUs), flockP99Us: pct(raw.cyclesUs, 99), nodeFlockP50Us: median(rawNode.cyclesUs), asyncP50Us: median(viaAsync.cyclesUs) }
}

/** Starts `node bench/reads.js <args>` children, lets them go at once (a line on stdin), resolves with their JSON lines. */
async function runTogether(argsList) {
  const children = argsList.map((args) => {
    const child = spawn(process.execPath, [__filename, ...args.map(String)], { stdio: ['pipe', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk) => (out += chunk))
    const ready = new Promise((resolve) => child.stdout.on('data', () => out.includes('READY') && resolve()))
    const done = new Promise((resolve, reject) => child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`${args.join(' ')} exited ${code}`)))))
    return { child, ready, done }
  })
  for (const c of children) await c.ready
  for (const c of children) c.child.stdin.end('go\n')
  return Promise.all(children.map((c) => c.done))
}

async function r5ReadersAndAWriter() {
  const lib = require('../file-lock-integration.js')
  const out = {}
  for (const mode of ['shared', 'exclusive']) {
    const root = project()
    const file = path.join(root, '.flowforge', 'tasks.json')
    await lib.updateWithLock(file, () => tasksDoc(16 * 1024))
    const reports = await runTogether([...[0, 1, 2].map(() => ['rw-reader', file, mode, N.rwMs, 1]), ['rw-writer', file, N.rwMs, 5]])
    const reads = reports.slice(0, 3).reduce((sum, r) => sum + r.ops, 0)
    const writer = reports[3]
    out[mode] = { readsPerS: reads / (N.rwMs / 1000), writesPerS: writer.ops / (N.rwMs / 1000), writerWaitP50Us: median(writer.waitsUs), writerWaitMaxUs: Math.max(...writer.waitsUs) }
  }
  return out
}

async function r6WriterWaitUnderReaders() {
  const lib = require('../file-lock-integration.js')
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  await lib.updateWithLock(file, () => tasksDoc(16 * 1024))
  const reports = await runTogether([...[0, 1, 2, 3].map(() => ['rw-reader', file, 'shared', N.rwMs, 5]), ['rw-writer', file, N.rwMs, 20]])
  const writer = reports[4]
  return { readerHoldMs: 5, readers: 4, readsPerS: reports.slice(0, 4).reduce((sum, r) => sum + r.ops, 0) / (N.rwMs / 1000), writes: writer.ops, writerWaitP50Us: median(writer.waitsUs), writerWaitP99Us: pct(writer.waitsUs, 99), writerWaitMaxUs: Math.max(...writer.waitsUs) }
}

async function waitForGo() {
  console.log('READY')
  await new Promise((resolve) => process.stdin.once('data', resolve))
}

/** A reader process: for `ms`, lock (in `mode`), read and parse the file, hold `holdMs` more, release. */
async function rwReader(file, mode, ms, holdMs) {
  const { acquireLock, releaseLock } = require('../file-lock.js')
  await waitForGo()
  const until = performance.now() + ms
  let ops = 0
  while (performance.now() < until) {
    const lockId = await acquireLock(file, { mode, timeout: 60000 })
    JSON.parse(fs.readFileSync(file, 'utf8'))
    sleepSync(holdMs)
    await releaseLock(file, lockId)
    ops++
  }
  console.log(JSON.stringify({ ops }))
}

/** A writer process: for `ms`, every `gapMs`, an exclusive lock (its wait timed) and a commit under it. */
async function rwWriter(file, ms, gapMs) {
  const { acquireLock, releaseLock, updateWithLock } = require('../file-lock.js')
  await waitForGo()
  const until = performance.now() + ms
  const waitsUs = []
  while (performance.now() < until) {
    const asked = performance.now()
    const lockId = await acquireLock(file, 60000)
    waitsUs.push((performance.now() - asked) * 1000)
    await updateWithLock(file, (doc) => ({ ...doc, metadata: { ...doc.metadata, writes: (doc.metadata.writes ?? 0) + 1 } }), { lockId })
    await releaseLock(file, lockId)
    sleepSync(gapMs)
  }
  console.log(JSON.stringify({ ops: waitsUs.length, waitsUs }))
}

/** A lock taken and given up by this library's synchronous API, or by bare flock(2) from Node. */
function lockOf(kind, file) {
  if (kind === 'sync') {
    const { acquireLockSync, releaseLockSync } = require('../file-lock.js')
    return { lock: () => acquireLockSync(file, 60000), unlock: (lockId) => releaseLockSync(file, lockId) }
  }
  const addon = { exports: {} }
  process.dlopen(addon, FLOCK_ADDON)
  const fd = addon.exports.open(file)
  return { lock: () => addon.exports.lock(fd), unlock: () => addon.exports.unlock(fd) }
}

/** R3's loop, as flock_limit's pingpong: hold 1-10 ms, release, wait 1 ms. */
function pingpong(kind, file, rounds) {
  const { lock, unlock } = lockOf(kind, file)
  let seed = process.pid | 1
  const events = []
  for (let i = 0; i < rounds; i++) {
    const lockId = lock()
    const acquired = nowUs()
    seed ^= seed << 13
    seed ^= seed >>> 17
    seed ^= seed << 5
    sleepSync(1 + (Math.abs(seed) % 9))
    const released = nowUs()
    unlock(lockId)
    events.push([acquired, released])
    sleepSync(1)
  }
  console.log(JSON.stringify({ pid: process.pid, events }))
}

/** R4's loop: uncontended lock + unlock, each cycle timed. */
function cycle(kind, file, n) {
  const { lock, unlock } = lockOf(kind, file)
  const cyclesUs = timeEach(n, () => unlock(lock()))
  console.log(JSON.stringify({ cyclesUs }))
}

const fmt = (n) => (n >= 100 ? Math.round(n).toLocaleString('en') : n.toFixed(2))
const ratio = (x) => `${x >= 10 ? Math.round(x) : x.toFixed(2)}x`

async function main() {
  useRunTmpdirUntilExit('ffl-bench-reads-run-')
  execFileSync('cargo', ['build', '--release', '--quiet', '--example', 'flock_limit', '--example', 'flock_node'], { cwd: ROOT, stdio: 'inherit' })
  const only = ONLY ? ` (only ${[...ONLY].join(', ')})` : ''
  console.log(`flowforge-lock reads bench${SMOKE ? ' (smoke)' : ''}${only}: ${os.cpus()[0]?.model}, ${os.cpus().length} cores, node ${process.version}\n`)
  const r1 = ran('R1') && (await r1ReadsUnderALock())
  const r2 = ran('R2') && (await r2CachedRead())
  const r3 = ran('R3') && (await r3Handoff())
  const r4 = ran('R4') && (await r4Cycle())
  const r5 = ran('R5') && (await r5ReadersAndAWriter())
  const r6 = ran('R6') && (await r6WriterWaitUnderReaders())
  const rows = [
    ...(ran('R1') ? [
      [`R1 read ${Math.round(r1.bytes / 1024)} KiB while another process holds the lock`, 'p50 µs', fmt(r1.readJsonP50Us), 'readFileSync+JSON.parse, unlocked', fmt(r1.rawP50Us), ratio(r1.readJsonP50Us / r1.rawP50Us), '<= 1x (no worse)'],
      ['R1 same, readJSONVersioned (async)', 'p50 µs', fmt(r1.versionedP50Us), 'readFileSync+JSON.parse, unlocked', fmt(r1.rawP50Us), ratio(r1.versionedP50Us / r1.rawP50Us), ''],
      ['R1 same', 'p99 µs', fmt(r1.readJsonP99Us), 'readFileSync+JSON.parse, unlocked', fmt(r1.rawP99Us), ratio(r1.readJsonP99Us / r1.rawP99Us), ''],
    ] : []),
    ...(ran('R2') ? [
      [`R2 cached read, unchanged ${(r2.bytes / 2 ** 20).toFixed(2)} MiB tasks.json`, 'p50 µs', fmt(r2.cachedP50Us), 'JSON.parse(readFileSync())', fmt(r2.rawP50Us), `${ratio(r2.rawP50Us / r2.cachedP50Us)} faster`, '>= 20x faster'],
      ['R2 same, maxAgeMs: 1000 (no stat)', 'p50 µs', fmt(r2.maxAgeP50Us), 'JSON.parse(readFileSync())', fmt(r2.rawP50Us), `${ratio(r2.rawP50Us / r2.maxAgeP50Us)} faster`, ''],
    ] : []),
    ...(ran('R3') ? [
      [`R3 sync handoff, 2 processes (${r3.handoffs} handoffs)`, 'p50 µs', fmt(r3.syncP50Us), 'raw flock pingpong', fmt(r3.flockP50Us), ratio(r3.syncP50Us / r3.flockP50Us), '<= 2x'],
      ['R3 same', 'p99 µs', fmt(r3.syncP99Us), 'raw flock pingpong', fmt(r3.flockP99Us), ratio(r3.syncP99Us / r3.flockP99Us), ''],
      ['R3 same', 'p50 µs', fmt(r3.syncP50Us), 'raw flock pingpong from Node', fmt(r3.nodeFlockP50Us), ratio(r3.syncP50Us / r3.nodeFlockP50Us), '<= 2x'],
      ['R3 same', 'p99 µs', fmt(r3.syncP99Us), 'raw flock pingpong from Node', fmt(r3.nodeFlockP99Us), ratio(r3.syncP99Us / r3.nodeFlockP99Us), ''],
      ['R3 same', 'p50 µs', fmt(r3.syncP50Us), 'acquireLock/releaseLock (async API)', fmt(r3.asyncP50Us), ratio(r3.syncP50Us / r3.asyncP50Us), ''],
    ] : []),
    ...(ran('R4') ? [
      ['R4 uncontended acquireLockSync+releaseLockSync', 'p50 µs', fmt(r4.syncP50Us), 'raw flock lock+unlock', fmt(r4.flockP50Us), ratio(r4.syncP50Us / r4.flockP50Us), '<= 2x'],
      ['R4 same', 'p99 µs', fmt(r4.syncP99Us), 'raw flock lock+unlock', fmt(r4.flockP99Us), ratio(r4.syncP99Us / r4.flockP99Us), ''],
      ['R4 same', 'p50 µs', fmt(r4.syncP50Us), 'raw flock lock+unlock from Node', fmt(r4.nodeFlockP50Us), ratio(r4.syncP50Us / r4.nodeFlockP50Us), '<= 2x'],
      ['R4 same', 'p50 µs', fmt(r4.syncP50Us), 'acquireLock+releaseLock (async API)', fmt(r4.asyncP50Us), ratio(r4.syncP50Us / r4.asyncP50Us), ''],
    ] : []),
    ...(ran('R5') ? [
      ['R5 3 reader processes + 1 writer, readers shared', 'reads/s', fmt(r5.shared.readsPerS), 'same readers, exclusive locks', fmt(r5.exclusive.readsPerS), ratio(r5.shared.readsPerS / r5.exclusive.readsPerS), '> 1x'],
      ['R5 same, the writer', 'writes/s', fmt(r5.shared.writesPerS), 'same readers, exclusive locks', fmt(r5.exclusive.writesPerS), ratio(r5.shared.writesPerS / r5.exclusive.writesPerS), ''],
      ['R5 same, the writer\'s wait', 'p50 µs', fmt(r5.shared.writerWaitP50Us), 'same readers, exclusive locks', fmt(r5.exclusive.writerWaitP50Us), ratio(r5.shared.writerWaitP50Us / r5.exclusive.writerWaitP50Us), ''],
    ] : []),
    ...(ran('R6') ? [
      [`R6 writer's wait, 4 readers streaming ${r6.readerHoldMs} ms shared holds`, 'p50 µs', fmt(r6.writerWaitP50Us), `one reader's hold`, fmt(r6.readerHoldMs * 1000), ratio(r6.writerWaitP50Us / (r6.readerHoldMs * 1000)), 'bounded'],
      ['R6 same', 'max µs', fmt(r6.writerWaitMaxUs), `one reader's hold`, fmt(r6.readerHoldMs * 1000), ratio(r6.writerWaitMaxUs / (r6.readerHoldMs * 1000)), ''],
    ] : []),
  ]
  console.log(table(['scenario', 'metric', 'flowforge-lock', 'baseline', 'baseline value', 'ours / baseline', 'goal'], rows))
  if (r3 || r4) console.log('\nR3/R4: raw flock is the kernel\'s figure; "from Node" adds what any addon pays to call it from JavaScript.\nThe rest is the file backend\'s own work per grant and release (lock record, ticket queue, inode checks), shared with the\nasynchronous API, whose handoff also waits for a waiting thread and the event loop (R3 async row); uncontended, the two\nAPIs run the same path (R4 async row).')
  if (r1) console.log(`R1: the holder kept the lock for ${Math.round(r1.lockHeldForMs)} ms while this process read ${2 * N.reads} times without waiting.`)
  if (r6) console.log(`R6: ${r6.writes} writes, ${Math.round(r6.readsPerS)} reads/s around them; the lock was never free of readers, yet no write waited more than ${(r6.writerWaitMaxUs / 1000).toFixed(1)} ms (p99 ${(r6.writerWaitP99Us / 1000).toFixed(1)} ms): readers that arrive while a writer waits go after it.`)
  if (process.argv.includes('--json')) console.log(JSON.stringify({ r1, r2, r3, r4, r5, r6 }))
}

const [mode, ...args] = process.argv.slice(2)
if (mode === 'sync-pingpong' || mode === 'flock-pingpong') pingpong(mode.split('-')[0], args[0], Number(args[1]))
else if (mode === 'sync-cycle' || mode === 'flock-cycle') cycle(mode.split('-')[0], args[0], Number(args[1]))
else if (mode === 'rw-reader') rwReader(args[0], args[1], Number(args[2]), Number(args[3]))
else if (mode === 'rw-writer') rwWriter(args[0], Number(args[1]), Number(args[2]))
else {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
