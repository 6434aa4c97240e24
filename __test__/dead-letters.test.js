'use strict'
// The dead-letter queue (issue 14, item 4): what is kept and what is not, replay in call order
// under the lock, failures kept with attempts + 1, the CLI, and at most once across a replay
// SIGKILLed at each instant of its locked step. Holders are real processes; a frozen holder is
// one stopped with SIGSTOP. No sleeps: timeouts of 0 (one try) and events printed by children.
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const ffl = require('../index.js')
const { makeProject, startFixture, runFixture, PACKAGE_ROOT } = require('./helpers')
const { failpointBinary, failpointEnv } = require('./failpoint-binary.js')
const { untilStopped } = require('./fixtures/wait-for')

const BIN = path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js')

function project() {
  const root = makeProject('ffl-dead-')
  fs.mkdirSync(path.join(root, '.flowforge', 'billing'))
  fs.mkdirSync(path.join(root, '.flowforge', 'sessions'))
  return root
}

const files = (root) => ({
  tasks: path.join(root, '.flowforge', 'tasks.json'),
  times: path.join(root, '.flowforge', 'billing', 'time-tracking.json'),
  sessions: path.join(root, '.flowforge', 'sessions', 'active-sessions.json'),
})
const readJson = (file) => JSON.parse(fs.readFileSync(file, 'utf8'))
const dirOf = (root) => path.join(root, '.flowforge', '.dead-letters')

/** A holder process of `file`'s lock; `stop()` freezes it (SIGSTOP), `end()` kills it. */
async function holder(file) {
  const { child, exited } = await startFixture('hold-lock', [file], 'LOCKED')
  return {
    stop: () => child.kill('SIGSTOP'),
    end: async () => {
      child.kill('SIGKILL')
      await exited
    },
  }
}

/** Runs `script` in a process built with failpoints, `actions` set; its last stdout line as JSON. */
function runFailpointScript(script, actions) {
  const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, ...failpointEnv(failpointBinary(), actions) } })
  return JSON.parse(run.stdout.trim().split('\n').pop())
}

async function rejection(promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected a rejection')
}

test('a timed-out update is kept (0600, atomic, with payload, error, time, attempts) and the caller gets its error', async () => {
  const root = project()
  const h = await holder(files(root).tasks)
  const err = await rejection(ffl.updateTaskFile({ id: 7, title: 'kept' }, { root, timeout: 0 }))
  await h.end()
  expect(err.code).toBe('ELOCKTIMEOUT')
  const letterFile = path.join(dirOf(root), `${err.deadLetterId}.json`)
  expect(err.deadLetterFile).toBe(letterFile)
  expect(fs.statSync(letterFile).mode & 0o777).toBe(0o600)
  expect(fs.readdirSync(dirOf(root)).sort()).toEqual(['.history', `${err.deadLetterId}.json`])
  expect(fs.statSync(dirOf(root)).mode & 0o777).toBe(0o700)
  expect(fs.statSync(path.join(dirOf(root), '.history')).mode & 0o777).toBe(0o600)
  const letter = readJson(letterFile)
  expect(letter).toMatchObject({
    id: err.deadLetterId,
    operation: 'updateTaskFile',
    args: [{ id: 7, title: 'kept' }, { root }],
    file: files(root).tasks,
    error: { code: 'ELOCKTIMEOUT' },
    attempts: 1,
    pid: process.pid,
  })
  expect(Date.parse(letter.firstFailedAt)).toBeGreaterThan(0)
  expect(ffl.listDeadLetters({ root }).map((l) => l.id)).toEqual([err.deadLetterId])
})

test('caller bugs and deadLetter: false are never kept', async () => {
  const root = project()
  const { tasks } = files(root)
  expect((await rejection(ffl.updateTaskFile({ title: 'no id' }, { root }))).code).toBe('ERR_INVALID_ARG_VALUE')
  expect((await rejection(ffl.batchUpdateTasks('nope', { root }))).code).toBe('ERR_INVALID_ARG_TYPE')
  expect((await rejection(ffl.pauseTaskTimer('9', { root }))).code).toBe('ESTATE')
  expect((await rejection(ffl.touchSession('missing', {}, { root }))).code).toBe('ESTATE')
  fs.writeFileSync(tasks, '[]')
  expect((await rejection(ffl.updateTaskFile({ id: 1 }, { root }))).code).toBe('EDATASHAPE')
  fs.writeFileSync(tasks, '{ not json')
  expect((await rejection(ffl.updateTaskFile({ id: 1 }, { root }))).code).toBe('EJSONPARSE')
  fs.rmSync(tasks)
  const h = await holder(tasks)
  const err = await rejection(ffl.updateTaskFile({ id: 1 }, { root, timeout: 0, deadLetter: false }))
  await h.end()
  expect(err.code).toBe('ELOCKTIMEOUT')
  expect(err.deadLetterId).toBeUndefined()
  expect(fs.existsSync(dirOf(root))).toBe(false)
})

