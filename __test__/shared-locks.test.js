'use strict'
// Read/write locks across processes (issue 12, item 4): `acquireLock(file, { mode: 'shared' })`
// and FileLockManager.withReadLock. Real processes on real files; every wait is on an event the
// test can see (a line on a child's stdout, a waiter listed as blocked in /proc/locks), never a
// sleep, and the assertions are about order and outcome.

const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { spawn, spawnSync } = require('node:child_process')
const { makeProject, PACKAGE_ROOT } = require('./helpers')
const { untilAnyKernelWaiter } = require('./fixtures/wait-for.js')
const { startRedis } = require('./redis-server')
const { startEtcd } = require('./etcd-server')
const fileLock = require('../file-lock')
const native = require('../native')
const FileLockManager = require('../FileLockManager')

const { acquireLock, releaseLock, acquireLockSync, releaseLockSync, getLockInfo, listLocks, cleanupStaleLocks, updateWithLock, configure } = fileLock
const FIXTURE = path.join(__dirname, 'fixtures', 'rw-holder.js')

/** A child running rw-holder.js: `next(prefix)` resolves to its next stdout line starting with `prefix`. */
function child(args) {
  const proc = spawn(process.execPath, [FIXTURE, ...args.map(String)], { stdio: ['pipe', 'pipe', 'pipe'] })
  const lines = []
  const waiting = []
  let stderr = ''
  proc.stderr.on('data', (chunk) => (stderr += chunk))
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    lines.push(line)
    for (const w of [...waiting]) {
      const at = lines.findIndex((l) => l.startsWith(w.prefix))
      if (at >= 0) {
        waiting.splice(waiting.indexOf(w), 1)
        w.resolve(lines.splice(at, 1)[0])
      }
    }
  })
  const closed = new Promise((resolve) => proc.on('close', (code, signal) => resolve({ code, signal, stderr })))
  const next = (prefix) =>
    new Promise((resolve, reject) => {
      const at = lines.findIndex((l) => l.startsWith(prefix))
      if (at >= 0) return resolve(lines.splice(at, 1)[0])
      waiting.push({ prefix, resolve })
      closed.then((how) => reject(new Error(`rw-holder ${args.join(' ')} ended before "${prefix}": ${JSON.stringify(how)}; lines ${JSON.stringify(lines)}`)))
    })
  const release = async () => {
    proc.stdin.write('release\n')
    await next('RELEASED')
    return closed
  }
  return { proc, next, release, closed }
}

/** Starts a holder and resolves once it holds the lock. */
async function holder(file, mode, log) {
  const c = child(['hold', file, mode, log])
  c.lockId = (await c.next('HOLDING ')).split(' ')[1]
  return c
}

/** The enter/exit lines of a log, checked: no exclusive interval overlaps any other. Returns the most holders seen at once. */
function checkIntervals(logFile) {
  const active = new Map()
  let most = 0
  const events = fs.readFileSync(logFile, 'utf8').trim().split('\n')
  for (const line of events) {
    const [what, mode, pid] = line.split(' ')
    if (what === 'enter') {
      const modes = [...active.values()]
      if (mode === 'exclusive' && modes.length > 0) throw new Error(`writer ${pid} entered beside ${modes.join(', ')}: ${line}`)
      if (mode === 'shared' && modes.includes('exclusive')) throw new Error(`reader ${pid} entered beside a writer: ${line}`)
      active.set(pid, mode)
      most = Math.max(most, active.size)
    } else {
      active.delete(pid)
    }
  }
  expect(active.size).toBe(0)
  return { events, most }
}

function setup(name = 'tasks.json') {
  const root = makeProject('ffl-shared-')
  const file = path.join(root, '.flowforge', name)
  fs.writeFileSync(file, '{"tasks":[]}\n')
  const lockFile = path.join(root, '.flowforge', '.locks', `${name}.lock`)
  return { root, file, lockFile, log: path.join(root, 'holds.log') }
}

const readerFiles = (root) => fs.readdirSync(path.join(root, '.flowforge', '.locks')).filter((n) => n.includes('.lock.r-'))

