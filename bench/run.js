#!/usr/bin/env node
'use strict'
// npm run bench: flowforge-lock side by side with proper-lockfile, lockfile and a raw flock
// loop (the physical limit), same scenarios, same run. Each scenario runs 3 times; the median
// run is reported. Prints a table, writes bench-results/results.json and bench/chart.svg.
// `--smoke` runs every scenario once with tiny counts (CI), writing nothing. `--only-b` runs only
// scenario B, flowforge-lock alone, at P = 2, 4, 8 and 16 (fairness work), writing nothing.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFile, execFileSync, spawn } = require('node:child_process')
const { promisify } = require('node:util')
const { adapters, version } = require('./adapters.js')
const { renderChart } = require('./chart.js')
const { table } = require('../lib/table.js')
const { useRunTmpdirUntilExit } = require('../__test__/helpers.js')

const run = promisify(execFile)
const SMOKE = process.argv.includes('--smoke')
const ONLY_B = process.argv.includes('--only-b')
const RUNS = SMOKE ? 1 : 3
const ROOT = path.resolve(__dirname, '..')
const WORKER = path.join(__dirname, 'worker.js')
const FLOCK = path.join(ROOT, 'target', 'release', 'examples', 'flock_limit')
const LIBS = Object.keys(adapters)
const COUNTS = SMOKE
  ? { cycleFast: 200, cycleSlow: 20, counter: 10, pingpong: 6, upsert: 5, coalesce: 20, takeover: 2 }
  : { cycleFast: 20000, cycleSlow: 1000, counter: 200, pingpong: 200, upsert: 100, coalesce: 100, takeover: 20 }

const sorted = (values) => [...values].sort((a, b) => a - b)
const pct = (values, p) => {
  const s = sorted(values)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]
}
const median = (values) => pct(values, 50)

useRunTmpdirUntilExit('ffl-bench-run-')

function project() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-bench-'))
  fs.mkdirSync(path.join(root, '.flowforge'))
  return root
}

async function worker(lib, mode, ...args) {
  const command = lib === 'flock' ? [FLOCK, [mode, ...args.map(String)]] : [process.execPath, [WORKER, mode, lib, ...args.map(String)]]
  const { stdout } = await run(...command, { maxBuffer: 64 * 1024 * 1024 })
  return JSON.parse(stdout)
}

/** Runs `once()` RUNS times; keeps the run whose `key` is the median. */
async function medianRun(once, key) {
  const runs = []
  for (let i = 0; i < RUNS; i++) runs.push(await once())
  return sorted(runs.map((r) => r[key]))
    .map((value) => runs.find((r) => r[key] === value))[Math.floor(runs.length / 2)]
}

async function scenarioA(lib) {
  const n = lib === 'flowforge-lock' || lib === 'flock' ? COUNTS.cycleFast : COUNTS.cycleSlow
  return medianRun(async () => {
    const root = project()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, '{}')
    const { cyclesUs } = await worker(lib, 'cycle', lib === 'flock' ? `${file}.flock` : file, n)
    const steady = cyclesUs.slice(Math.floor(n / 10)) // the first 10% warm the JIT and caches
    return { p50Us: median(steady), p99Us: pct(steady, 99), opsPerSec: 1e6 / (steady.reduce((a, b) => a + b, 0) / steady.length) }
  }, 'p50Us')
}

/**
 * B's workers, all started (each has taken and released the lock once: its first call's set-up)
 * before any begins, and all kept until every one has finished: no process's start-up or exit (a
 * Node process costs most CPU then) falls inside another's measured waits. Resolves with their
 * results and the seconds from "go" to the last result.
 */
async function counterWorkers(lib, processes, file, data) {
  const children = Array.from({ length: processes }, () => {
    const [command, args] = lib === 'flock' ? [FLOCK, ['counter', `${file}.flock`, data, COUNTS.counter]] : [process.execPath, [WORKER, 'counter', lib, file, data, COUNTS.counter]]
    const child = spawn(command, args.map(String), { stdio: ['pipe', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk) => (out += chunk))
    const seen = (resolve, test) => () => {
      const done = out.split('\n').slice(0, -1)
      if (done.some(test)) resolve(done)
    }
    const ready = new Promise((resolve) => child.stdout.on('data', seen(resolve, (l) => l === 'READY')))
    const result = new Promise((resolve) => child.stdout.on('data', seen(resolve, (l) => l.startsWith('{'))))
    const exited = new Promise((resolve, reject) => child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`B worker (${lib}) exited ${code}`)))))
    exited.catch(() => {})
    return { child, ready, result, exited }
  })
  await Promise.all(children.map((c) => c.ready))
  const started = performance.now()
  for (const c of children) c.child.stdin.write('go\n')
  const results = (await Promise.all(children.map((c) => c.result))).map((lines) => JSON.parse(lines.find((l) => l.startsWith('{'))))
  const seconds = (performance.now() - started) / 1000
  for (const c of children) c.child.stdin.end()
  await Promise.all(children.map((c) => c.exited))
  return { results, seconds }
}

