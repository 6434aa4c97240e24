'use strict'
// Issue 9's holes, each reproduced by putting a real process at the dangerous instant (a
// failpoint of the addon built with `--features failpoints`, or an event it prints), then
// checking that no data, lock or promise is lost. The core's own failpoint tests are in
// tests/failpoints.rs; these need separate processes.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { spawn, spawnSync } = require('node:child_process')
const { acquireLock, releaseLock, isLocked, getLockInfo, HEARTBEAT_INTERVAL } = require('../file-lock')
const FileLockManager = require('../FileLockManager')
const native = require('../native')
const { updateWithLock } = require('../file-lock-integration')
const { makeProject, runFixture, startFixture, lockDrivers, PACKAGE_ROOT } = require('./helpers')
const { untilKernelWaiter } = require('./fixtures/wait-for')
const { failpointBinary, failpointEnv } = require('./failpoint-binary')

const BIN = path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js')
const FIXTURES = path.join(__dirname, 'fixtures')
const isRoot = process.getuid() === 0

let binary
beforeAll(() => {
  binary = failpointBinary()
}, 300000)

/**
 * Starts `node <fixture> args` and resolves with its handle once `stderr` shows `FAILPOINT <name>`;
 * `nextLine()` reads its stdout.
 */
function untilFailpoint(fixture, args, failpoints, { cwd, env } = {}) {
  const child = spawn(process.execPath, [path.join(FIXTURES, `${fixture}.js`), ...args], {
    cwd,
    env: { ...process.env, ...env, ...failpointEnv(binary, failpoints) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const acks = []
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const ack = /^ACK (\d+)$/.exec(line)
    if (ack) acks.push(Number(ack[1]))
  })
  const nextLine = lineReader(child.stdout)
  // 'close': the process ended and its output was read to the end (every ACK counted).
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
  const stopped = new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      if (line.startsWith('FAILPOINT ')) resolve(line)
    })
    exited.then((how) => reject(new Error(`${fixture} ended before its failpoint: ${JSON.stringify(how)}`)))
  })
  return { child, acks, exited, stopped, nextLine }
}

/** Lines of a child's stdout, as an async queue. */
function lineReader(stream) {
  const lines = []
  const waiting = []
  readline.createInterface({ input: stream }).on('line', (line) => {
    const next = waiting.shift()
    if (next) next(line)
    else lines.push(line)
  })
  return () => (lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve)))
}

describe('crashes at the dangerous instant (item 15)', () => {
  test('writers SIGKILLed between their temp write and their rename lose no acknowledged update', async () => {
    const root = makeProject()
    const tasks = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(tasks, '{"version":"2.0.0","tasks":[]}\n')
    let next = 1
    const acknowledged = []
    let killedMidWrite = 0
    for (let run = 0; run < 8; run++) {
      // Stop at the rename of the (run % 4 + 1)-th write of this writer: some acknowledged
      // updates come before the kill, and the kill lands with a finished temp file in place.
      const skip = run % 4
      const writer = untilFailpoint('crash-writer', ['t', String(next)], `store::before_rename=${skip}*off->return(stop)`, { cwd: root })
      const line = await writer.stopped
      const pid = /^FAILPOINT store::before_rename (\d+)$/.exec(line)[1]
      const temps = fs.readdirSync(path.dirname(tasks)).filter((n) => n.endsWith('.tmp') && n.includes(`-${pid}-`))
      expect(temps).toHaveLength(1)
      writer.child.kill('SIGKILL')
      expect((await writer.exited).signal).toBe('SIGKILL')
      killedMidWrite++
      acknowledged.push(...writer.acks)
      next += writer.acks.length + 1
      const doc = JSON.parse(fs.readFileSync(tasks, 'utf8'))
      const ids = new Set(doc.tasks.map((t) => t.id))
      for (const seq of acknowledged) expect(ids.has(`t-${seq}`)).toBe(true)
      // The update in flight was never acknowledged and never applied: its rename did not happen.
      expect(ids.has(`t-${next - 1}`)).toBe(false)
    }
    // The next write removes the dead writer's temp file, after its own verified commit.
    await updateWithLock(tasks, (doc) => doc)
    expect(fs.readdirSync(path.dirname(tasks)).filter((n) => n.endsWith('.tmp'))).toEqual([])
    console.log(`crash test: ${killedMidWrite} of 8 kills landed between temp write and rename; ${acknowledged.length} acknowledged updates all present`)
    expect(killedMidWrite).toBe(8)
  }, 120000)
})