// Kept options that JSON cannot hold (a BigInt, a cycle; tasks, sessions and fields are refused
// at the call) cannot be kept: the caller got its own error with a bare `deadLetterError` ("Do
// not know how to serialize a BigInt"), no code, not saying that its call was not kept.
test('kept options JSON cannot hold: the caller gets its error, and a coded deadLetterError saying the call was not kept', async () => {
  const root = project()
  const holders = [await holder(files(root).tasks), await holder(files(root).times)]
  const cyclic = {}
  cyclic.self = cyclic
  const errors = [
    await rejection(ffl.updateTaskFile({ id: 1 }, { root, timeout: 0, status: 10n })),
    await rejection(ffl.startTaskTimer('1', { root, timeout: 0, user: cyclic })),
  ]
  for (const h of holders) await h.end()
  for (const err of errors) {
    expect(err.code).toBe('ELOCKTIMEOUT')
    expect(err.deadLetterId).toBeUndefined()
    expect(err.deadLetterError).toMatch(/^ERR_DEAD_LETTER_NOT_JSON .*not kept/s)
  }
  expect(ffl.listDeadLetters({ root })).toEqual([])
})

// Callers coalesced into one batch get one error object; each kept letter wrote its id onto it,
// so the first caller's error named the second caller's letter (dropping it by that id dropped
// the other caller's operation, and its own stayed to be replayed).
test("two calls timed out in one batch each get the id of their own letter", async () => {
  const root = project()
  const h = await holder(files(root).tasks)
  const [a, b] = await Promise.all([
    rejection(ffl.updateTaskFile({ id: 1 }, { root, timeout: 0 })),
    rejection(ffl.updateTaskFile({ id: 2 }, { root, timeout: 0 })),
  ])
  await h.end()
  expect([a.code, b.code]).toEqual(['ELOCKTIMEOUT', 'ELOCKTIMEOUT'])
  const letters = ffl.listDeadLetters({ root })
  expect([a.deadLetterId, b.deadLetterId]).toEqual(letters.map((l) => l.id))
  expect(letters.map((l) => l.args[0].id)).toEqual([1, 2])
})

test('replay applies in call order under the lock; a failure stays with attempts + 1 and holds back later letters of its file', async () => {
  const root = project()
  const { tasks, times } = files(root)
  const h = await holder(tasks)
  const a = await rejection(ffl.updateTaskFile({ id: 1, title: 'first' }, { root, timeout: 0 }))
  const b = await rejection(ffl.updateTaskFile({ id: 1, title: 'second' }, { root, timeout: 0 }))
  // Another file's letter is not held back by the tasks' failure.
  const timerHolder = await holder(times)
  const c = await rejection(ffl.startTaskTimer('T', { root, timeout: 0 }))
  await timerHolder.end()
  const ids = ffl.listDeadLetters({ root }).map((l) => l.id)
  expect(ids).toEqual([a.deadLetterId, b.deadLetterId, c.deadLetterId])

  const busy = await ffl.replayDeadLetters({ root, timeout: 0 })
  expect(busy.results.map((r) => [r.id, r.status])).toEqual([
    [a.deadLetterId, 'failed'],
    [b.deadLetterId, 'skipped'],
    [c.deadLetterId, 'replayed'],
  ])
  expect(busy.results[0].error.code).toBe('ELOCKTIMEOUT')
  const kept = ffl.listDeadLetters({ root })
  expect(kept.map((l) => [l.id, l.attempts])).toEqual([
    [a.deadLetterId, 2],
    [b.deadLetterId, 1],
  ])
  expect(readJson(times).T.status).toBe('active')

  await h.end()
  const done = await ffl.replayDeadLetters({ root })
  expect(done.results.map((r) => r.status)).toEqual(['replayed', 'replayed'])
  expect(readJson(tasks).tasks).toEqual([{ id: 1, title: 'second' }])
  expect(ffl.listDeadLetters({ root })).toEqual([])
  expect(ffl.getLockMetrics().deadLetters).toMatchObject({ kept: expect.any(Number), replayed: expect.any(Number) })
})

