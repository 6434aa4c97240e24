'use strict'
// Issue 12: lock-free versioned reads, optimistic updates (ifVersion), the read cache and the
// synchronous API, with real processes. No sleeps: children say where they are on stdout, and
// a blocked synchronous waiter is found in /proc/locks. FFL_READS_FULL=1 runs the 100,000-read
// proof; the default is a smaller count for CI.
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { spawn, spawnSync, execFileSync } = require('node:child_process')
const { acquireLock, releaseLock, acquireLockSync, releaseLockSync, withLockSync, isLocked, getLockInfo } = require('../file-lock')
const lib = require('../file-lock-integration')
const root = require('..')
const { makeProject, runFixture, startFixture, PACKAGE_ROOT } = require('./helpers')
const { untilKernelWaiter, isStopped, untilStopped } = require('./fixtures/wait-for')
const { next, fault } = require('./fixtures/reads-doc')

const { readJSON, readJSONVersioned, readJSONSync, updateWithLock, updateWithLockSync, updateTaskFile, batchUpdateTasks } = lib
const FIXTURES = path.join(__dirname, 'fixtures')
const FULL = process.env.FFL_READS_FULL === '1'
const sidecarOf = (file) => path.join(path.dirname(file), `.${path.basename(file)}.flowforge-version`)

/** A child whose stdout lines come as a queue. */
function child(fixture, args, { env = process.env, stderr = 'inherit' } = {}) {
  const proc = spawn(process.execPath, [path.join(FIXTURES, `${fixture}.js`), ...args.map(String)], { stdio: ['pipe', 'pipe', stderr], env })
  const lines = []
  const waiting = []
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    const resolve = waiting.shift()
    if (resolve) resolve(line)
    else lines.push(line)
  })
  const closed = new Promise((resolve) => proc.on('close', (code, signal) => resolve({ code, signal })))
  const nextLine = () => (lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve)))
  return { proc, nextLine, closed }
}

/**
 * Waits until `file`'s last change is older than one tick of the clock that stamps mtime, the
 * read cache's rule (lib/read.js RACY_MS): documents read before then are not cached.
 */
async function settled(file) {
  while (Date.now() - fs.statSync(file).mtimeMs <= 110) await new Promise((resolve) => setTimeout(resolve, 20))
}

