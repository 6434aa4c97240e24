'use strict'
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const fileLock = require('../file-lock')
const { acquireLock, releaseLock, isLocked, getLockInfo, cleanupStaleLocks, listLocks } = fileLock
const { makeProject, runFixture, startFixture, NOBODY, testAsNobody, readablePackage, expectError, linkPackage } = require('./helpers')
const { untilFile, untilKernelWaiter, makeFifo } = require('./fixtures/wait-for')
const native = require('../native.js')

const lockPathOf = (root, name) => path.join(root, '.flowforge', '.locks', `${name}.lock`)

function writeRecord(root, name, fields) {
  fs.mkdirSync(path.join(root, '.flowforge', '.locks'), { recursive: true })
  const record = {
    lockId: 'planted',
    pid: 999999,
    hostname: os.hostname(),
    username: 'someone',
    file: path.join(root, '.flowforge', name),
    acquiredAt: Date.now(),
    heartbeat: Date.now(),
    ...fields,
  }
  fs.writeFileSync(lockPathOf(root, name), JSON.stringify(record))
  return record
}

describe('module surface', () => {
  test('exports FlowForge names and constants', () => {
    for (const name of ['acquireLock', 'releaseLock', 'isLocked', 'getLockInfo', 'cleanupStaleLocks']) {
      expect(typeof fileLock[name]).toBe('function')
    }
    expect(fileLock.DEFAULT_TIMEOUT).toBe(30000)
    expect(fileLock.HEARTBEAT_INTERVAL).toBe(5000)
    expect(fileLock.STALE_THRESHOLD).toBe(30000)
    expect(require('flowforge-lock/file-lock')).toBe(fileLock)
  })
})

describe('lock files and records', () => {
  test('live in <root>/.flowforge/.locks/<basename>.lock with a full record, emptied on release', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const before = Date.now()
    const lockId = await acquireLock(file)
    const after = Date.now()
    expect(lockId).toMatch(/^[0-9a-f]{32}$/)
    const onDisk = JSON.parse(fs.readFileSync(lockPathOf(root, 'tasks.json'), 'utf8'))
    expect(onDisk).toMatchObject({
      lockId,
      pid: process.pid,
      hostname: os.hostname(),
      username: os.userInfo().username,
      holder: os.userInfo().username,
      file,
    })
    expect(typeof onDisk.processStart).toBe('number')
    expect(onDisk.acquiredAt).toBeGreaterThanOrEqual(before)
    expect(onDisk.acquiredAt).toBeLessThanOrEqual(after)
    expect(onDisk.heartbeat).toBe(onDisk.acquiredAt)
    expect(await isLocked(file)).toBe(true)
    const info = await getLockInfo(file)
    expect(info).toMatchObject({ lockId, state: 'held', heldByThisProcess: true, lockFile: lockPathOf(root, 'tasks.json'), mode: 'exclusive', readers: [], staleReason: null })
    expect([typeof info.heldForMs, typeof info.heartbeatAgeMs]).toEqual(['number', 'number'])
    expect(await releaseLock(file, lockId)).toBe(true)
    // Kept, blanked, for the next acquirer; removed when this process exits (see "process exit").
    expect(fs.readFileSync(lockPathOf(root, 'tasks.json'), 'utf8')).toMatch(/^ +\n?$/)
    expect(await isLocked(file)).toBe(false)
    expect(await getLockInfo(file)).toBeNull()
    expect(listLocks({ root }).map((l) => l.state)).toEqual(['free'])
  })

  test('relative paths resolve against the cwd and the nearest .flowforge root; the file need not exist', async () => {
    const root = makeProject()
    const sub = path.join(root, '.flowforge', 'billing')
    fs.mkdirSync(sub)
    const cwd = process.cwd()
    process.chdir(sub)
    try {
      const lockId = await acquireLock('time-tracking.json')
      expect(fs.existsSync(lockPathOf(root, 'time-tracking.json'))).toBe(true)
      expect((await getLockInfo('time-tracking.json')).file).toBe(path.join(sub, 'time-tracking.json'))
      await releaseLock('time-tracking.json', lockId)
    } finally {
      process.chdir(cwd)
    }
  })

  test('FLOWFORGE_ROOT_OVERRIDE decides the root', async () => {
    const root = makeProject()
    const elsewhere = makeProject()
    const result = await runFixture('try-lock', [path.join(elsewhere, 'data.json'), 1000], {
      env: { FLOWFORGE_ROOT_OVERRIDE: root },
    })
    expect(JSON.parse(result.stdout).ok).toBe(true)
    expect(fs.existsSync(path.join(root, '.flowforge', '.locks'))).toBe(true)
    expect(fs.existsSync(path.join(elsewhere, '.flowforge', '.locks'))).toBe(false)
  })

  test('the heartbeat refreshes held records in place', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'active-sessions.json')
    native.setHeartbeatInterval(50)
    try {
      const lockId = await acquireLock(file)
      const first = JSON.parse(fs.readFileSync(lockPathOf(root, 'active-sessions.json'), 'utf8'))
      // The next heartbeat is a write to the lock file: wait for the record it leaves.
      const later = JSON.parse(
        await untilFile(lockPathOf(root, 'active-sessions.json'), (text) => {
          try {
            return JSON.parse(text).heartbeat !== first.heartbeat
          } catch {
            return false // read while the heartbeat was writing it: the next event re-reads
          }
        }),
      )
      expect(later.lockId).toBe(lockId)
      expect(later.heartbeat).toBeGreaterThan(first.heartbeat)
      expect(later.acquiredAt).toBe(first.acquiredAt)
      await releaseLock(file, lockId)
    } finally {
      native.setHeartbeatInterval(fileLock.HEARTBEAT_INTERVAL)
    }
  })
})