test('a kept update keeps its ifVersion: replayed over a newer commit it fails with EVERSION and stays', async () => {
  const root = project()
  const { tasks } = files(root)
  await ffl.updateTaskFile({ id: 1, status: 'todo' }, { root })
  const { version } = await ffl.readJSONVersioned(tasks)
  const h = await holder(tasks)
  const err = await rejection(ffl.updateTaskFile({ id: 1, status: 'done-by-A' }, { root, ifVersion: version, timeout: 0 }))
  await h.end()
  expect(err.code).toBe('ELOCKTIMEOUT')
  // Another writer commits after A read `version`: A's condition no longer holds.
  await ffl.updateTaskFile({ id: 1, status: 'done-by-B' }, { root })

  const replay = await ffl.replayDeadLetters({ root })
  expect(replay.results.map((r) => [r.id, r.status, r.error?.code])).toEqual([[err.deadLetterId, 'failed', 'EVERSION']])
  expect(readJson(tasks).tasks).toEqual([{ id: 1, status: 'done-by-B' }])
  expect(ffl.listDeadLetters({ root }).map((l) => l.id)).toEqual([err.deadLetterId])
})

test('an update that failed with ENOTDURABLE was applied: it is not kept, so never applied twice', async () => {
  const root = project()
  const { tasks } = files(root)
  await ffl.updateTaskFile({ id: 1, status: 'todo' }, { root })
  const run = runFailpointScript(
    `require(${JSON.stringify(path.join(PACKAGE_ROOT, 'index.js'))}).updateTaskFile({ id: 1, status: 'in-progress' }, { root: ${JSON.stringify(root)} })
      .then(() => console.log('{}'), (e) => console.log(JSON.stringify({ code: e.code, kept: e.deadLetterId ?? null })))`,
    'store::dir_sync=return(5)',
  )
  expect(run).toEqual({ code: 'ENOTDURABLE', kept: null })
  expect(readJson(tasks).tasks).toEqual([{ id: 1, status: 'in-progress' }])
  expect(ffl.listDeadLetters({ root })).toEqual([])
})

test('the CLI: update keeps its write; list, show, replay, drop; status --json and doctor show the directory', async () => {
  const root = project()
  const data = path.join(root, '.flowforge', 'notes.json')
  const cli = (args, input) => spawnSync(process.execPath, [BIN, ...args], { cwd: root, input, encoding: 'utf8' })
  const h = await holder(data)
  const timedOut = cli(['update', '--timeout', '0', data], '{"n":1}')
  const dropped = cli(['update', '--timeout', '0', data], '{"n":2}')
  await h.end()
  expect(timedOut.status).toBe(75)
  const listed = JSON.parse(cli(['dead-letters', 'list', '--json']).stdout)
  expect(listed.map((l) => [l.operation, l.args[1]])).toEqual([
    ['writeJson', { n: 1 }],
    ['writeJson', { n: 2 }],
  ])
  expect(dropped.status).toBe(75)
  expect(cli(['dead-letters', 'list']).stdout).toContain('writeJson')
  expect(JSON.parse(cli(['dead-letters', 'show', listed[0].id]).stdout).id).toBe(listed[0].id)
  const status = JSON.parse(cli(['status', '--json']).stdout)
  expect(status.deadLetters).toEqual({ dir: dirOf(root), pending: 2, kept: 2, replayed: 0, dropped: 0 })
  expect(cli(['doctor']).stdout).toContain(`2 dead letter(s) in ${dirOf(root)}`)
  expect(cli(['dead-letters', 'drop', listed[1].id]).status).toBe(0)
  expect(cli(['dead-letters', 'show', 'nope']).status).toBe(64)
  const stillHeld = await holder(data)
  const blocked = cli(['dead-letters', 'replay', '--timeout', '0'])
  await stillHeld.end()
  expect(blocked.status).toBe(75) // a letter is left
  const replay = cli(['dead-letters', 'replay'])
  expect(replay.status).toBe(0)
  expect(replay.stdout).toContain('1 replayed, 0 failed, 0 skipped.')
  expect(readJson(data)).toEqual({ n: 1 })
  expect(JSON.parse(cli(['status', '--json']).stdout).deadLetters).toEqual({ dir: dirOf(root), pending: 0, kept: 2, replayed: 1, dropped: 1 })
})