/** `promise`'s value, or after `ms` a string saying it did not settle: a bounded wait. */
function within(ms, promise) {
  let timer
  const late = new Promise((resolve) => (timer = setTimeout(() => resolve(`not settled within ${ms} ms`), ms)))
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/** Another process rewrites `file` in place (the same inode) with `text`, as `writeFileSync` does. */
function rewriteFromAnotherProcess(file, text) {
  execFileSync(process.execPath, ['-e', 'require("fs").writeFileSync(process.argv[1], process.argv[2])', file, text])
}

/**
 * Another program rewrites `file` in place with `text` (the same size) and puts its mtime back:
 * what a write within one tick of a coarse mtime clock leaves (same inode, size and mtime). Made
 * deterministic: a real process writes, and `touch` sets the mtime the tick would have left.
 */
function rewriteKeepingIdentity(file, text) {
  const before = fs.statSync(file, { bigint: true })
  rewriteFromAnotherProcess(file, text)
  const ns = before.mtimeNs
  execFileSync('touch', ['-m', '-d', `@${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`, file])
  const after = fs.statSync(file, { bigint: true })
  expect([after.ino, after.size, after.mtimeNs]).toEqual([before.ino, before.size, before.mtimeNs])
}

/**
 * A reads-sync `serve-reads` child whose versioned reads stop themselves (SIGSTOP) at the
 * failpoint versions::after_read, having read the file: `ask()` sends it a read, `stopped()`
 * resolves once it is stopped there, `answer()` lets it go (and any read it starts again) and
 * resolves to its answer.
 */
function pausingReader(file, args = []) {
  const { failpointBinary, failpointEnv } = require('./failpoint-binary.js')
  const env = { ...process.env, ...failpointEnv(failpointBinary(), 'versions::after_read=return(stop)') }
  const reader = child('reads-sync', ['serve-reads', file, ...args], { env, stderr: 'ignore' })
  const stopped = () => untilStopped(reader.proc.pid)
  const answer = async () => {
    let line
    reader.nextLine().then((l) => (line = l))
    while (line === undefined) {
      if (isStopped(reader.proc.pid)) process.kill(reader.proc.pid, 'SIGCONT')
      await new Promise((resolve) => setImmediate(resolve))
    }
    return JSON.parse(line)
  }
  return { proc: reader.proc, ask: () => reader.proc.stdin.write('read\n'), stopped, answer }
}

async function commitFromAnotherProcess(file) {
  const run = await runFixture('reads-sync', ['commit', file])
  expect(run.stdout).toMatch(/^ACK \d+\n$/)
}

describe('lock-free reads while 4 processes commit (items 1 and 3)', () => {
  const commitsEach = FULL ? 250 : 40
  const minReads = FULL ? 50000 : 1500
  test(`0 torn or half-applied reads in >= ${2 * minReads} reads; the version rises by one per commit and survives a restart`, async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    const stop = path.join(dir, 'stop')
    const readers = [child('reads-reader', [file, minReads, stop, 'cache']), child('reads-reader', [file, minReads, stop, 'nocache'])]
    const writers = Array.from({ length: 4 }, () => child('reads-committer', [file, commitsEach]))
    for (const c of [...readers, ...writers]) expect(await c.nextLine()).toBe('READY')
    for (const w of writers) w.proc.stdin.write('go\n')
    for (const w of writers) {
      let line
      while ((line = await w.nextLine()).startsWith('ACK ')) {}
      expect(line).toBe('DONE')
    }
    fs.writeFileSync(stop, '')
    const reports = []
    for (const r of readers) reports.push(JSON.parse(await r.nextLine()))
    const total = 4 * commitsEach
    for (const report of reports) {
      expect(report.faults).toEqual([])
      expect(report).toMatchObject({ torn: 0, badVersion: 0, backwards: 0, foreign: 0, lastVersion: total, lastCount: total })
      expect(report.reads).toBeGreaterThanOrEqual(minReads)
    }
    console.log(`reads: ${reports.map((r) => r.reads).join(' + ')} reads beside ${total} commits: 0 torn, versions matched every document`)
    // A new process (a restart) sees the same version, kept beside the file, not in it.
    const restarted = await runFixture('reads-sync', ['version', file])
    expect(JSON.parse(restarted.stdout)).toEqual({ version: total, foreignWrite: false, count: total })
    expect(Object.keys(JSON.parse(fs.readFileSync(file, 'utf8'))).sort()).toEqual(['copy', 'count', 'items', 'pad'])
    await updateWithLock(file, next)
    expect((await readJSONVersioned(file)).version).toBe(total + 1)
  }, 300000)
})

describe('the version rule', () => {
  test('a missing file is version 0; an unversioned or foreign-written file is flagged and counted once', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    expect(await readJSONVersioned(file)).toEqual({ data: null, version: 0, foreignWrite: false })
    await updateWithLock(file, () => ({ a: 1 }))
    expect(await readJSONVersioned(file)).toEqual({ data: { a: 1 }, version: 1, foreignWrite: false })
    // An editor saves the file (a new inode, as most do, or in place): not the library's commit.
    fs.writeFileSync(`${file}.new`, '{"a":2}')
    fs.renameSync(`${file}.new`, file)
    expect(await readJSONVersioned(file)).toEqual({ data: { a: 2 }, version: 2, foreignWrite: true })
    await updateWithLock(file, (doc) => ({ a: doc.a + 1 }))
    expect(await readJSONVersioned(file)).toEqual({ data: { a: 3 }, version: 3, foreignWrite: false })
    const legacy = path.join(dir, '.flowforge', 'legacy.json')
    fs.writeFileSync(legacy, '[]')
    expect(await readJSONVersioned(legacy)).toEqual({ data: [], version: 0, foreignWrite: true })
  })

  test('a garbled or fuzzed sidecar is refused (EVERSIONCORRUPT) by versioned reads and every write, never trusted', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateWithLock(file, () => ({ keep: true }))
    const sidecar = sidecarOf(file)
    const good = fs.readFileSync(sidecar, 'utf8')
    const garbage = ['', '{', good.slice(0, -3), good.replace('"version":1', '"version":7'), good.replace('"format":2', '"format":9'), good.replace(/"hash":"[0-9a-f]{16}",/, ''), '\u0000'.repeat(100), 'x'.repeat(10000), JSON.stringify({ ...JSON.parse(good), version: -1 })]
    for (const text of garbage) {
      fs.writeFileSync(sidecar, text)
      const read = await readJSONVersioned(file).catch((e) => e)
      // "version 7" with prev 0 is inconsistent; everything else does not parse.
      expect(read.code).toBe('EVERSIONCORRUPT')
      expect(read.message).toContain(sidecar)
      expect(await readJSON(file, { cache: false })).toEqual({ keep: true })
      let called = false
      const write = await updateWithLock(file, () => ((called = true), { keep: false })).catch((e) => e)
      expect(write.code).toBe('EVERSIONCORRUPT')
      expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ keep: true })
      expect(called).toBe(true)
    }
    // The way out the message gives: delete it, and the file is versioned again from its next commit.
    fs.unlinkSync(sidecar)
    await updateWithLock(file, () => ({ keep: 'again' }))
    expect(await readJSONVersioned(file)).toEqual({ data: { keep: 'again' }, version: 1, foreignWrite: false })
  })
})

