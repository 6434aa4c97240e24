#!/usr/bin/env node
'use strict'
// node bench/redis.js [--smoke]: the Redis backend side by side with the npm Redis locks
// `redis-semaphore` (Mutex) and `redlock` (v4, the latest release), against one real
// redis-server started here on loopback, same scenarios, same run:
//   cycle     one process takes and releases one lock, over and over (µs per cycle, p50)
//   handoff   two processes contend for one lock; the handoff is the time from one's release to
//             the other's grant (p50, from CLOCK_MONOTONIC, which all processes share)
//   P=8       eight processes do locked read-increment-writes of one file (updates/s; the final
//             count is checked exact). Every client's write reads, writes a temp file, fsyncs and
//             renames (the same function), so the column compares the locks alone.
//   P=8 update  the same with flowforge-lock's own updateWithLock (the commit check's round trip,
//             and fsyncs of the temp file, the version sidecar, the token file and the directory),
//             beside the peers' write above (they have nothing of the kind).
// The floor of a handoff: Node's own cross-process wake-up (half the round trip of a ping over a
// Unix socket between two Node processes) plus one Redis round trip (PING over ioredis).
// The peers run with their documented defaults except for retries: redis-semaphore polls
// every 10 ms (its default); redlock is given retryCount -1 (wait forever) and retryDelay 10 ms,
// since its default (10 tries, 200 ms apart) gives up under P=8.
// Last, the check-to-rename window: how long after Redis last confirmed our lease the data file's
// rename lands, from `strace -f -ttt` of a process doing updateWithLock (strace's own cost makes
// it an upper bound).
// Prints a table and the ratios of flowforge-lock to the others.

const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { spawn, spawnSync } = require('node:child_process')
const { counterProject, timeTogether } = require('./scenario')

const CLIENTS = ['flowforge-lock', 'redis-semaphore', 'redlock']
const SMOKE = process.argv.includes('--smoke')
const COUNTS = SMOKE ? { cycle: 20, handoff: 10, update: 3, ping: 50, window: 20 } : { cycle: 500, handoff: 200, update: 40, ping: 1000, window: 300 }
// Every scenario runs ROUNDS times per client; in each round, each scenario runs for every client
// back to back, the first client rotating from round to round.
const ROUNDS = SMOKE ? 1 : 3
const now = () => Number(process.hrtime.bigint()) / 1e3 // µs, CLOCK_MONOTONIC

// ---- worker side ------------------------------------------------------------------------

/** Per client: `lock()` resolves to an async release function. */
function lockClient(client, url, file) {
  if (client === 'flowforge-lock') {
    process.env.FLOWFORGE_LOCK_BACKEND = url
    const { acquireLock, releaseLock, updateWithLock } = require('../file-lock')
    return {
      async lock() {
        const lockId = await acquireLock(file, 60000)
        return () => releaseLock(file, lockId)
      },
      update: () => updateWithLock(file, (data) => ({ count: data.count + 1 }), { timeout: 60000 }),
      // The peers' own write under our lock: the lock compared alone.
      async write() {
        const lockId = await acquireLock(file, 60000)
        try {
          incrementJson(file)
        } finally {
          await releaseLock(file, lockId)
        }
      },
      close() {},
    }
  }
  const Redis = require('ioredis')
  const redis = new Redis(url)
  const name = `bench:${path.basename(file)}`
  let lock
  if (client === 'redis-semaphore') {
    const { Mutex } = require('redis-semaphore')
    lock = async () => {
      const mutex = new Mutex(redis, name, { lockTimeout: 30000, acquireTimeout: 60000 })
      await mutex.acquire()
      return () => mutex.release()
    }
  } else {
    const Redlock = require('redlock')
    const redlock = new Redlock([redis], { retryCount: -1, retryDelay: 10, retryJitter: 0 })
    redlock.on('clientError', () => {})
    lock = async () => {
      const held = await redlock.lock(name, 30000)
      return () => held.unlock()
    }
  }
  async function write() {
    const release = await lock()
    try {
      incrementJson(file)
    } finally {
      await release()
    }
  }
  return { lock, write, update: write, close: () => redis.quit() }
}