describe('exclusion between processes', () => {
  test('8 processes x 200 locked increments end at exactly 1600; without the lock updates are lost', async () => {
    const root = makeProject()
    const run = async (mode) => {
      const file = path.join(root, '.flowforge', `counter-${mode}.json`)
      fs.writeFileSync(file, JSON.stringify({ count: 0 }))
      // Started together once all 8 are ready, so that they really overlap.
      const workers = await Promise.all(
        Array.from({ length: 8 }, () => startFixture('counter-worker', [file, 200, mode, '--start-on-sigusr2'], 'READY')),
      )
      for (const w of workers) w.child.kill('SIGUSR2')
      const results = await Promise.all(workers.map((w) => w.exited))
      for (const r of results) expect(r).toMatchObject({ code: 0, stderr: '' })
      return JSON.parse(fs.readFileSync(file, 'utf8')).count
    }
    expect(await run('lock')).toBe(1600)
    // The same workers without the lock lose updates, so the 1600 above is not luck.
    expect(await run('nolock')).toBeLessThan(1600)
    // The last process to exit removed the lock file; any waiter that had locked the removed
    // inode would have started again: no lock file is left behind.
    expect(fs.readdirSync(path.join(root, '.flowforge', '.locks'))).toEqual([])
  }, 120000)

  // How fast the handoff is: `npm run bench`, scenario F.
  test("a SIGKILLed holder's lock goes to the waiter blocked on it", async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const { child, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    expect(await isLocked(file)).toBe(true)
    const waiting = acquireLock(file, 30000)
    await untilKernelWaiter(lockPathOf(root, 'tasks.json'), process.pid)
    child.kill('SIGKILL')
    const lockId = await waiting
    expect((await exited).signal).toBe('SIGKILL')
    expect((await getLockInfo(file)).lockId).toBe(lockId)
    await releaseLock(file, lockId)
  })

  // The handoff time and the CPU a wait costs are measured by `npm run bench` (scenarios C and F).
  test('a waiter blocks in the kernel (no polling loop) and takes the lock once another process releases it', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const holder = await startFixture('hold-lock', [file, '--until-sigusr2'], 'LOCKED')
    const waiting = acquireLock(file, 30000)
    await untilKernelWaiter(lockPathOf(root, 'tasks.json'), process.pid)
    holder.child.kill('SIGUSR2')
    const lockId = await waiting
    const acquiredAt = Date.now()
    await releaseLock(file, lockId)
    const releasedAt = Number(/RELEASED (\d+)/.exec((await holder.exited).stdout)[1])
    expect(acquiredAt).toBeGreaterThanOrEqual(releasedAt)
  })

  test('waiters inside one process are served first come, first served', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const first = await acquireLock(file)
    const order = []
    // acquireLock joins the queue on the caller's thread before it returns: all ten are queued,
    // in call order, before the release below.
    const waiters = Array.from({ length: 10 }, (_, i) =>
      acquireLock(file, 10000).then(async (id) => {
        order.push(i)
        await new Promise((r) => setTimeout(r, 2))
        await releaseLock(file, id)
      }),
    )
    await releaseLock(file, first)
    await Promise.all(waiters)
    expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  })
})