describe('optimistic updates: ifVersion (item 2)', () => {
  test('a file that moved past the version rejects with EVERSION and is not changed', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateWithLock(file, next)
    const seen = await readJSONVersioned(file)
    await commitFromAnotherProcess(file)
    let called = false
    const err = await updateWithLock(file, () => ((called = true), { lost: true }), { ifVersion: seen.version }).catch((e) => e)
    expect(err.code).toBe('EVERSION')
    expect(err).toMatchObject({ expectedVersion: 1, currentVersion: 2, foreignWrite: false })
    expect(err.message).toContain(file)
    expect(called).toBe(false)
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).count).toBe(2)
    const now = await readJSONVersioned(file)
    expect(await updateWithLock(file, next, { ifVersion: now.version })).toMatchObject({ count: 3 })
    expect((await readJSONVersioned(file)).version).toBe(3)
    // Create-only: ifVersion 0 on a file that does not exist yet.
    const fresh = path.join(dir, '.flowforge', 'fresh.json')
    await updateWithLock(fresh, () => ({ first: true }), { ifVersion: 0 })
    expect((await updateWithLock(fresh, () => ({ second: true }), { ifVersion: 0 }).catch((e) => e)).code).toBe('EVERSION')
  })

  test('two coalesced updates from the same version: the first commits, the second gets EVERSION', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateWithLock(file, () => ({ n: 0 }))
    const { version } = await readJSONVersioned(file)
    const outcomes = await Promise.allSettled([
      updateWithLock(file, (doc) => ({ n: doc.n + 1, by: 'a' }), { ifVersion: version }),
      updateWithLock(file, (doc) => ({ n: doc.n + 1, by: 'b' }), { ifVersion: version }),
    ])
    expect(outcomes[0]).toMatchObject({ status: 'fulfilled', value: { n: 1, by: 'a' } })
    expect(outcomes[1].status).toBe('rejected')
    expect(outcomes[1].reason.code).toBe('EVERSION')
    expect(await readJSONVersioned(file)).toMatchObject({ data: { n: 1, by: 'a' }, version: version + 1 })
  })

  test('a foreign write is refused under ifVersion; updateTaskFile and batchUpdateTasks take ifVersion too', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateTaskFile({ id: 1, title: 'one' }, { file })
    const v = (await readJSONVersioned(file)).version
    await batchUpdateTasks([{ id: 2 }, { id: 3 }], { file, ifVersion: v })
    const stale = await updateTaskFile({ id: 4 }, { file, ifVersion: v }).catch((e) => e)
    expect(stale.code).toBe('EVERSION')
    const staleBatch = await batchUpdateTasks([{ id: 5 }], { file, ifVersion: v }).catch((e) => e)
    expect(staleBatch.code).toBe('EVERSION')
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).tasks.map((t) => t.id)).toEqual([1, 2, 3])
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'))
    fs.writeFileSync(file, JSON.stringify({ ...doc, edited: 'by hand, in place' }))
    const foreign = await readJSONVersioned(file)
    expect(foreign.foreignWrite).toBe(true)
    const refused = await updateTaskFile({ id: 6 }, { file, ifVersion: foreign.version }).catch((e) => e)
    expect(refused).toMatchObject({ code: 'EVERSION', foreignWrite: true })
    expect(refused.message).toContain('outside flowforge-lock')
    const bad = await updateWithLock(file, (d) => d, { ifVersion: 1.5 }).catch((e) => e)
    expect(bad.code).toBe('ERR_INVALID_ARG_VALUE')
  })

  test('a foreign write that keeps the identity (in place, same size, same mtime) is still seen and refused', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateWithLock(file, () => ({ tasks: [{ id: 1, status: 'ready' }] }))
    const read = await readJSONVersioned(file)
    expect(read).toMatchObject({ version: 1, foreignWrite: false })
    // Another program rewrites it in place within the same mtime tick as that commit (an older
    // kernel's coarse clock, a whole-second file system).
    const edited = fs.readFileSync(file, 'utf8').replace('"ready"', '"done!"')
    rewriteKeepingIdentity(file, edited)

    expect(await readJSONVersioned(file)).toEqual({ data: { tasks: [{ id: 1, status: 'done!' }] }, version: 2, foreignWrite: true })
    const refused = await updateWithLock(file, (doc) => ({ ...doc, planned: 'on version 1' }), { ifVersion: read.version }).catch((e) => e)
    expect(refused).toMatchObject({ code: 'EVERSION', foreignWrite: true })
    expect(fs.readFileSync(file, 'utf8')).toBe(edited)
    // The next commit counts the foreign write as one version and its own as the next.
    await updateWithLock(file, (doc) => ({ ...doc, seen: true }))
    expect(await readJSONVersioned(file)).toMatchObject({ version: 3, foreignWrite: false, data: { tasks: [{ id: 1, status: 'done!' }], seen: true } })
  })
})

