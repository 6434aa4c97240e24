'use strict'
// updateWithLock: read a JSON file under its lock, let the caller compute the new content,
// write it atomically (temp file, fsync, rename, fsync dir) after checking the lock is still
// ours, release. A file that does not parse is never overwritten.

const path = require('node:path')
const native = require('../native.js')
const { acquireLock, releaseLock, DEFAULT_TIMEOUT, STALE_THRESHOLD } = require('../file-lock.js')
const { checkString, checkFunction, checkObject, checkLockOptions, codedError } = require('./args.js')
const { heldInContext, heldNow, runHolding } = require('./context.js')
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
  const text = JSON.stringify(value, null, 2)
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
  const lockOpts = checkLockOptions(options, DEFAULTS)
  const lockId = typeof options === 'object' && options !== null ? options.lockId : undefined
  if (lockId !== undefined) {
    // The caller holds the lock already (a raw acquireLock): write under that hold.
    return updateUnder(filePath, checkString('options.lockId', lockId), updater)
  }
  return enqueueUpdate(filePath, updater, lockOpts, false)
}

/** One read-modify-write under a hold the caller already has (re-entry, or `{ lockId }`). */
async function updateUnder(filePath, lockId, updater) {
  const next = await runHolding(filePath, lockId, () => updater(readJson(filePath)))
  await native.writeTextAtomic(filePath, lockId, serialize(filePath, next))
  return next
}

/**
 * `inPlace` marks an updater of ours that never leaves changes behind when it throws (it
 * checks before it mutates): it may then edit the batch's document directly, without a copy.
 */
async function enqueueUpdate(filePath, updater, lockOpts, inPlace) {
  const outer = heldInContext(filePath)
  if (outer !== undefined) return updateUnder(filePath, outer, updater)
  const key = path.resolve(filePath)
  return new Promise((resolve, reject) => {
    let batch = pending.get(key)
    if (!batch) {
      batch = { jobs: [] }
      pending.set(key, batch)
      // Start on the next microtask, so calls made in the same tick share the first hold.
      queueMicrotask(() => runBatches(key, filePath, batch))
    }
    batch.jobs.push({
      updater,
      inPlace,
      resolve,
      reject,
      deadline: performance.now() + lockOpts.timeout,
      staleThreshold: lockOpts.staleThreshold,
      // Each updater sees the locks its caller holds, not those of whoever started the batch.
      callerHeld: heldNow(),
    })
  })
}

/** Per resolved file path: the updates waiting for the next hold. */
const pending = new Map()

async function runBatches(key, filePath, batch) {
  while (batch.jobs.length > 0) {
    const jobs = batch.jobs.splice(0)
    const soonest = Math.min(...jobs.map((job) => job.deadline))
    let lockId
    try {
      lockId = await acquireLock(filePath, {
        timeout: Math.max(0, soonest - performance.now()),
        staleThreshold: jobs[0].staleThreshold,
      })
    } catch (err) {
      // Those whose deadline has come fail with the error; the others try again, first.
      const now = performance.now()
      const again = jobs.filter((job) => err.code === 'ELOCKTIMEOUT' && job.deadline > now + 1)
      for (const job of jobs) if (!again.includes(job)) job.reject(err)
      batch.jobs.unshift(...again)
      continue
    }
    try {
      await applyBatch(filePath, lockId, jobs)
    } finally {
      await releaseLock(filePath, lockId).catch(() => {})
    }
  }
  pending.delete(key)
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
  // document close to O(N) instead of O(N x document).
  let text = current === null ? 'null' : undefined
  const done = []
  for (const job of jobs) {
    try {
      let input = current
      if (!job.inPlace) {
        text ??= JSON.stringify(current)
        input = JSON.parse(text)
      }
      const next = await runHolding(filePath, lockId, () => job.updater(input), job.callerHeld)
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
  )
  return result
}

module.exports = { updateWithLock, changeProjectFile, readJson }