/** `seen(name)` resolves once a child's `stderr` has shown `FAILPOINT <name>`; other lines are passed on. */
function failpointsOf(stderr) {
  const hits = new Map()
  const hit = (name) => {
    if (!hits.has(name)) {
      let resolve
      hits.set(name, { promise: new Promise((r) => (resolve = r)), resolve })
    }
    return hits.get(name)
  }
  readline.createInterface({ input: stderr }).on('line', (line) => {
    const failpoint = /^FAILPOINT (\S+) \d+$/.exec(line)
    if (failpoint) hit(failpoint[1]).resolve()
    else process.stderr.write(`${line}\n`)
  })
  return (name) => hit(name).promise
}

describe('a release while a write under the hold is in flight', () => {
  test.each(['releaseLock', 'releaseLockSync', 'exit', 'worker-exit'])('%s waits for the write: its rename cannot land after another process committed', async (release) => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, '{"by":"init"}\n')
    // A's write is held between its lock check and its rename until the test writes to
    // `renameGo`, and the core says when a release starts waiting for that write. B is already
    // waiting in the kernel when A releases, so it would commit at once if the release did not wait.
    const renameGo = path.join(root, 'rename-go.fifo')
    const failpoints = `store::before_rename=return(wait ${renameGo});release::awaits_write=return(announce)`
    const a = spawn(process.execPath, [path.join(FIXTURES, 'fp-release-mid-write.js'), file, release], {
      env: { ...process.env, ...failpointEnv(binary, failpoints) },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const nextLine = lineReader(a.stdout)
    const seen = failpointsOf(a.stderr)
    const aEnded = new Promise((resolve) => a.on('close', (code, signal) => resolve(`A ended (${code ?? signal})`)))
    let b
    try {
      expect(await nextLine()).toBe('LOCKED')
      const bScript = `require(${JSON.stringify(path.join(PACKAGE_ROOT, 'file-lock-integration.js'))}).updateWithLock(${JSON.stringify(file)}, (saw) => ({ by: 'B', saw })).then((v) => console.log(JSON.stringify(v)), (e) => console.log('ERROR', e.code))`
      b = spawn(process.execPath, ['-e', bScript], { stdio: ['ignore', 'pipe', 'inherit'] })
      const bLine = lineReader(b.stdout)
      await untilKernelWaiter(path.join(root, '.flowforge', '.locks', 'tasks.json.lock'), b.pid)
      a.stdin.write('go\n')
      // Where the release waits for the write: releaseLock in JS (its call returns a promise that
      // waits for the library's writes under the hold), the others in the core (blocking their thread).
      const waitsInJs = release === 'releaseLock'
      const coreWaits = seen('release::awaits_write').then(() => 'the core release waits for the write')
      const releaseWaits = waitsInJs ? nextLine().then((line) => `A printed ${line}`) : coreWaits
      const released = nextLine()
      const first = await Promise.race([
        Promise.all([seen('store::before_rename'), releaseWaits]).then(([, waits]) => waits),
        // releaseLock without a wait of its own reaches the core's, which blocks A's event loop.
        ...(waitsInJs ? [coreWaits] : []),
        released.then((line) => `A printed ${line} while its write was held`),
        aEnded,
      ])
      expect(first).toBe(waitsInJs ? 'A printed RELEASING' : 'the core release waits for the write')
      // The write is held at its rename and the release has been issued: the lock is still A's,
      // and neither A's rename nor B's commit has happened.
      expect(await getLockInfo(file)).toMatchObject({ state: 'held', pid: a.pid })
      expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ by: 'init' })
      await fs.promises.writeFile(renameGo, 'go\n')
      expect(await released).toBe('RELEASED')
      // A process or worker that ended cannot tell its update's outcome; B's result below says it landed first.
      if (!release.endsWith('exit')) expect(await nextLine()).toBe('WROTE')
      const bWrote = JSON.parse(await bLine())
      // B's acknowledged update is the file's content, made from A's.
      expect(bWrote).toEqual({ by: 'B', saw: { by: 'A' } })
      expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual(bWrote)
    } finally {
      a.kill('SIGKILL')
      b?.kill('SIGKILL')
    }
  }, 60000)
})