describe('the read cache (item 3)', () => {
  test("a re-read of an unchanged file is the cached document; another process's commit is seen by the next read", async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateWithLock(file, next)
    await settled(file)
    const first = await readJSON(file)
    expect(await readJSON(file)).toBe(first)
    expect(readJSONSync(file)).toBe(first)
    for (let i = 0; i < 5; i++) {
      await commitFromAnotherProcess(file)
      const seen = await readJSONVersioned(file)
      expect(seen.data.count).toBe(i + 2)
      expect(seen.version).toBe(i + 2)
      expect(readJSONSync(file).count).toBe(i + 2)
    }
    // maxAgeMs: an answer checked that recently is given without a stat, even if stale.
    await settled(file)
    const before = readJSONSync(file)
    await commitFromAnotherProcess(file)
    expect(readJSONSync(file, { maxAgeMs: 3600000 })).toBe(before)
    expect(readJSONSync(file, { maxAgeMs: 0 }).count).toBe(before.count + 1)
  })

  test('a document read within a tick of its last change is not cached: the next read reads it again', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    for (let tries = 0; ; tries++) {
      await updateWithLock(file, next)
      const fresh = readJSONSync(file)
      const again = readJSONSync(file)
      // Both reads happened within the tick when the mtime is still that young after them.
      if (Date.now() - fs.statSync(file).mtimeMs < 100) {
        expect(again).not.toBe(fresh)
        expect(again).toEqual(fresh)
        break
      }
      if (tries === 50) throw new Error('inconclusive: no two reads within 100 ms of a commit in 50 tries')
    }
    await settled(file)
    const old = readJSONSync(file)
    expect(readJSONSync(file)).toBe(old)
  })

  test('a read overtaken by a write that keeps the identity is not cached, however late it is judged', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    const reader = pausingReader(file, ['cached'])
    try {
      for (let tries = 0; ; tries++) {
        await updateWithLock(file, () => ({ n: 1 }))
        const { version } = await readJSONVersioned(file, { cache: false })
        reader.ask()
        await reader.stopped() // at versions::after_read, having read { n: 1 }
        // Only a read that began within the tick of the commit can be overtaken by a write the
        // mtime does not show; on a loaded machine the ask may come later: try again.
        if (Date.now() - fs.statSync(file).mtimeMs < 90) {
          rewriteKeepingIdentity(file, fs.readFileSync(file, 'utf8').replace('1', '2'))
          // By now the mtime is older than a tick: the cache's rule must be judged by when the
          // read began, not when it ended, or this read would be cached under the file's identity.
          await settled(file)
          expect(await reader.answer()).toEqual({ n: 1, version, foreignWrite: false })
          reader.ask()
          expect(await reader.answer()).toEqual({ n: 2, version: version + 1, foreignWrite: true })
          break
        }
        await reader.answer()
        if (tries === 50) throw new Error('inconclusive: no read began within 90 ms of a commit in 50 tries')
      }
    } finally {
      reader.proc.kill('SIGKILL')
    }
  })

  test('cached documents are deeply frozen, so a caller cannot corrupt them; cache: false gives a mutable copy', async () => {
    'use strict'
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateWithLock(file, () => ({ tasks: [{ id: 1, tags: ['a'] }] }))
    const doc = await readJSON(file)
    expect(() => {
      doc.tasks[0].tags.push('evil')
    }).toThrow(TypeError)
    expect(() => {
      doc.tasks[0].id = 2
    }).toThrow(TypeError)
    expect(() => {
      doc.extra = 1
    }).toThrow(TypeError)
    expect(await readJSON(file)).toEqual({ tasks: [{ id: 1, tags: ['a'] }] })
    const { data } = await readJSONVersioned(file)
    expect(Object.isFrozen(data.tasks[0].tags)).toBe(true)
    const mine = await readJSON(file, { cache: false })
    mine.tasks[0].tags.push('mine')
    expect(await readJSON(file)).toEqual({ tasks: [{ id: 1, tags: ['a'] }] })
  })

  test('a missing file reads as null, a bad one as EJSONPARSE, and a directory as EISDIR', async () => {
    const dir = makeProject()
    expect(await readJSON(path.join(dir, '.flowforge', 'nope.json'))).toBeNull()
    const bad = path.join(dir, '.flowforge', 'bad.json')
    fs.writeFileSync(bad, '{"a":')
    expect((await readJSON(bad).catch((e) => e)).code).toBe('EJSONPARSE')
    expect((await readJSON(path.join(dir, '.flowforge')).catch((e) => e)).code).toBe('EISDIR')
    expect(() => readJSONSync(bad, { maxAgeMs: -1 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }))
  })

  test('a read never waits behind a writer: it returns while another process holds the lock', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    await updateWithLock(file, () => ({ v: 1 }))
    const { child: holder, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    expect(await isLocked(file)).toBe(true)
    expect(await readJSON(file, { cache: false })).toEqual({ v: 1 })
    expect(await readJSONVersioned(file)).toMatchObject({ data: { v: 1 }, version: 1 })
    holder.kill('SIGKILL')
    await exited
  })
})

