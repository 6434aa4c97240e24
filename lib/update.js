'use strict'
// updateWithLock: read a JSON file under its lock, let the caller compute the new content,
// write it atomically (temp file, fsync, rename, fsync dir) after checking the lock is still
// ours, release. A file that does not parse is never overwritten.

const native = require('../native.js')
const { acquireLock, releaseLock, DEFAULT_TIMEOUT, STALE_THRESHOLD } = require('../file-lock.js')
const { checkString, checkFunction, checkObject, checkMs, codedError } = require('./args.js')
const { heldInContext, runHolding } = require('./context.js')
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

function lockOptions(options) {
  const { timeout, staleThreshold } = checkObject('options', options)
  return {
    timeout: checkMs('options.timeout', timeout, DEFAULT_TIMEOUT),
    staleThreshold: checkMs('options.staleThreshold', staleThreshold, STALE_THRESHOLD, false),
  }
}

/**
 * Under the file's lock: `next = await updater(current)` (current is null when the file does
 * not exist), write `next` atomically, resolve to it. An updater that throws leaves the file
 * unchanged and its error reaches the caller as it was.
 */
async function updateWithLock(filePath, updater, options) {
  checkString('filePath', filePath)
  checkFunction('updater', updater)
  const lockOpts = lockOptions(options)
  const outer = heldInContext(filePath)
  if (outer !== undefined) return applyUpdate(filePath, outer, updater)
  const lockId = await acquireLock(filePath, lockOpts)
  let failed = true
  try {
    const result = await runHolding(filePath, lockId, () => applyUpdate(filePath, lockId, updater))
    failed = false
    return result
  } finally {
    // A failing release must not hide the update's own error.
    await releaseLock(filePath, lockId).catch((err) => {
      if (!failed) throw err
    })
  }
}

async function applyUpdate(filePath, lockId, updater) {
  const next = await updater(readJson(filePath))
  await native.writeTextAtomic(filePath, lockId, serialize(filePath, next))
  return next
}

/**
 * One locked read-modify-write of one of FlowForge's files (a key of project.FILES):
 * `change(doc, file, opts)` edits the parsed document in place (a missing file starts as
 * `initial()`) and returns what the call resolves to.
 */
async function changeProjectFile(which, options, initial, change) {
  const opts = checkObject('options', options)
  const file = projectFile(which, opts)
  let result
  await updateWithLock(
    file,
    (current) => {
      const doc = current ?? initial()
      result = change(doc, file, opts)
      return doc
    },
    lockOptions(opts),
  )
  return result
}

module.exports = { updateWithLock, changeProjectFile, readJson, lockOptions }