/** The peers' write: as durable as updateWithLock's (temp file, fsync, rename), without a check. */
function incrementJson(file) {
  const data = JSON.parse(fs.readFileSync(file, 'utf8'))
  data.count += 1
  const fd = fs.openSync(`${file}.tmp`, 'w')
  fs.writeSync(fd, JSON.stringify(data))
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  fs.renameSync(`${file}.tmp`, file)
}

async function workerMain([client, url, file, mode, n]) {
  const client_ = lockClient(client, url, file)
  process.stdout.write('READY\n')
  await new Promise((resolve) => process.stdin.once('data', resolve))
  process.stdin.pause()
  const samples = []
  for (let i = 0; i < Number(n); i++) {
    if (mode === 'update' || mode === 'write') {
      await client_[mode]()
      continue
    }
    const start = now()
    const release = await client_.lock()
    const got = now()
    const released = now()
    await release()
    samples.push({ got, released, cycle: now() - start })
  }
  await client_.close()
  process.stdout.write(`RESULT ${JSON.stringify(samples)}\n`)
  process.stdout.write('DONE\n')
}

/** The two ends of the floor's Unix-socket ping. */
async function pingServer(socketPath) {
  net
    .createServer((s) => s.on('data', (d) => s.write(d)))
    .listen(socketPath, () => process.stdout.write('READY\n'))
}

// ---- parent side ------------------------------------------------------------------------