describe('staleness', () => {
  test('a foreign-host record with a fresh heartbeat is respected; an old one is taken over', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    writeRecord(root, 'tasks.json', { hostname: 'other-host.example', heartbeat: Date.now() })
    expect(await isLocked(file)).toBe(true)
    const denied = await acquireLock(file, 300).catch((e) => e)
    expect(denied.code).toBe('ELOCKTIMEOUT')
    expect(denied.message).toContain('other-host.example')
    expect(JSON.parse(fs.readFileSync(lockPathOf(root, 'tasks.json'), 'utf8')).lockId).toBe('planted')
    expect((await cleanupStaleLocks({ root })).kept).toHaveLength(1)

    writeRecord(root, 'tasks.json', { hostname: 'other-host.example', heartbeat: Date.now() - 31000 })
    expect(await isLocked(file)).toBe(false)
    expect((await getLockInfo(file)).staleReason).toMatch(/no heartbeat from host other-host.example/)
    const before = native.getLockMetrics().staleLocksRecovered
    const lockId = await acquireLock(file, 300)
    expect(native.getLockMetrics().staleLocksRecovered).toBe(before + 1)
    await releaseLock(file, lockId)
  })

  test('the stale threshold can be set per call', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    writeRecord(root, 'tasks.json', { hostname: 'other-host.example', heartbeat: Date.now() - 5000 })
    expect(await isLocked(file)).toBe(true)
    expect(await isLocked(file, { staleThreshold: 1000 })).toBe(false)
    const lockId = await acquireLock(file, { timeout: 100, staleThreshold: 1000 })
    await releaseLock(file, lockId)
  })

  test('a same-host record whose pid now belongs to another process (pid reuse) is stale', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    writeRecord(root, 'tasks.json', { pid: process.pid, processStart: 1000 })
    const info = await getLockInfo(file)
    expect(info.state).toBe('stale')
    expect(info.staleReason).toMatch(/reused/)
    expect(await isLocked(file)).toBe(false)
    const lockId = await acquireLock(file, 0)
    await releaseLock(file, lockId)
  })

  test('cleanupStaleLocks removes dead holders, keeps live ones, and works from `node -e` in a project root', async () => {
    const root = makeProject()
    writeRecord(root, 'time-tracking.json', { pid: 999999 })
    fs.writeFileSync(lockPathOf(root, 'corrupt.json'), '{"pid": 12')
    const { child, exited } = await startFixture('hold-lock', [path.join(root, '.flowforge', 'tasks.json')], 'LOCKED')
    // As installed in a FlowForge checkout: node_modules/flowforge-lock.
    linkPackage(root)
    const { spawnSync } = require('node:child_process')
    const run = spawnSync(
      process.execPath,
      ['-e', "require('flowforge-lock/file-lock').cleanupStaleLocks().then(r => console.log(JSON.stringify(r)))"],
      { cwd: root, encoding: 'utf8' },
    )
    expect(run.status).toBe(0)
    const report = JSON.parse(run.stdout)
    expect(report.removed.map((r) => path.basename(r.lockFile)).sort()).toEqual(['corrupt.json.lock', 'time-tracking.json.lock'])
    expect(report.kept.map((r) => path.basename(r.lockFile))).toEqual(['tasks.json.lock'])
    expect(report.removed.find((r) => r.lockFile.endsWith('time-tracking.json.lock')).reason).toMatch(/999999 is gone/)
    child.kill('SIGKILL')
    await exited
    const after = await cleanupStaleLocks({ root })
    expect(after.removed.map((r) => path.basename(r.lockFile))).toEqual(['tasks.json.lock'])
    expect(fs.readdirSync(path.join(root, '.flowforge', '.locks'))).toEqual([])
  })
})

