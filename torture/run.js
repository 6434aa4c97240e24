#!/usr/bin/env node
'use strict'
// npm run torture: "nothing is ever lost or corrupted, and nobody gets in where they don't
// belong", as figures. Six parts: contention, crashes (SIGKILL), stalls (SIGSTOP, and a second
// host that does not share kernel locks), hostile input, fuzzing, resources. Prints progress
// and a summary table; exits 1 if any case failed. `--smoke` is the short version CI runs.
// Runs as root (the second-host simulation needs `unshare --uts`, the full-disk case a tmpfs).

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn, spawnSync, execFile } = require('node:child_process')
const { promisify } = require('node:util')
const { table } = require('../lib/table.js')
const { failpoints } = require('./failpoints.js')

const ROOT = path.resolve(__dirname, '..')
const SMOKE = process.argv.includes('--smoke')
const WORKERS = path.join(__dirname, 'workers')
const FIXTURES = path.join(ROOT, '__test__', 'fixtures')
const BIN = path.join(ROOT, 'bin', 'flowforge-lock.js')
const lib = {
  ...require('../file-lock.js'),
  ...require('../file-lock-integration.js'),
}
const { IS_ROOT, readablePackage, useRunTmpdirUntilExit } = require('../__test__/helpers.js')
const run = promisify(execFile)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const rows = []
// A case that cannot run here is recorded as skipped, with its reason: never counted as a pass.
function record(part, name, { runs, lost = 0, corrupt = 0, hung = 0, ok, skip = false, note = '' }) {
  const result = skip ? 'skipped: needs root' : ok && lost === 0 && corrupt === 0 && hung === 0 ? 'pass' : 'FAIL'
  rows.push({ part, name, runs, lost, corrupt, hung, result, note })
  if (skip) process.stdout.write(`  skipped: needs root: ${name}${note ? ` (${note})` : ''}\n`)
  else process.stdout.write(`  ${result === 'pass' ? 'ok  ' : result} ${name}: ${runs} runs${note ? `, ${note}` : ''}\n`)
}
const skipUnlessRoot = (part, name, why) => IS_ROOT || (record(part, name, { runs: 0, skip: true, note: `running as uid ${process.getuid()}: ${why}` }), false)

useRunTmpdirUntilExit('ffl-torture-run-')

function project() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-torture-'))
  fs.chmodSync(root, 0o755)
  fs.mkdirSync(path.join(root, '.flowforge'))
  return root
}

/** Races `promise` against a deadline: resolves to { hung: true } if it does not settle in time. */
function withDeadline(promise, ms) {
  let timer
  return Promise.race([
    promise.then((value) => ({ value }), (error) => ({ error })),
    new Promise((resolve) => (timer = setTimeout(() => resolve({ hung: true }), ms))),
  ]).finally(() => clearTimeout(timer))
}

function node(script, args, nodeArgs = []) {
  return run(process.execPath, [...nodeArgs, script, ...args.map(String)], { maxBuffer: 16 << 20, timeout: 300000 })
}

// 1. Contention ---------------------------------------------------------------------------