describe('at most once, with the replay SIGKILLed inside its locked step', () => {
  /** One kept startTaskTimer: applying it twice would fail (the timer is active) or add a session. */
  async function oneLetter() {
    const root = project()
    const h = await holder(files(root).times)
    const err = await rejection(ffl.startTaskTimer('42', { root, timeout: 0 }))
    await h.end()
    return { root, id: err.deadLetterId }
  }

  async function killedAt(root, instant) {
    const { child, exited, line } = await startFixture('prio-replay', [root], 'PAUSED', { env: { FLOWFORGE_LOCK_TEST_PAUSE: instant } })
    child.kill('SIGKILL')
    await exited
    return line
  }

  const replayInChild = async (root) => JSON.parse((await runFixture('prio-replay', [root])).stdout.replace(/^RESULT /, ''))

  test('killed after journalling, before the write: the re-run applies it, once', async () => {
    const { root, id } = await oneLetter()
    expect(await killedAt(root, 'dead-letters::after-journal')).toMatch(new RegExp(`^PAUSED ${id} `))
    expect(fs.existsSync(files(root).times)).toBe(false)
    const again = await replayInChild(root)
    expect(again.results).toEqual([expect.objectContaining({ id, status: 'replayed' })])
    const entry = readJson(files(root).times)['42']
    expect(entry.status).toBe('active')
    expect(entry.sessions).toEqual([])
    expect(fs.readdirSync(dirOf(root)).filter((n) => n.endsWith('.json'))).toEqual([])
  })

  test('killed after the write, before the letter went: the re-run does not apply it again', async () => {
    const { root, id } = await oneLetter()
    await killedAt(root, 'dead-letters::after-commit')
    const written = fs.readFileSync(files(root).times, 'utf8')
    const again = await replayInChild(root)
    expect(again.results).toEqual([{ id, status: 'already-applied' }])
    expect(fs.readFileSync(files(root).times, 'utf8')).toBe(written)
    expect(ffl.listDeadLetters({ root })).toEqual([])
  })

  test('killed after the write, then the file changed: in doubt, never applied again', async () => {
    const { root, id } = await oneLetter()
    await killedAt(root, 'dead-letters::after-commit')
    await ffl.stopTaskTimer('42', { root })
    const again = await replayInChild(root)
    expect(again.results).toEqual([expect.objectContaining({ id, status: 'in-doubt' })])
    expect(readJson(files(root).times)['42'].status).toBe('closed')
    expect(ffl.listDeadLetters({ root })[0].inDoubt).toContain('cannot be told')
    await ffl.dropDeadLetter(id, { root })
    expect(ffl.listDeadLetters({ root })).toEqual([])
  })

  test('killed after the write, then the file changed back to its bytes before: in doubt, never applied again', async () => {
    const root = project()
    const tasks = files(root).tasks
    await ffl.updateTaskFile({ id: 42, status: 'todo' }, { root })
    const before = fs.readFileSync(tasks, 'utf8')
    const h = await holder(tasks)
    const { deadLetterId: id } = await rejection(ffl.updateTaskFile({ id: 42, status: 'in-progress' }, { root, timeout: 0 }))
    await h.end()
    await killedAt(root, 'dead-letters::after-commit')
    expect(readJson(tasks).tasks).toEqual([{ id: 42, status: 'in-progress' }])
    // Someone sets the task back: the file has the very bytes it had before the replay's commit.
    await ffl.updateTaskFile({ id: 42, status: 'todo' }, { root })
    expect(fs.readFileSync(tasks, 'utf8')).toBe(before)
    const again = await replayInChild(root)
    expect(again.results).toEqual([expect.objectContaining({ id, status: 'in-doubt' })])
    expect(readJson(tasks).tasks).toEqual([{ id: 42, status: 'todo' }])
  })

  // The check of the file's version after an interrupted replay threw out of the whole replay
  // when the version could not be read (a corrupt sidecar): no letter of any file was replayed.
  test('killed after journalling, then the version sidecar corrupt: that letter fails and stays, the others are replayed', async () => {
    const { root, id } = await oneLetter()
    const h = await holder(files(root).tasks)
    const { deadLetterId: other } = await rejection(ffl.updateTaskFile({ id: 1, title: 'other file' }, { root, timeout: 0 }))
    await h.end()
    await killedAt(root, 'dead-letters::after-journal')
    const sidecar = path.join(path.dirname(files(root).times), '.time-tracking.json.flowforge-version')
    fs.writeFileSync(sidecar, 'not a sidecar')
    const again = await replayInChild(root)
    expect(again.results).toEqual([
      { id, status: 'failed', error: expect.objectContaining({ code: 'EVERSIONCORRUPT' }) },
      expect.objectContaining({ id: other, status: 'replayed' }),
    ])
    expect(ffl.listDeadLetters({ root })).toEqual([expect.objectContaining({ id, attempts: 2, error: expect.objectContaining({ code: 'EVERSIONCORRUPT' }) })])
    expect(fs.existsSync(files(root).times)).toBe(false)
    // Repaired as the error says (the sidecar deleted), the letter is applied, once.
    fs.unlinkSync(sidecar)
    expect((await replayInChild(root)).results).toEqual([expect.objectContaining({ id, status: 'replayed' })])
    expect(readJson(files(root).times)['42'].status).toBe('active')
  })
})

