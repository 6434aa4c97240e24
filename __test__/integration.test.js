'use strict'
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const integration = require('../file-lock-integration')
const {
  updateWithLock,
  updateTaskFile,
  batchUpdateTasks,
  startTaskTimer,
  pauseTaskTimer,
  resumeTaskTimer,
  stopTaskTimer,
  registerSession,
  touchSession,
  endSession,
  cleanupStaleSessions,
  listSessions,
  getLockMetrics,
  resetLockMetrics,
} = integration
const FileLockManager = require('../FileLockManager')
const { acquireLock, releaseLock, isLocked } = require('../file-lock')
const { makeProject, runFixture, startFixture, NOBODY, IS_ROOT, testAsNobody, readablePackage, expectError, PACKAGE_ROOT } = require('./helpers')

const tasksPath = (root) => path.join(root, '.flowforge', 'tasks.json')
const read = (file) => JSON.parse(fs.readFileSync(file, 'utf8'))
const tempFilesIn = (dir) => fs.readdirSync(dir).filter((n) => n.includes('.ffl-'))

describe('updateWithLock', () => {
  test('passes the parsed content (null when missing), writes what the updater returns, resolves to it', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'current.json')
    const seen = []
    const first = await updateWithLock(file, async (current) => {
      seen.push(current)
      return { sessionId: 'session-1-2', taskId: '214' }
    })
    const second = await updateWithLock(file, (current) => {
      seen.push(current)
      return { ...current, pausedAt: 'now' }
    })
    expect(seen).toEqual([null, { sessionId: 'session-1-2', taskId: '214' }])
    expect(first).toEqual({ sessionId: 'session-1-2', taskId: '214' })
    expect(second).toEqual(read(file))
    expect(fs.readFileSync(file, 'utf8')).toBe(`${JSON.stringify(second, null, 2)}\n`)
    expect(tempFilesIn(path.dirname(file))).toEqual([])
    expect(await isLocked(file)).toBe(false)
  })

  test("is also exported by file-lock, as FlowForge's session scripts expect", async () => {
    expect(typeof require('../file-lock').updateWithLock).toBe('function')
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'x.json')
    await require('../file-lock').updateWithLock(file, async () => ({ ok: true }))
    expect(read(file)).toEqual({ ok: true })
  })

  test("keeps the file's mode, and when root writes, its owner", async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[]}')
    fs.chmodSync(file, 0o600)
    if (IS_ROOT) fs.chownSync(file, NOBODY.uid, NOBODY.gid)
    await updateTaskFile({ id: 1 }, { file })
    const stat = fs.statSync(file)
    expect(stat.mode & 0o777).toBe(0o600)
    if (IS_ROOT) expect([stat.uid, stat.gid]).toEqual([NOBODY.uid, NOBODY.gid])
    else console.log("keeps the file's owner: not checked, it needs root to give the file to another user")
  })

  const unchanged = [
    [
      'corrupt JSON is never overwritten (EJSONPARSE, names the file and the position)',
      (file) => fs.writeFileSync(file, '{"tasks": [1, 2,]}'),
      (file) => updateTaskFile({ id: 1 }, { file }),
      'EJSONPARSE',
      /tasks\.json as JSON: .* line 1 column 17/,
    ],
    [
      'a file that is not UTF-8 is refused (EJSONPARSE)',
      (file) => fs.writeFileSync(file, Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x7d])),
      (file) => updateTaskFile({ id: 1 }, { file }),
      'EJSONPARSE',
      /not UTF-8/,
    ],
    [
      'an updater that throws leaves the file unchanged and its error reaches the caller',
      (file) => fs.writeFileSync(file, '{"tasks":[]}'),
      (file) =>
        updateWithLock(file, () => {
          const err = new Error('updater failed on purpose')
          err.code = 'EMYOWN'
          throw err
        }),
      'EMYOWN',
      /^updater failed on purpose$/,
    ],
    [
      'an updater that returns undefined writes nothing (ERR_INVALID_RETURN_VALUE)',
      (file) => fs.writeFileSync(file, '{"tasks":[]}'),
      (file) => updateWithLock(file, () => undefined),
      'ERR_INVALID_RETURN_VALUE',
      /returned undefined/,
    ],
    [
      'a tasks file whose "tasks" is not an array is not reshaped (EDATASHAPE)',
      (file) => fs.writeFileSync(file, '{"tasks":{"1":{}}}'),
      (file) => updateTaskFile({ id: 1 }, { file }),
      'EDATASHAPE',
      /"tasks" is not an array/,
    ],
  ]
  test.each(unchanged)('%s', async (_, setUp, call, code, message) => {
    const root = makeProject()
    const file = tasksPath(root)
    setUp(file)
    const before = fs.readFileSync(file)
    const err = await call(file).catch((e) => e)
    expect(err.code).toBe(code)
    expect(err.message).toMatch(message)
    expect(fs.readFileSync(file)).toEqual(before)
    expect(await isLocked(file)).toBe(false)
    expect(tempFilesIn(path.dirname(file))).toEqual([])
  })

  test('a target that is a directory gets EISDIR', async () => {
    const root = makeProject()
    fs.mkdirSync(tasksPath(root))
    const err = await updateTaskFile({ id: 1 }, { file: tasksPath(root) }).catch((e) => e)
    expectError(err, Error, 'EISDIR')
    expect(fs.statSync(tasksPath(root)).isDirectory()).toBe(true)
  })

  test('a timeout gets ELOCKTIMEOUT and leaves the file unchanged', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[]}')
    const holder = await startFixture('hold-lock', [file], 'LOCKED')
    const err = await updateTaskFile({ id: 1 }, { file, timeout: 200 }).catch((e) => e)
    expectError(err, Error, 'ELOCKTIMEOUT')
    expect(fs.readFileSync(file, 'utf8')).toBe('{"tasks":[]}')
    holder.child.kill('SIGKILL')
    await holder.exited
  })

  test('a lock lost before the write (lock file removed under us) gets ELOCKLOST and the file is untouched', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[]}')
    const err = await updateWithLock(file, (doc) => {
      // What `rm -rf .flowforge/.locks/*.lock` does to a holder.
      fs.rmSync(path.join(root, '.flowforge', '.locks', 'tasks.json.lock'))
      return { ...doc, changed: true }
    }).catch((e) => e)
    expectError(err, Error, 'ELOCKLOST')
    expect(err.message).toContain(file)
    expect(fs.readFileSync(file, 'utf8')).toBe('{"tasks":[]}')
  })

  testAsNobody('a read-only file is not replaced (EACCES), checked as an unprivileged user', () => {
    const root = makeProject()
    fs.chownSync(root, NOBODY.uid, NOBODY.gid)
    fs.chownSync(path.join(root, '.flowforge'), NOBODY.uid, NOBODY.gid)
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[]}')
    fs.chownSync(file, NOBODY.uid, NOBODY.gid)
    fs.chmodSync(file, 0o444)
    const script = `require(${JSON.stringify(path.join(readablePackage(), 'file-lock-integration'))})
      .updateTaskFile({ id: 1 }, { file: ${JSON.stringify(file)} })
      .then(() => console.log('written'), (e) => console.log(process.getuid() + ' ' + e.code + ' ' + e.message))`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', ...NOBODY })
    expect(run.stdout).toMatch(/^65534 EACCES .*tasks\.json is read-only/)
    expect(fs.readFileSync(file, 'utf8')).toBe('{"tasks":[]}')
    // The same call by the file's owner after `chmod u+w` goes through: the refusal was the mode.
    fs.chmodSync(file, 0o644)
    const ok = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', ...NOBODY })
    expect(ok.stdout).toBe('written\n')
  })

  // The replacement is created with the writer's group; only root gave it the file's group back.
  // A team's file (group-writable, of a group the writer is in) became the writer's own group's,
  // and the rest of the team could no longer update it (EACCES).
  testAsNobody("an update by a member of the file's group keeps the file's group", () => {
    const TEAM = 4242
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[]}')
    for (const p of [root, path.join(root, '.flowforge'), file]) {
      fs.chownSync(p, 0, TEAM)
      fs.chmodSync(p, p === file ? 0o664 : 0o775)
    }
    const script = `process.setgroups([${TEAM}]); process.setgid(${NOBODY.gid}); process.setuid(${NOBODY.uid})
      require(${JSON.stringify(path.join(readablePackage(), 'file-lock-integration'))})
      .updateTaskFile({ id: 1 }, { file: ${JSON.stringify(file)} })
      .then(() => console.log('written'), (e) => console.log(e.code + ' ' + e.message))`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
    expect(run.stdout).toBe('written\n')
    const st = fs.statSync(file)
    expect({ gid: st.gid, mode: st.mode & 0o777 }).toEqual({ gid: TEAM, mode: 0o664 })
  })
})

