'use strict'
// Priorities within a process and across processes, and adaptive timeouts (issue 14, items 1,
// 2, 3 and 6). The queue's exact order, aging included, is unit-tested in src/lock_table.rs and
// src/file/ticket_queue.rs; these check that every entry point passes the option through, the
// order seen from JS and between real processes, and the metrics.
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const ffl = require('../index.js')
const { makeProject, PACKAGE_ROOT } = require('./helpers')

const BIN = path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js')

function fileIn(name) {
  return path.join(makeProject('ffl-prio-'), '.flowforge', name)
}

/** Queues acquireLock calls with these priorities behind a hold of ours; the order of grants. */
async function grantOrder(file, priorities, acquire = (p) => ffl.acquireLock(file, { priority: p })) {
  const first = await ffl.acquireLock(file)
  const order = []
  const all = priorities.map((p, label) =>
    acquire(p).then(async (lockId) => {
      order.push(label)
      await ffl.releaseLock(file, lockId)
    }),
  )
  await ffl.releaseLock(file, first)
  await Promise.all(all)
  return order
}

test('acquireLock: higher priority first, arrival order among equals', async () => {
  const file = fileIn('prio.json')
  const priorities = [0, 5, 0, 10, 5, -1, 10]
  const order = await grantOrder(file, priorities)
  console.log(`priority grant sequence: priorities ${JSON.stringify(priorities)} -> labels ${JSON.stringify(order)}`)
  expect(order).toEqual([3, 6, 1, 4, 0, 2, 5])
})

test('FileLockManager.withLock passes priority, and its config sets a default', async () => {
  const file = fileIn('manager.json')
  const manager = new ffl.FileLockManager({ priority: 1 })
  expect(manager.config.priority).toBe(1)
  const order = await grantOrder(file, [undefined, 2, 0], (p) => manager.acquire(file, p === undefined ? undefined : { priority: p }))
  // Default 1 (the manager's) sits between 2 and 0.
  expect(order).toEqual([1, 0, 2])
  expect(await manager.withLock(file, async () => 'ran', { priority: 3 })).toBe('ran')
})

test('updateWithLock and updateTaskFile: coalesced updates run in priority order within the hold', async () => {
  const file = fileIn('coalesced.json')
  const held = await ffl.acquireLock(file)
  const seen = []
  const step = (name) => (current) => {
    seen.push(name)
    return { steps: [...(current?.steps ?? []), name] }
  }
  const done = Promise.all([
    ffl.updateWithLock(file, step('low'), { priority: -1 }),
    ffl.updateWithLock(file, step('default'), {}),
    ffl.updateWithLock(file, step('high'), { priority: 7 }),
    ffl.updateWithLock(file, step('default2')),
  ])
  await ffl.releaseLock(file, held)
  await done
  expect(seen).toEqual(['high', 'default', 'default2', 'low'])
  expect(JSON.parse(fs.readFileSync(file, 'utf8')).steps).toEqual(seen)

  const root = path.dirname(path.dirname(fileIn('x.json')))
  const tasks = path.join(root, '.flowforge', 'tasks.json')
  const holdTasks = await ffl.acquireLock(tasks)
  const writes = Promise.all([
    ffl.updateTaskFile({ id: 1, by: 'low' }, { root, priority: 0 }),
    ffl.batchUpdateTasks([{ id: 1, by: 'high' }], { root, priority: 9 }),
  ])
  await ffl.releaseLock(tasks, holdTasks)
  await writes
  // The low-priority write came last, so its value stays.
  expect(JSON.parse(fs.readFileSync(tasks, 'utf8')).tasks).toEqual([{ id: 1, by: 'low' }])
})

