'use strict'
// Priorities within a process and adaptive timeouts (issue 14, items 2, 3 and 6). The queue's
// exact order, aging included, is unit-tested in src/lock_table.rs; these check that every entry
// point passes the option through, the order seen from JS, and the metrics.
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
  const { spawn } = require('node:child_process')
  const { startFixture } = require('./helpers')
  const quote = (s) => `'${s.replace(/'/g, "'\\''")}'`

  /** Runs the CLI under a pty (util-linux script), calling `onOutput(all so far)` as output comes. */
  function onTerminal(args, onOutput) {
    const command = [process.execPath, BIN, ...args].map(quote).join(' ')
    const child = spawn('script', ['-qec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (chunk) => {
      output += chunk
      onOutput(output)
    })
    return new Promise((resolve) => child.on('close', (code) => resolve({ code, output })))
  }

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