describe('exit cleanup (hole 5)', () => {
  test('an application that handles SIGINT itself and goes on keeps its lock under its in-flight update', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'counter.json')
    const child = spawn(process.execPath, [path.join(FIXTURES, 'fp-update-paused.js'), file], { stdio: ['pipe', 'pipe', 'inherit'] })
    const nextLine = lineReader(child.stdout)
    expect(await nextLine()).toBe('IN UPDATER')
    const before = await getLockInfo(file)
    child.kill('SIGINT')
    expect(await nextLine()).toBe('APP SIGINT')
    const during = await getLockInfo(file)
    expect(during.lockId).toBe(before.lockId)
    expect(during.state).toBe('held')
    child.stdin.write('go\n')
    expect(await nextLine()).toBe('UPDATED 1')
    child.stdin.end()
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ count: 1 })
  })

  test("a worker thread's exit releases only the worker's locks", async () => {
    const root = makeProject()
    const main = path.join(root, '.flowforge', 'tasks.json')
    const worker = path.join(root, '.flowforge', 'active-sessions.json')
    const run = await runFixture('fp-worker-exit', [main, worker])
    expect(run.stderr).toBe('')
    expect(JSON.parse(run.stdout)).toEqual({ workerTookItsLock: true, mainStillHolds: true, workerLockReleased: true })
  })

  // docs/lock-files.md (Exit): the worker's JS never sees the lock and runs no exit listener, so
  // the core releases what the worker's environment took, and cancels its wait, as it is torn down.
  test.each(['acquireLockSync', 'acquireLock'])('a worker thread terminated while it waits in %s leaves no lock held behind it', async (call) => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    const child = spawn(process.execPath, [path.join(FIXTURES, 'worker-terminated-waiting.js'), file, call], { stdio: ['pipe', 'pipe', 'inherit'] })
    try {
      const nextLine = lineReader(child.stdout)
      expect(await nextLine()).toBe('WAITING')
      child.stdin.write('terminate\n')
      expect(await nextLine()).toBe('TERMINATING')
      // A sync wait ends (and the worker with it) at its next look at its JS (within 0.5 s), or
      // when the lock comes: either way no lock may stay held.
      await releaseLock(file, lockId)
      expect(await nextLine()).toBe('TERMINATED')
      // The fixture lives on; the lock must be free all the same (bounded: a leak times out).
      const again = await acquireLock(file, 5000)
      await releaseLock(file, again)
    } finally {
      child.kill('SIGKILL')
    }
  })

  // Node's process.exit() joins every worker thread: one blocked in acquireLockSync must give up
  // its wait (the exit cleanup has released this process's locks), not hold the exit up until it
  // gets the lock or its timeout passes.
  test('process.exit() while a worker thread waits in acquireLockSync ends the process at once', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    const child = spawn(process.execPath, [path.join(FIXTURES, 'worker-terminated-waiting.js'), file, 'acquireLockSync'], { stdio: ['pipe', 'pipe', 'inherit'] })
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
    try {
      const nextLine = lineReader(child.stdout)
      expect(await nextLine()).toBe('WAITING')
      child.stdin.write('exit\n')
      expect(await nextLine()).toBe('EXITING')
      // Before, the exit waited for the worker's 60 s timeout (this test timed out first).
      expect(await exited).toEqual({ code: 0, signal: null })
    } finally {
      child.kill('SIGKILL')
      await releaseLock(file, lockId)
    }
  }, 30000)

  // docs/api.md (FileLockManager): withLock's signal aborts if the lock is lost while fn runs,
  // whichever thread runs it; a worker's loss must not be told to the main thread's JS, nor the
  // main thread's be lost to a listener a worker registered later.
  test("a lock lost in a worker thread aborts the worker's withLock signal, and the main thread's still aborts", async () => {
    const root = makeProject()
    const main = path.join(root, '.flowforge', 'tasks.json')
    const worker = path.join(root, '.flowforge', 'active-sessions.json')
    const lines = []
    await runFixture('lost-in-worker', [main, worker], {
      onLine: (line, child) => {
        lines.push(line)
        if (lines.length === 2) child.kill('SIGKILL')
      },
    })
    expect(lines.sort()).toEqual(['main ELOCKLOST', 'worker ELOCKLOST'])
  }, 30000)

  // The loss is told once, to the watches of that moment: a withLock that re-enters the hold
  // afterwards must still see it, not a signal that never aborts.
  test("a withLock that re-enters a hold already lost gets a signal aborted from the start", async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const manager = new FileLockManager()
    native.setHeartbeatInterval(20)
    try {
      const inner = await manager.withLock(file, async (signal) => {
        fs.rmSync(native.lockKey(file))
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }))
        return manager.withLock(file, async (nested) => nested.reason)
      })
      expect(inner).toMatchObject({ code: 'ELOCKLOST', message: expect.stringContaining('removed or replaced') })
    } finally {
      native.setHeartbeatInterval(HEARTBEAT_INTERVAL)
    }
  })

  test('a queued acquire settles with ELOCKCANCELLED when its queue is drained, instead of hanging', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    const run = await runFixture('fp-cancelled-wait', [file])
    expect(run.stdout.trim()).toBe('SETTLED ELOCKCANCELLED')
    expect((await getLockInfo(file)).lockId).toBe(lockId)
    await releaseLock(file, lockId)
  })
})