describe('shared locks across processes', () => {
  test('N readers hold at once; status, listLocks and getLockInfo list every reader; a writer waits for all of them', async () => {
    const { root, file, lockFile, log } = setup()
    const readers = []
    for (let i = 0; i < 4; i++) readers.push(await holder(file, 'shared', log))
    // All four print HOLDING before any was told to release: they hold at the same time.
    const info = await getLockInfo(file)
    expect(info).toMatchObject({ state: 'held', mode: 'shared', heldByThisProcess: false })
    expect(info.readers.map((r) => r.pid).sort()).toEqual(readers.map((r) => r.proc.pid).sort())
    expect(info.readers.every((r) => r.state === 'held' && r.mode === 'shared' && r.readerFile.startsWith(`${lockFile}.r-`))).toBe(true)
    expect(new Set(info.readers.map((r) => r.lockId))).toEqual(new Set(readers.map((r) => r.lockId)))
    const listed = listLocks({ root }).find((l) => l.lockFile === lockFile)
    expect(listed.readers).toHaveLength(4)
    const status = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js'), 'status', '--json', root], { encoding: 'utf8' })
    expect(status.status).toBe(0)
    const rows = JSON.parse(status.stdout).locks.filter((r) => r.lockFile === lockFile)
    expect(rows.map((r) => [r.state, r.mode])).toEqual(Array(4).fill(['held', 'shared']))
    expect(rows.map((r) => r.pid).sort()).toEqual(readers.map((r) => r.proc.pid).sort())
    const table = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js'), 'status', root], { encoding: 'utf8' })
    for (const r of readers) expect(table.stdout).toMatch(new RegExp(`held\\s+${r.proc.pid}\\s+shared`))

    // A writer queues behind the four; it gets the lock only once the last one released.
    const writer = child(['hold', file, 'exclusive', log])
    await writer.next('QUEUED')
    await untilAnyKernelWaiter(lockFile)
    for (const r of readers) await r.release()
    await writer.next('HOLDING')
    expect(await getLockInfo(file)).toMatchObject({ mode: 'exclusive', pid: writer.proc.pid, readers: [] })
    await writer.release()
    const { events, most } = checkIntervals(log)
    expect(most).toBe(4)
    expect(events[events.length - 2]).toBe(`enter exclusive ${writer.proc.pid}`)
    expect(readerFiles(root)).toEqual([])
  })

  test('a reader is not let in beside a writer', async () => {
    const { file, lockFile, log } = setup()
    const writer = await holder(file, 'exclusive', log)
    const reader = child(['hold', file, 'shared', log, '--try-first'])
    expect(await reader.next('TRY ')).toBe('TRY ELOCKTIMEOUT')
    await reader.next('QUEUED')
    await untilAnyKernelWaiter(lockFile)
    await writer.release()
    await reader.next('HOLDING')
    await reader.release()
    checkIntervals(log)
  })

  test('writer preference: a reader that arrives after a writer began to wait gets the lock after that writer', async () => {
    const { file, lockFile, log } = setup()
    const first = await holder(file, 'shared', log)
    const writer = child(['hold', file, 'exclusive', log])
    await writer.next('QUEUED')
    await untilAnyKernelWaiter(lockFile)
    // Only a reader holds, yet the late reader is refused at once: a writer waits.
    const late = child(['hold', file, 'shared', log, '--try-first'])
    expect(await late.next('TRY ')).toBe('TRY ELOCKTIMEOUT')
    await late.next('QUEUED')
    await first.release()
    await writer.next('HOLDING')
    await writer.release()
    await late.next('HOLDING')
    await late.release()
    const { events } = checkIntervals(log)
    expect(events.map((e) => e.split(' ').slice(0, 2).join(' '))).toEqual(['enter shared', 'exit shared', 'enter exclusive', 'exit exclusive', 'enter shared', 'exit shared'])
    expect(events[2]).toBe(`enter exclusive ${writer.proc.pid}`)
  })

  test('processes mixing shared and exclusive holds: no writer ever overlaps another holder', async () => {
    const { file, log } = setup()
    const workers = Array.from({ length: 4 }, () => child(['loop', file, log, 60, 4]))
    for (const w of workers) await w.next('DONE')
    for (const w of workers) expect(await w.closed).toMatchObject({ code: 0, stderr: '' })
    const { events } = checkIntervals(log)
    expect(events).toHaveLength(4 * 60 * 2)
  }, 120000)

  test('a SIGKILLed shared holder releases at once; its reader file is judged stale and cleaned up', async () => {
    const { root, file, lockFile, log } = setup()
    const reader = await holder(file, 'shared', log)
    const writer = child(['hold', file, 'exclusive', log])
    await writer.next('QUEUED')
    await untilAnyKernelWaiter(lockFile)
    reader.proc.kill('SIGKILL')
    await reader.closed
    await writer.next('HOLDING')
    const info = await getLockInfo(file)
    expect(info).toMatchObject({ state: 'held', mode: 'exclusive', pid: writer.proc.pid })
    expect(info.readers).toHaveLength(1)
    expect(info.readers[0]).toMatchObject({ state: 'stale', pid: reader.proc.pid })
    expect(info.readers[0].staleReason).toMatch(new RegExp(`process ${reader.proc.pid} is gone`))
    const report = await cleanupStaleLocks({ root })
    expect(report.removed.map((r) => r.pid)).toEqual([reader.proc.pid])
    expect(report.removed[0].readerFile).toBe(info.readers[0].readerFile)
    expect(report.kept.map((k) => k.state)).toEqual(['held'])
    expect(readerFiles(root)).toEqual([])
    await writer.release()
  })
})