// A letter was written from the caller's objects as they were when the operation failed, so a
// caller that reused or changed them after the call got a letter that replays what it never
// asked for (and a changed options.root put the letter, and its replay, in another project).
test('a letter keeps the arguments as they were at the call, not as the caller changed them afterwards', async () => {
  const root = project()
  const elsewhere = project()
  const holders = [await holder(files(root).tasks), await holder(files(root).times), await holder(files(root).sessions)]
  const calls = [
    ['updateTaskFile', [{ id: 1, title: 'asked' }, { root, timeout: 0, status: 'asked' }]],
    ['batchUpdateTasks', [[{ id: 2, title: 'asked' }], { root, timeout: 0 }]],
    ['startTaskTimer', ['3', { root, timeout: 0, user: 'asked', instanceId: 'asked' }]],
    ['pauseTaskTimer', ['3', 'asked', { root, timeout: 0 }]],
    ['resumeTaskTimer', ['3', { root, timeout: 0, user: 'asked' }]],
    ['stopTaskTimer', ['3', 'asked', { root, timeout: 0 }]],
    ['registerSession', [{ sessionId: 's-1', task: 'asked' }, { root, timeout: 0 }]],
    ['touchSession', ['s-1', { task: 'asked' }, { root, timeout: 0 }]],
    ['endSession', ['s-1', { root, timeout: 0 }]],
  ]
  /** What a caller does with its objects once the call returned: reuses them for something else. */
  const change = (value) => {
    if (Array.isArray(value)) value.forEach(change)
    else if (value !== null && typeof value === 'object') {
      for (const [key, v] of Object.entries(value)) {
        if (v === 'asked') value[key] = 'changed'
        else if (key === 'root') value[key] = elsewhere
        else change(v)
      }
      if (!('root' in value) && 'id' in value) value.extra = 'changed'
    }
  }
  const errors = await Promise.all(
    calls.map(([name, args]) => {
      const failed = rejection(ffl[name](...args))
      change(args)
      return failed
    }),
  )
  for (const h of holders) await h.end()
  expect(errors.map((e) => e.code)).toEqual(calls.map(() => 'ELOCKTIMEOUT'))
  expect(ffl.listDeadLetters({ root: elsewhere })).toEqual([])
  const letters = ffl.listDeadLetters({ root })
  expect(letters.map((l) => l.id)).toEqual(errors.map((e) => e.deadLetterId))
  expect(letters.map((l) => [l.operation, JSON.stringify(l.args).includes('changed'), l.args.at(-1).root])).toEqual(
    calls.map(([name]) => [name, false, root]),
  )
  expect(letters[0].args[0]).toEqual({ id: 1, title: 'asked' })
  expect(letters[1].args[0]).toEqual([{ id: 2, title: 'asked' }])
  expect(letters[6].args[0]).toMatchObject({ sessionId: 's-1', task: 'asked' })
})