describe('updateTaskFile and batchUpdateTasks', () => {
  test('100 concurrent updateTaskFile calls in one process leave 100 tasks', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    await Promise.all(Array.from({ length: 100 }, (_, i) => updateTaskFile({ id: i, status: 'test' }, { file })))
    expect(read(file).tasks.map((t) => t.id).sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i))
  })

  // The task was checked at the call and used later, when the batch ran: a caller changing it
  // meanwhile put a value JSON cannot write into the document, and every update of the batch failed.
  test("a task changed by its caller after the call is written as it was at the call, and sinks no other caller's update", async () => {
    const root = makeProject()
    const file = tasksPath(root)
    const task = { id: 1, title: 'as called' }
    const calls = [updateTaskFile({ id: 2 }, { file }), updateTaskFile(task, { file }), batchUpdateTasks([{ id: 3 }], { file })]
    task.title = 'changed after'
    task.estimate = 10n
    await Promise.all(calls)
    expect(read(file).tasks).toEqual([{ id: 2 }, { id: 1, title: 'as called' }, { id: 3 }])
  })

  test('a key of the task whose value is undefined leaves the stored value as it was', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, JSON.stringify({ tasks: [{ id: 1, title: 'keep', status: 'ready' }] }))
    expect(await updateTaskFile({ id: 1, title: undefined, status: 'done' }, { file })).toEqual({ id: 1, title: 'keep', status: 'done' })
    expect(read(file).tasks).toEqual([{ id: 1, title: 'keep', status: 'done' }])
  })

  test('4 processes x 100 rounds: the shared counter and every upserted task are exact', async () => {
    const root = makeProject()
    fs.writeFileSync(tasksPath(root), JSON.stringify({ version: '2.0.0', tasks: [{ id: 'counter', hits: 0 }] }))
    const results = await Promise.all([0, 1, 2, 3].map((w) => runFixture('integration-worker', [w, 100], { cwd: root })))
    for (const r of results) expect(r).toMatchObject({ code: 0, stderr: '' })
    const doc = read(tasksPath(root))
    expect(doc.tasks.find((t) => t.id === 'counter').hits).toBe(400)
    expect(doc.tasks).toHaveLength(401)
  }, 60000)

  test('ids match as strings, existing id types and unknown keys are kept, new numeric ids are numbers', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    const original = {
      version: '2.0.0',
      lastUpdated: '2025-01-01T00:00:00.000Z',
      milestones: { 'v1.5.0': { taskIds: [142] } },
      tasks: [{ id: 142, title: 'Keep', microtasks: ['a'], billing: { rate: 1 } }, { id: 'LIN-456', status: 'ready' }],
      metadata: { v2_2_0_implementation_order: [142] },
    }
    fs.writeFileSync(file, JSON.stringify(original))
    const merged = await updateTaskFile({ id: '142', status: 'completed' }, { file })
    expect(merged).toEqual({ id: 142, title: 'Keep', microtasks: ['a'], billing: { rate: 1 }, status: 'completed' })
    await batchUpdateTasks([{ id: 'LIN-456', status: 'paused' }, { id: '7', title: 'New' }], { file })
    const doc = read(file)
    expect(doc.milestones).toEqual(original.milestones)
    expect(doc.metadata).toEqual(original.metadata)
    expect(doc.lastUpdated).not.toBe(original.lastUpdated)
    expect(doc.tasks).toEqual([merged, { id: 'LIN-456', status: 'paused' }, { id: 7, title: 'New' }])
    // A numeric id beyond 2^53 stays a string: as a number it would be written as another id.
    const big = await updateTaskFile({ id: '9999999999999999', title: 'Big' }, { file })
    expect(big.id).toBe('9999999999999999')
    await updateTaskFile({ id: '9999999999999999', status: 'done' }, { file })
    expect(read(file).tasks.slice(3)).toEqual([{ id: '9999999999999999', title: 'Big', status: 'done' }])
  })

  test('a batch is all or nothing', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[{"id":1}]}')
    const err = await batchUpdateTasks([{ id: 2 }, { status: 'no id' }], { file }).catch((e) => e)
    expect(err.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err.message).toContain('updates[1]')
    expect(fs.readFileSync(file, 'utf8')).toBe('{"tasks":[{"id":1}]}')
  })

  test('bad arguments get Node codes', async () => {
    expect((await updateTaskFile(null).catch((e) => e)).code).toBe('ERR_INVALID_ARG_TYPE')
    expect((await updateTaskFile({ status: 'x' }).catch((e) => e)).code).toBe('ERR_INVALID_ARG_VALUE')
    expect((await batchUpdateTasks('x').catch((e) => e)).code).toBe('ERR_INVALID_ARG_TYPE')
    expect((await updateWithLock('x.json', 'not a function').catch((e) => e)).code).toBe('ERR_INVALID_ARG_TYPE')
    expect((await updateTaskFile({ id: 1 }, { timeout: -5 }).catch((e) => e)).code).toBe('ERR_OUT_OF_RANGE')
    // Declared to return a promise: bad options reject, they do not throw.
    let cleanup
    expect(() => (cleanup = cleanupStaleSessions('x'))).not.toThrow()
    expect((await cleanup.catch((e) => e)).code).toBe('ERR_INVALID_ARG_TYPE')
    // An updater's result that JSON cannot write (BigInt, a cycle): the documented code, nothing written.
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'x.json')
    fs.writeFileSync(file, '{"kept":true}')
    const cyclic = {}
    cyclic.self = cyclic
    for (const value of [10n, { n: 1n }, cyclic]) {
      expectError(await updateWithLock(file, () => value).catch((e) => e), TypeError, 'ERR_INVALID_RETURN_VALUE')
      const lockId = await acquireLock(file)
      expectError(await updateWithLock(file, (d) => [d, value], { lockId }).catch((e) => e), TypeError, 'ERR_INVALID_RETURN_VALUE')
      await releaseLock(file, lockId)
    }
    expect(fs.readFileSync(file, 'utf8')).toBe('{"kept":true}')
  })
})

