'use strict'
// Which lock file a call uses (docs/lock-files.md, "Where locks live"): decided afresh at every
// acquire, so that processes never lock one file through two lock files; a hold found by its
// lockId, whatever its path resolves to by the time it is released; and one lock file spelled
// through a symlinked directory seen as one lock. Each case drives real processes
// (fixtures/lock-driver.js) and waits on their answers, never on time.
const fs = require('node:fs')
const path = require('node:path')
const { acquireLock, releaseLock } = require('../file-lock')
const { makeProject, lockDrivers } = require('./helpers')

jest.setTimeout(60000)

const startDriver = lockDrivers()
const lockPathOf = (root, name) => path.join(root, '.flowforge', '.locks', `${name}.lock`)

describe('where a lock lives is decided at every call', () => {
  test('a .flowforge/ made in a nearer directory applies to the next acquire: no second holder through the old lock file', async () => {
    const project = makeProject()
    fs.mkdirSync(path.join(project, 'sub'))
    const file = path.join(project, 'sub', 'data.json')
    const [a, b] = await Promise.all([startDriver(), startDriver()])
    // A has resolved the file (and would have remembered where its lock lives).
    expect((await a.call('lockKey', { file })).value).toBe(lockPathOf(project, 'data.json'))
    fs.mkdirSync(path.join(project, 'sub', '.flowforge'))
    expect(await b.call('acquire', { file, timeout: 0 })).toMatchObject({ ok: true })
    expect(await a.call('acquire', { file, timeout: 0 })).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
    expect((await a.call('lockKey', { file })).value).toBe(lockPathOf(path.join(project, 'sub'), 'data.json'))
  })

  test('a FLOWFORGE_ROOT_OVERRIDE changed in a process applies to its next acquire', async () => {
    const x = makeProject()
    const y = makeProject()
    const file = path.join(y, '.flowforge', 'tasks.json')
    const holder = await startDriver({ FLOWFORGE_ROOT_OVERRIDE: y })
    expect(await holder.call('acquire', { file, timeout: 0 })).toMatchObject({ ok: true })
    const other = await startDriver({ FLOWFORGE_ROOT_OVERRIDE: x })
    expect((await other.call('lockKey', { file })).value).toBe(lockPathOf(x, 'tasks.json'))
    // Now both name y as the root: the holder's lock is the one asked for.
    const second = await other.call('setEnvThenAcquire', { name: 'FLOWFORGE_ROOT_OVERRIDE', value: y, file, timeout: 0 })
    expect(second).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
  })

  test('a project whose .flowforge/ was removed is not given a new one: its files are locked by the next project up', async () => {
    const outer = makeProject()
    const inner = path.join(outer, 'inner')
    fs.mkdirSync(path.join(inner, '.flowforge'), { recursive: true })
    const file = path.join(inner, 'data.json')
    const first = await acquireLock(file, 0)
    expect(fs.existsSync(lockPathOf(inner, 'data.json'))).toBe(true)
    await releaseLock(file, first)
    fs.rmSync(path.join(inner, '.flowforge'), { recursive: true })
    const lockId = await acquireLock(file, 0)
    try {
      expect(fs.existsSync(path.join(inner, '.flowforge'))).toBe(false)
      expect(fs.existsSync(lockPathOf(outer, 'data.json'))).toBe(true)
    } finally {
      await releaseLock(file, lockId)
    }
  })
})

describe('a hold is found by its lockId, wherever its path leads by then', () => {
  test('a lock taken before a nearer .flowforge/ appeared is released: another process gets it at once', async () => {
    const project = makeProject()
    fs.mkdirSync(path.join(project, 'sub'))
    const file = path.join(project, 'sub', 'data.json')
    const holder = await startDriver()
    const { value: lockId } = await holder.call('acquire', { file, timeout: 0 })
    fs.mkdirSync(path.join(project, 'sub', '.flowforge'))
    // The same path now leads to the nested project's lock file; the hold is the outer one's.
    expect((await holder.call('lockKey', { file })).value).toBe(lockPathOf(path.join(project, 'sub'), 'data.json'))
    expect(await holder.call('release', { file, lockId })).toMatchObject({ ok: true, value: true })
    const other = await startDriver()
    // project/data.json shares the outer lock file (same basename, same root).
    expect(await other.call('acquire', { file: path.join(project, 'data.json'), timeout: 0 })).toMatchObject({ ok: true })
  })

  test('an updateWithLock whose file starts resolving elsewhere mid-update still writes, and releases its lock', async () => {
    const project = makeProject()
    fs.mkdirSync(path.join(project, 'sub'))
    const file = path.join(project, 'sub', 'data.json')
    const writer = await startDriver()
    const updated = await writer.call('updateMakingDir', { file, mkdir: path.join(project, 'sub', '.flowforge') })
    expect(updated).toMatchObject({ ok: true, value: { updates: 1 } })
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ updates: 1 })
    const other = await startDriver()
    expect(await other.call('acquire', { file: path.join(project, 'data.json'), timeout: 0 })).toMatchObject({ ok: true })
  })
})

