'use strict'
// updateWithLock: read a JSON file under its lock, let the caller compute the new content,
// write it atomically (temp file, fsync, rename, fsync dir) after checking the lock is still
// ours, release. A file that does not parse is never overwritten. `ifVersion` makes it
// optimistic (EVERSION when the file moved on, see docs/reads.md); updateWithLockSync is the
// blocking form for scripts.

const path = require('node:path')
const native = require('../native.js')
const { acquireLock, releaseLock, acquireLockSync, releaseLockSync, DEFAULT_TIMEOUT, STALE_THRESHOLD } = require('../file-lock.js')
const { checkString, checkFunction, checkObject, checkLockOptions, codedError, WAITED_SINCE } = require('./args.js')
const { heldInContext, heldNow, runUpdating, updatingInContext, trackWrite, callUnderHold } = require('./context.js')
const { projectFile } = require('./project.js')

function parseJson(filePath, text) {
  try {
    return JSON.parse(text)
  } catch (err) {
    native.throwJsonParseError(filePath, text, err.message)
  }
}

/** The parsed content of `filePath`, or null when it does not exist. Call it under the lock. */
function readJson(filePath) {
  const text = native.readText(filePath)
  return text === null ? null : parseJson(filePath, text)
}

function serialize(filePath, value) {
  let text
  try {
    text = JSON.stringify(value, null, 2)
  } catch (err) {
    // A BigInt or a cycle: the caller's value, not the file, is at fault.
    throw codedError(TypeError, 'ERR_INVALID_RETURN_VALUE', `The updater for ${filePath} returned a value JSON cannot write (${err.message}); nothing was written.`)
  }
  if (text === undefined) {
    throw codedError(
      TypeError,
      'ERR_INVALID_RETURN_VALUE',
      `The updater for ${filePath} returned ${typeof value}, which is not JSON; nothing was written. Return the new content (or the current one to keep it).`,
    )
  }
  return `${text}\n`
}

const DEFAULTS = { timeout: DEFAULT_TIMEOUT, staleThreshold: STALE_THRESHOLD }

/** The lock options of a write: `mode: 'shared'` is refused, since a reader does not commit. */
function writeLockOptions(filePath, options) {
  const lockOpts = checkLockOptions(options, DEFAULTS)
  if (lockOpts.mode === 'shared') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `An update of ${filePath} writes, so it takes the exclusive lock: mode 'shared' is for reading (FileLockManager.withReadLock, or acquireLock with mode: 'shared'). Drop the mode option.`)
  }
  return lockOpts
}

/** `options.ifVersion`: undefined, or a version number as readJSONVersioned gives it. */
function checkIfVersion(options) {
  const ifVersion = typeof options === 'object' && options !== null ? options.ifVersion : undefined
  if (ifVersion !== undefined && !(Number.isSafeInteger(ifVersion) && ifVersion >= 0)) {
    throw codedError(RangeError, 'ERR_INVALID_ARG_VALUE', `The "options.ifVersion" argument must be a version as readJSONVersioned returns it (an integer >= 0). Received ${String(ifVersion)}`)
  }
  return ifVersion
}

/**
 * Under the lock: `EVERSION` unless the file is still at `ifVersion` (`moved`: an earlier update
 * of the same commit has changed it already). A file changed outside the library has no
 * version the library can vouch for: it is refused too.
 */
function versionConflict(filePath, ifVersion, now, moved) {
  if (!now.foreignWrite && now.version === ifVersion && !moved) return undefined
  const why = now.foreignWrite
    ? `it was changed outside flowforge-lock since its last commit (version ${now.version}, not vouched for); update it once without ifVersion to version it again`
    : moved
      ? `another update of the same commit changes it first (it will be at version ${now.version + 1})`
      : `it is at version ${now.version}: somebody committed since you read it`
  const err = codedError(Error, 'EVERSION', `${filePath} was not updated: ifVersion is ${ifVersion}, but ${why}. Nothing was written; re-read it (readJSONVersioned) and decide again.`)
  err.expectedVersion = ifVersion
  err.currentVersion = now.version
  err.foreignWrite = now.foreignWrite
  return err
}