async function scenarioB(lib, processes) {
  return medianRun(async () => {
    const root = project()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const data = path.join(root, '.flowforge', 'counter.json')
    fs.writeFileSync(data, JSON.stringify({ count: 0 }))
    const { results, seconds } = await counterWorkers(lib, processes, file, data)
    const waits = results.flatMap((r) => r.waitsUs)
    // Without each process's first 10% (its start-up: first calls, other processes starting).
    const steady = results.flatMap((r) => r.waitsUs.slice(Math.floor(r.waitsUs.length / 10)))
    const expected = processes * COUNTS.counter
    const { count } = JSON.parse(fs.readFileSync(data, 'utf8'))
    return {
      updatesPerSec: expected / seconds,
      lost: expected - count,
      medianWaitUs: median(waits),
      p99WaitUs: pct(waits, 99),
      maxWaitUs: Math.max(...waits),
      steadyMaxOverMedian: Math.max(...steady) / Math.max(median(steady), 1),
    }
  }, 'updatesPerSec')
}

async function scenarioC(lib) {
  return medianRun(async () => {
    const root = project()
    const file = path.join(root, '.flowforge', lib === 'flock' ? 'handoff.flock' : 'handoff.json')
    const reports = await Promise.all([worker(lib, 'pingpong', file, COUNTS.pingpong), worker(lib, 'pingpong', file, COUNTS.pingpong)])
    const events = reports.flatMap((r) => r.events.map(([acquired, released]) => ({ pid: r.pid, acquired, released }))).sort((a, b) => a.acquired - b.acquired)
    const handoffs = []
    for (let i = 1; i < events.length; i++) {
      if (events[i].pid !== events[i - 1].pid) handoffs.push(events[i].acquired - events[i - 1].released)
    }
    return { p50Us: median(handoffs), p99Us: pct(handoffs, 99), handoffs: handoffs.length }
  }, 'p50Us')
}

async function scenarioD(lib) {
  return medianRun(async () => {
    const root = project()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, JSON.stringify({ version: '2.0.0', tasks: [] }))
    const started = performance.now()
    await Promise.all([0, 1, 2, 3].map((w) => worker(lib, 'upsert', file, w, COUNTS.upsert)))
    const seconds = (performance.now() - started) / 1000
    const written = JSON.parse(fs.readFileSync(file, 'utf8')).tasks.length
    return { updatesPerSec: (4 * COUNTS.upsert) / seconds, lost: 4 * COUNTS.upsert - written }
  }, 'updatesPerSec')
}

/** E: FILE_LOCKING.md's load test, 100 concurrent updateTaskFile calls, against one call. */
async function scenarioE() {
  const { updateTaskFile } = require('../file-lock-integration.js')
  return medianRun(async () => {
    const root = project()
    const file = path.join(root, '.flowforge', 'tasks.json')
    // Warm both paths (JIT, caches) on another file first: one call, and one full load.
    const warm = path.join(root, '.flowforge', 'warm-up.json')
    await updateTaskFile({ id: 'warm-up' }, { file: warm })
    await Promise.all(Array.from({ length: COUNTS.coalesce }, (_, i) => updateTaskFile({ id: i }, { file: warm })))
    await updateTaskFile({ id: 'warm-up' }, { file })
    let started = performance.now()
    await updateTaskFile({ id: 'single', status: 'test' }, { file })
    const oneMs = performance.now() - started
    started = performance.now()
    await Promise.all(Array.from({ length: COUNTS.coalesce }, (_, i) => updateTaskFile({ id: i, status: 'test' }, { file })))
    const allMs = performance.now() - started
    const tasks = JSON.parse(fs.readFileSync(file, 'utf8')).tasks.length
    return { oneMs, allMs, ratio: allMs / oneMs, lost: COUNTS.coalesce + 2 - tasks }
  }, 'allMs')
}