describe('coalescing', () => {
  test('concurrent updates of one file share one hold and one write; each caller gets its own result or error', async () => {
    resetLockMetrics()
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, JSON.stringify({ tasks: [], n: 0 }))
    const calls = Array.from({ length: 20 }, (_, i) =>
      updateWithLock(file, (doc) => {
        if (i === 7) {
          doc.n = -1000 // a failing updater's half-done change must go nowhere
          throw new Error('updater 7 fails')
        }
        doc.n += 1
        doc.tasks.push(i)
        return doc
      }),
    )
    const outcomes = await Promise.allSettled(calls)
    expect(outcomes[7]).toMatchObject({ status: 'rejected', reason: { message: 'updater 7 fails' } })
    const results = outcomes.filter((o, i) => i !== 7).map((o) => o.value.n)
    expect(results).toEqual(Array.from({ length: 19 }, (_, i) => i + 1))
    expect(read(file)).toEqual({ tasks: Array.from({ length: 20 }, (_, i) => i).filter((i) => i !== 7), n: 19 })
    expect(getLockMetrics().acquisitions).toBe(1)
  })

  /** An empty tasks.json of a new project, its lock held by another process until SIGUSR2. */
  async function tasksHeldUntilSigusr2() {
    const file = tasksPath(makeProject())
    fs.writeFileSync(file, '{"tasks":[]}')
    return { file, holder: await startFixture('hold-lock', [file, '--until-sigusr2'], 'LOCKED') }
  }

  test('in one batch, each caller keeps its own timeout', async () => {
    const { file, holder } = await tasksHeldUntilSigusr2()
    const settled = []
    const short = updateWithLock(file, (doc) => ({ ...doc, short: true }), { timeout: 200 })
    const long = updateWithLock(file, (doc) => ({ ...doc, long: true }), { timeout: 30000 })
    short.catch(() => settled.push('short'))
    long.then(() => settled.push('long'), () => {})
    // The short one gives up while the holder still holds; only then is the lock released.
    expect((await short.catch((e) => e)).code).toBe('ELOCKTIMEOUT')
    expect(settled).toEqual(['short'])
    holder.child.kill('SIGUSR2')
    expect(await long).toEqual({ tasks: [], long: true })
    expect(settled).toEqual(['short', 'long'])
    expect(read(file)).toEqual({ tasks: [], long: true })
    await holder.exited
  })

  // A caller that arrives while a batch already waits for the lock must not wait on that batch's
  // terms: a shorter timeout still ends its wait in time, a higher priority still goes first.
  test('a caller with a shorter timeout than the batch already waiting still gets ELOCKTIMEOUT in time', async () => {
    const { file, holder } = await tasksHeldUntilSigusr2()
    const settled = []
    const long = updateWithLock(file, (doc) => ({ ...doc, long: true }), { timeout: Infinity })
    long.then(() => settled.push('long'), () => {})
    // The batch's wait for the lock is under way once its microtask has run.
    await new Promise((resolve) => setImmediate(resolve))
    const short = updateWithLock(file, (doc) => ({ ...doc, short: true }), { timeout: 200 })
    short.catch(() => settled.push('short'))
    // Released only once the short one gave up: before, it waited on the batch's timeout (here
    // none), and this test timed out.
    expect((await short.catch((e) => e)).code).toBe('ELOCKTIMEOUT')
    expect(settled).toEqual(['short'])
    holder.child.kill('SIGUSR2')
    expect(await long).toEqual({ tasks: [], long: true })
    expect(read(file)).toEqual({ tasks: [], long: true })
    await holder.exited
  }, 30000)

  test('a caller with a higher priority than the batch already waiting is served before lower-priority waiters', async () => {
    const { file, holder } = await tasksHeldUntilSigusr2()
    const order = []
    const low = updateWithLock(file, (doc) => (order.push('update 0'), doc), { priority: 0 })
    await new Promise((resolve) => setImmediate(resolve))
    const raw = acquireLock(file, { priority: 5 }).then(async (lockId) => {
      order.push('acquireLock 5')
      await releaseLock(file, lockId)
    })
    const high = updateWithLock(file, (doc) => (order.push('update 10'), doc), { priority: 10 })
    holder.child.kill('SIGUSR2')
    await Promise.all([low, raw, high])
    expect(order).toEqual(['update 10', 'acquireLock 5', 'update 0'])
    await holder.exited
  })

  test("a batch's wait ended by one caller's timeout keeps the others' place in the queue", async () => {
    const { file, holder } = await tasksHeldUntilSigusr2()
    const order = []
    const short = updateWithLock(file, (doc) => doc, { timeout: 200 }).catch((e) => order.push(`short ${e.code}`))
    const patient = updateWithLock(file, (doc) => (order.push('patient'), doc), { timeout: Infinity })
    // Queued after the batch (whose wait is under way once its microtask has run).
    await new Promise((resolve) => setImmediate(resolve))
    const later = acquireLock(file, Infinity).then(async (lockId) => {
      order.push('later')
      await releaseLock(file, lockId)
    })
    await short
    holder.child.kill('SIGUSR2')
    await Promise.all([patient, later])
    // Before, the patient caller asked again after the short one's timeout, behind 'later'.
    expect(order).toEqual(['short ELOCKTIMEOUT', 'patient', 'later'])
    await holder.exited
  })

  test('200,000 concurrent updates of one file in one process: every one applied, no crash', () => {
    const root = makeProject()
    const file = tasksPath(root)
    const script = `
      const { updateWithLock } = require(${JSON.stringify(PACKAGE_ROOT)})
      const calls = Array.from({ length: 200000 }, () => updateWithLock(${JSON.stringify(file)}, (d) => ({ n: (d?.n ?? 0) + 1 })))
      Promise.all(calls).then(() => console.log('DONE'), (e) => console.log('ERR', e.code, e.message))`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
    expect({ status: run.status, stdout: run.stdout, stderr: run.stderr.split('\n')[0] }).toEqual({ status: 0, stdout: 'DONE\n', stderr: '' })
    expect(read(file)).toEqual({ n: 200000 })
  }, 120000)

  // Our own in-place updaters (updateTaskFile...) edit the document they are given. After a
  // caller's updater in the same batch, that was the caller's returned value itself, not what
  // was written for it: a toJSON wrapper dropped the task, and the caller's object was changed.
  test("an updateTaskFile batched after a caller's updater changes what was written for it, not the caller's object", async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[]}')
    await Promise.all([updateWithLock(file, () => ({ toJSON: () => ({ tasks: [{ id: 'a' }] }) })), updateTaskFile({ id: 1 }, { file })])
    expect(read(file).tasks).toEqual([{ id: 'a' }, { id: 1 }])
    const mine = { tasks: [] }
    const [kept] = await Promise.all([updateWithLock(file, () => mine), updateTaskFile({ id: 2 }, { file })])
    expect(read(file).tasks).toEqual([{ id: 2 }])
    expect(kept).toBe(mine)
    expect(mine).toEqual({ tasks: [] })
  })

  test('a write failure reaches every caller of the batch and changes nothing', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, '{"tasks":[]}')
    const calls = [1, 2, 3].map((id) =>
      updateWithLock(file, (doc) => {
        if (id === 3) fs.rmSync(path.join(root, '.flowforge', '.locks', 'tasks.json.lock'))
        return { tasks: [...doc.tasks, id] }
      }),
    )
    const outcomes = await Promise.allSettled(calls)
    expect(outcomes.map((o) => o.reason?.code)).toEqual(['ELOCKLOST', 'ELOCKLOST', 'ELOCKLOST'])
    expect(fs.readFileSync(file, 'utf8')).toBe('{"tasks":[]}')
  })
})