// Where mtime is the kernel's coarse clock (here an ext2 image; also ext4/xfs/btrfs before Linux
// 6.13), commits k and k+2 of one size within one tick can get one identity: the freed inode
// number comes back. Neither the cache nor a versioned read may take one for the other.
describe('on a file system with coarse timestamps (an ext2 image)', () => {
  const isRoot = process.getuid() === 0
  let base
  /** Two images: ext2's default (mtime in ns from the kernel's coarse clock), and 128-byte inodes (whole seconds). */
  const mounts = {}
  beforeAll(() => {
    if (!isRoot) return console.log('skipped: mounting an ext2 image needs root')
    base = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'ffl-ext2-'))
    for (const [name, options] of [['ticks', []], ['seconds', ['-I', '128']]]) {
      mounts[name] = path.join(base, name)
      fs.mkdirSync(mounts[name])
      const image = path.join(base, `${name}.img`)
      fs.writeFileSync(image, '')
      fs.truncateSync(image, 32 * 1024 * 1024)
      execFileSync('mkfs.ext2', ['-q', '-F', ...options, image])
      execFileSync('mount', ['-o', 'loop', '-t', 'ext2', image, mounts[name]])
    }
  })
  afterAll(() => {
    if (!isRoot) return
    // lazy: this process keeps its lock files open
    for (const mnt of Object.values(mounts)) execFileSync('umount', ['--lazy', mnt])
    fs.rmSync(base, { recursive: true, force: true })
  })
  const ext2Project = (name, clock = 'ticks') => {
    fs.mkdirSync(path.join(mounts[clock], name, '.flowforge'), { recursive: true })
    return path.join(mounts[clock], name, '.flowforge', 'tasks.json')
  }

  ;(isRoot ? test : test.skip)('a cached read never returns a document two commits old that came back with its identity', async () => {
    const file = ext2Project('cache')
    const writer = child('reads-sync', ['serve-commits', file])
    const commit = async (n) => {
      writer.proc.stdin.write(`${n}\n`)
      expect(await writer.nextLine()).toBe(`ok ${n}`)
    }
    try {
      for (let round = 0; round < 300; round++) {
        const k = (round * 3) % 8 // one digit: every document has the same size
        await commit(k)
        expect((await readJSON(file)).n).toBe(k)
        await commit(k + 1)
        await commit(k + 2)
        // Both commits finished before this read started.
        expect({ round, n: (await readJSON(file, { maxAgeMs: 0 })).n }).toEqual({ round, n: k + 2 })
      }
    } finally {
      writer.proc.kill('SIGKILL')
    }
  }, 120000)

  ;(isRoot ? test : test.skip)('a versioned read paused while two commits land never labels its document with their version', async () => {
    const file = ext2Project('versioned')
    const reader = pausingReader(file)
    const { stopped, answer } = reader
    const commit = (n) => updateWithLockSync(file, () => ({ n }))
    try {
      for (let round = 0; round < 300; round++) {
        const k = (round * 3) % 8
        commit(k)
        const versionOfK = (await readJSONVersioned(file, { cache: false })).version
        reader.ask()
        await stopped() // at versions::after_read, having read commit k
        commit(k + 1)
        commit(k + 2)
        const got = await answer()
        if (got.n === k) expect({ round, version: got.version }).toEqual({ round, version: versionOfK })
        else expect({ round, n: got.n, version: got.version }).toEqual({ round, n: k + 2, version: versionOfK + 2 })
      }
    } finally {
      reader.proc.kill('SIGKILL')
    }
  }, 240000)

  ;(isRoot ? test : test.skip)('a write in place within the second of a commit is told from it by the content hash', async () => {
    const file = ext2Project('in-place', 'seconds')
    for (let tries = 0; ; tries++) {
      updateWithLockSync(file, () => ({ status: 'ready' }))
      const read = await readJSONVersioned(file, { cache: false })
      const committed = fs.statSync(file, { bigint: true })
      // Another process rewrites it in place, the same size: within the same second, ext2 keeps
      // the inode, the size and the mtime.
      const edited = fs.readFileSync(file, 'utf8').replace('"ready"', '"done!"')
      rewriteFromAnotherProcess(file, edited)
      const written = fs.statSync(file, { bigint: true })
      if (written.mtimeNs === committed.mtimeNs) {
        expect([written.ino, written.size]).toEqual([committed.ino, committed.size])
        expect(await readJSONVersioned(file, { cache: false })).toEqual({ data: { status: 'done!' }, version: read.version + 1, foreignWrite: true })
        const refused = await updateWithLock(file, () => ({ status: 'planned' }), { ifVersion: read.version }).catch((e) => e)
        expect(refused).toMatchObject({ code: 'EVERSION', foreignWrite: true })
        expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ status: 'done!' })
        break
      }
      if (tries === 20) throw new Error('inconclusive: no write landed within the second of its commit in 20 tries')
    }
  })
})