describe('shared locks in one process', () => {
  test('withReadLock: two readers inside at once, with the AbortSignal context of withLock', async () => {
    const { file } = setup()
    const manager = new FileLockManager()
    let inside = 0
    let bothIn
    const met = new Promise((resolve) => (bothIn = resolve))
    const read = () =>
      manager.withReadLock(file, async (signal) => {
        expect(signal).toBeInstanceOf(AbortSignal)
        expect(signal.aborted).toBe(false)
        if (++inside === 2) bothIn()
        // Neither returns before the other came in: they hold at the same time.
        await met
        return (await getLockInfo(file)).readers.length
      })
    expect(await Promise.all([read(), read()])).toEqual([2, 2])
    expect(manager.held.size).toBe(0)
    expect(await getLockInfo(file)).toBeNull()
  })

  test('a local writer waits for local readers, and a later local reader waits for it; no deadlock', async () => {
    const { file, lockFile } = setup()
    const manager = new FileLockManager()
    const order = []
    const reader = await acquireLock(file, { mode: 'shared' })
    const writing = manager.withLock(file, async () => order.push('writer'))
    await untilAnyKernelWaiter(lockFile)
    await expect(acquireLock(file, { mode: 'shared', timeout: 0 })).rejects.toMatchObject({ code: 'ELOCKTIMEOUT' })
    const reading = manager.withReadLock(file, async () => order.push('late reader'))
    expect(order).toEqual([])
    order.push('first reader out')
    await releaseLock(file, reader)
    await Promise.all([writing, reading])
    expect(order).toEqual(['first reader out', 'writer', 'late reader'])
  })

  test('a reader does not write: ELOCKSHARED, and the file is unchanged', async () => {
    const { file } = setup()
    const manager = new FileLockManager()
    const before = fs.readFileSync(file, 'utf8')
    await expect(manager.withReadLock(file, () => updateWithLock(file, () => ({ tasks: [1] })))).rejects.toMatchObject({ code: 'ELOCKSHARED' })
    const id = await acquireLock(file, { mode: 'shared' })
    await expect(updateWithLock(file, () => ({ tasks: [2] }), { lockId: id })).rejects.toMatchObject({ code: 'ELOCKSHARED', message: expect.stringContaining(file) })
    expect(() => fileLock.assertHeld(file, id)).toThrow(expect.objectContaining({ code: 'ELOCKSHARED' }))
    await releaseLock(file, id)
    // A write lock inside a read lock of the same lock would wait on itself: refused at once.
    await expect(manager.withReadLock(file, () => manager.withLock(file, () => 1))).rejects.toMatchObject({ code: 'ELOCKSHARED' })
    // A read lock inside a write lock re-enters: the writer may read.
    expect(await manager.withLock(file, () => manager.withReadLock(file, () => 'read under the write lock'))).toBe('read under the write lock')
    await expect(updateWithLock(file, () => ({}), { mode: 'shared' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' })
    expect(fs.readFileSync(file, 'utf8')).toBe(before)
  })

  test('acquireLockSync takes shared locks beside another process\'s reader, not beside its writer', async () => {
    const { file, log } = setup()
    const other = await holder(file, 'shared', log)
    const id = acquireLockSync(file, { mode: 'shared', timeout: 0 })
    // Held here already: a blocking wait would block the event loop its holder needs.
    expect(() => acquireLockSync(file, { timeout: 0 })).toThrow(expect.objectContaining({ code: 'ELOCKDEADLOCK' }))
    expect((await getLockInfo(file)).readers).toHaveLength(2)
    expect(releaseLockSync(file, id)).toBe(true)
    await other.release()
    const writer = await holder(file, 'exclusive', log)
    expect(() => acquireLockSync(file, { mode: 'shared', timeout: 0 })).toThrow(expect.objectContaining({ code: 'ELOCKTIMEOUT' }))
    await writer.release()
  })

  test("the heartbeat refreshes a reader's record; a reader file removed under it aborts withReadLock's signal", async () => {
    const { root, file } = setup()
    native.setHeartbeatInterval(20)
    try {
      const manager = new FileLockManager()
      const reason = await manager.withReadLock(file, async (signal) => {
        const [name] = readerFiles(root)
        const readerFile = path.join(root, '.flowforge', '.locks', name)
        const first = JSON.parse(fs.readFileSync(readerFile, 'utf8'))
        // Each heartbeat rewrites the file: wait for one that moved the heartbeat on.
        for (;;) {
          await new Promise((resolve) => setImmediate(resolve))
          let now
          try {
            now = JSON.parse(fs.readFileSync(readerFile, 'utf8'))
          } catch {
            continue // read while the heartbeat was writing it: read again
          }
          if (now.heartbeat > first.heartbeat) {
            expect(now).toMatchObject({ lockId: first.lockId, acquiredAt: first.acquiredAt, pid: process.pid })
            break
          }
        }
        fs.rmSync(readerFile)
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }))
        return signal.reason
      })
      expect(reason).toMatchObject({ code: 'ELOCKLOST', message: expect.stringContaining('its reader file was removed') })
    } finally {
      native.setHeartbeatInterval(fileLock.HEARTBEAT_INTERVAL)
    }
  })

  test('a bad mode is refused with ERR_INVALID_ARG_VALUE', async () => {
    const { file } = setup()
    await expect(acquireLock(file, { mode: 'read' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining("'shared'") })
    await expect(acquireLock(file, { mode: 1 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' })
  })
})

describe('where only exclusive locks exist', () => {
  test('shared mode with kernel locks off (as on a network file system) is refused with ELOCKUNSUPPORTED, naming the lock directory', () => {
    const { root, file } = setup()
    const script = `require(${JSON.stringify(path.join(PACKAGE_ROOT, 'file-lock'))}).acquireLock(${JSON.stringify(file)}, { mode: 'shared', timeout: 100 })
      .then(() => console.log('acquired'), (e) => console.log(e.code + ' ' + e.message))`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' } })
    expect(run.stdout).toMatch(/^ELOCKUNSUPPORTED /)
    expect(run.stdout).toContain(path.join(root, '.flowforge', '.locks'))
  })
})

describe('lock servers', () => {
  const servers = []
  afterAll(async () => {
    configure({ backend: null })
    await Promise.all(servers.map((server) => server.stop()))
  })

  test.each([
    ['Redis', startRedis, (server) => server.url],
    ['etcd', startEtcd, (server) => server.url()],
  ])('shared mode on the %s backend is refused with ELOCKUNSUPPORTED, naming the backend and what to do', async (_, startServer, urlOf) => {
    const server = await startServer()
    servers.push(server)
    const { root, file } = setup()
    configure({ backend: urlOf(server) })
    try {
      const err = await acquireLock(file, { mode: 'shared' }).catch((e) => e)
      expect(err).toMatchObject({ code: 'ELOCKUNSUPPORTED' })
      expect(err.message).toMatch(/Redis or etcd/)
      expect(err.message).toContain(root)
      expect(err.message).toMatch(/readJSON/)
      expect(() => acquireLockSync(file, { mode: 'shared', timeout: 0 })).toThrow(expect.objectContaining({ code: 'ELOCKUNSUPPORTED' }))
      await expect(new FileLockManager().withReadLock(file, () => 1)).rejects.toMatchObject({ code: 'ELOCKUNSUPPORTED' })
      // Exclusive locks still work there.
      await releaseLock(file, await acquireLock(file, 5000))
    } finally {
      configure({ backend: null })
    }
  })
})