test('a letter kept with a relative file or root names absolute paths: replayed at most once, and from any directory to the same file', async () => {
  const root = project()
  const other = project()
  const relData = path.join(root, '.flowforge', 'data.json')
  const holders = [await holder(files(root).times), await holder(relData)]
  const relFile = await rejection(ffl.startTaskTimer('42', { file: path.relative(process.cwd(), files(root).times), timeout: 0 }))
  const relRoot = await rejection(ffl.startTaskTimer('43', { root: path.relative(process.cwd(), root), timeout: 0 }))
  const writeJson = require('../lib/dead-letters.js').writeJson
  const relWrite = await rejection(writeJson(path.relative(process.cwd(), relData), { v: 1 }, { timeout: 0 }))
  for (const h of holders) await h.end()
  const letters = ffl.listDeadLetters({ root })
  expect(letters.map((l) => l.id)).toEqual([relFile.deadLetterId, relRoot.deadLetterId, relWrite.deadLetterId])
  for (const letter of letters) {
    expect(path.isAbsolute(letter.file)).toBe(true)
    const opts = letter.args[letter.args.length - 1]
    for (const p of [opts.file, opts.root, letter.operation === 'writeJson' ? letter.args[0] : undefined]) if (p !== undefined) expect(path.isAbsolute(p)).toBe(true)
  }
  // Killed after the first commit, before its letter went; then the timer is stopped by hand.
  const { child, exited } = await startFixture('prio-replay', [root], 'PAUSED', { env: { FLOWFORGE_LOCK_TEST_PAUSE: 'dead-letters::after-commit' } })
  child.kill('SIGKILL')
  await exited
  await ffl.stopTaskTimer('42', { root })
  // Replayed from another directory (another project's root).
  const again = JSON.parse((await runFixture('prio-replay', [root], { cwd: other })).stdout.replace(/^RESULT /, ''))
  expect(again.results.map((r) => r.status)).toEqual(['in-doubt', 'skipped', 'replayed'])
  expect(readJson(files(root).times)['42'].status).toBe('closed')
  expect(readJson(files(root).times)['43']).toBeUndefined()
  expect(readJson(relData)).toEqual({ v: 1 })
  expect(fs.readdirSync(path.join(other, '.flowforge'))).toEqual(['billing', 'sessions'])
})