describe('crash safety', () => {
  test('SIGKILLing writers at random moments never leaves a torn file, loses an acknowledged update, or strands a temp file', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    const dir = path.dirname(file)
    // A large document makes each write long enough for kills to land mid-write.
    fs.writeFileSync(file, JSON.stringify({ version: '2.0.0', tasks: [], padding: 'x'.repeat(400000) }))
    const acked = { a: 0, b: 0 }
    let kills = 0
    const KILLS = 40
    const run = (prefix) =>
      startFixture('crash-writer', [prefix, acked[prefix] + 1], 'ACK', { cwd: root }).then(({ child, exited }) => {
        child.stdout.on('data', (chunk) => {
          for (const m of String(chunk).matchAll(/ACK (\d+)/g)) acked[prefix] = Math.max(acked[prefix], Number(m[1]))
        })
        return { child, exited }
      })
    while (kills < KILLS) {
      const writers = await Promise.all([run('a'), run('b')])
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 60))
      const victim = writers[kills % 2]
      const survivorIndex = (kills + 1) % 2
      victim.child.kill('SIGKILL')
      await victim.exited
      kills++
      const doc = read(file) // must parse, whatever instant the kill hit
      const present = new Set(doc.tasks.map((t) => t.id))
      for (const prefix of ['a', 'b']) {
        for (let seq = 1; seq <= acked[prefix]; seq++) expect(present.has(`${prefix}-${seq}`)).toBe(true)
      }
      for (const task of doc.tasks) expect(task).toEqual({ id: task.id, status: 'done', payload: `${task.id}:`.repeat(200) })
      const survivor = writers[survivorIndex]
      survivor.child.kill('SIGKILL')
      await survivor.exited
      // Resume after what the file holds: an update written but not acknowledged counts as done.
      const reread = read(file)
      for (const prefix of ['a', 'b']) {
        const seqs = reread.tasks.filter((t) => t.id.startsWith(`${prefix}-`)).map((t) => Number(t.id.slice(2)))
        acked[prefix] = Math.max(acked[prefix], ...seqs, 0)
      }
    }
    // The next write cleans whatever temp file a killed writer left.
    await updateTaskFile({ id: 'final' }, { file })
    expect(tempFilesIn(dir)).toEqual([])
    expect(acked.a + acked.b).toBeGreaterThan(KILLS)
  }, 120000)
})