describe('one lock file, however its directory is spelled', () => {
  test('a sync acquire of a lock this process holds under another spelling fails at once with ELOCKDEADLOCK', async () => {
    const project = makeProject()
    const link = `${project}-link`
    fs.symlinkSync(project, link)
    const holder = await startDriver()
    expect(await holder.call('acquire', { file: path.join(link, '.flowforge', 'tasks.json'), timeout: 0 })).toMatchObject({ ok: true })
    // The hold needs this process's event loop to end, which a sync wait would block.
    const sync = await holder.call('acquireSync', { file: path.join(project, '.flowforge', 'tasks.json'), timeout: 5000 })
    expect(sync).toMatchObject({ ok: false, code: 'ELOCKDEADLOCK' })
  })

  test("a data file that links into another project is locked by that project's lock; a link replaced is seen at the next call", async () => {
    const [a, b] = [makeProject(), makeProject()]
    const real = path.join(a, '.flowforge', 'tasks.json')
    fs.writeFileSync(real, '{}')
    const linked = path.join(b, '.flowforge', 'tasks.json')
    fs.symlinkSync(path.relative(path.dirname(linked), real), linked)
    const [inA, inB] = await Promise.all([startDriver(), startDriver()])
    expect(await inA.call('acquire', { file: real, timeout: 0 })).toMatchObject({ ok: true })
    expect(await inB.call('acquire', { file: linked, timeout: 0 })).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
    expect((await inB.call('lockKey', { file: linked })).value).toBe(lockPathOf(a, 'tasks.json'))
    // B's own file in place of the link: B's own lock from the next call on.
    fs.unlinkSync(linked)
    fs.writeFileSync(linked, '{}')
    expect((await inB.call('lockKey', { file: linked })).value).toBe(lockPathOf(b, 'tasks.json'))
    expect(await inB.call('acquire', { file: linked, timeout: 0 })).toMatchObject({ ok: true })
  })

  test("a relative link is read from the link's real directory, as the kernel reads it", async () => {
    const base = makeProject()
    const a = path.join(base, 'a')
    fs.mkdirSync(path.join(a, '.flowforge'), { recursive: true })
    const real = path.join(a, '.flowforge', 'tasks.json')
    fs.writeFileSync(real, '{}')
    // b's .flowforge lives three levels down elsewhere; its tasks.json links up from there.
    const store = path.join(base, 'store', 'deep', 'ffB')
    fs.mkdirSync(store, { recursive: true })
    fs.mkdirSync(path.join(base, 'b'))
    fs.symlinkSync(store, path.join(base, 'b', '.flowforge'))
    fs.symlinkSync('../../../a/.flowforge/tasks.json', path.join(store, 'tasks.json'))
    const linked = path.join(base, 'b', '.flowforge', 'tasks.json')
    expect(fs.realpathSync(linked)).toBe(fs.realpathSync(real))
    const [inA, inB] = await Promise.all([startDriver(), startDriver()])
    expect(await inA.call('acquire', { file: real, timeout: 0 })).toMatchObject({ ok: true })
    expect(await inB.call('acquire', { file: linked, timeout: 0 })).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
  })

  test('worktrees whose .flowforge is a symlink to one shared directory share one lock, in its .locks/', async () => {
    const shared = makeProject()
    const worktrees = [makeProject(), makeProject()]
    for (const worktree of worktrees) {
      fs.rmdirSync(path.join(worktree, '.flowforge'))
      fs.symlinkSync(path.join(shared, '.flowforge'), path.join(worktree, '.flowforge'))
    }
    const [a, b] = await Promise.all([startDriver(), startDriver()])
    const [first, second] = worktrees.map((worktree) => path.join(worktree, '.flowforge', 'tasks.json'))
    expect(await a.call('acquire', { file: first, timeout: 0 })).toMatchObject({ ok: true })
    expect(await b.call('acquire', { file: second, timeout: 0 })).toMatchObject({ ok: false, code: 'ELOCKTIMEOUT' })
    // Where FlowForge's older tools, and earlier versions of this library, lock it too.
    const record = JSON.parse(fs.readFileSync(lockPathOf(shared, 'tasks.json'), 'utf8'))
    expect(record).toMatchObject({ pid: a.pid, file: first })
  })
})