describe('where a lock lives (hole 6)', () => {
  test('a file in no project is locked by the same lock whatever the working directory', async () => {
    const loose = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-loose-'))
    fs.chmodSync(loose, 0o755)
    const file = path.join(loose, 'notes.json')
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-cwd-'))
    const { child, exited } = await startFixture('hold-lock', [file], 'LOCKED', { cwd: elsewhere })
    const denied = await acquireLock(file, 0).catch((e) => e)
    expect(denied.code).toBe('ELOCKTIMEOUT')
    expect(fs.existsSync(path.join(loose, '.notes.json.lock'))).toBe(true)
    expect(fs.existsSync(path.join(elsewhere, '.flowforge'))).toBe(false)
    child.kill('SIGKILL')
    await exited
  })
})

describe('"this host" (hole 7)', () => {
  test('a live lock of another machine with the same hostname (another boot id) is respected', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const twin = { ...failpointEnv(binary, 'identity::boot_id=return(another-boot-of-this-name)'), FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' }
    const { child, exited } = await startFixture('hold-lock', [file], 'LOCKED', { env: twin })
    const info = await getLockInfo(file)
    expect(info).toMatchObject({ hostname: os.hostname(), bootId: 'another-boot-of-this-name', state: 'held' })
    const denied = await acquireLock(file, 200).catch((e) => e)
    expect(denied.code).toBe('ELOCKTIMEOUT')
    child.kill('SIGKILL')
    await exited
  })
})