/**
 * F: a waiter in this process, a holder in another that is SIGKILLed after `waitMs`: the time
 * from the kill to the waiter's lock, and the CPU this process spent meanwhile (a kernel wait
 * costs next to none; a polling loop would show here). Measured here rather than asserted in
 * the jest suite, whose tests only check the order of events.
 */
async function scenarioF() {
  const { acquireLock, releaseLock } = require('../file-lock.js')
  const holdLock = path.join(ROOT, '__test__', 'fixtures', 'hold-lock.js')
  const waitMs = SMOKE ? 100 : 1000
  const takeoversMs = []
  const cpuMsPerS = []
  for (let i = 0; i < COUNTS.takeover; i++) {
    const root = project()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const holder = spawn(process.execPath, [holdLock, file], { stdio: ['ignore', 'pipe', 'inherit'] })
    await new Promise((resolve, reject) => {
      holder.stdout.on('data', (chunk) => String(chunk).includes('LOCKED') && resolve())
      holder.on('exit', () => reject(new Error('hold-lock ended before LOCKED')))
    })
    const cpuBefore = process.cpuUsage()
    const waitStarted = performance.now()
    const waiting = acquireLock(file, 30000)
    await new Promise((resolve) => setTimeout(resolve, waitMs))
    const killedAt = performance.now()
    holder.kill('SIGKILL')
    const lockId = await waiting
    const acquiredAt = performance.now()
    const cpu = process.cpuUsage(cpuBefore)
    takeoversMs.push(acquiredAt - killedAt)
    cpuMsPerS.push((cpu.user + cpu.system) / 1000 / ((acquiredAt - waitStarted) / 1000))
    await releaseLock(file, lockId)
  }
  return { takeoverP50Ms: median(takeoversMs), takeoverMaxMs: Math.max(...takeoversMs), cpuMsPerSecondWaiting: median(cpuMsPerS), runs: takeoversMs.length }
}

function machine() {
  let rustc = 'unknown'
  try {
    rustc = execFileSync('rustc', ['--version'], { encoding: 'utf8' }).trim()
  } catch {}
  return {
    cpu: os.cpus()[0]?.model,
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    rustc,
    libraries: Object.fromEntries(LIBS.map((lib) => [lib, version(lib)])),
    runsPerScenario: RUNS,
    smoke: SMOKE,
  }
}

const fmt = (n, digits = 1) => (n === undefined ? '-' : n >= 100 ? Math.round(n).toLocaleString('en') : n.toFixed(digits))

/** `--only-b`: B's rows for flowforge-lock at P = 2, 4, 8, 16. */
async function onlyB() {
  const rows = []
  for (const p of [2, 4, 8, 16]) {
    const r = await scenarioB('flowforge-lock', p)
    const ratio = fmt(r.maxWaitUs / Math.max(r.medianWaitUs, 1), 1)
    rows.push([`B P=${p}`, fmt(r.updatesPerSec, 0), String(r.lost), fmt(r.medianWaitUs, 0), fmt(r.p99WaitUs, 0), fmt(r.maxWaitUs, 0), ratio, fmt(r.steadyMaxOverMedian, 1)])
  }
  const headers = ['scenario', 'updates/s', 'lost', 'median wait µs', 'p99 wait µs', 'max wait µs', 'max/median', 'after warm-up']
  console.log(table(headers, rows))
  console.log('"after warm-up": max/median without the first 10% of each process\'s waits (its start-up), as A does.')
}