/**
 * Under the file's lock: `next = await updater(current)` (current is null when the file does
 * not exist), write `next` atomically, resolve to it. An updater that throws leaves the file
 * unchanged and its error reaches the caller as it was.
 *
 * Concurrent calls for the same file in this process are coalesced: whoever is waiting when
 * the lock comes free is served under one hold, one read and one durable write, each updater
 * seeing the content its predecessors produced and the locks its own caller holds. Each
 * caller still gets its own result or its own error; an updater that fails is skipped (it
 * worked on a copy, so its half-done changes go nowhere) and does not sink the others.
 */
async function updateWithLock(filePath, updater, options) {
  checkString('filePath', filePath)
  checkFunction('updater', updater)
  const lockOpts = writeLockOptions(filePath, options)
  const ifVersion = checkIfVersion(options)
  const lockId = typeof options === 'object' && options !== null ? options.lockId : undefined
  if (lockId !== undefined) {
    // The caller holds the lock already (a raw acquireLock): write under that hold.
    return updateUnder(filePath, checkString('options.lockId', lockId), updater, ifVersion)
  }
  return enqueueUpdate(filePath, updater, lockOpts, false, ifVersion)
}

function checkVersionUnder(filePath, ifVersion) {
  if (ifVersion === undefined) return
  const conflict = versionConflict(filePath, ifVersion, native.currentVersion(filePath), false)
  if (conflict) throw conflict
}

/**
 * An update of `filePath` from inside an updater of the same file: it would write, then the outer
 * update would write over it the document its updater was given, and the nested change would be
 * lost although its caller was told it was written. Refused before anything is read or written.
 */
function refuseNested(filePath) {
  if (!updatingInContext(filePath)) return
  throw codedError(
    Error,
    'ELOCKDEADLOCK',
    `An update of ${filePath} inside the updater of another update of ${filePath}: the outer update writes the document its updater returns when it returns, over this one. Nothing was written; make the change in the outer updater's document instead.`,
  )
}

/**
 * Per hold and file (`lockId\0lock key`): the last of the updates that re-entered that hold, so
 * that concurrent ones (a Promise.all inside withLock, or several `{ lockId }` calls) apply one
 * after another, each reading what the one before wrote, instead of all reading the same content.
 * Shared by every copy of this package, as the context store is.
 */
const UNDER_HOLD = Symbol.for('flowforge-lock.updates-under-hold')
const underHold = (globalThis[UNDER_HOLD] ??= new Map())
const holdKey = (filePath, lockId) => `${lockId}\0${native.lockKey(filePath)}`

/** One read-modify-write under a hold the caller already has (re-entry, or `{ lockId }`). */
async function updateUnder(filePath, lockId, updater, ifVersion) {
  refuseNested(filePath)
  const key = holdKey(filePath, lockId)
  const before = underHold.get(key)
  let finished
  const mine = new Promise((resolve) => (finished = resolve))
  underHold.set(key, mine)
  try {
    if (before !== undefined) await before
    return await updateUnderNow(filePath, lockId, updater, ifVersion)
  } finally {
    finished()
    if (underHold.get(key) === mine) underHold.delete(key)
  }
}

async function updateUnderNow(filePath, lockId, updater, ifVersion) {
  checkVersionUnder(filePath, ifVersion)
  const next = await runUpdating(filePath, lockId, () => updater(readJson(filePath)))
  const text = serialize(filePath, next)
  // A dead-letter replay journals this commit before it happens (at most once: dead-letters.js).
  require('./dead-letters.js').beforeCommit(filePath, text)
  await trackWrite(lockId, () => native.writeTextAtomic(filePath, lockId, text))
  return next
}

const isThenable = (value) => value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function'