describe('time tracking', () => {
  const options = (root, extra) => ({ file: path.join(root, '.flowforge', 'billing', 'time-tracking.json'), ...extra })

  test('start, auto-pause of the same instance, pause, resume, stop with hours as FlowForge computes them', async () => {
    const root = makeProject()
    fs.mkdirSync(path.join(root, '.flowforge', 'billing'))
    const opts = options(root, { user: 'alice', instanceId: 'alice@devbox:1:1' })
    const timeFile = opts.file
    fs.writeFileSync(
      timeFile,
      JSON.stringify({
        101: { status: 'closed', sessions: [{ start: '2025-09-10T09:00:00Z', end: '2025-09-10T12:00:00Z', duration: 3 }], total_hours: 3 },
        sessions: { 142: { total_seconds: 60 } }, // another tool's shape: left alone
      }),
    )
    const started = await startTaskTimer(142, opts)
    expect(started).toMatchObject({ taskId: '142', autoPaused: [] })
    expect(started.session).toEqual({ start: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/), user: 'alice', instance_id: 'alice@devbox:1:1' })
    expect((await startTaskTimer('142', opts).catch((e) => e)).code).toBe('ESTATE')

    // Another instance's active task is not paused by ours.
    await startTaskTimer(300, { ...opts, instanceId: 'bob@lap:2:2', user: 'bob' })
    const second = await startTaskTimer(143, opts)
    expect(second.autoPaused).toEqual(['142'])
    let data = read(timeFile)
    expect(data['142'].status).toBe('paused')
    expect(data['142'].current_session).toBeUndefined()
    expect(data['142'].sessions[0]).toMatchObject({ user: 'alice', reason: 'Auto-paused: started task 143', duration: 0 })
    expect(data['300'].status).toBe('active')

    await pauseTaskTimer(143, 'Lunch', opts)
    expect((await pauseTaskTimer(143, opts).catch((e) => e)).code).toBe('ESTATE')
    await resumeTaskTimer(143, opts)
    // Backdate the running session to check the hours arithmetic.
    data = read(timeFile)
    data['143'].current_session.start = new Date(Date.now() - 2.5 * 3600 * 1000).toISOString().replace(/\.\d{3}Z/, 'Z')
    fs.writeFileSync(timeFile, JSON.stringify(data))
    const stopped = await stopTaskTimer(143, opts)
    expect(stopped).toEqual({ taskId: '143', totalHours: 2.5, sessions: 2 })
    data = read(timeFile)
    expect(data['143']).toMatchObject({ status: 'closed', total_hours: 2.5, metrics: { total_hours: 2.5, session_count: 2, average_session: 1.25 } })
    expect(data['143'].sessions.map((s) => s.reason)).toEqual(['Lunch', 'Completed'])
    expect(data['143'].completed_at).toMatch(/Z$/)
    expect(data['101']).toEqual({ status: 'closed', sessions: [{ start: '2025-09-10T09:00:00Z', end: '2025-09-10T12:00:00Z', duration: 3 }], total_hours: 3 })
    expect(data.sessions).toEqual({ 142: { total_seconds: 60 } })
    expect((await stopTaskTimer(143, opts).catch((e) => e)).code).toBe('ESTATE')
  })

  test('concurrent starts from 8 instances never leave one instance with two active tasks', async () => {
    const root = makeProject()
    const opts = options(root)
    const starts = []
    for (let round = 0; round < 5; round++) {
      for (let instance = 0; instance < 8; instance++) {
        starts.push(startTaskTimer(`${instance}-${round}`, { ...opts, instanceId: `i${instance}`, user: `u${instance}` }))
      }
    }
    await Promise.all(starts)
    const data = read(opts.file)
    for (let instance = 0; instance < 8; instance++) {
      const active = Object.values(data).filter((e) => e.status === 'active' && e.current_session.instance_id === `i${instance}`)
      expect(active).toHaveLength(1)
    }
  })
})