async function contention() {
  console.log('1. Contention')
  const sizes = SMOKE ? [2, 4] : [2, 4, 8, 16]
  const k = SMOKE ? 20 : 100
  for (const mode of ['raw', 'update', 'task']) {
    for (const p of sizes) {
      const root = project()
      const file = path.join(root, '.flowforge', mode === 'raw' ? 'counter.json' : 'tasks.json')
      fs.writeFileSync(file, mode === 'raw' ? '{"count":0}' : '{"version":"2.0.0","tasks":[]}')
      const marker = path.join(root, 'inside')
      const startAt = Date.now() + 300 + p * 60
      const outcome = await withDeadline(
        Promise.all(Array.from({ length: p }, (_, w) => node(path.join(WORKERS, 'contend.js'), [mode, file, k, startAt, marker, `w${w}`]))),
        300000,
      )
      let corrupt = 0
      let done = 0
      try {
        const doc = JSON.parse(fs.readFileSync(file, 'utf8'))
        done = mode === 'raw' ? doc.count : doc.tasks.length
      } catch {
        corrupt = 1
      }
      const reports = outcome.value ? outcome.value.map((r) => JSON.parse(r.stdout)) : []
      const overlaps = reports.reduce((sum, r) => sum + r.overlaps, 0)
      const errors = reports.reduce((sum, r) => sum + r.errors, 0)
      record(1, `${mode === 'raw' ? 'acquireLock/read/write/releaseLock' : mode === 'update' ? 'updateWithLock' : 'updateTaskFile'} P=${p} x ${k}`, {
        runs: p * k,
        lost: p * k - done,
        corrupt,
        hung: outcome.hung ? 1 : 0,
        ok: !outcome.error && overlaps === 0 && errors === 0,
        note: `overlapping critical sections ${mode === 'task' ? 'n/a' : overlaps}`,
      })
    }
  }
  // Shell writers through `flowforge-lock exec` and Node writers on one counter.
  const root = project()
  const file = path.join(root, '.flowforge', 'counter.json')
  const marker = path.join(root, 'inside')
  const overlapLog = path.join(root, 'overlaps')
  fs.writeFileSync(file, '{"count":0}')
  const shellK = SMOKE ? 10 : 40
  const nodeK = SMOKE ? 20 : 100
  const critical = `if ! mkdir ${marker} 2>/dev/null; then echo x >> ${overlapLog}; fi; n=$(sed 's/[^0-9]//g' ${file}); echo "{\\"count\\":$((n+1))}" > ${file}; rmdir ${marker}`
  const shellWriter = () =>
    new Promise((resolve) => {
      const loop = `for i in $(seq 1 ${shellK}); do ${process.execPath} ${BIN} exec --timeout 120000 ${file} -- sh -c '${critical}' || exit 1; done`
      spawn('sh', ['-c', loop], { stdio: 'ignore' }).on('close', resolve)
    })
  const startAt = Date.now() + 500
  const outcome = await withDeadline(
    Promise.all([
      shellWriter(),
      shellWriter(),
      node(path.join(WORKERS, 'contend.js'), ['raw', file, nodeK, startAt, `${marker}`, 'n1']),
      node(path.join(WORKERS, 'contend.js'), ['raw', file, nodeK, startAt, `${marker}`, 'n2']),
    ]),
    600000,
  )
  const count = JSON.parse(fs.readFileSync(file, 'utf8')).count
  const shellOverlaps = fs.existsSync(overlapLog) ? fs.readFileSync(overlapLog, 'utf8').trim().split('\n').length : 0
  const nodeOverlaps = outcome.value ? outcome.value.slice(2).reduce((s, r) => s + JSON.parse(r.stdout).overlaps, 0) : 0
  const expected = 2 * shellK + 2 * nodeK
  record(1, `mixed: 2 shell writers (flowforge-lock exec) x ${shellK} + 2 Node writers x ${nodeK}`, {
    runs: expected,
    lost: expected - count,
    hung: outcome.hung ? 1 : 0,
    ok: outcome.value && outcome.value[0] === 0 && outcome.value[1] === 0 && shellOverlaps + nodeOverlaps === 0,
    note: `overlapping critical sections ${shellOverlaps + nodeOverlaps}`,
  })
}

// 2. Crashes ------------------------------------------------------------------------------

/** Starts a fixture; resolves once it printed `marker`, with the child and its exit. */
function start(script, args, marker, options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args.map(String)], { stdio: ['pipe', 'pipe', 'inherit'], ...options })
    let out = ''
    const exited = new Promise((r) => child.on('close', (code, signal) => r({ code, signal, out })))
    child.stdout.on('data', (chunk) => {
      out += chunk
      if (out.includes(marker)) resolve({ child, exited, out: () => out })
    })
    exited.then(() => reject(new Error(`${path.basename(script)} ended before ${marker}: ${out}`)))
  })
}