/** One synchronous read-modify-write under a hold the caller has. */
function updateUnderSync(filePath, lockId, updater, ifVersion) {
  refuseNested(filePath)
  if (underHold.has(holdKey(filePath, lockId))) {
    throw codedError(
      Error,
      'ELOCKDEADLOCK',
      `updateWithLockSync(${filePath}) while an asynchronous update of it under the same hold is in progress: it cannot wait for that one without blocking it, and must not write over it. Nothing was written; await the asynchronous update first.`,
    )
  }
  checkVersionUnder(filePath, ifVersion)
  const next = runUpdating(filePath, lockId, () => updater(readJson(filePath)))
  if (isThenable(next)) {
    throw codedError(TypeError, 'ERR_INVALID_RETURN_VALUE', `The updater for ${filePath} returned a promise, but updateWithLockSync needs the new content right away; nothing was written. Use updateWithLock for an asynchronous updater.`)
  }
  native.writeTextAtomicSync(filePath, lockId, serialize(filePath, next))
  return next
}

/**
 * updateWithLock for scripts and CLIs: blocks this thread until the lock is ours (or the
 * timeout passes), then reads, applies the synchronous `updater`, writes and releases. Inside a
 * hold of the same lock (withLockSync, or `{ lockId }`) it writes under that hold.
 */
function updateWithLockSync(filePath, updater, options) {
  checkString('filePath', filePath)
  checkFunction('updater', updater)
  const lockOpts = writeLockOptions(filePath, options)
  const ifVersion = checkIfVersion(options)
  const given = typeof options === 'object' && options !== null ? options.lockId : undefined
  const outer = given !== undefined ? checkString('options.lockId', given) : heldInContext(filePath)
  if (outer !== undefined) return updateUnderSync(filePath, outer, updater, ifVersion)
  const lockId = acquireLockSync(filePath, lockOpts)
  try {
    return callUnderHold(filePath, lockId, () => updateUnderSync(filePath, lockId, updater, ifVersion))
  } finally {
    releaseLockSync(filePath, lockId)
  }
}

/**
 * `inPlace` marks an updater of ours that never leaves changes behind when it throws (it
 * checks before it mutates): it may then edit the batch's document directly, without a copy.
 */
async function enqueueUpdate(filePath, updater, lockOpts, inPlace, ifVersion) {
  const outer = heldInContext(filePath)
  if (outer !== undefined) return updateUnder(filePath, outer, updater, ifVersion)
  const key = path.resolve(filePath)
  return new Promise((resolve, reject) => {
    const job = {
      arrived: performance.now(),
      updater,
      inPlace,
      ifVersion,
      resolve,
      reject,
      // 'adaptive' is decided as the caller joins: this lock's recent holds and who is ahead.
      deadline: performance.now() + (lockOpts.timeout === 'adaptive' ? native.adaptiveTimeout(filePath, lockOpts.priority) : lockOpts.timeout),
      staleThreshold: lockOpts.staleThreshold,
      priority: lockOpts.priority,
      // Each updater sees the locks its caller holds, not those of whoever started the batch.
      callerHeld: heldNow(),
    }
    let batch = pending.get(key)
    if (batch !== undefined && batch.waiting !== undefined && !(job.deadline >= batch.waiting.deadline && job.priority <= batch.waiting.priority)) {
      // The batch's wait under way ends later than this caller's timeout, or waits with a lower
      // priority: this caller waits on its own terms, and later callers still join the batch.
      runBatches(undefined, filePath, { jobs: [job] })
      return
    }
    if (batch === undefined) {
      batch = { jobs: [] }
      pending.set(key, batch)
      // Start on the next microtask, so calls made in the same tick share the first hold.
      queueMicrotask(() => runBatches(key, filePath, batch))
    }
    batch.jobs.push(job)
  })
}

/**
 * Per resolved file path: the updates waiting for the next hold. While the batch waits for the
 * lock, `waiting` holds the deadline and priority of that wait.
 */
const pending = new Map()

