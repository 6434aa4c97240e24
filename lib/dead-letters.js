'use strict'
// The dead-letter queue: a data operation of the library (updateTaskFile, batchUpdateTasks, the
// timer and session calls, CLI `update`) that failed for a reason a retry can fix (the lock timed
// out or was lost, the disk was full, …) is kept in <root>/.flowforge/.dead-letters/, one file
// per operation: its name and arguments, the error, when, and how many attempts. The caller
// still gets its error. replayDeadLetters() applies them later, in call order, each under its
// file's lock, at most once even if a replay is killed and run again (see replayOne).

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const crypto = require('node:crypto')
const { AsyncLocalStorage } = require('node:async_hooks')
const native = require('../native.js')
const { checkObject, checkString, checkMs, codedError } = require('./args.js')
const { runHolding } = require('./context.js')
const { currentUser, currentInstanceId, isPlainObject } = require('./project.js')

const DIR = path.join('.flowforge', '.dead-letters')
/** Where replay notes what it is about to commit (see replayOne). */
const JOURNAL = '.applied'
/** One line per letter kept, replayed or dropped, for the project's totals in `status --json`. */
const HISTORY = '.history'
/** A letter's file name (temp files, the journal and the history never match). */
const LETTER_NAME = /^[0-9A-Za-z-]+\.json$/

/**
 * Failures a later retry can fix. Everything else is the caller's to fix and is never kept:
 * bad arguments (ERR_*), an updater or a check that threw, a file that does not parse
 * (EJSONPARSE) or has the wrong shape (EDATASHAPE), an operation that does not fit the state
 * (ESTATE), permissions and configuration (EACCES, ELOCKDIRUNSAFE, …). Nor ENOTDURABLE: that
 * update was applied (only the directory sync after its rename failed), and a replay would
 * apply it again over whatever was committed since.
 */
const RETRYABLE = new Set([
  'ELOCKTIMEOUT',
  'ELOCKLOST',
  'ELOCKBACKEND',
  'ENOLCK',
  'ENOSPC',
  'EDQUOT',
  'EIO',
  'EINTR',
  'EBUSY',
  'EAGAIN',
  'EMFILE',
  'ENFILE',
  'ETIMEDOUT',
  'ECONNREFUSED',
  'ECONNRESET',
])

/** The operations that can be kept, by name: `fn` (the undecorated call), `which` file it changes. */
const OPERATIONS = new Map()
/** Kept / replayed / dropped by this process, for getLockMetrics(). */
const counts = { kept: 0, replayed: 0, dropped: 0 }
/** Set while replay runs an operation: no new letter for it, and its commit is journalled. */
const replaying = new AsyncLocalStorage()

/** The project root a data file belongs to: the nearest ancestor holding .flowforge/, else the cwd's. */
function rootOf(file) {
  for (let dir = path.dirname(path.resolve(file)); ; dir = path.dirname(dir)) {
    if (fs.statSync(path.join(dir, '.flowforge'), { throwIfNoEntry: false })?.isDirectory()) return dir
    if (path.dirname(dir) === dir) return native.projectRoot(undefined)
  }
}

function dirOf(root) {
  return path.join(native.projectRoot(root), DIR)
}