async function crashes() {
  console.log('2. Crashes (SIGKILL)')
  const kills = SMOKE ? 20 : 500
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  fs.writeFileSync(file, JSON.stringify({ version: '2.0.0', tasks: [], padding: 'x'.repeat(200000) }))
  const acked = { a: 0, b: 0 }
  let lost = 0
  let corrupt = 0
  let halfApplied = 0
  let midWrite = 0
  for (let kill = 0; kill < kills; kill++) {
    const writers = await Promise.all(
      ['a', 'b'].map((prefix) =>
        start(path.join(FIXTURES, 'crash-writer.js'), [prefix, acked[prefix] + 1], 'ACK', { cwd: root }).then((w) => ({ ...w, prefix })),
      ),
    )
    await sleep(Math.random() * 40)
    for (const w of writers) w.child.kill('SIGKILL')
    for (const w of writers) await w.exited
    // A temp file of a killed writer means its kill landed between temp write and rename.
    const pids = writers.map((w) => `-${w.child.pid}-`)
    midWrite += fs.readdirSync(path.dirname(file)).filter((n) => n.endsWith('.tmp') && pids.some((p) => n.includes(p))).length
    let doc
    try {
      doc = JSON.parse(fs.readFileSync(file, 'utf8'))
    } catch {
      corrupt++
      break
    }
    for (const w of writers) {
      await w.exited
      const last = Math.max(0, ...[...w.out().matchAll(/ACK (\d+)/g)].map((m) => Number(m[1])))
      acked[w.prefix] = Math.max(acked[w.prefix], last)
    }
    const present = new Set(doc.tasks.map((t) => t.id))
    for (const prefix of ['a', 'b']) {
      for (let seq = 1; seq <= acked[prefix]; seq++) if (!present.has(`${prefix}-${seq}`)) lost++
      // An update written but not yet acknowledged counts as done: resume after it.
      const seqs = doc.tasks.filter((t) => t.id.startsWith(`${prefix}-`)).map((t) => Number(t.id.slice(2)))
      acked[prefix] = Math.max(acked[prefix], ...seqs, 0)
    }
    for (const task of doc.tasks) if (task.status !== 'done' || task.payload !== `${task.id}:`.repeat(200)) halfApplied++
    if (kill % 50 === 0) process.stdout.write(`     ${kill}/${kills} kills, ${acked.a + acked.b} updates acknowledged\n`)
  }
  await lib.updateTaskFile({ id: 'after-the-crashes' }, { file })
  const strays = fs.readdirSync(path.dirname(file)).filter((n) => n.includes('.ffl-'))
  record(2, `writers SIGKILLed at random moments`, {
    runs: kills,
    lost,
    corrupt: corrupt + halfApplied,
    ok: strays.length === 0,
    note: `${acked.a + acked.b} acknowledged updates checked after every kill, kills that landed between temp write and rename: ${midWrite}, stray temp files after the next write: ${strays.length}`,
  })

  // Holders: the next acquirer must get the lock within a second of the kill.
  const holderKills = SMOKE ? 5 : 50
  const takeovers = []
  let hung = 0
  const holderFile = path.join(root, '.flowforge', 'active-sessions.json')
  for (let i = 0; i < holderKills; i++) {
    const holder = await start(path.join(FIXTURES, 'hold-lock.js'), [holderFile], 'LOCKED')
    const waiting = lib.acquireLock(holderFile, 5000)
    await sleep(20 + Math.random() * 30)
    const killedAt = performance.now()
    holder.child.kill('SIGKILL')
    const got = await withDeadline(waiting, 6000)
    if (got.hung || got.error) {
      hung++
      continue
    }
    takeovers.push(performance.now() - killedAt)
    await lib.releaseLock(holderFile, got.value)
    await holder.exited
  }
  const worst = Math.max(...takeovers)
  const sorted = [...takeovers].sort((a, b) => a - b)
  record(2, 'holders SIGKILLed while another process waits', {
    runs: holderKills,
    hung,
    ok: worst < 1000,
    note: `takeover after the kill: median ${sorted[sorted.length >> 1].toFixed(2)} ms, worst ${worst.toFixed(2)} ms`,
  })
  return kills + holderKills
}

// 3. Stalls -------------------------------------------------------------------------------