describe('ids that are names of Object.prototype', () => {
  test("a task or session id '__proto__' or 'constructor' is an entry like any other: stored, found, and nothing else changed", () => {
    const root = makeProject()
    fs.mkdirSync(path.join(root, '.flowforge', 'billing'))
    fs.mkdirSync(path.join(root, '.flowforge', 'sessions'))
    // In a child process: a polluted Object.prototype would spoil this one.
    const script = `
      const f = require(${JSON.stringify(PACKAGE_ROOT)})
      const root = ${JSON.stringify(root)}
      const out = (p) => p.then((v) => 'ok', (e) => e.code)
      ;(async () => {
        const r = {}
        r.start = await out(f.startTaskTimer('__proto__', { root }))
        r.startCtor = await out(f.startTaskTimer('constructor', { root, instanceId: 'other' }))
        r.pause = await out(f.pauseTaskTimer('__proto__', { root }))
        r.register = await out(f.registerSession({ sessionId: '__proto__', taskId: '1' }, { root }))
        r.touch = await out(f.touchSession('__proto__', { note: 'x' }, { root }))
        r.touchCtor = await out(f.touchSession('constructor', {}, { root }))
        r.polluted = Object.keys(Object.prototype).concat(['status', 'note', 'current_session', 'sessionId'].filter((k) => k in {}))
        console.log(JSON.stringify(r))
      })()`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
    expect(run.stderr).toBe('')
    expect(JSON.parse(run.stdout)).toEqual({ start: 'ok', startCtor: 'ok', pause: 'ok', register: 'ok', touch: 'ok', touchCtor: 'ESTATE', polluted: [] })
    const times = read(path.join(root, '.flowforge', 'billing', 'time-tracking.json'))
    expect(Object.keys(times).sort()).toEqual(['__proto__', 'constructor'])
    expect(times.__proto__).toMatchObject({ status: 'paused', sessions: [expect.objectContaining({ reason: 'Paused' })] })
    expect(times.constructor).toMatchObject({ status: 'active' })
    const sessions = read(path.join(root, '.flowforge', 'sessions', 'active-sessions.json')).sessions
    expect(Object.keys(sessions)).toEqual(['__proto__'])
    expect(sessions.__proto__).toMatchObject({ sessionId: '__proto__', taskId: '1', note: 'x' })
  })
})

describe('work sessions', () => {
  test('register, touch, end, and cleanup of dead or idle sessions; an array-shaped file stays an array', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'sessions', 'active-sessions.json')
    fs.mkdirSync(path.dirname(file))
    const mine = await registerSession({ taskId: '214', branch: 'feature/214' }, { file })
    expect(mine).toMatchObject({ taskId: '214', pid: process.pid, status: 'active', hostname: require('node:os').hostname() })
    expect(mine.sessionId).toMatch(/^session-\d+-\d+$/)
    const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' })
    await registerSession({ sessionId: 'session-1-1', pid: Number(dead.stdout), taskId: '1' }, { file })
    await registerSession({ sessionId: 'session-2-2', pid: 1, hostname: 'elsewhere', lastActivity: Math.floor(Date.now() / 1000) - 25 * 3600 }, { file })
    await registerSession({ sessionId: 'session-3-3', pid: 1, hostname: 'elsewhere', lastActivity: Date.now() }, { file })

    const touched = await touchSession(mine.sessionId, { lastAction: 'commit' }, { file })
    expect(touched.lastAction).toBe('commit')
    expect(Date.parse(touched.lastActivity)).toBeGreaterThanOrEqual(Date.parse(mine.lastActivity))

    const { removed, kept } = await cleanupStaleSessions({ file })
    expect(removed.map((s) => [s.sessionId, s.staleReason])).toEqual([
      ['session-1-1', `process ${Number(dead.stdout)} is gone`],
      ['session-2-2', 'no activity for 25 h'],
    ])
    expect(kept.map((s) => s.sessionId).sort()).toEqual([mine.sessionId, 'session-3-3'].sort())

    const ended = await endSession(mine.sessionId, { file })
    expect(ended).toMatchObject({ sessionId: mine.sessionId, status: 'ended' })
    expect(listSessions({ file }).map((s) => s.sessionId)).toEqual(['session-3-3'])
    expect((await endSession(mine.sessionId, { file }).catch((e) => e)).code).toBe('ESTATE')

    fs.writeFileSync(file, JSON.stringify({ sessions: [{ sessionId: 'a', pid: 1, hostname: 'x', lastActivity: Date.now() }], custom: 1 }))
    await registerSession({ sessionId: 'b' }, { file })
    const doc = read(file)
    expect(doc.custom).toBe(1)
    expect(doc.sessions.map((s) => s.sessionId)).toEqual(['a', 'b'])
  })

  test('cleanupStaleSessions reads ISO timestamps too, and maxAgeMs replaces the 24 h', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'sessions', 'active-sessions.json')
    const hoursAgo = (h) => new Date(Date.now() - h * 3600000).toISOString()
    for (const [sessionId, hours] of [['idle-25h', 25], ['idle-2h', 2], ['active', 0]]) {
      await registerSession({ sessionId, pid: 1, hostname: 'elsewhere', lastActivity: hoursAgo(hours) }, { file })
    }
    const byDefault = await cleanupStaleSessions({ file })
    expect(byDefault.removed.map((s) => [s.sessionId, s.staleReason])).toEqual([['idle-25h', 'no activity for 25 h']])
    const withinAnHour = await cleanupStaleSessions({ file, maxAgeMs: 3600000 })
    expect(withinAnHour.removed.map((s) => [s.sessionId, s.staleReason])).toEqual([['idle-2h', 'no activity for 2 h']])
    expect(listSessions({ file }).map((s) => s.sessionId)).toEqual(['active'])
  })

  test('sessions registered at once without an id each get their own id: none replaces another', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'sessions', 'active-sessions.json')
    fs.mkdirSync(path.dirname(file))
    // Five calls within a few ms: at least three of them fall in one second.
    const registered = await Promise.all([1, 2, 3, 4, 5].map((n) => registerSession({ taskId: String(n) }, { file })))
    const ids = registered.map((s) => s.sessionId)
    for (const id of ids) expect(id).toMatch(/^session-\d+-\d+$/)
    expect(new Set(ids).size).toBe(5)
    expect(listSessions({ file }).map((s) => s.taskId).sort()).toEqual(['1', '2', '3', '4', '5'])
  })
})

