#!/usr/bin/env node
'use strict'
// node bench/etcd.js [--smoke]: the etcd backend side by side with etcd's reference client
// (`etcdctl lock`) and the npm `etcd3` client's lock, against one real etcd started here, same
// scenarios, same run:
//   cycle     one process takes and releases one lock, over and over (cycles/s)
//   handoff   two processes contend for one lock (holds/s), and the share of holds that went to the
//             other process than the one before: a client whose releaser takes its lock straight back
//             while the other waits counts those holds too (how often depends also on how soon each
//             process asks again, so it is not a fairness measure on its own)
//   P=8       eight processes do locked read-increment-writes of one file (updates/s; the final
//             count is checked exact)
// Each client runs in its own worker processes (this file with --worker). `etcdctl lock` runs
// one etcdctl process per hold, as a shell script would use it. `etcd3`'s lock does not wait
// (it throws EtcdLockFailedError when taken), so its worker retries at once until it gets it.
// Prints a table and the ratios of flowforge-lock to the others; the Redis backend runs beside
// them on a redis-server of its own, so the two lock servers can be compared in one run.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { spawn, spawnSync } = require('node:child_process')
const { counterProject, timeTogether } = require('./scenario')

const ETCDCTL = process.env.FLOWFORGE_ETCDCTL_BIN || '/usr/bin/etcdctl'
const CLIENTS = ['flowforge-lock', 'etcd3', 'etcdctl lock']
/** The Redis backend beside them, on a redis-server of its own, so users can choose with numbers. */
const REDIS_CLIENT = 'flowforge-lock on Redis'

const SMOKE = process.argv.includes('--smoke')
const COUNTS = SMOKE ? { cycle: 10, handoff: 5, update: 2 } : { cycle: 300, handoff: 150, update: 25 }
// etcdctl pays a process start per hold: fewer rounds keep the run short, the rate is the same.
const SLOW = (client, n) => (client === 'etcdctl lock' ? Math.max(2, Math.ceil(n / 5)) : n)

// ---- worker side ------------------------------------------------------------------------

/** Per client: `hold(fn)` runs fn under the lock; `close()` ends the client. */
async function lockClient(client, endpoint, file) {
  if (client === 'flowforge-lock' || client === REDIS_CLIENT) {
    process.env.FLOWFORGE_LOCK_BACKEND = client === REDIS_CLIENT ? endpoint : `etcd://${endpoint}`
    const { acquireLock, releaseLock, updateWithLock } = require('../file-lock')
    return {
      async hold(fn) {
        const lockId = await acquireLock(file, 60000)
        try {
          await fn(lockId)
        } finally {
          await releaseLock(file, lockId)
        }
      },
      increment: (lockId) => updateWithLock(file, (data) => ({ count: data.count + 1 }), { lockId }),
      close() {},
    }
  }
  if (client === 'etcd3') {
    const { Etcd3, EtcdLockFailedError } = require('etcd3')
    const etcd = new Etcd3({ hosts: `http://${endpoint}` })
    const name = `bench/${path.basename(file)}`
    return {
      async hold(fn) {
        for (;;) {
          const lock = etcd.lock(name).ttl(30)
          try {
            await lock.acquire()
          } catch (err) {
            if (err instanceof EtcdLockFailedError) continue
            throw err
          }
          try {
            return await fn()
          } finally {
            await lock.release()
          }
        }
      },
      increment: () => incrementJson(file),
      close: () => etcd.close(),
    }
  }
  // etcdctl: the hold is the life of `etcdctl lock <name> <command>`.
  const name = `bench/${path.basename(file)}`
  const run = (command) => {
    const out = spawnSync(ETCDCTL, ['--endpoints', endpoint, 'lock', name, '--', ...command], {
      env: { ...process.env, ETCDCTL_API: '3' },
      encoding: 'utf8',
    })
    if (out.status !== 0) throw new Error(`etcdctl lock failed: ${out.stderr}`)
  }
  const script = 'n=$(sed "s/[^0-9]//g" "$0"); printf "{\\"count\\":%d}" $((n+1)) > "$0.tmp" && mv "$0.tmp" "$0"'
  return {
    async hold() {
      run(['true'])
    },
    // The whole locked read-increment-write is one etcdctl run.
    async update() {
      run(['sh', '-c', script, file])
    },
    close() {},
  }
}

function incrementJson(file) {
  const data = JSON.parse(fs.readFileSync(file, 'utf8'))
  data.count += 1
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(data))
  fs.renameSync(`${file}.tmp`, file)
}