describe('claims between hosts without shared kernel locks (hole 8)', () => {
  const rounds = 500
  ;(isRoot ? test : test.skip)(`two unshare --uts hosts racing ${rounds} times each never overlap`, async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const inside = path.join(root, 'inside')
    const host = (name) => {
      const script = `hostname ${name} && exec "${process.execPath}" "${path.join(FIXTURES, 'fp-race.js')}" "${file}" ${rounds} "${inside}"`
      const child = spawn('unshare', ['--uts', 'sh', '-c', script], {
        // A 1 ms pause between judging the record and writing ours widens the window in which
        // two claimers could both see the lock free.
        env: { ...process.env, ...failpointEnv(binary, 'claim::judged=sleep(1)'), FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' },
        stdio: ['pipe', 'pipe', 'inherit'],
      })
      const nextLine = lineReader(child.stdout)
      const closed = new Promise((resolve) => child.on('close', resolve))
      return { child, nextLine, closed }
    }
    const hosts = [host('race-host-a'), host('race-host-b')]
    for (const h of hosts) expect(await h.nextLine()).toBe('READY')
    for (const h of hosts) h.child.stdin.end('go\n')
    for (const h of hosts) {
      expect(JSON.parse(await h.nextLine())).toEqual({ overlaps: 0, rounds })
      expect(await h.closed).toBe(0)
    }
  }, 300000)
  if (!isRoot) console.log('skipped: the host race needs root (unshare --uts)')

  test("a claim file left by a dead claimer of this host is removed at once; another host's, once older than the stale threshold", () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const claim = path.join(root, '.flowforge', '.locks', 'tasks.json.lock.claim')
    fs.mkdirSync(path.dirname(claim))
    /** One acquire in a process without kernel locks (where claim files are used): 'ACQUIRED' or the error's code. */
    const tryLock = (options) => {
      const script = `require(${JSON.stringify(path.join(PACKAGE_ROOT, 'file-lock'))}).acquireLock(${JSON.stringify(file)}, ${JSON.stringify(options)}).then(() => console.log('ACQUIRED'), (e) => console.log(e.code))`
      return spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' } }).stdout.trim()
    }
    const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
    const deadPid = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' }).stdout.trim()
    // The claim file names its maker: "<hostname> <boot id> <pid>".
    fs.writeFileSync(claim, `${os.hostname()} ${bootId} ${deadPid}\n`)
    expect(tryLock({ timeout: 5000 })).toBe('ACQUIRED')
    expect(fs.existsSync(claim)).toBe(false)
    // Another host's claimer may still be writing its record: respected while fresh...
    fs.writeFileSync(claim, 'other-host.example another-boot 7\n')
    expect(tryLock({ timeout: 300, staleThreshold: 60000 })).toBe('ELOCKTIMEOUT')
    expect(fs.existsSync(claim)).toBe(true)
    // ...and removed once older than the stale threshold.
    const twoMinutesAgo = new Date(Date.now() - 120000)
    fs.utimesSync(claim, twoMinutesAgo, twoMinutesAgo)
    expect(tryLock({ timeout: 5000, staleThreshold: 60000 })).toBe('ACQUIRED')
    expect(fs.existsSync(claim)).toBe(false)
  })
})

describe('lock files removed while a claim is under way, where kernel locks are not shared', () => {
  const startDriver = lockDrivers()
  const NO_KERNEL_LOCKS = { FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' }
  // Two machines of one hostname (each its own boot id) sharing a lock directory but not its
  // kernel locks, as over NFS: only records and claim files keep them apart. A cleanup on one
  // must not remove the lock file that the other is claiming, whether it comes before the
  // claimer took the claim file or while it holds it.
  test.each([
    ['claim::locked', 'its lock file open, its claim not taken yet'],
    ['claim::judged', 'holding the claim, the record judged free, its own not written yet'],
  ])('a cleanup while an acquirer is stopped at %s (%s) leaves one holder', async (point) => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const hostA = untilFailpoint('hold-lock', [file], `identity::boot_id=return(host-a);${point}=1*return(stop)`, { env: NO_KERNEL_LOCKS })
    try {
      await hostA.stopped
      const hostB = await startDriver({ ...NO_KERNEL_LOCKS, ...failpointEnv(binary, 'identity::boot_id=return(host-b)') })
      expect((await hostB.call('cleanup', { root })).ok).toBe(true)
      hostA.child.kill('SIGCONT')
      expect(await hostA.nextLine()).toMatch(/^LOCKED /)
      expect(await hostB.call('acquire', { file, timeout: 300 })).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
    } finally {
      hostA.child.kill('SIGKILL')
      await hostA.exited
    }
  })

  test('a process of another host that exits while an acquirer is stopped at claim::judged leaves one holder', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const hostA = untilFailpoint('hold-lock', [file], 'identity::boot_id=return(host-a);claim::judged=1*return(stop)', { env: NO_KERNEL_LOCKS })
    const hostB = { ...NO_KERNEL_LOCKS, ...failpointEnv(binary, 'identity::boot_id=return(host-b)') }
    const tryLock = async (timeout) => JSON.parse((await runFixture('try-lock', [file, timeout], { env: hostB })).stdout)
    try {
      await hostA.stopped
      // It finds the claim taken and gives up; at its exit it removes the lock files it used that
      // nobody uses.
      expect(await tryLock(100)).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
      hostA.child.kill('SIGCONT')
      expect(await hostA.nextLine()).toMatch(/^LOCKED /)
      expect(await tryLock(300)).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
    } finally {
      hostA.child.kill('SIGKILL')
      await hostA.exited
    }
  })
})