describe('release and timeout', () => {
  test('a wrong or old lockId does not release; releasing twice says false', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const old = await acquireLock(file)
    expect(await releaseLock(file, old)).toBe(true)
    const current = await acquireLock(file)
    for (const wrong of [old, 'not-a-lock-id']) {
      const err = await releaseLock(file, wrong).catch((e) => e)
      expectError(err, Error, 'ELOCKMISMATCH')
      expect(err.message).toContain(file)
      expect(await isLocked(file)).toBe(true)
    }
    expect(await releaseLock(file, current)).toBe(true)
    expect(await releaseLock(file, current)).toBe(false)
  })

  test("another process's lock cannot be released with a guessed id", async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const { child, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    const err = await releaseLock(file, 'guess').catch((e) => e)
    expect(err.code).toBe('ELOCKMISMATCH')
    expect(err.message).toContain(`pid ${child.pid}`)
    expect(await isLocked(file)).toBe(true)
    child.kill('SIGKILL')
    await exited
  })

  test('a timeout rejects at the deadline naming the file and the holder; timeout 0 is one try', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const { child, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    const started = Date.now()
    const err = await acquireLock(file, 400).catch((e) => e)
    const waited = Date.now() - started
    expectError(err, Error, 'ELOCKTIMEOUT')
    expect(err.message).toContain('timeout')
    expect(err.message).toContain(file)
    expect(err.message).toContain(`pid ${child.pid}`)
    expect(err.message).toContain(`user ${os.userInfo().username}`)
    expect(err.message).toContain(`host ${os.hostname()}`)
    expect(err.message).toMatch(/for \d+\.\d s/)
    expect(err.message).toContain('after 400 ms')
    // Order, not speed: the rejection did not come before the deadline (load only delays it).
    expect(waited).toBeGreaterThanOrEqual(390)
    const once = await acquireLock(file, 0).catch((e) => e)
    expect(once.code).toBe('ELOCKTIMEOUT')
    expect(native.getLockMetrics().totalTimeouts).toBeGreaterThanOrEqual(2)
    child.kill('SIGKILL')
    await exited
  })

  test('two paths with the same basename share one lock: an unrelated second flow queues behind the first', async () => {
    const root = makeProject()
    fs.mkdirSync(path.join(root, 'a'))
    fs.mkdirSync(path.join(root, 'b'))
    const a = path.join(root, 'a', 'current.json')
    const b = path.join(root, 'b', 'current.json')
    const first = await acquireLock(a)
    const order = []
    const second = acquireLock(b, 30000).then((id) => {
      order.push('b acquired')
      return id
    })
    order.push('a releasing')
    await releaseLock(a, first)
    const id = await second
    expect(order).toEqual(['a releasing', 'b acquired'])
    expect((await getLockInfo(b)).file).toBe(b)
    await releaseLock(b, id)
  })
})