test('bad priorities are refused with codes; exec --priority is checked', async () => {
  const file = fileIn('bad.json')
  await expect(ffl.acquireLock(file, { priority: 'high' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' })
  await expect(ffl.acquireLock(file, { priority: Infinity })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' })
  await expect(ffl.updateTaskFile({ id: 1 }, { root: path.dirname(path.dirname(file)), priority: NaN })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' })
  const bad = spawnSync(process.execPath, [BIN, 'exec', '--priority', 'soon', file, '--', 'true'], { encoding: 'utf8' })
  expect(bad.status).toBe(64)
  expect(bad.stderr).toContain("--priority takes a number, not 'soon'")
  const ok = spawnSync(process.execPath, [BIN, 'exec', '--priority=-2.5', file, '--', 'true'], { encoding: 'utf8' })
  expect(ok.status).toBe(0)
})

test('metrics: waits per priority', async () => {
  const file = fileIn('metrics.json')
  ffl.resetLockMetrics()
  await grantOrder(file, [4, 4, -3])
  const { waitByPriority } = ffl.getLockMetrics()
  expect(waitByPriority['4'].acquisitions).toBe(2)
  expect(waitByPriority['-3'].acquisitions).toBe(1)
  // The first hold (priority 0) plus nothing else.
  expect(waitByPriority['0'].acquisitions).toBe(1)
  for (const p of Object.values(waitByPriority)) expect(p.p99WaitTime).toBeGreaterThanOrEqual(p.p50WaitTime)
})

describe("timeout: 'adaptive'", () => {
  const adaptive = (file) => ffl.getLockMetrics().files[file].adaptiveTimeoutMs

  test('the first call uses 30 s, an idle file shortens it, a long queue lengthens it', async () => {
    const file = fileIn('adaptive.json')
    const first = await ffl.acquireLock(file, { timeout: 'adaptive' })
    // No hold of this file seen yet: the seed.
    expect(adaptive(file)).toBe(30000)
    await ffl.releaseLock(file, first)
    const idle = adaptive(file)
    expect(idle).toBeGreaterThanOrEqual(1000)
    expect(idle).toBeLessThan(30000)

    const held = await ffl.acquireLock(file)
    const waiters = Array.from({ length: 10 }, () => ffl.acquireLock(file))
    const queued = adaptive(file)
    expect(queued).toBeGreaterThan(idle)
    await ffl.releaseLock(file, held)
    for (const waiter of waiters) await ffl.releaseLock(file, await waiter)
  })

  test('a contended adaptive wait is granted when the holder releases', async () => {
    const file = fileIn('adaptive-wait.json')
    await ffl.releaseLock(file, await ffl.acquireLock(file))
    const held = await ffl.acquireLock(file)
    const waiter = ffl.acquireLock(file, { timeout: 'adaptive', priority: 2 })
    await ffl.releaseLock(file, held)
    await ffl.releaseLock(file, await waiter)
    expect(ffl.getLockMetrics().waitByPriority['2'].acquisitions).toBeGreaterThanOrEqual(1)
  })

  test('updateWithLock and FileLockManager take it too; a bad timeout string is refused', async () => {
    const file = fileIn('adaptive-update.json')
    await ffl.updateWithLock(file, () => ({ n: 1 }), { timeout: 'adaptive' })
    const manager = new ffl.FileLockManager({ timeout: 'adaptive' })
    expect(await manager.withLock(file, () => 'ok')).toBe('ok')
    await expect(ffl.acquireLock(file, { timeout: 'soon' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' })
  })
})

describe('waiting that shows itself (exec and update on a terminal)', () => {
  const { startFixture, runOnTerminal } = require('./helpers')
  /** Runs the CLI on a pseudo-terminal (see runOnTerminal). */
  const onTerminal = (args, onOutput) => runOnTerminal([BIN, ...args], onOutput)

  test('exec shows the holder and the time left once the wait passes a second, then erases it', async () => {
    const file = fileIn('shown.json')
    const { child: holder, exited } = await startFixture('hold-lock', [file, '--until-sigusr2'], 'LOCKED')
    let released = false
    const { code, output } = await onTerminal(['exec', '--timeout', '60000', file, '--', 'true'], (so_far) => {
      if (!released && /waiting for .*shown\.json: held by .*pid \d+ for .*left/.test(so_far)) {
        released = true
        holder.kill('SIGUSR2')
      }
    })
    await exited
    expect(released).toBe(true)
    expect(code).toBe(0)
    expect(output).toContain(`pid ${holder.pid}`)
    expect(output).toContain('\r\x1b[K')
  })

  test('--quiet on a terminal, and stderr not a terminal: no line', async () => {
    const file = fileIn('quiet.json')
    const { child: holder, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    // Both wait past the one second, then time out: a deadline, not a sleep.
    const quiet = await onTerminal(['exec', '--quiet', '--timeout', '1500', file, '--', 'true'], () => {})
    const piped = spawnSync(process.execPath, [BIN, 'exec', '--timeout', '1500', file, '--', 'true'], { encoding: 'utf8' })
    holder.kill('SIGKILL')
    await exited
    expect(quiet.code).toBe(75)
    expect(quiet.output).not.toContain('waiting for')
    expect(piped.status).toBe(75)
    expect(piped.stderr).not.toContain('waiting for')
    expect(piped.stderr).toContain('ELOCKTIMEOUT')
  })
})

describe('fair order across processes (the ticket queue)', () => {
  const { spawn } = require('node:child_process')
  const { runFixture, startFixture } = require('./helpers')

  /** The queue file of `file`'s lock, and a count of the tickets on it (from /proc/locks). */
  function queueOf(file) {
    const queue = path.join(path.dirname(file), '.locks', `${path.basename(file)}.lock.wait`)
    return {
      tickets() {
        // No queue file: nobody queued (the last process out removes it).
        const ino = fs.statSync(queue, { throwIfNoEntry: false })?.ino
        if (ino === undefined) return 0
        // "N: OFDLCK ADVISORY WRITE -1 major:minor:inode start end", not a blocked request ("->"),
        // matched on the inode (overlay file systems report another device). Byte 0 is the
        // holder's; every other single locked byte is a waiting process's ticket.
        return fs
          .readFileSync('/proc/locks', 'utf8')
          .split('\n')
          .map((line) => line.trim().split(/\s+/))
          .filter((f) => f[1] === 'OFDLCK' && f[3] === 'WRITE' && f[5].endsWith(`:${ino}`) && f[6] !== '0' && f[6] === f[7]).length
      },
    }
  }

  /** Resolves once `predicate()` holds: checked again every few ms (an observable state, no timed guess). */
  async function until(predicate, what) {
    const deadline = Date.now() + 60000
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  }

  /** A queue-waiter process holding `file`'s lock, an empty grants log beside it, and its queue. */
  async function heldBy(file, holderMode = '--hold') {
    const log = path.join(path.dirname(file), 'grants.log')
    fs.writeFileSync(log, '')
    const holder = await startFixture('queue-waiter', [file, 'holder', 0, log, holderMode], 'LOCKED')
    return { log, holder, queue: queueOf(file) }
  }

  /** A queue-waiter process the test will signal, and how it ends. */
  function spawnWaiter(file, label, priority, log) {
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'queue-waiter.js'), file, label, String(priority), log], { stdio: 'ignore' })
    const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
    return { child, exited }
  }

  /**
   * A holder holds `file`; then each of `waiters` ([label, priority] or a function starting the
   * process) is started only once the previous one holds its ticket. Then the holder releases;
   * returns the log (one label per grant, in grant order) once all are done.
   */
  async function queueBehindHolder(file, waiters, { holderMode = '--hold' } = {}) {
    const { log, holder, queue } = await heldBy(file, holderMode)
    const done = []
    for (const [i, waiter] of waiters.entries()) {
      const exited = typeof waiter === 'function' ? waiter(log) : runFixture('queue-waiter', [file, waiter[0], waiter[1], log])
      let ended
      exited.then((result) => (ended = result))
      done.push(exited)
      await until(() => {
        if (ended) throw new Error(`waiter ${i} ended before it queued: ${JSON.stringify(ended)}`)
        return queue.tickets() === i + 1
      }, `waiter ${i} to queue`)
    }
    holder.child.kill('SIGUSR2')
    const results = [await holder.exited, ...(await Promise.all(done))]
    for (const r of results) expect(r).toMatchObject({ code: 0 })
    return fs.readFileSync(log, 'utf8').split('\n').filter(Boolean)
  }

  test('mixed priorities in five processes: higher first, equals in arrival order', async () => {
    const file = fileIn('cross.json')
    // Gaps of 50 levels: aging (one level per second) cannot reorder them within this test.
    const waiters = [['a', 0], ['b', 50], ['c', 0], ['d', 100], ['e', 50]]
    const order = await queueBehindHolder(file, waiters)
    console.log(`cross-process grant sequence: ${JSON.stringify(waiters)} -> ${order.join(' ')}`)
    expect(order).toEqual(['d', 'b', 'e', 'a', 'c'])
  }, 120000)

  test('equal priorities in five processes: arrival order; a releaser asking again goes last', async () => {
    const file = fileIn('fifo.json')
    const waiters = ['w1', 'w2', 'w3', 'w4', 'w5'].map((label) => [label, 0])
    const order = await queueBehindHolder(file, waiters, { holderMode: '--hold-requeue' })
    expect(order).toEqual(['w1', 'w2', 'w3', 'w4', 'w5', 'holder'])
  }, 120000)

  test('flowforge-lock exec --priority orders separate commands', async () => {
    const file = fileIn('exec.json')
    const exec = (label, priority) => (log) =>
      new Promise((resolve) => {
        const child = spawn(process.execPath, [BIN, 'exec', `--priority=${priority}`, '--timeout', '120000', file, '--', 'sh', '-c', `echo ${label} >> ${log}`], { stdio: 'ignore' })
        child.on('close', (code) => resolve({ code }))
      })
    const order = await queueBehindHolder(file, [exec('low', -5), exec('mid', 0), exec('top', 20), exec('mid2', 0)])
    expect(order).toEqual(['top', 'mid', 'mid2', 'low'])
  }, 120000)

  test('a SIGKILLed waiter leaves the queue at once and the next one is served', async () => {
    const file = fileIn('killed.json')
    const { log, holder, queue } = await heldBy(file)
    // The doomed waiter ranks first (priority 10), so the other one waits behind its ticket.
    const { child: doomed, exited: doomedExit } = spawnWaiter(file, 'doomed', 10, log)
    await until(() => queue.tickets() === 1, 'the first waiter to queue')
    const next = runFixture('queue-waiter', [file, 'next', 0, log])
    await until(() => queue.tickets() === 2, 'the second waiter to queue')
    doomed.kill('SIGKILL')
    expect(await doomedExit).toEqual({ code: null, signal: 'SIGKILL' })
    await until(() => queue.tickets() === 1, 'the killed waiter to leave')
    holder.child.kill('SIGUSR2')
    expect(await holder.exited).toMatchObject({ code: 0 })
    expect(await next).toMatchObject({ code: 0 })
    expect(fs.readFileSync(log, 'utf8')).toBe('next\n')
  }, 120000)

  test('a waiter that timed out in a live process leaves the queue, without the lock', async () => {
    const file = fileIn('gave-up.json')
    const { log, holder, queue } = await heldBy(file)
    // Ranked first (priority 10); its 3 s deadline passes while it is queued. Its process's
    // waiting thread, blocked for its turn, gives the ticket back at its next periodic look.
    const quitter = await startFixture('queue-waiter', [file, 'quitter', 10, log, '--give-up-after=3000'], 'GAVE_UP ELOCKTIMEOUT')
    await until(() => queue.tickets() === 0, 'the timed-out waiter to leave')
    const next = runFixture('queue-waiter', [file, 'next', 0, log])
    await until(() => queue.tickets() === 1, 'the next waiter to queue')
    holder.child.kill('SIGUSR2')
    expect(await holder.exited).toMatchObject({ code: 0 })
    expect(await next).toMatchObject({ code: 0 })
    expect(fs.readFileSync(log, 'utf8')).toBe('next\n')
    expect(quitter.child.exitCode).toBe(null)
    quitter.child.kill('SIGKILL')
    await quitter.exited
  }, 120000)

  test('a SIGSTOPped waiter is passed while stopped, and served once continued', async () => {
    const file = fileIn('stopped.json')
    const { log, holder, queue } = await heldBy(file)
    // The stopped waiter ranks first (priority 10), so the other one queues behind its ticket.
    const { child: stopped, exited: stoppedExit } = spawnWaiter(file, 'stopped', 10, log)
    await until(() => queue.tickets() === 1, 'the first waiter to queue')
    // Ctrl-Z on a waiting process: its ticket stays, and it does not move.
    stopped.kill('SIGSTOP')
    const next = runFixture('queue-waiter', [file, 'next', 0, log])
    await until(() => queue.tickets() === 2, 'the second waiter to queue')
    holder.child.kill('SIGUSR2')
    expect(await holder.exited).toMatchObject({ code: 0 })
    // The lock is free and the ticket ahead does not move: the next waiter passes it.
    expect(await next).toMatchObject({ code: 0 })
    expect(fs.readFileSync(log, 'utf8')).toBe('next\n')
    expect(queue.tickets()).toBe(1)
    stopped.kill('SIGCONT')
    expect(await stoppedExit).toEqual({ code: 0, signal: null })
    expect(fs.readFileSync(log, 'utf8')).toBe('next\nstopped\n')
  }, 120000)
})