async function stalls() {
  console.log('3. Stalls (SIGSTOP)')
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  fs.writeFileSync(file, '{"writer":"nobody"}')
  // Same host: the kernel lock keeps a frozen holder's lock, whatever its heartbeat says.
  const frozen = await start(path.join(WORKERS, 'stall-holder.js'), [file, 100], 'INSIDE')
  frozen.child.kill('SIGSTOP')
  const freezeMs = SMOKE ? 1500 : 4000
  const started = performance.now()
  const denied = await withDeadline(lib.acquireLock(file, { timeout: freezeMs, staleThreshold: 500 }), freezeMs + 5000)
  const cleanup = await lib.cleanupStaleLocks({ root, staleThreshold: 500 })
  frozen.child.kill('SIGCONT')
  frozen.child.stdin.write('GO\n')
  const sameHost = await frozen.exited
  record(3, `frozen holder on this host keeps its lock (${freezeMs} ms frozen, stale threshold 500 ms)`, {
    runs: 1,
    hung: denied.hung ? 1 : 0,
    ok:
      denied.error?.code === 'ELOCKTIMEOUT' &&
      performance.now() - started >= freezeMs &&
      cleanup.removed.length === 0 &&
      sameHost.out.includes('RESULT ok') &&
      JSON.parse(fs.readFileSync(file, 'utf8')).writer === 'stalled',
    note: 'waiter timed out, cleanup kept it, the holder then wrote',
  })

  // Another host whose file system does not carry kernel locks: only the heartbeat protects
  // its lock. Frozen past the stale threshold, it is taken over, and its late write refused.
  if (spawnSync('unshare', ['--uts', 'true']).status !== 0) {
    record(3, 'second host frozen past the stale threshold', { runs: 0, skip: !IS_ROOT, ok: false, note: 'unshare --uts failed (it needs root)' })
    return
  }
  fs.writeFileSync(file, '{"writer":"nobody"}')
  const script = `hostname flowforge-torture-host-b && exec ${process.execPath} ${path.join(WORKERS, 'stall-holder.js')} ${file} 100`
  const hostB = await new Promise((resolve, reject) => {
    const child = spawn('unshare', ['--uts', 'sh', '-c', script], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' },
    })
    let out = ''
    const exited = new Promise((r) => child.on('close', () => r(out)))
    child.stdout.on('data', (chunk) => {
      out += chunk
      if (out.includes('INSIDE')) resolve({ child, exited, out: () => out })
    })
    exited.then(() => reject(new Error(`host B ended early: ${out}`)))
  })
  const respected = await lib.acquireLock(file, { timeout: 400, staleThreshold: 1000 }).then(
    () => 'taken',
    (err) => err.code,
  )
  hostB.child.kill('SIGSTOP')
  const frozenAt = performance.now()
  const takeover = await withDeadline(lib.updateWithLock(file, () => ({ writer: 'host A' }), { timeout: 10000, staleThreshold: 1000 }), 15000)
  const takenAfter = performance.now() - frozenAt
  // Its last heartbeat may be up to one interval (100 ms) older than the freeze: the takeover
  // must come no sooner than the stale threshold after that heartbeat.
  const earliestTakeover = 1000 - 100
  hostB.child.kill('SIGCONT')
  hostB.child.stdin.write('GO\n')
  const bOut = await hostB.exited
  const content = JSON.parse(fs.readFileSync(file, 'utf8'))
  record(3, 'second host (unshare --uts, no shared kernel locks) frozen past the stale threshold', {
    runs: 1,
    hung: takeover.hung ? 1 : 0,
    ok: respected === 'ELOCKTIMEOUT' && !takeover.error && takenAfter >= earliestTakeover && bOut.includes('RESULT ELOCKLOST') && content.writer === 'host A',
    note: `live record respected (${respected}), taken over ${Math.round(takenAfter)} ms after the freeze, late write: ${/RESULT (\S+)/.exec(bOut)?.[1]}, file holds "${content.writer}"`,
  })
}

// 4. Hostile and broken input ------------------------------------------------------------