function fsyncDir(dir) {
  const fd = fs.openSync(dir, 'r')
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** temp file (0600) + fsync + rename + fsync of the directory: the file is whole or absent. */
function writeAtomic(file, value) {
  const tmp = `${file}.${process.pid}.tmp`
  const fd = fs.openSync(tmp, 'w', 0o600)
  try {
    fs.fchmodSync(fd, 0o600)
    fs.writeSync(fd, `${JSON.stringify(value, null, 2)}\n`)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  fsyncDir(path.dirname(file))
}

function removeDurably(file) {
  try {
    fs.unlinkSync(file)
  } catch (err) {
    if (err.code === 'ENOENT') return
    throw err
  }
  fsyncDir(path.dirname(file))
}

/**
 * Appends `<event> <id> <time>` to the history: one write with O_APPEND, so lines of several
 * processes never interleave. Best effort: the counts are for people, the letters are the truth.
 */
function noteHistory(dir, event, id) {
  try {
    fs.appendFileSync(path.join(dir, HISTORY), `${event} ${id} ${new Date().toISOString()}\n`, { mode: 0o600 })
  } catch {
    // A history line that could not be written changes no outcome.
  }
}

let sequence = 0
/** Sorts in call order: the call's time, then this process's call counter (`seq`, taken at the call). */
function newId(calledAt, seq) {
  const stamp = new Date(calledAt).toISOString().replace(/[-:.]/g, '')
  return `${stamp}-${process.pid}-${String(seq).padStart(6, '0')}-${crypto.randomBytes(2).toString('hex')}`
}

/**
 * Options worth replaying: those that choose the file or shape the result (not timeouts,
 * signals), and `ifVersion`: a replay over a file that moved on fails with EVERSION and the
 * letter stays for a person, as the call itself would have.
 */
const KEPT_OPTIONS = ['root', 'file', 'user', 'instanceId', 'status', 'ifVersion']

function keptOptions(options) {
  const kept = {}
  if (isPlainObject(options)) for (const key of KEPT_OPTIONS) if (options[key] !== undefined) kept[key] = options[key]
  // Paths as this call resolved them (its cwd): a replay runs elsewhere, and its journal is
  // matched against the letter's absolute `file` (beforeCommit).
  for (const key of ['root', 'file']) if (typeof kept[key] === 'string') kept[key] = path.resolve(kept[key])
  return kept
}

/**
 * Wraps one data operation of the library so that a retryable failure is kept. `spec`:
 * `which` (key of project.FILES) or `fileOf(args)`; `normalize(args)` gives the arguments in a
 * fixed shape whose last one is the options; `pin(args)` fills in, at call time, what a replay
 * in another process would otherwise compute differently (user, instance id, session id).
 */
function deadLettered(name, fn, spec) {
  OPERATIONS.set(name, { fn, ...spec })
  const operation = async (...raw) => {
    const calledAt = Date.now()
    const seq = sequence++
    const taken = replaying.getStore() === undefined ? takeArgs(spec, raw) : null
    try {
      return await fn(...raw)
    } catch (err) {
      if (err !== null && typeof err === 'object' && RETRYABLE.has(err.code) && taken !== null) {
        const mine = ownError(err)
        keep(name, spec, taken, mine, calledAt, newId(calledAt, seq))
        throw mine
      }
      throw err
    }
  }
  return Object.defineProperty(operation, 'name', { value: name })
}

/**
 * `err`, or a copy of it when it was kept for another call already: the callers coalesced into
 * one batch get one error object, and each must name its own letter.
 */
function ownError(err) {
  if (!('deadLetterId' in err) && !('deadLetterError' in err)) return err
  // A real Error of the same kind (message and stack), with the same own fields (code...).
  let copy
  try {
    copy = Object.assign(structuredClone(err), err)
  } catch {
    return err // a cause that cannot be cloned: shared, as before, rather than lost
  }
  delete copy.deadLetterId
  delete copy.deadLetterFile
  delete copy.deadLetterError
  return copy
}

/**
 * The letter's arguments and file, taken when the operation is called: the operation works on
 * what it was given then (its objects taken as JSON, its paths resolved from the cwd of then),
 * and a caller may change its objects, or chdir, before the failure. `{ text, file }` (the
 * arguments as the letter's JSON), `{ error }` when they cannot be taken, `null` with
 * `deadLetter: false`.
 */
function takeArgs(spec, raw) {
  try {
    const args = spec.normalize ? spec.normalize(raw) : [...raw]
    const options = args[args.length - 1]
    if (isPlainObject(options) && options.deadLetter === false) return null
    args[args.length - 1] = keptOptions(options)
    const file = spec.fileOf ? path.resolve(spec.fileOf(args)) : path.resolve(require('./project.js').projectFile(spec.which, args[args.length - 1]))
    // The file as this call found it (from its cwd, FLOWFORGE_ROOT_OVERRIDE): a replay runs from
    // elsewhere, and would otherwise find another project's file.
    if (!spec.fileOf) args[args.length - 1].file = file
    return { text: asJson(args), file }
  } catch (error) {
    return { error }
  }
}

/** The letter's arguments as JSON; a value JSON cannot hold (a BigInt, a cycle) is named as such. */
function asJson(args) {
  try {
    return JSON.stringify(args)
  } catch (cause) {
    throw codedError(TypeError, 'ERR_DEAD_LETTER_NOT_JSON', `The call's arguments cannot be kept as JSON (${cause.message}): it was not kept as a dead letter.`)
  }
}

function keep(name, spec, taken, err, calledAt, id) {
  try {
    if (taken.error) throw taken.error
    const { file } = taken
    const args = JSON.parse(taken.text)
    if (spec.pin) spec.pin(args, calledAt)
    const dir = path.join(rootOf(file), DIR)
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const at = new Date().toISOString()
    const letter = {
      id,
      operation: name,
      args,
      file,
      error: { code: err.code, message: err.message },
      calledAt: new Date(calledAt).toISOString(),
      firstFailedAt: at,
      lastFailedAt: at,
      attempts: 1,
      pid: process.pid,
      hostname: os.hostname(),
    }
    writeAtomic(path.join(dir, `${id}.json`), letter)
    counts.kept++
    noteHistory(dir, 'kept', id)
    err.deadLetterId = id
    err.deadLetterFile = path.join(dir, `${id}.json`)
  } catch (keepErr) {
    // The caller's error matters more than ours: it says what failed; this says it was not kept.
    err.deadLetterError = `${keepErr.code ?? ''} ${keepErr.message}`.trim()
  }
}

/** The letters waiting in a project, oldest call first. */
function listDeadLetters(options) {
  const { root } = checkObject('options', options)
  if (root !== undefined) checkString('options.root', root)
  const dir = dirOf(root)
  let names
  try {
    names = fs.readdirSync(dir)
  } catch (err) {
    if (err.code === 'ENOENT') return []
    throw err
  }
  return names
    .filter((name) => LETTER_NAME.test(name))
    .sort()
    .map((name) => JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')))
}

function letterPath(dir, id) {
  if (!/^[0-9A-Za-z-]+$/.test(id)) throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `"${id}" is not a dead-letter id (see \`flowforge-lock dead-letters list\`).`)
  return path.join(dir, `${id}.json`)
}

function notFound(dir, id) {
  return codedError(Error, 'ERR_DEAD_LETTER_NOT_FOUND', `No dead letter ${id} in ${dir}; \`flowforge-lock dead-letters list\` shows those kept.`)
}

function showDeadLetter(id, options) {
  checkString('id', id)
  const { root } = checkObject('options', options)
  const dir = dirOf(root)
  const file = letterPath(dir, id)
  if (!fs.existsSync(file)) throw notFound(dir, id)
  return JSON.parse(fs.readFileSync(file, 'utf8'))
}

/**
 * Removes a letter without applying it; resolves to it. Under its data file's lock, as replay
 * removes letters, so a drop and a replay of the same letter cannot both happen.
 */
async function dropDeadLetter(id, options) {
  const { acquireLock, releaseLock } = require('../file-lock.js')
  const listed = showDeadLetter(id, options)
  const dir = dirOf(checkObject('options', options).root)
  const lockId = await acquireLock(listed.file)
  try {
    const letter = readIfThere(letterPath(dir, id))
    if (letter === null) throw notFound(dir, id)
    removeDurably(letterPath(dir, id))
    removeDurably(path.join(dir, JOURNAL, `${id}.json`))
    counts.dropped++
    noteHistory(dir, 'dropped', id)
    return letter
  } finally {
    await releaseLock(listed.file, lockId).catch(() => {})
  }
}

const digest = (text) => (text === null ? 'absent' : crypto.createHash('sha256').update(text).digest('hex'))

/**
 * Called by updateWithLock's write under a hold the caller has (lib/update.js), right before the
 * rename: during a replay, notes in the journal the digests of the file before and after this
 * commit, and its version before it, durably, while the lock is held.
 */
function beforeCommit(filePath, newText) {
  const store = replaying.getStore()
  if (store === undefined || path.resolve(filePath) !== store.letter.file) return
  fs.mkdirSync(path.dirname(store.journalFile), { recursive: true, mode: 0o700 })
  writeAtomic(store.journalFile, {
    id: store.letter.id,
    file: store.letter.file,
    before: digest(native.readText(filePath)),
    beforeVersion: native.currentVersion(filePath),
    after: digest(newText),
    at: new Date().toISOString(),
  })
  if (process.env.FLOWFORGE_LOCK_TEST_PAUSE === 'dead-letters::after-journal') pauseForTest(store.letter.id)
}

/**
 * Test hook of the replay's at-most-once test (FLOWFORGE_LOCK_TEST_PAUSE names the instant):
 * prints where it is, then waits, lock held, to be SIGKILLed.
 */
function pauseForTest(id) {
  fs.writeSync(1, `PAUSED ${id} ${process.pid}\n`)
  const forever = new Int32Array(new SharedArrayBuffer(4))
  Atomics.wait(forever, 0, 0)
}

/**
 * Whether the file's version is still the one journalled before the commit. Entries of builds
 * before versions were journalled have only the digests.
 */
function unchangedSince(filePath, mark) {
  if (mark.beforeVersion === undefined) return true
  const now = native.currentVersion(filePath)
  return now.version === mark.beforeVersion.version && now.foreignWrite === mark.beforeVersion.foreignWrite
}

function readIfThere(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch (err) {
    if (err.code === 'ENOENT') return null
    throw err
  }
}

/**
 * One letter, under its file's lock.
 *
 * At most once: the only step that applies an operation is the atomic rename of its file's new
 * content, and just before it (same hold, same locked step) the journal records the digests of
 * the file before and after that rename (beforeCommit). The letter is removed only after the
 * rename, still under the lock. A replay killed anywhere leaves one of:
 * - no journal entry: the rename cannot have happened (the entry is written first) -> apply;
 * - an entry, and the file's digest is its `after`: the rename happened -> do not apply, just
 *   remove the letter;
 * - an entry, the digest is its `before` and the version its `beforeVersion`: killed between
 *   the two -> nothing was applied, apply (a new entry replaces the old one). The digest alone
 *   cannot say it: a write after the kill that set the file back to its bytes before (a task's
 *   status set back) leaves the same digest, but every commit moves the version on;
 * - neither (someone wrote the file after the kill released the lock): whether the rename
 *   happened cannot be told, so the letter is not applied and is marked `inDoubt` for a person
 *   to look at (show, then drop or fix). Never applied twice, in every case.
 */
async function replayOne(dir, listed, lockOptions) {
  const { acquireLock, releaseLock } = require('../file-lock.js')
  const file = path.join(dir, `${listed.id}.json`)
  const journalFile = path.join(dir, JOURNAL, `${listed.id}.json`)
  if (listed.inDoubt) return { id: listed.id, status: 'in-doubt', reason: listed.inDoubt }
  let lockId
  try {
    lockId = await acquireLock(listed.file, lockOptions)
  } catch (err) {
    return failed(file, listed, err)
  }
  try {
    // Read again under the lock: a replay running beside this one may have applied and
    // removed it since it was listed (removal happens under this same lock).
    const letter = readIfThere(file)
    if (letter === null) return { id: listed.id, status: 'gone', reason: 'replayed or dropped by someone else meanwhile' }
    const op = OPERATIONS.get(letter.operation)
    if (op === undefined) return failed(file, letter, codedError(Error, 'ERR_UNKNOWN_OPERATION', `Unknown operation ${letter.operation}`))
    const mark = readIfThere(journalFile)
    if (mark !== null) {
      let now, unchanged
      try {
        now = digest(native.readText(letter.file))
        unchanged = now === mark.before && unchangedSince(letter.file, mark)
      } catch (err) {
        // The file or its version cannot be judged now (EVERSIONCORRUPT, EACCES): this letter
        // fails and stays, as its operation would have; the letters of other files go on.
        return failed(file, letter, err)
      }
      if (now === mark.after) {
        removeDurably(file)
        removeDurably(journalFile)
        counts.replayed++
        noteHistory(dir, 'replayed', letter.id)
        return { id: letter.id, status: 'already-applied' }
      }
      if (!unchanged) {
        letter.inDoubt = `${letter.file} changed after an interrupted replay of this letter: whether it was applied cannot be told, so it was not applied again. Check the file; then drop the letter (or fix the file and drop it).`
        writeAtomic(file, letter)
        return { id: letter.id, status: 'in-doubt', reason: letter.inDoubt }
      }
    }
    let result
    try {
      result = await replaying.run({ letter, journalFile }, () => runHolding(letter.file, lockId, () => op.fn(...letter.args)))
    } catch (err) {
      return failed(file, letter, err)
    }
    if (process.env.FLOWFORGE_LOCK_TEST_PAUSE === 'dead-letters::after-commit') pauseForTest(letter.id)
    removeDurably(file)
    removeDurably(journalFile)
    counts.replayed++
    noteHistory(dir, 'replayed', letter.id)
    return { id: letter.id, status: 'replayed', result }
  } finally {
    await releaseLock(listed.file, lockId).catch(() => {})
  }
}

/**
 * Keeps a letter that failed again, with attempts + 1 and the new error. Without its lock (it
 * could not be taken) a replay beside this one may have applied and removed it meanwhile: the
 * letter is first renamed aside, which fails if it is gone, so it is never brought back.
 */
function failed(file, letter, err) {
  const error = { code: err.code ?? null, message: err.message }
  const aside = `${file}.${process.pid}.failing`
  try {
    fs.renameSync(file, aside)
  } catch (renameErr) {
    if (renameErr.code !== 'ENOENT') throw renameErr
    return { id: letter.id, status: 'gone', reason: 'replayed or dropped by someone else meanwhile' }
  }
  const current = JSON.parse(fs.readFileSync(aside, 'utf8'))
  current.attempts += 1
  current.lastFailedAt = new Date().toISOString()
  current.error = error
  writeAtomic(file, current)
  removeDurably(aside)
  return { id: letter.id, status: 'failed', error }
}

/**
 * Applies the kept operations of a project (or the one `options.id`), oldest call first, each
 * under its file's lock; resolves to `{ dir, replayed, failed, skipped, results }`. A letter that
 * fails stays (attempts + 1, its new error), and the later letters of the same file wait behind
 * it (status 'skipped'), so their order is kept.
 */
async function replayDeadLetters(options) {
  const opts = checkObject('options', options)
  if (opts.id !== undefined) checkString('options.id', opts.id)
  const lockOptions = { timeout: checkMs('options.timeout', opts.timeout, native.DEFAULT_TIMEOUT) }
  // The operations register themselves when their modules load.
  require('./tasks.js')
  require('./time-tracking.js')
  require('./sessions.js')
  const dir = dirOf(opts.root)
  let letters = listDeadLetters({ root: opts.root })
  if (opts.id !== undefined) {
    letters = letters.filter((l) => l.id === opts.id)
    if (letters.length === 0) throw notFound(dir, opts.id)
  }
  const results = []
  const blocked = new Map()
  for (const letter of letters) {
    if (blocked.has(letter.file)) {
      results.push({ id: letter.id, status: 'skipped', reason: `waits behind ${blocked.get(letter.file)} (same file, earlier call)` })
      continue
    }
    const outcome = await replayOne(dir, letter, lockOptions)
    if (outcome.status === 'failed' || outcome.status === 'in-doubt') blocked.set(letter.file, letter.id)
    results.push(outcome)
  }
  const count = (...statuses) => results.filter((r) => statuses.includes(r.status)).length
  return { dir, replayed: count('replayed', 'already-applied'), failed: count('failed', 'in-doubt'), skipped: count('skipped'), results }
}

/** The CLI's `update` as an operation: FILE's content becomes `content`. */
const writeJson = deadLettered(
  'writeJson',
  (file, content, options) => require('./update.js').updateWithLock(file, () => content, options),
  { fileOf: (args) => args[0], normalize: ([file, content, options]) => [typeof file === 'string' ? path.resolve(file) : file, content, options] },
)

/** For status/doctor: where the letters are, how many wait, and the project's totals so far. */
function deadLetterSummary(root) {
  const dir = dirOf(root)
  const summary = { dir, pending: 0, kept: 0, replayed: 0, dropped: 0 }
  try {
    summary.pending = fs.readdirSync(dir).filter((name) => LETTER_NAME.test(name)).length
    for (const line of fs.readFileSync(path.join(dir, HISTORY), 'utf8').split('\n')) {
      const event = line.split(' ', 1)[0]
      if (event === 'kept' || event === 'replayed' || event === 'dropped') summary[event]++
    }
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  return summary
}

/** Pins, at call time, what a replay elsewhere would compute otherwise. */
const pinTimer = (args) => {
  const options = args[args.length - 1]
  options.user ??= currentUser()
  options.instanceId ??= currentInstanceId()
}

module.exports = {
  deadLettered,
  beforeCommit,
  listDeadLetters,
  showDeadLetter,
  dropDeadLetter,
  replayDeadLetters,
  deadLetterSummary,
  deadLetterCounts: () => ({ ...counts }),
  resetDeadLetterCounts: () => Object.assign(counts, { kept: 0, replayed: 0, dropped: 0 }),
  writeJson,
  pinTimer,
  RETRYABLE,
}