describe('the synchronous API (item 5)', () => {
  test('acquireLockSync/releaseLockSync/withLockSync/updateWithLockSync, from the subpaths and the package root', () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    for (const name of ['acquireLockSync', 'releaseLockSync', 'withLockSync', 'updateWithLockSync', 'readJSON', 'readJSONVersioned', 'readJSONSync']) {
      expect(typeof root[name]).toBe('function')
    }
    const lockId = acquireLockSync(file, 1000)
    expect(releaseLockSync(file, lockId)).toBe(true)
    expect(releaseLockSync(file, lockId)).toBe(false)
    expect(updateWithLockSync(file, () => ({ n: 1 }))).toEqual({ n: 1 })
    // Inside withLockSync, updateWithLockSync writes under the hold; a nested acquire fails fast.
    const result = withLockSync(file, () => {
      updateWithLockSync(file, (doc) => ({ n: doc.n + 1 }))
      expect(() => acquireLockSync(file, 60000)).toThrow(expect.objectContaining({ code: 'ELOCKDEADLOCK' }))
      return 'done'
    })
    expect(result).toBe('done')
    expect(readJSONSync(file, { cache: false })).toEqual({ n: 2 })
    expect(() => updateWithLockSync(file, () => ({ n: 9 }), { ifVersion: 1 })).toThrow(expect.objectContaining({ code: 'EVERSION' }))
    expect(() => updateWithLockSync(file, async () => ({ n: 9 }))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_RETURN_VALUE' }))
    expect(() => withLockSync(file, async () => 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_RETURN_VALUE' }))
    expect(readJSONSync(file, { cache: false })).toEqual({ n: 2 })
    // Every lock was released.
    releaseLockSync(file, acquireLockSync(file, 0))
  })

  test('a synchronous wait blocks until another process releases, and times out with ELOCKTIMEOUT', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    const waiter = child('reads-sync', ['wait', file])
    expect(await waiter.nextLine()).toBe('WAITING')
    // The child waits in flock(2) on our lock (on its own thread): release, and it gets it.
    await untilKernelWaiter(await require('../file-lock.js').getLockInfo(file).then((i) => i.lockFile), waiter.proc.pid)
    await releaseLock(file, lockId)
    expect(await waiter.nextLine()).toMatch(/^GOT \d+$/)
    expect((await waiter.closed).code).toBe(0)
    const { child: holder, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    expect(() => acquireLockSync(file, 50)).toThrow(expect.objectContaining({ code: 'ELOCKTIMEOUT' }))
    const timedOut = await runFixture('reads-sync', ['timeout', file, 50])
    expect(timedOut.stdout.trim()).toBe('ERROR ELOCKTIMEOUT')
    holder.kill('SIGKILL')
    await exited
  }, 60000)

  // docs/lock-files.md (Exit): the signal still ends the process with Node's usual status. Each
  // step is bounded, so that a wait the signal cannot end fails here, saying so, not by timeout.
  test.each(['SIGTERM', 'SIGINT'])('%s ends a process blocked in acquireLockSync without a timeout', async (signal) => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    const lockId = await acquireLock(file)
    const waiter = child('reads-sync', ['signal', file])
    try {
      expect(await waiter.nextLine()).toBe('WAITING')
      await untilKernelWaiter((await getLockInfo(file)).lockFile, waiter.proc.pid)
      waiter.proc.kill(signal)
      expect(await within(10000, waiter.nextLine())).toMatch(new RegExp(`^ERROR ELOCKCANCELLED .*${file}.*${signal} arrived`))
      expect(await within(10000, waiter.closed)).toEqual({ code: null, signal })
    } finally {
      waiter.proc.kill('SIGKILL')
      await releaseLock(file, lockId)
    }
  })

  test('a script that does not catch that ELOCKCANCELLED ends with status 1, and its other locks are released', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    const other = path.join(dir, '.flowforge', 'other.json')
    const lockId = await acquireLock(file)
    const fileLockModule = JSON.stringify(path.join(PACKAGE_ROOT, 'file-lock'))
    const script = `const l = require(${fileLockModule}); l.acquireLockSync(${JSON.stringify(other)}); l.acquireLockSync(${JSON.stringify(file)})`
    const proc = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    proc.stderr.on('data', (chunk) => (stderr += chunk))
    const closed = new Promise((resolve) => proc.on('close', (code, signal) => resolve({ code, signal })))
    try {
      await untilKernelWaiter((await getLockInfo(file)).lockFile, proc.pid)
      expect(await isLocked(other)).toBe(true)
      proc.kill('SIGTERM')
      expect(await closed).toEqual({ code: 1, signal: null })
      expect(stderr).toContain("code: 'ELOCKCANCELLED'")
      expect(await isLocked(other)).toBe(false)
    } finally {
      proc.kill('SIGKILL')
      await releaseLock(file, lockId)
    }
  })

  // A vm watchdog stops the caller's JS while the call waits: the call throws, nobody ever gets
  // the lockId, so the lock it got must not stay held.
  test('acquireLockSync stopped by a vm timeout while it waits holds no lock afterwards', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    // The 1 ms limit may end before the call blocks (it then throws having waited for nothing),
    // or only after the lock came (then the lock was returned and released): neither shows
    // anything, and the case is tried again.
    for (let attempt = 0; attempt < 5; attempt++) {
      let lockId = await acquireLock(file)
      const waiter = child('reads-sync', ['vm', file])
      try {
        expect(await waiter.nextLine()).toBe('WAITING')
        const outcome = waiter.nextLine()
        const blocked = untilKernelWaiter((await getLockInfo(file)).lockFile, waiter.proc.pid).then(() => 'BLOCKED')
        if ((await Promise.race([outcome, blocked])) !== 'BLOCKED') continue
        await releaseLock(file, lockId)
        lockId = null
        const ended = await outcome
        if (ended === 'RETURNED') continue
        expect(ended).toBe('THREW ERR_SCRIPT_EXECUTION_TIMEOUT')
        // The waiter lives on: the lock must be free all the same (bounded: a leak times out).
        await releaseLock(file, await acquireLock(file, 5000))
        return
      } finally {
        waiter.proc.kill('SIGKILL')
        if (lockId) await releaseLock(file, lockId)
      }
    }
    throw new Error('inconclusive: in 5 attempts the vm timeout never ended the call while it waited')
  })

  // The lockId of withLockSync and updateWithLockSync is the library's own: a vm watchdog that
  // stops the callback (no finally block runs then) must not leave the lock held, refreshed by
  // the heartbeat, for the rest of the process's life.
  test.each([
    ['withLockSync', (file, loop) => withLockSync(file, loop)],
    ['updateWithLockSync', (file, loop) => updateWithLockSync(file, () => loop())],
  ])('%s stopped by a vm timeout while its callback runs holds no lock afterwards', async (_name, call) => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    const sandbox = { call, file, running: false }
    const loop = 'call(file, () => { running = true; for (;;); })'
    expect(() => require('node:vm').runInNewContext(loop, sandbox, { timeout: 200 })).toThrow(expect.objectContaining({ code: 'ERR_SCRIPT_EXECUTION_TIMEOUT' }))
    // Stopped inside the callback, under the lock (not in the microseconds of its acquire).
    expect(sandbox.running).toBe(true)
    // (Asked without acquiring: Node's AsyncLocalStorage keeps the stopped callback's context,
    // so this flow still looks as if it held the lock.)
    expect(await isLocked(file)).toBe(false)
  })

  // The callback is called from the core: where the JS stack is full, entering it throws a
  // RangeError, which must reach the caller as one (a recursion that catches it and goes on).
  test.each(['withLockSync', 'updateWithLockSync'])('%s with the JS stack full throws its RangeError and leaves the lock free', (name) => {
    const file = path.join(makeProject(), '.flowforge', 'tasks.json')
    const script = `
      const lib = require(${JSON.stringify(path.join(PACKAGE_ROOT, 'file-lock.js'))})
      const { updateWithLockSync } = require(${JSON.stringify(path.join(PACKAGE_ROOT, 'file-lock-integration.js'))})
      const file = ${JSON.stringify(file)}
      const call = { withLockSync: () => lib.withLockSync(file, () => 1), updateWithLockSync: () => updateWithLockSync(file, () => ({})) }.${name}
      const codes = new Set()
      // Called on the way back up from the deepest frame, where the calls that overflow are;
      // twice (the second time, optimized code has frames of other sizes).
      let calls = 0
      function dive() {
        try { return dive() } catch (overflow) {
          if (calls++ < 1000) try { call() } catch (e) { codes.add(e.constructor.name) }
          throw overflow
        }
      }
      for (const _pass of [1, 2]) {
        calls = 0
        try { dive() } catch {}
      }
      lib.releaseLockSync(file, lib.acquireLockSync(file, 0))
      console.log([...codes].join(' '))`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
    expect({ signal: run.signal, status: run.status, stderr: run.stderr }).toEqual({ signal: null, status: 0, stderr: '' })
    expect(run.stdout.trim()).toBe('RangeError')
  })

  test('mixing sync and async holds of one lock fails fast with ELOCKDEADLOCK instead of hanging', async () => {
    const dir = makeProject()
    const file = path.join(dir, '.flowforge', 'tasks.json')
    // This process holds it (async): a sync acquire could never be served.
    const lockId = await acquireLock(file)
    expect(() => acquireLockSync(file, Infinity)).toThrow(expect.objectContaining({ code: 'ELOCKDEADLOCK' }))
    expect(() => updateWithLockSync(file, () => ({}), { timeout: Infinity })).toThrow(expect.objectContaining({ code: 'ELOCKDEADLOCK' }))
    await releaseLock(file, lockId)
    // Another process holds it and an async waiter of this process is queued: the lock would go
    // to that waiter, whose event loop the sync wait blocks.
    const { child: holder, exited } = await startFixture('hold-lock', [file], 'LOCKED')
    const queued = acquireLock(file, 60000)
    const err = (() => {
      try {
        acquireLockSync(file, Infinity)
      } catch (e) {
        return e
      }
    })()
    expect(err.code).toBe('ELOCKDEADLOCK')
    expect(err.message).toContain(file)
    holder.kill('SIGKILL')
    await exited
    await releaseLock(file, await queued)
  })
})

test('the declarations of the new calls type-check with tsc --strict', () => {
  const tsc = path.join(PACKAGE_ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const run = spawnSync(
    process.execPath,
    [tsc, '--noEmit', '--strict', '--esModuleInterop', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', path.join(FIXTURES, 'reads-types.ts')],
    { encoding: 'utf8', cwd: PACKAGE_ROOT },
  )
  expect(run.stdout + run.stderr).toBe('')
  expect(run.status).toBe(0)
}, 60000)

// Keeps fault() honest: a torn document (cut anywhere) or a half-applied one is caught.
test('the torn-read check catches cut and mixed documents', () => {
  const a = next(next(null))
  const b = next(a)
  expect(fault(a)).toBeNull()
  expect(fault({ ...b, copy: a.copy })).not.toBeNull()
  expect(fault({ ...a, pad: b.pad })).not.toBeNull()
  expect(fault({ ...a, items: b.items })).not.toBeNull()
})