async function hostile() {
  console.log('4. Hostile and broken input')
  // Another user's live process: `nobody`'s, which only root can start.
  const nobodySleeper = IS_ROOT ? spawn('sleep', ['60'], { uid: 65534, gid: 65534, stdio: 'ignore' }) : null
  const now = Date.now()
  const host = os.hostname()
  const plant = (fields) => JSON.stringify({ lockId: 'planted', file: 'x', acquiredAt: now, ...fields })
  // Each case: what to put in the lock file, and what acquireLock must do.
  const records = [
    ['empty record', '', 'acquire'],
    ['truncated record', plant({ pid: 1, hostname: host }).slice(0, 30), 'acquire'],
    ['huge record (1 MiB)', 'x'.repeat(1 << 20), 'acquire'],
    ['not JSON', 'this is not json {', 'acquire'],
    ['not UTF-8', Buffer.from([0xff, 0xfe, 0x7b, 0x80, 0x00]), 'acquire'],
    ['pid 0', plant({ pid: 0, hostname: host, heartbeat: now }), 'acquire'],
    ['pid 1 (alive, holds no kernel lock)', plant({ pid: 1, hostname: host, heartbeat: now }), 'acquire'],
    ['negative pid', plant({ pid: -5, hostname: host, heartbeat: now }), 'acquire'],
    ...(nobodySleeper ? [["another user's live process", plant({ pid: nobodySleeper.pid, hostname: host, username: 'nobody', heartbeat: now }), 'acquire']] : []),
    ["this process's own pid", plant({ pid: process.pid, hostname: host, heartbeat: now }), 'acquire'],
    ['heartbeat a day in the future (other host)', plant({ pid: 7, hostname: 'elsewhere', heartbeat: now + 86400000 }), 'acquire'],
    ['ancient heartbeat (other host)', plant({ pid: 7, hostname: 'elsewhere', heartbeat: 1000 }), 'acquire'],
    ['fresh heartbeat (other host): respected', plant({ pid: 7, hostname: 'elsewhere', heartbeat: now }), 'ELOCKTIMEOUT'],
    ['legacy record of a live pid, fresh: respected', JSON.stringify({ pid: process.pid, lockId: 'x', timestamp: now, heartbeat: now }), 'ELOCKTIMEOUT'],
  ]
  skipUnlessRoot(4, "lock record: another user's live process", 'it starts a process as nobody')
  for (const [name, content, expected] of records) {
    const root = project()
    const data = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(data, '{"tasks":[]}')
    fs.mkdirSync(path.join(root, '.flowforge', '.locks'))
    fs.writeFileSync(path.join(root, '.flowforge', '.locks', 'tasks.json.lock'), content)
    const got = await withDeadline(lib.acquireLock(data, 300), 5000)
    if (got.value) await lib.releaseLock(data, got.value)
    const outcome = got.value ? 'acquire' : got.error?.code
    record(4, `lock record: ${name}`, {
      runs: 1,
      hung: got.hung ? 1 : 0,
      corrupt: fs.readFileSync(data, 'utf8') === '{"tasks":[]}' ? 0 : 1,
      ok: outcome === expected,
      note: `${outcome}${outcome === expected ? '' : ` (expected ${expected})`}`,
    })
  }
  if (nobodySleeper) nobodySleeper.kill()

  const expectCode = async (name, setUp, call, code) => {
    const root = project()
    const data = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(data, '{"tasks":[]}')
    const extra = setUp(root, data)
    const got = await withDeadline(Promise.resolve().then(() => call(root, data, extra)), 10000)
    const actual = got.error ? got.error.code : got.value === undefined ? 'ok' : got.value
    const unchanged = fs.readFileSync(data, 'utf8') === '{"tasks":[]}'
    const strays = fs.readdirSync(path.join(root, '.flowforge')).filter((n) => n.includes('.ffl-') && n !== extra?.planted)
    record(4, name, {
      runs: 1,
      hung: got.hung ? 1 : 0,
      corrupt: unchanged || code === 'ok' ? 0 : 1,
      ok: actual === code && strays.length === 0 && (extra?.check ? extra.check() : true),
      note: `${actual}${actual === code ? '' : ` (expected ${code})`}`,
    })
  }
  const victimSetUp = (root) => {
    const victim = path.join(root, 'victim.txt')
    fs.writeFileSync(victim, 'precious')
    return { victim, check: () => fs.readFileSync(victim, 'utf8') === 'precious' }
  }
  await expectCode(
    'symlink planted at the lock path',
    (root) => {
      const v = victimSetUp(root)
      fs.mkdirSync(path.join(root, '.flowforge', '.locks'))
      fs.symlinkSync(v.victim, path.join(root, '.flowforge', '.locks', 'tasks.json.lock'))
      return v
    },
    (root, data) => lib.updateTaskFile({ id: 1 }, { file: data }),
    'ELOCKSYMLINK',
  )
  await expectCode(
    'symlink planted at a temp-file path',
    (root) => {
      // Named like a temp file of a live writer (pid 1): not ours to remove, and never followed.
      const v = victimSetUp(root)
      const planted = `.tasks.json.ffl-1-${'a'.repeat(12)}.tmp`
      fs.symlinkSync(v.victim, path.join(root, '.flowforge', planted))
      const link = path.join(root, '.flowforge', planted)
      return { planted, check: () => v.check() && fs.readlinkSync(link) === v.victim }
    },
    async (root, data) => {
      await lib.updateTaskFile({ id: 1 }, { file: data })
      fs.writeFileSync(data, '{"tasks":[]}') // the update itself is expected here: put the original back
    },
    'ok',
  )
  await expectCode(
    'world-writable lock dir',
    (root) => {
      fs.mkdirSync(path.join(root, '.flowforge', '.locks'))
      fs.chmodSync(path.join(root, '.flowforge', '.locks'), 0o777)
    },
    (root, data) => lib.updateTaskFile({ id: 1 }, { file: data }),
    'ELOCKDIRUNSAFE',
  )
  await expectCode(
    'lock dir that is a file',
    (root) => fs.writeFileSync(path.join(root, '.flowforge', '.locks'), 'not a dir'),
    (root, data) => lib.updateTaskFile({ id: 1 }, { file: data }),
    'ENOTDIR',
  )
  await expectCode('target path with a NUL byte', () => {}, (root) => lib.acquireLock(path.join(root, 'ta\0sks.json')), 'ERR_INVALID_ARG_VALUE')
  await expectCode('target name of 300 characters', () => {}, (root) => lib.acquireLock(path.join(root, 'x'.repeat(300))), 'ENAMETOOLONG')
  for (const [name, relative] of [
    ['target path with ..', path.join('.flowforge', 'sub', '..', 'dotdot.json')],
    ['target path with spaces', path.join('.flowforge', 'my tasks.json')],
    ['target path with unicode', path.join('.flowforge', 'tâches-タスク-✓.json')],
  ]) {
    await expectCode(
      name,
      (root) => fs.mkdirSync(path.join(root, '.flowforge', 'sub'), { recursive: true }),
      async (root) => {
        const target = path.join(root, relative)
        await lib.updateWithLock(target, () => ({ ok: true }))
        return JSON.parse(fs.readFileSync(path.resolve(target), 'utf8')).ok ? 'written' : 'wrong content'
      },
      'written',
    )
  }
  // Run from a world-readable copy of the package: nobody may not be able to enter the checkout.
  if (skipUnlessRoot(4, 'read-only data dir (as nobody)', 'it runs a process as nobody')) await expectCode(
    'read-only data dir (as nobody)',
    () => {},
    async (root, data) => {
      const script = `require(${JSON.stringify(path.join(readablePackage(), 'file-lock-integration.js'))}).updateTaskFile({ id: 1 }, { file: ${JSON.stringify(data)} }).then(() => console.log('written'), (e) => console.log(e.code))`
      const out = spawnSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8' })
      return out.stdout.trim()
    },
    'EACCES',
  )
  await fullDisk()
}