describe('FileLockManager', () => {
  test('is exported as the module and as .FileLockManager, with config as FileLockManager.d.ts declares it', async () => {
    expect(require('../FileLockManager').FileLockManager).toBe(FileLockManager)
    expect(require('flowforge-lock/FileLockManager')).toBe(FileLockManager)
    const manager = new FileLockManager()
    expect(manager.config).toEqual({ timeout: 30000, staleThreshold: 30000, priority: 0, mode: 'exclusive' })
    manager.config.timeout = 250
    const root = makeProject()
    const file = tasksPath(root)
    const holder = await startFixture('hold-lock', [file], 'LOCKED')
    const err = await manager.withLock(file, async () => 'never').catch((e) => e)
    expect(err.code).toBe('ELOCKTIMEOUT')
    expect(err.message).toContain('after 250 ms') // the manager's timeout, not the default
    holder.child.kill('SIGKILL')
    await holder.exited
  })

  test('withLock resolves to fn’s result and always releases, also when fn throws', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    const manager = new FileLockManager()
    expect(await manager.withLock(file, async () => 42)).toBe(42)
    const err = await manager.withLock(file, async () => {
      throw new Error('boom')
    }).catch((e) => e)
    expect(err.message).toBe('boom')
    expect(await isLocked(file)).toBe(false)
    expect(manager.held.size).toBe(0)
  })

  test('a nested withLock or updateWithLock on the same file re-enters; a nested raw acquireLock fails fast', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    const manager = new FileLockManager()
    const result = await manager.withLock(file, async () => {
      const inner = await manager.withLock(file, async () => 'inner')
      await updateTaskFile({ id: 1, status: 'nested' }, { file })
      const raw = await acquireLock(file, 5000).catch((e) => e)
      return [inner, raw.code]
    })
    expect(result).toEqual(['inner', 'ELOCKDEADLOCK'])
    expect(read(file).tasks).toEqual([{ id: 1, status: 'nested' }])
    expect(await isLocked(file)).toBe(false)
  })

  test('an update nested in an updater of the same file is refused (ELOCKDEADLOCK), not written and then overwritten by the outer write', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, JSON.stringify({ tasks: [] }))
    const { updateWithLockSync } = integration
    const outcome = (promise) => promise.then(() => 'resolved', (e) => e.code)
    const nested = {}
    // A second copy of the package (another module registry: a plugin's own node_modules) is
    // refused too.
    let secondCopy
    jest.isolateModules(() => (secondCopy = require('../file-lock-integration')))
    await updateWithLock(file, async (doc) => {
      nested.task = await outcome(updateTaskFile({ id: 1, status: 'nested' }, { file }))
      nested.update = await outcome(updateWithLock(file, (d) => ({ ...d, inner: true })))
      nested.secondCopy = await outcome(secondCopy.updateWithLock(file, (d) => ({ ...d, copy: true })))
      doc.outer = true
      return doc
    })
    // Inside withLock, an updateWithLock re-enters; an update nested in its updater is refused too.
    await new FileLockManager().withLock(file, () =>
      updateWithLock(file, async (doc) => {
        nested.underWithLock = await outcome(updateTaskFile({ id: 2 }, { file }))
        return { ...doc, second: true }
      }),
    )
    updateWithLockSync(file, (doc) => {
      try {
        updateWithLockSync(file, (d) => ({ ...d, innerSync: true }))
        nested.sync = 'resolved'
      } catch (err) {
        nested.sync = err.code
      }
      return { ...doc, third: true }
    })
    // Each nested call either is in the file or was refused: never resolved and then lost.
    expect({ nested, onDisk: read(file) }).toEqual({
      nested: { task: 'ELOCKDEADLOCK', update: 'ELOCKDEADLOCK', secondCopy: 'ELOCKDEADLOCK', underWithLock: 'ELOCKDEADLOCK', sync: 'ELOCKDEADLOCK' },
      onDisk: { tasks: [], outer: true, second: true, third: true },
    })
    expect(await isLocked(file)).toBe(false)
  })

  test('concurrent updates re-entering one hold (inside withLock, or with { lockId }) apply one after another: none lost', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    fs.writeFileSync(file, JSON.stringify({ tasks: [] }))
    const manager = new FileLockManager()
    const written = await manager.withLock(file, () => Promise.all([1, 2, 3, 4].map((id) => updateTaskFile({ id }, { file }))))
    expect(written.map((t) => t.id)).toEqual([1, 2, 3, 4])
    expect(read(file).tasks.map((t) => t.id)).toEqual([1, 2, 3, 4])
    const lockId = await acquireLock(file)
    try {
      const add = (id) => updateWithLock(file, async (doc) => ({ tasks: [...doc.tasks, { id }] }), { lockId })
      await Promise.all([5, 6, 7].map(add))
      // A synchronous update cannot wait for the asynchronous ones in flight under the same hold.
      const inFlight = add(8)
      expect(() => integration.updateWithLockSync(file, (doc) => doc, { lockId })).toThrow(expect.objectContaining({ code: 'ELOCKDEADLOCK' }))
      await inFlight
    } finally {
      await releaseLock(file, lockId)
    }
    expect(read(file).tasks.map((t) => t.id)).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
  })

  test('unrelated concurrent withLock calls on one file still queue (re-entry is per async context)', async () => {
    const root = makeProject()
    const file = tasksPath(root)
    const manager = new FileLockManager()
    let inside = 0
    let overlap = 0
    await Promise.all(
      Array.from({ length: 20 }, () =>
        manager.withLock(file, async () => {
          inside++
          if (inside > 1) overlap++
          await new Promise((r) => setTimeout(r, 1))
          inside--
        }),
      ),
    )
    expect(overlap).toBe(0)
  })

  test('acquire/release/releaseAll/getMetrics', async () => {
    const root = makeProject()
    const manager = new FileLockManager({ timeout: 1000 })
    await manager.acquire(tasksPath(root))
    await manager.acquire(path.join(root, '.flowforge', 'time-tracking.json'))
    expect(manager.held.size).toBe(2)
    expect(await manager.releaseAll()).toBe(2)
    expect(await isLocked(tasksPath(root))).toBe(false)
    const id = await manager.acquire(tasksPath(root))
    expect(await manager.release(tasksPath(root))).toBe(true)
    expect(await releaseLock(tasksPath(root), id)).toBe(false)
    expect(manager.getMetrics().acquisitions).toBeGreaterThan(0)
  })

  test('getMetrics has the shape FileLockManager.d.ts declares (LockMetrics, with deadLetters); updateJson rejects bad options instead of throwing', async () => {
    const manager = new FileLockManager()
    expect(manager.getMetrics()).toEqual(getLockMetrics())
    expect(manager.getMetrics().deadLetters).toEqual({ kept: expect.any(Number), replayed: expect.any(Number), dropped: expect.any(Number) })
    const root = makeProject()
    let promise
    expect(() => (promise = manager.updateJson(tasksPath(root), (d) => d, { timeout: -1 }))).not.toThrow()
    expectError(await promise.catch((e) => e), RangeError, 'ERR_OUT_OF_RANGE')
  })

  test('updateJson honours the UpdateOptions it declares: ifVersion refuses a stale write (EVERSION), lockId writes under the hold', async () => {
    const { readJSONVersioned } = integration
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'doc.json')
    const manager = new FileLockManager({ timeout: 1000 })
    await manager.updateJson(file, () => ({ n: 1 }))
    const { version } = await readJSONVersioned(file)
    await manager.updateJson(file, () => ({ n: 2 }))
    expectError(await manager.updateJson(file, () => ({ n: 'stale' }), { ifVersion: version }).catch((e) => e), Error, 'EVERSION')
    expect(read(file)).toEqual({ n: 2 })
    const lockId = await manager.acquire(file)
    expect(await manager.updateJson(file, (d) => ({ n: d.n + 1 }), { lockId, timeout: 0 })).toEqual({ n: 3 })
    await manager.release(file, lockId)
    expect(read(file)).toEqual({ n: 3 })
  })

  test('exit handlers are installed once however many managers and copies of the package exist', () => {
    // In a fresh process: this one's handlers were installed by earlier tests.
    const script = `
      const counts = () => ['exit', 'SIGINT', 'SIGTERM'].map((e) => process.listenerCount(e))
      const out = { before: counts() }
      const load = () => require(${JSON.stringify(path.join(PACKAGE_ROOT, 'FileLockManager'))})
      new (load())()
      out.first = counts()
      for (let i = 0; i < 5; i++) new (load())()
      out.more = counts()
      // A second copy of the package, as two installs in one node_modules tree would be.
      for (const key of Object.keys(require.cache)) delete require.cache[key]
      new (load())()
      out.copy = counts()
      console.log(JSON.stringify(out))`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
    expect(run.stderr).toBe('')
    const { before, first, more, copy } = JSON.parse(run.stdout)
    expect(first.reduce((a, b) => a + b)).toBeGreaterThan(before.reduce((a, b) => a + b))
    expect(more).toEqual(first)
    expect(copy).toEqual(first)
  })
})

describe('metrics', () => {
  test('cover every lock of the process, overall and per file', async () => {
    resetLockMetrics()
    const root = makeProject()
    const file = tasksPath(root)
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const lockId = await acquireLock(file)
        await new Promise((r) => setTimeout(r, 2))
        await releaseLock(file, lockId)
      }),
    )
    const m = getLockMetrics()
    expect(m).toMatchObject({ acquisitions: 10, totalTimeouts: 0, staleLocksRecovered: 0 })
    for (const key of ['averageWaitTime', 'maxWaitTime', 'p50WaitTime', 'p99WaitTime', 'averageHoldTime']) {
      expect(typeof m[key]).toBe('number')
    }
    expect(m.contendedAcquisitions).toBeGreaterThan(0)
    expect(m.maxWaitTime).toBeGreaterThanOrEqual(m.p99WaitTime)
    expect(m.averageHoldTime).toBeGreaterThan(0)
    expect(m.files[file].acquisitions).toBe(10)
    resetLockMetrics()
    expect(getLockMetrics().acquisitions).toBe(0)
  })
})