describe('process exit', () => {
  test.each(['SIGINT', 'SIGTERM'])('%s cleans the lock file and still ends the process by the signal', async (signal) => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const { child, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    expect(fs.existsSync(lockPathOf(root, 'tasks.json'))).toBe(true)
    child.kill(signal)
    const result = await exited
    expect(result.signal).toBe(signal)
    expect(fs.existsSync(lockPathOf(root, 'tasks.json'))).toBe(false)
  })

  test('a normal exit while holding cleans the lock file', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const { spawnSync } = require('node:child_process')
    const run = spawnSync(
      process.execPath,
      ['-e', `require(${JSON.stringify(path.resolve(__dirname, '../file-lock'))}).acquireLock(${JSON.stringify(file)}).then(() => process.exit(0))`],
      { encoding: 'utf8' },
    )
    expect(run.status).toBe(0)
    expect(fs.existsSync(lockPathOf(root, 'tasks.json'))).toBe(false)
  })
})

describe('security', () => {
  test('a planted symlink at the lock path is refused and its target never written', async () => {
    const root = makeProject()
    fs.mkdirSync(path.join(root, '.flowforge', '.locks'))
    const victim = path.join(root, 'victim.txt')
    fs.writeFileSync(victim, 'precious')
    fs.symlinkSync(victim, lockPathOf(root, 'tasks.json'))
    const err = await acquireLock(path.join(root, '.flowforge', 'tasks.json'), 100).catch((e) => e)
    expect(err.code).toBe('ELOCKSYMLINK')
    expect(err.message).toContain('tasks.json.lock')
    expect(fs.readFileSync(victim, 'utf8')).toBe('precious')
  })

  test.each([
    ['a directory', (lockFile) => fs.mkdirSync(lockFile)],
    ['a FIFO', (lockFile) => makeFifo(path.dirname(lockFile), path.basename(lockFile))],
  ])('a lock path that is %s is refused with ELOCKFILEUNSAFE naming it and saying to remove it; cleanup and status name it too', async (_, plant) => {
    const root = makeProject()
    fs.mkdirSync(path.join(root, '.flowforge', '.locks'))
    const lockFile = lockPathOf(root, 'tasks.json')
    plant(lockFile)
    const err = await acquireLock(path.join(root, '.flowforge', 'tasks.json'), 100).catch((e) => e)
    expect(err.code).toBe('ELOCKFILEUNSAFE')
    expect(err.message).toContain(lockFile)
    expect(err.message).toContain('Remove it')
    const { kept } = await cleanupStaleLocks({ root })
    expect(kept).toEqual([expect.objectContaining({ lockFile, state: 'unsafe', reason: expect.stringContaining('Remove it') })])
    expect(listLocks({ root })).toEqual([expect.objectContaining({ lockFile, state: 'unsafe', code: 'ELOCKFILEUNSAFE' })])
  })

  test('a hard link at the lock path is refused (ELOCKFILEUNSAFE) at once, and the linked file is never written', async () => {
    const root = makeProject()
    const locks = path.join(root, '.flowforge', '.locks')
    fs.mkdirSync(locks)
    const victim = path.join(root, 'victim.txt')
    fs.writeFileSync(victim, 'precious')
    fs.linkSync(victim, lockPathOf(root, 'sessions.json'))
    const err = await acquireLock(path.join(root, '.flowforge', 'sessions.json'), 100).catch((e) => e)
    expect({ code: err.code, message: err.message }).toEqual({ code: 'ELOCKFILEUNSAFE', message: expect.stringContaining('sessions.json.lock') })
    expect(fs.readFileSync(victim, 'utf8')).toBe('precious')
  })

  test('a world-writable lock dir without the sticky bit is refused; the lock dir is created without world-write', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    await releaseLock(file, lockId)
    const locks = path.join(root, '.flowforge', '.locks')
    expect(fs.statSync(locks).mode & 0o002).toBe(0)
    fs.chmodSync(locks, 0o777)
    const err = await acquireLock(file, 100).catch((e) => e)
    expect(err.code).toBe('ELOCKDIRUNSAFE')
    expect(err.message).toContain(locks)
    fs.chmodSync(locks, 0o1777)
    await releaseLock(file, await acquireLock(file, 100))
  })

  testAsNobody("another user cannot take, release or clean up a live lock (run as nobody)", async () => {
    const root = makeProject()
    const locks = path.join(root, '.flowforge', '.locks')
    fs.mkdirSync(locks, { mode: 0o1777 })
    fs.chmodSync(locks, 0o1777)
    const file = path.join(root, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    const script = `
      const fl = require(${JSON.stringify(path.join(readablePackage(), 'file-lock'))});
      (async () => {
        const out = { uid: process.getuid() };
        out.acquire = await fl.acquireLock(${JSON.stringify(file)}, 200).then(() => 'ok', (e) => e.code);
        out.release = await fl.releaseLock(${JSON.stringify(file)}, 'guess').then(String, (e) => e.code);
        out.cleanup = (await fl.cleanupStaleLocks({ root: ${JSON.stringify(root)} })).removed.length;
        console.log(JSON.stringify(out));
      })();`
    const { spawnSync } = require('node:child_process')
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', ...NOBODY })
    expect(run.stderr).toBe('')
    expect(JSON.parse(run.stdout)).toEqual({ uid: 65534, acquire: 'ELOCKTIMEOUT', release: 'ELOCKMISMATCH', cleanup: 0 })
    expect((await getLockInfo(file)).lockId).toBe(lockId)
    await releaseLock(file, lockId)
  })
  testAsNobody("another user's stale lock file in a sticky lock dir is not hijacked: clear EACCES (run as nobody)", async () => {
    const root = makeProject()
    const locks = path.join(root, '.flowforge', '.locks')
    fs.mkdirSync(locks)
    fs.chmodSync(locks, 0o1777)
    const stale = writeRecord(root, 'tasks.json', { pid: 999999 })
    fs.chmodSync(lockPathOf(root, 'tasks.json'), 0o644)
    const before = fs.readFileSync(lockPathOf(root, 'tasks.json'), 'utf8')
    const script = `require(${JSON.stringify(path.join(readablePackage(), 'file-lock'))})
      .acquireLock(${JSON.stringify(path.join(root, '.flowforge', 'tasks.json'))}, 500)
      .then(() => console.log('acquired'), (e) => console.log(process.getuid() + ' ' + e.code + ' ' + e.message))`
    const { spawnSync } = require('node:child_process')
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', ...NOBODY })
    expect(run.stdout).toMatch(/^65534 EACCES .*tasks\.json\.lock/)
    expect(run.stdout).toContain('owned by another user')
    expect(fs.readFileSync(lockPathOf(root, 'tasks.json'), 'utf8')).toBe(before)
    expect(JSON.parse(before).lockId).toBe(stale.lockId)
    // Its owner (root here) takes the stale lock over as usual.
    const lockId = await acquireLock(path.join(root, '.flowforge', 'tasks.json'), 500)
    await releaseLock(path.join(root, '.flowforge', 'tasks.json'), lockId)
  })
  testAsNobody("a cleanup that may not remove another user's stale files in a sticky lock dir says so and lists them as kept (run as nobody)", async () => {
    const root = makeProject()
    const locks = path.join(root, '.flowforge', '.locks')
    fs.mkdirSync(locks)
    fs.chmodSync(locks, 0o1777)
    writeRecord(root, 'tasks.json', { pid: 999999 })
    const reader = `${lockPathOf(root, 'tasks.json')}.r-999998-0`
    fs.writeFileSync(reader, fs.readFileSync(lockPathOf(root, 'tasks.json')))
    for (const file of [lockPathOf(root, 'tasks.json'), reader]) fs.chmodSync(file, 0o644)
    const script = `require(${JSON.stringify(path.join(readablePackage(), 'file-lock'))})
      .cleanupStaleLocks({ root: ${JSON.stringify(root)} })
      .then((report) => console.log(JSON.stringify({ uid: process.getuid(), ...report })))`
    const { spawnSync } = require('node:child_process')
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', ...NOBODY })
    expect(run.stderr).toBe('')
    const report = JSON.parse(run.stdout)
    expect(report.uid).toBe(65534)
    // Both files are still there: the report must not say they were removed.
    expect(fs.existsSync(lockPathOf(root, 'tasks.json')) && fs.existsSync(reader)).toBe(true)
    expect(report.removed).toEqual([])
    expect(report.kept.map((entry) => entry.readerFile ?? entry.lockFile).sort()).toEqual([lockPathOf(root, 'tasks.json'), reader].sort())
    for (const entry of report.kept) expect(entry.reason).toMatch(/is gone; not removed: EPERM: .*Only its owner \(or root\) may remove it/)
    // Their owner (root here) removes them.
    expect((await cleanupStaleLocks({ root })).removed).toHaveLength(2)
    expect(fs.existsSync(lockPathOf(root, 'tasks.json')) || fs.existsSync(reader)).toBe(false)
  })
})