/** A write into a full file system: ENOSPC, old content intact, no temp file left. */
async function fullDisk() {
  const root = project()
  const mount = path.join(root, 'small')
  fs.mkdirSync(mount)
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mount]).status !== 0) {
    record(4, 'full disk during a write', { runs: 0, skip: !IS_ROOT, ok: false, note: 'cannot mount a small tmpfs (it needs root)' })
    return
  }
  try {
    fs.mkdirSync(path.join(mount, '.flowforge'))
    const data = path.join(mount, '.flowforge', 'tasks.json')
    fs.writeFileSync(data, '{"tasks":[]}')
    fs.writeFileSync(path.join(mount, 'filler'), Buffer.alloc(200 * 1024))
    const got = await withDeadline(lib.updateTaskFile({ id: 1, payload: 'y'.repeat(100 * 1024) }, { file: data }), 10000)
    const strays = fs.readdirSync(path.dirname(data)).filter((n) => n.includes('.ffl-'))
    record(4, 'full disk during a write (256 KiB tmpfs)', {
      runs: 1,
      hung: got.hung ? 1 : 0,
      corrupt: fs.readFileSync(data, 'utf8') === '{"tasks":[]}' ? 0 : 1,
      ok: got.error?.code === 'ENOSPC' && strays.length === 0,
      note: `${got.error?.code ?? 'written'}`,
    })
  } finally {
    // Lazily: this process keeps its lock and queue files' handles open for reuse until it
    // exits, and a plain umount would fail (busy) and leave the tmpfs mounted for good.
    spawnSync('umount', ['--lazy', mount])
  }
}