test('a call without options (as FILE_LOCKING.md writes them) is kept whole: its task or batch is in the letter and replays', async () => {
  const root = project()
  const lockFile = path.join(root, '.flowforge', '.locks', 'tasks.json.lock')
  // Each write stops just before its lock check; the test then removes the lock file (ELOCKLOST).
  const script = `
    const ffl = require(${JSON.stringify(PACKAGE_ROOT)})
    const kept = (p) => p.then(() => null, (e) => ({ code: e.code, id: e.deadLetterId }))
    ;(async () => {
      const one = await kept(ffl.updateTaskFile({ id: 7, title: 'kept', status: 'ready' }))
      const batch = await kept(ffl.batchUpdateTasks([{ id: 8, status: 'blocked' }, { id: 9 }]))
      console.log(JSON.stringify({ one, batch }))
    })()`
  const child = require('node:child_process').spawn(process.execPath, ['-e', script], {
    cwd: root,
    env: { ...process.env, ...failpointEnv(failpointBinary(), 'store::before_verify=return(stop)') },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const exited = new Promise((resolve) => child.on('close', (code) => resolve(code)))
  let stdout = ''
  child.stdout.on('data', (c) => (stdout += c))
  let stops = 0
  require('node:readline').createInterface({ input: child.stderr }).on('line', (line) => {
    if (!line.startsWith('FAILPOINT store::before_verify')) return
    stops++
    fs.rmSync(lockFile)
    untilStopped(child.pid).then(() => child.kill('SIGCONT'))
  })
  expect(await exited).toBe(0)
  expect(stops).toBe(2)
  const { one, batch } = JSON.parse(stdout)
  expect([one.code, batch.code]).toEqual(['ELOCKLOST', 'ELOCKLOST'])
  const letters = ffl.listDeadLetters({ root })
  expect(letters.map((l) => [l.operation, l.args[0]])).toEqual([
    ['updateTaskFile', { id: 7, title: 'kept', status: 'ready' }],
    ['batchUpdateTasks', [{ id: 8, status: 'blocked' }, { id: 9 }]],
  ])
  const replay = await ffl.replayDeadLetters({ root })
  expect(replay.results.map((r) => r.status)).toEqual(['replayed', 'replayed'])
  expect(readJson(files(root).tasks).tasks).toEqual([{ id: 7, title: 'kept', status: 'ready' }, { id: 8, status: 'blocked' }, { id: 9 }])
}, 300000)

test('two replays at once apply each letter once (the letter is read again under the lock)', async () => {
  const root = project()
  const h = await holder(files(root).times)
  for (let i = 0; i < 10; i++) await rejection(ffl.startTaskTimer(`T${i}`, { root, timeout: 0, instanceId: `i${i}` }))
  await h.end()
  const ids = ffl.listDeadLetters({ root }).map((l) => l.id)
  expect(ids).toHaveLength(10)
  const runs = await Promise.all([runFixture('prio-replay', [root]), runFixture('prio-replay', [root])])
  const results = runs.flatMap((run) => JSON.parse(run.stdout.replace(/^RESULT /, '')).results)
  for (const id of ids) {
    const mine = results.filter((r) => r.id === id).map((r) => r.status)
    expect(mine.filter((status) => status === 'replayed')).toHaveLength(1)
    expect(mine.every((status) => status === 'replayed' || status === 'gone')).toBe(true)
  }
  const times = readJson(files(root).times)
  expect(Object.keys(times).sort()).toEqual(Array.from({ length: 10 }, (_, i) => `T${i}`).sort())
  expect(Object.values(times).every((t) => t.status === 'active' && t.sessions.length === 0)).toBe(true)
})

test('an outage: every update that timed out while the holders were frozen is replayed, none lost, none twice', async () => {
  const root = project()
  const f = files(root)
  const holders = await Promise.all([holder(f.tasks), holder(f.times), holder(f.sessions)])
  for (const h of holders) h.stop()
  const o = { root, timeout: 0 }
  const calls = [
    ...Array.from({ length: 20 }, (_, i) => () => ffl.updateTaskFile({ id: i + 1, title: `task ${i + 1}` }, o)),
    () => ffl.batchUpdateTasks([{ id: 21 }, { id: 22 }, { id: 1, status: 'done' }], o),
    () => ffl.startTaskTimer('T1', o),
    () => ffl.pauseTaskTimer('T1', 'lunch', o),
    () => ffl.resumeTaskTimer('T1', o),
    () => ffl.stopTaskTimer('T1', o),
    () => ffl.registerSession({ sessionId: 's1', taskId: 'T1' }, o),
    () => ffl.touchSession('s1', { step: 2 }, o),
    () => ffl.registerSession({ sessionId: 's2' }, o),
    () => ffl.endSession('s1', o),
  ]
  // In call order, each waiting for the previous one's failure, as a script would call them.
  const codes = []
  for (const call of calls) codes.push((await rejection(call())).code)
  expect(new Set(codes)).toEqual(new Set(['ELOCKTIMEOUT']))
  const kept = ffl.listDeadLetters({ root }).length
  for (const h of holders) await h.end()

  const first = await ffl.replayDeadLetters({ root })
  const second = await ffl.replayDeadLetters({ root })
  const tasks = readJson(f.tasks).tasks
  const timer = readJson(f.times).T1
  const sessions = readJson(f.sessions).sessions
  expect(first.results.map((r) => r.status)).toEqual(calls.map(() => 'replayed'))
  expect(second.results).toEqual([])
  expect(tasks.map((t) => t.id)).toEqual(Array.from({ length: 22 }, (_, i) => i + 1))
  expect(tasks[0]).toEqual({ id: 1, title: 'task 1', status: 'done' })
  expect(timer.status).toBe('closed')
  expect(timer.sessions.map((s) => s.reason)).toEqual(['lunch', 'Completed'])
  expect(Object.keys(sessions)).toEqual(['s2'])
  console.log(
    `dead-letter outage figure: ${calls.length} calls timed out behind 3 SIGSTOPped holders, ${kept} kept, ` +
      `${first.replayed} replayed (0 failed), 2nd replay ${second.results.length}; tasks ${tasks.length}/22, ` +
      `timer sessions ${timer.sessions.length}/2, sessions left ${Object.keys(sessions)}`,
  )
}, 60000)