/** Serves `batch`'s jobs, hold after hold; `key`: its entry in `pending`, if it has one. */
async function runBatches(key, filePath, batch) {
  while (batch.jobs.length > 0) {
    // Higher priorities first within the hold too (a stable sort keeps arrival order among equals);
    // the batch waits with the highest priority among its jobs.
    const jobs = batch.jobs.splice(0).sort((a, b) => b.priority - a.priority)
    // A loop, not Math.min(...): a spread of some 125,000 deadlines overflows the stack.
    let soonest = Infinity
    let earliest = Infinity
    for (const job of jobs) {
      if (job.deadline < soonest) soonest = job.deadline
      if (job.arrived < earliest) earliest = job.arrived
    }
    let lockId
    batch.waiting = { deadline: soonest, priority: jobs[0].priority }
    try {
      lockId = await acquireLock(filePath, {
        timeout: Math.max(0, soonest - performance.now()),
        staleThreshold: jobs[0].staleThreshold,
        priority: jobs[0].priority,
        // Ranked from the first ask of its earliest caller: asking again after another caller's
        // timeout ended the wait must not send the others behind those who came after them.
        [WAITED_SINCE]: earliest,
      })
    } catch (err) {
      // Those whose deadline has come fail with the error; the others try again, first.
      const now = performance.now()
      const again = jobs.filter((job) => err.code === 'ELOCKTIMEOUT' && job.deadline > now + 1)
      for (const job of jobs) if (!again.includes(job)) job.reject(err)
      batch.jobs.unshift(...again)
      continue
    } finally {
      batch.waiting = undefined
    }
    try {
      await applyBatch(filePath, lockId, jobs)
    } finally {
      await releaseLock(filePath, lockId).catch(() => {})
    }
  }
  if (key !== undefined) pending.delete(key)
}

async function applyBatch(filePath, lockId, jobs) {
  let current
  try {
    current = readJson(filePath)
  } catch (err) {
    for (const job of jobs) job.reject(err)
    return
  }
  // A caller's updater gets its own copy (a fresh parse of the state's JSON text), so its
  // half-done changes go nowhere if it throws; serialising its result checks it, and gives
  // the next copy. Our own in-place updaters skip both, which keeps a batch of N updates of a
  // document close to O(N) instead of O(N x document); but after a caller's updater they too
  // start from a parse of what it returned: that value may serialise as something else (toJSON)
  // and is the caller's object, resolved to it unchanged.
  let text = current === null ? 'null' : undefined
  const done = []
  let before
  for (const job of jobs) {
    try {
      if (job.ifVersion !== undefined) {
        before ??= native.currentVersion(filePath)
        const conflict = versionConflict(filePath, job.ifVersion, before, done.length > 0)
        if (conflict) throw conflict
      }
      let input = current
      if (!job.inPlace || text !== undefined) {
        text ??= JSON.stringify(current)
        input = JSON.parse(text)
      }
      const next = await runUpdating(filePath, lockId, () => job.updater(input), job.callerHeld)
      text = job.inPlace ? undefined : serialize(filePath, next)
      current = next
      done.push({ job, next })
    } catch (err) {
      job.reject(err)
    }
  }
  if (done.length === 0) return
  try {
    await native.writeTextAtomic(filePath, lockId, serialize(filePath, current))
  } catch (err) {
    for (const { job } of done) job.reject(err)
    return
  }
  for (const { job, next } of done) job.resolve(next)
}

/**
 * One locked read-modify-write of one of FlowForge's files (a key of project.FILES):
 * `change(doc, file, opts)` edits the parsed document in place (a missing file starts as
 * `initial()`) and returns what the call resolves to. `change` must check before it mutates,
 * and put only JSON-serialisable values in the document: it runs in place (see enqueueUpdate).
 */
async function changeProjectFile(which, options, initial, change) {
  const opts = checkObject('options', options)
  const ifVersion = checkIfVersion(opts)
  const file = projectFile(which, opts)
  let result
  await enqueueUpdate(
    file,
    (current) => {
      const doc = current ?? initial()
      result = change(doc, file, opts)
      return doc
    },
    checkLockOptions(opts, DEFAULTS),
    true,
    ifVersion,
  )
  return result
}

module.exports = { updateWithLock, updateWithLockSync, changeProjectFile, readJson }