// 5. Fuzzing ------------------------------------------------------------------------------

async function fuzzing() {
  console.log('5. Fuzzing (Rust: record parser, staleness, path handling)')
  const iterations = SMOKE ? 20000 : 1000000
  const started = performance.now()
  const out = spawnSync('cargo', ['test', '--release', '--quiet', '--lib', 'fuzz', '--', '--nocapture'], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, FLOWFORGE_FUZZ_ITERATIONS: String(iterations) },
    timeout: 600000,
  })
  const seconds = (performance.now() - started) / 1000
  const passed = /test result: ok\. (\d+) passed/.exec(out.stdout)
  record(5, `proptest fuzzing: checked-in corpus mutated and arbitrary bytes, ${iterations} cases per target`, {
    // Two targets of `iterations` cases, and the record round trip of a tenth as many.
    runs: iterations * 2 + Math.max(1, Math.floor(iterations / 10)),
    hung: out.signal ? 1 : 0,
    ok: out.status === 0 && passed !== null,
    note: `no panic, ${seconds.toFixed(1)} s${out.status === 0 ? '' : `: ${out.stdout.slice(-400)}${out.stderr.slice(-400)}`}`,
  })
}

// 6. Resources ----------------------------------------------------------------------------

async function resources() {
  console.log('6. Resources')
  const n = SMOKE ? 10000 : 100000
  const root = project()
  const out = await node(path.join(WORKERS, 'cycle.js'), [path.join(root, '.flowforge', 'tasks.json'), n], ['--expose-gc'])
  const { start, end } = JSON.parse(out.stdout)
  record(6, `${n} acquire/release cycles`, {
    runs: n,
    ok: end.fds === start.fds && end.rssMiB - start.rssMiB < 20,
    note: `fds ${start.fds} -> ${end.fds}, RSS ${start.rssMiB} -> ${end.rssMiB} MiB`,
  })
}

async function main() {
  const started = performance.now()
  console.log(`flowforge-lock torture${SMOKE ? ' (smoke)' : ''} on ${os.cpus().length} cores, node ${process.version}\n`)
  await contention()
  await crashes()
  await stalls()
  await hostile()
  await fuzzing()
  await resources()
  await failpoints({ record, project, smoke: SMOKE })
  await require('./reads.js').reads({ record, project, smoke: SMOKE })
  const header = ['part', 'case', 'runs', 'lost', 'corrupt', 'hung', 'result']
  const cells = rows.map((r) => [String(r.part), r.name, String(r.runs), String(r.lost), String(r.corrupt), String(r.hung), r.result])
  console.log(`\n${table(header, cells, { separator: ' | ', rule: true })}`)
  const count = (result) => rows.filter((r) => r.result === result).length
  const failed = count('FAIL')
  console.log(`\n${((performance.now() - started) / 1000).toFixed(0)} s`)
  const skipped = count('skipped: needs root')
  console.log(`torture: ${count('pass')} passed, ${failed} failed, ${skipped} skipped${skipped ? ' (needs root: run as root for the full suite)' : ''}`)
  process.exit(failed ? 1 : 0)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