function startWorker(args, cwd) {
  const child = spawn(process.execPath, [__filename, '--worker', ...args.map(String)], { cwd, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = readline.createInterface({ input: child.stdout })
  let result = null
  const seen = (what) =>
    new Promise((resolve, reject) => {
      lines.on('line', (line) => {
        if (line.startsWith('RESULT ')) result = JSON.parse(line.slice(7))
        if (line === what) resolve()
      })
      // Killed by us (the ping server) is not a failure.
      child.on('exit', (code, signal) => !signal && code !== 0 && reject(new Error(`bench worker ${args.join(' ')} exited ${code}`)))
    })
  return { child, ready: seen('READY'), done: seen('DONE'), result: () => result }
}

const p50 = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

/** Runs `procs` workers of `client` in `mode`, n rounds each. */
async function scenario(url, client, mode, procs, n) {
  const { root, file } = counterProject('ffl-redis-bench-', mode, procs)
  const workers = Array.from({ length: procs }, () => startWorker([client, url, file, mode, n], root))
  const seconds = await timeTogether(workers)
  for (const w of workers) w.child.stdin.end()
  const exact = mode === 'cycle' || JSON.parse(fs.readFileSync(file, 'utf8')).count === procs * n
  fs.rmSync(root, { recursive: true, force: true })
  if (!exact) throw new Error(`${client}: lost updates in ${mode} with ${procs} processes`)
  return { rate: (procs * n) / seconds, samples: workers.map((w) => w.result()) }
}

/** Handoffs: every grant that follows the other process's release, measured from that release. */
function handoffs([a, b]) {
  const events = [
    ...a.flatMap((s) => [{ who: 0, t: s.got, kind: 'got' }, { who: 0, t: s.released, kind: 'released' }]),
    ...b.flatMap((s) => [{ who: 1, t: s.got, kind: 'got' }, { who: 1, t: s.released, kind: 'released' }]),
  ].sort((x, y) => x.t - y.t)
  const out = []
  for (let i = 1; i < events.length; i++) {
    const [prev, cur] = [events[i - 1], events[i]]
    if (cur.kind === 'got' && prev.kind === 'released' && prev.who !== cur.who) out.push(cur.t - prev.t)
  }
  return out
}

/** Half the p50 round trip of a ping between two Node processes over a Unix socket (µs). */
async function nodeWakeUp(n) {
  const socketPath = path.join(os.tmpdir(), `ffl-bench-ping-${process.pid}.sock`)
  fs.rmSync(socketPath, { force: true })
  const server = startWorker(['--ping-server', socketPath])
  await server.ready
  const socket = net.connect(socketPath)
  await new Promise((resolve) => socket.once('connect', resolve))
  const rtts = []
  for (let i = 0; i < n; i++) {
    const start = now()
    await new Promise((resolve) => {
      socket.once('data', resolve)
      socket.write('x')
    })
    rtts.push(now() - start)
  }
  socket.destroy()
  server.child.kill()
  fs.rmSync(socketPath, { force: true })
  return p50(rtts) / 2
}

async function redisRoundTrip(url, n) {
  const Redis = require('ioredis')
  const redis = new Redis(url)
  await redis.ping()
  const rtts = []
  for (let i = 0; i < n; i++) {
    const start = now()
    await redis.ping()
    rtts.push(now() - start)
  }
  await redis.quit()
  return p50(rtts)
}

/**
 * The check-to-rename window: `strace -f -ttt` of one process doing n updateWithLock calls.
 * Per commit: the last read on the Redis socket (the commit check's answer) before the rename
 * onto the data file, to that rename.
 */
function checkToRename(url, n) {
  if (spawnSync('strace', ['-V']).status !== 0) return null
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-redis-window-'))
  fs.mkdirSync(path.join(root, '.flowforge'))
  const file = path.join(root, 'window.json')
  fs.writeFileSync(file, JSON.stringify({ count: 0 }))
  const trace = path.join(root, 'trace')
  const script = `
    process.env.FLOWFORGE_LOCK_BACKEND = ${JSON.stringify(url)}
    const { updateWithLock } = require(${JSON.stringify(path.join(__dirname, '..', 'file-lock'))})
    ;(async () => { for (let i = 0; i < ${n}; i++) await updateWithLock(${JSON.stringify(file)}, (d) => ({ count: d.count + 1 })) })()`
  const run = spawnSync('strace', ['-f', '-ttt', '-s', '16', '-e', 'trace=read,recvfrom,rename,renameat,renameat2', '-o', trace, process.execPath, '-e', script], { encoding: 'utf8' })
  if (run.status !== 0) throw new Error(`strace run failed: ${run.stderr}`)
  const windows = []
  let lastReply = null
  for (const line of fs.readFileSync(trace, 'utf8').split('\n')) {
    // A RESP reply read off the socket: `read(fd, "*2\r\n..."` / `recvfrom(fd, ":1\r\n...`
    const reply = /^\d+\s+([\d.]+) (?:read|recvfrom)\(\d+, "[*:+\-$%>_#,]/.exec(line)
    if (reply && /\\r\\n/.test(line) && !/= -1/.test(line)) lastReply = Number(reply[1])
    const rename = /^\d+\s+([\d.]+) rename(?:at2?)?\(.*"([^"]+)"(?:, \d+)?\) = 0/.exec(line)
    if (rename && rename[2] === file && lastReply !== null) {
      windows.push((Number(rename[1]) - lastReply) * 1e6)
      lastReply = null
    }
  }
  fs.rmSync(root, { recursive: true, force: true })
  const sorted = windows.sort((a, b) => a - b)
  return { n: sorted.length, p50: p50(sorted), p99: sorted[Math.floor(sorted.length * 0.99)], max: sorted[sorted.length - 1] }
}

async function main() {
  const { startRedis } = require('../__test__/redis-server.js')
  const redis = await startRedis()
  const url = `${redis.url}/0`
  const version = spawnSync('/usr/bin/redis-server', ['--version'], { encoding: 'utf8' }).stdout.trim()
  const rows = []
  let floor
  let window
  try {
    const wake = await nodeWakeUp(COUNTS.ping)
    const rtt = await redisRoundTrip(url, COUNTS.ping)
    floor = { wake, rtt, total: wake + rtt }
    // Rounds: the box is shared, so its load moves during a run; each figure is the median of
    // its rounds.
    const runs = Object.fromEntries(CLIENTS.map((c) => [c, []]))
    for (let round = 0; round < ROUNDS; round++) {
      // Each scenario runs for every client back to back (the figures a ratio compares are
      // seconds apart, not a whole client's turn), starting with another client each round.
      const order = CLIENTS.map((_, i) => CLIENTS[(i + round) % CLIENTS.length])
      const result = Object.fromEntries(CLIENTS.map((c) => [c, {}]))
      for (const client of order) result[client].cycle = await scenario(url, client, 'cycle', 1, COUNTS.cycle)
      for (const client of order) result[client].handoff = await scenario(url, client, 'cycle', 2, COUNTS.handoff)
      for (const client of order) result[client].p8 = await scenario(url, client, 'write', 8, COUNTS.update)
      // The peers' update is their write; ours is updateWithLock (commit check, token file).
      result['flowforge-lock'].p8Update = await scenario(url, 'flowforge-lock', 'update', 8, COUNTS.update)
      for (const client of CLIENTS) {
        const { cycle, handoff, p8, p8Update = p8 } = result[client]
        runs[client].push({
          cycle: p50(cycle.samples[0].map((s) => s.cycle)),
          handoff: p50(handoffs(handoff.samples)),
          handoffs: handoffs(handoff.samples).length,
          p8: p8.rate,
          p8Update: p8Update.rate,
        })
      }
    }
    for (const client of CLIENTS) {
      const median = (key) => p50(runs[client].map((r) => r[key]))
      rows.push({ client, ...Object.fromEntries(['cycle', 'handoff', 'handoffs', 'p8', 'p8Update'].map((k) => [k, median(k)])) })
    }
    window = checkToRename(url, COUNTS.window)
  } finally {
    await redis.stop()
  }
  const us = (v) => `${(v / 1000).toFixed(2)} ms`.padStart(12)
  console.log(`redis bench: ${version}; loopback; median of ${ROUNDS} rounds; ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)}, node ${process.version}`)
  console.log(`floor: Node cross-process wake-up ${us(floor.wake).trim()} + Redis PING round trip ${us(floor.rtt).trim()} = ${us(floor.total).trim()}`)
  console.log(`${'client'.padEnd(18)}${'cycle p50'.padStart(12)}${'handoff p50'.padStart(12)}${'P=8 upd/s'.padStart(12)}${'P=8 update'.padStart(12)}`)
  for (const r of rows) console.log(`${r.client.padEnd(18)}${us(r.cycle)}${us(r.handoff)}${r.p8.toFixed(1).padStart(12)}${r.p8Update.toFixed(1).padStart(12)}   (${r.handoffs} handoffs of ${COUNTS.handoff * 2} cycles)`)
  const ours = rows[0]
  for (const other of rows.slice(1)) {
    // Speed ratios: times are divided the other way round from rates.
    const x = (v) => `${v.toFixed(2)}x`
    console.log(
      `flowforge-lock / ${other.client} (above 1: flowforge-lock ahead): cycle ${x(other.cycle / ours.cycle)}, handoff ${x(other.handoff / ours.handoff)}, ` +
        `P=8 same write ${x(ours.p8 / other.p8)}, P=8 updateWithLock vs their write ${x(ours.p8Update / other.p8)}`,
    )
  }
  console.log(`flowforge-lock handoff p50 / floor: ${(ours.handoff / floor.total).toFixed(2)}x`)
  if (window) {
    console.log(`check-to-rename window (strace, ${window.n} commits): p50 ${us(window.p50).trim()}, p99 ${us(window.p99).trim()}, max ${us(window.max).trim()}`)
  } else {
    console.log('check-to-rename window: strace not found, not measured')
  }
}

if (process.argv[2] === '--worker' && process.argv[3] === '--ping-server') {
  pingServer(process.argv[4])
} else if (process.argv[2] === '--worker') {
  workerMain(process.argv.slice(3)).catch((err) => {
    console.error(err)
    process.exit(1)
  })
} else {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