describe('the ticket queue passes a stopped waiter', () => {
  // Its turn comes when the holder gives up the holder's byte: the waiter blocked on that byte is
  // granted it, and looks at the queue again before it takes the kernel lock. Stopped in between
  // (Ctrl-Z, a debugger), it holds the byte with the lock free, as a holder would.
  test('a waiter stopped at the instant it was granted the holder\'s byte, with the lock free, is passed', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const holder = await startFixture('hold-lock', [file, '--until-sigusr2'], 'LOCKED')
    const stopped = untilFailpoint('hold-lock', [file], 'queue::way_granted=1*return(stop)')
    try {
      await untilKernelWaiter(path.join(root, '.flowforge', '.locks', 'tasks.json.lock'), stopped.child.pid)
      holder.child.kill('SIGUSR2')
      await stopped.stopped
      await holder.exited
      expect(JSON.parse((await runFixture('try-lock', [file, 20000])).stdout)).toMatchObject({ ok: true })
    } finally {
      stopped.child.kill('SIGKILL')
      await stopped.exited
    }
  }, 60000)
})

describe('flows in one process (hole 9)', () => {
  test('concurrent unrelated updates of a/tasks.json and b/tasks.json both complete', async () => {
    const root = makeProject()
    fs.mkdirSync(path.join(root, 'a'))
    fs.mkdirSync(path.join(root, 'b'))
    const a = path.join(root, 'a', 'tasks.json')
    const b = path.join(root, 'b', 'tasks.json')
    const results = await Promise.all([updateWithLock(a, () => ({ which: 'a' })), updateWithLock(b, () => ({ which: 'b' }))])
    expect(results).toEqual([{ which: 'a' }, { which: 'b' }])
    expect(JSON.parse(fs.readFileSync(a, 'utf8'))).toEqual({ which: 'a' })
    expect(JSON.parse(fs.readFileSync(b, 'utf8'))).toEqual({ which: 'b' })
  })

  test('a raw acquireLock holder writes with updateWithLock({ lockId }) instead of waiting on itself', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    try {
      const next = await updateWithLock(file, () => ({ n: 1 }), { lockId, timeout: 0 })
      expect(next).toEqual({ n: 1 })
      // Without it the call queues behind the raw hold, and its timeout says what to do.
      const err = await updateWithLock(file, () => ({ n: 2 }), { timeout: 50 }).catch((e) => e)
      expect(err.code).toBe('ELOCKTIMEOUT')
      expect(err.message).toContain('held by this process')
      expect(err.message).toContain('lockId')
    } finally {
      await releaseLock(file, lockId)
    }
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ n: 1 })
  })
})

describe('exec keeps the lock as long as its command (hole 10)', () => {
  test('when the wrapper is SIGKILLed, the command still holds the lock until it ends', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    // The command waits on a FIFO, not on stdin: Node closes a dead child's stdin pipe.
    const gate = path.join(root, 'gate')
    expect(spawnSync('mkfifo', [gate]).status).toBe(0)
    const script = `echo "CHILD $FLOWFORGE_LOCK_FD"; read line < "${gate}"`
    const wrapper = spawn(process.execPath, [BIN, 'exec', file, '--', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    const nextLine = lineReader(wrapper.stdout)
    expect(await nextLine()).toBe('CHILD 3')
    const wrapperExited = new Promise((resolve) => wrapper.on('exit', (code, signal) => resolve(signal)))
    wrapper.kill('SIGKILL')
    expect(await wrapperExited).toBe('SIGKILL')
    // The wrapper is gone; its command runs on, and nobody else may take the lock meanwhile.
    expect(await isLocked(file)).toBe(true)
    expect((await acquireLock(file, 0).catch((e) => e)).code).toBe('ELOCKTIMEOUT')
    fs.writeFileSync(gate, 'finish\n')
    // Once the command has ended the lock is free again (its record, the dead wrapper's, is stale).
    const lockId = await acquireLock(file, 30000)
    await releaseLock(file, lockId)
  })
})