async function main() {
  if (ONLY_B) return onlyB()
  execFileSync('cargo', ['build', '--release', '--quiet', '--example', 'flock_limit'], { cwd: ROOT, stdio: 'inherit' })
  const env = machine()
  console.log(`flowforge-lock bench${SMOKE ? ' (smoke)' : ''}: ${env.cpu}, ${env.cores} cores, ${env.memoryGiB} GiB, ${env.os}`)
  console.log(`node ${env.node}, ${env.rustc}, ${Object.entries(env.libraries).map(([k, v]) => `${k} ${v}`).join(', ')}; median of ${RUNS} run(s)\n`)

  const all = [...LIBS, 'flock']
  const results = { A: {}, B: {}, C: {}, D: {}, E: null, F: null }
  for (const lib of all) results.A[lib] = await scenarioA(lib)
  for (const p of [2, 4, 8]) {
    results.B[p] = {}
    for (const lib of all) results.B[p][lib] = await scenarioB(lib, p)
  }
  for (const lib of all) results.C[lib] = await scenarioC(lib)
  for (const lib of LIBS) results.D[lib] = await scenarioD(lib)
  results.E = await scenarioE()
  results.F = await scenarioF()

  const ff = 'flowforge-lock'
  const rows = []
  const row = (scenario, metric, values, better, digits) => {
    const ours = values[ff]
    const ratio = (peer) => (values[peer] === undefined ? '-' : `${fmt(better === 'lower' ? values[peer] / ours : ours / values[peer], 1)}x`)
    const limit = values.flock === undefined ? '-' : `${fmt(better === 'lower' ? ours / values.flock : values.flock / ours, 1)}x`
    rows.push([scenario, metric, fmt(ours, digits), fmt(values['proper-lockfile'], digits), fmt(values.lockfile, digits), fmt(values.flock, digits), ratio('proper-lockfile'), ratio('lockfile'), limit])
  }
  const pick = (source, key) => Object.fromEntries(Object.entries(source).map(([lib, r]) => [lib, r[key]]))
  row('A uncontended', 'p50 µs', pick(results.A, 'p50Us'), 'lower', 2)
  row('A uncontended', 'p99 µs', pick(results.A, 'p99Us'), 'lower', 2)
  row('A uncontended', 'ops/s', pick(results.A, 'opsPerSec'), 'higher', 0)
  for (const p of [2, 4, 8]) {
    row(`B P=${p}`, 'updates/s', pick(results.B[p], 'updatesPerSec'), 'higher', 0)
    row(`B P=${p}`, 'lost updates', pick(results.B[p], 'lost'), 'none', 0)
    row(`B P=${p}`, 'p99 wait µs', pick(results.B[p], 'p99WaitUs'), 'lower', 0)
    row(`B P=${p}`, 'max/median wait', Object.fromEntries(Object.entries(results.B[p]).map(([lib, r]) => [lib, r.maxWaitUs / Math.max(r.medianWaitUs, 1)])), 'none', 1)
  }
  row('C handoff', 'p50 µs', pick(results.C, 'p50Us'), 'lower', 0)
  row('C handoff', 'p99 µs', pick(results.C, 'p99Us'), 'lower', 0)
  row('D durable upserts x4', 'updates/s', pick(results.D, 'updatesPerSec'), 'higher', 0)
  for (const r of rows) if (r[1] === 'lost updates' || r[1] === 'max/median wait') r.splice(6, 3, '', '', '')

  const headers = ['scenario', 'metric', ff, 'proper-lockfile', 'lockfile', 'flock limit', 'vs proper-lockfile', 'vs lockfile', 'from limit']
  console.log(table(headers, rows.map((r) => r.map(String))))
  const e = results.E
  console.log(`\nE: ${COUNTS.coalesce} concurrent updateTaskFile in one process: ${fmt(e.allMs, 1)} ms, one call ${fmt(e.oneMs, 2)} ms: ${fmt(e.ratio, 1)}x one call, ${e.lost} lost`)
  const f = results.F
  console.log(`F: holder SIGKILLed while a waiter waits, ${f.runs} runs: takeover p50 ${fmt(f.takeoverP50Ms, 2)} ms, max ${fmt(f.takeoverMaxMs, 2)} ms; waiter's CPU ${fmt(f.cpuMsPerSecondWaiting, 2)} ms per s of waiting`)
  console.log('\nRatios: "vs peer" = how many times better flowforge-lock is; "from limit" = how many times the raw flock loop is ahead.')

  if (SMOKE) {
    // The synchronous API's and read APIs' scenarios too, short: they have no other CI run.
    console.log('\n== bench/reads.js --smoke')
    execFileSync(process.execPath, [path.join(__dirname, 'reads.js'), '--smoke'], { stdio: 'inherit' })
    return
  }
  const out = path.join(ROOT, 'bench-results')
  fs.mkdirSync(out, { recursive: true })
  fs.writeFileSync(path.join(out, 'results.json'), `${JSON.stringify({ machine: env, results, table: { headers, rows } }, null, 2)}\n`)
  fs.writeFileSync(path.join(__dirname, 'chart.svg'), renderChart(results))
  console.log(`\nWrote ${path.join(out, 'results.json')} and ${path.join(__dirname, 'chart.svg')}`)
  // The read APIs and the lock servers, each against its own peers in the same run.
  for (const part of ['reads.js', 'redis.js', 'etcd.js']) {
    console.log(`\n== bench/${part}`)
    execFileSync(process.execPath, [path.join(__dirname, part)], { stdio: 'inherit' })
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