describe('bad input', () => {
  const cases = [
    ['a number path', () => acquireLock(42), TypeError, 'ERR_INVALID_ARG_TYPE', /"filePath" argument must be of type string.*number \(42\)/],
    ['an undefined path', () => acquireLock(), TypeError, 'ERR_INVALID_ARG_TYPE', /Received undefined/],
    ['an empty path', () => acquireLock(''), Error, 'ERR_INVALID_ARG_VALUE', /non-empty/],
    ['a NUL byte', () => acquireLock('tasks\0.json'), Error, 'ERR_INVALID_ARG_VALUE', /null bytes/],
    ['a negative timeout', () => acquireLock('tasks.json', -1), RangeError, 'ERR_OUT_OF_RANGE', /"timeout" is out of range/],
    ['a NaN timeout', () => acquireLock('tasks.json', NaN), RangeError, 'ERR_OUT_OF_RANGE', /NaN/],
    ['a string timeout', () => acquireLock('tasks.json', '100'), TypeError, 'ERR_INVALID_ARG_TYPE', /"timeout"/],
    ['a non-string lockId', () => releaseLock('tasks.json', 7), TypeError, 'ERR_INVALID_ARG_TYPE', /"lockId"/],
    ['a directory', () => acquireLock(os.tmpdir()), Error, 'EISDIR', /is a directory/],
  ]
  test.each(cases)('%s is rejected with its code', async (_, call, Kind, code, message) => {
    const err = await call().catch((e) => e)
    expectError(err, Kind, code)
    expect(err.message).toMatch(message)
  })

  testAsNobody('an unwritable project dir gives the OS code and a message naming the lock dir (run as nobody)', async () => {
    const root = makeProject()
    const script = `require(${JSON.stringify(path.join(readablePackage(), 'file-lock'))})
      .acquireLock(${JSON.stringify(path.join(root, '.flowforge', 'tasks.json'))}, 100)
      .then(() => console.log('acquired'), (e) => console.log(e.code + ' ' + e.message))`
    const { spawnSync } = require('node:child_process')
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', ...NOBODY })
    expect(run.stdout).toMatch(/^EACCES .*\.flowforge\/\.locks/)
    expect(fs.existsSync(path.join(root, '.flowforge', '.locks'))).toBe(false)
  })

  // The create fails with EACCES (the directory is root's); the read-only retry meant for another user's lock file
  // then finds none: the caller must see the EACCES (CLI exit 77), not that retry's ENOENT.
  testAsNobody('a lock dir this user cannot write, with no lock file yet, gives EACCES naming the lock file (run as nobody)', async () => {
    const root = makeProject()
    fs.mkdirSync(path.join(root, '.flowforge', '.locks'), { mode: 0o755 })
    const script = `require(${JSON.stringify(path.join(readablePackage(), 'file-lock'))})
      .acquireLock(${JSON.stringify(path.join(root, '.flowforge', 'tasks.json'))}, 100)
      .then(() => console.log('acquired'), (e) => console.log(e.code + ' ' + e.message))`
    const { spawnSync } = require('node:child_process')
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', ...NOBODY })
    expect(run.stdout).toMatch(/^EACCES .*tasks\.json\.lock/)
  })
})