async function workerMain([client, endpoint, file, mode, n]) {
  const lock = await lockClient(client, endpoint, file)
  process.stdout.write('READY\n')
  await new Promise((resolve) => process.stdin.once('data', resolve))
  process.stdin.pause()
  // When each hold ended (CLOCK_MONOTONIC, shared by the workers): the parent merges them to
  // count how often the lock went from one process to the other.
  const heldUntil = []
  for (let i = 0; i < Number(n); i++) {
    if (mode === 'cycle') await lock.hold(async () => {})
    else if (lock.update) await lock.update()
    else await lock.hold((lockId) => lock.increment(lockId))
    heldUntil.push(Number(process.hrtime.bigint()))
  }
  await lock.close()
  process.stdout.write(`HELD ${JSON.stringify(heldUntil)}\nDONE\n`)
}

// ---- parent side ------------------------------------------------------------------------

function startWorker(args, cwd) {
  const child = spawn(process.execPath, [__filename, '--worker', ...args.map(String)], { cwd, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = readline.createInterface({ input: child.stdout })
  const held = new Promise((resolve) => lines.on('line', (line) => line.startsWith('HELD ') && resolve(JSON.parse(line.slice(5)))))
  const seen = (what) =>
    new Promise((resolve, reject) => {
      lines.on('line', (line) => line === what && resolve())
      child.on('exit', (code) => code !== 0 && reject(new Error(`bench worker ${args.join(' ')} exited ${code}`)))
    })
  return { child, ready: seen('READY'), done: seen('DONE'), held }
}

/** Runs `procs` workers of `client` in `mode`, n rounds each; resolves with rounds/s and the share of holds that
 * went to another process than the one before. */
async function scenario(endpoint, client, mode, procs, n) {
  const { root, file } = counterProject('ffl-etcd-bench-', mode, procs)
  const workers = Array.from({ length: procs }, () => startWorker([client, endpoint, file, mode, n], root))
  const seconds = await timeTogether(workers)
  const holds = (await Promise.all(workers.map((w, i) => w.held.then((ends) => ends.map((end) => [end, i]))))).flat().sort((a, b) => a[0] - b[0])
  const changed = holds.filter((hold, i) => i > 0 && hold[1] !== holds[i - 1][1]).length / Math.max(1, holds.length - 1)
  for (const w of workers) w.child.stdin.end()
  const exact = mode !== 'update' || JSON.parse(fs.readFileSync(file, 'utf8')).count === procs * n
  fs.rmSync(root, { recursive: true, force: true })
  if (!exact) throw new Error(`${client}: lost updates in ${mode} with ${procs} processes`)
  return { rate: (procs * n) / seconds, changed }
}

async function main() {
  const { startEtcd } = require('../__test__/etcd-server.js')
  const { startRedis } = require('../__test__/redis-server.js')
  const etcd = await startEtcd()
  const redis = await startRedis()
  const endpoint = etcd.endpoints[0]
  const version = spawnSync('/usr/bin/etcd', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]
  const rows = []
  try {
    for (const client of [...CLIENTS, REDIS_CLIENT]) {
      const where = client === REDIS_CLIENT ? redis.url : endpoint
      const row = { client }
      row.cycle = (await scenario(where, client, 'cycle', 1, SLOW(client, COUNTS.cycle))).rate
      const handoff = await scenario(where, client, 'cycle', 2, SLOW(client, COUNTS.handoff))
      row.handoff = handoff.rate
      row.changedHands = handoff.changed
      row.p8 = (await scenario(where, client, 'update', 8, SLOW(client, COUNTS.update))).rate
      rows.push(row)
    }
  } finally {
    await etcd.stop()
    await redis.stop()
  }
  const fmt = (v) => v.toFixed(1).padStart(10)
  console.log(`etcd bench: ${version}, one member on loopback; ${os.cpus().length} CPUs, node ${process.version}`)
  console.log(`${'client'.padEnd(24)}${'cycle/s'.padStart(10)}${'handoff/s'.padStart(10)}${'P=8 upd/s'.padStart(10)}  handoff holds by the other process`)
  for (const r of rows) console.log(`${r.client.padEnd(24)}${fmt(r.cycle)}${fmt(r.handoff)}${fmt(r.p8)}  ${(100 * r.changedHands).toFixed(0)}%`)
  const ours = rows[0]
  for (const other of rows.slice(1, CLIENTS.length)) {
    const ratio = (k) => `${(ours[k] / other[k]).toFixed(2)}x`
    console.log(`flowforge-lock / ${other.client}: cycle ${ratio('cycle')}, handoff ${ratio('handoff')}, P=8 ${ratio('p8')}`)
  }
}

if (process.argv[2] === '--worker') {
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
