'use strict'
// Argument checks with Node's own error codes, so callers can branch on `err.code`.
// Checks of a path's value (empty, NUL byte, a directory) happen in the Rust core.

function received(value) {
  if (value === null) return 'Received null'
  if (value === undefined) return 'Received undefined'
  if (typeof value === 'function') return `Received function ${value.name || '<anonymous>'}`
  if (typeof value === 'object') return `Received an instance of ${value.constructor ? value.constructor.name : 'Object'}`
  let shown = String(value)
  if (shown.length > 28) shown = `${shown.slice(0, 25)}...`
  if (typeof value === 'string') shown = `'${shown}'`
  return `Received type ${typeof value} (${shown})`
}

function codedError(Kind, code, message) {
  const err = new Kind(message)
  err.code = code
  return err
}

function checkString(name, value) {
  if (typeof value !== 'string') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be of type string. ${received(value)}`)
  }
  return value
}

function checkFunction(name, value) {
  if (typeof value !== 'function') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be of type function. ${received(value)}`)
  }
  return value
}

function checkObject(name, value) {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be of type object. ${received(value)}`)
  }
  return value
}

/** A duration in ms: a number >= 0 (Infinity allowed where `allowInfinity`), else `fallback` when undefined. */
function checkMs(name, value, fallback, allowInfinity = true) {
  if (value === undefined) return fallback
  if (typeof value !== 'number') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be of type number. ${received(value)}`)
  }
  if (Number.isNaN(value) || value < 0 || (!allowInfinity && !Number.isFinite(value))) {
    throw codedError(
      RangeError,
      'ERR_OUT_OF_RANGE',
      `The value of "${name}" is out of range. It must be a number of milliseconds >= 0${allowInfinity ? ' (or Infinity)' : ''}. Received ${value}`,
    )
  }
  return value
}

/** A lock priority: a finite number, higher first (docs/priorities.md); `fallback` when undefined. */
function checkPriority(name, value, fallback) {
  if (value === undefined) return fallback
  if (typeof value !== 'number') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be of type number. ${received(value)}`)
  }
  if (!Number.isFinite(value)) {
    throw codedError(RangeError, 'ERR_OUT_OF_RANGE', `The value of "${name}" is out of range. It must be a finite number (higher goes first, default 0). Received ${value}`)
  }
  return value
}

/** A lock mode: 'exclusive' (one holder, who may write) or 'shared' (readers together); `fallback` when undefined. */
function checkMode(name, value, fallback) {
  if (value === undefined) return fallback
  if (typeof value !== 'string') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be of type string. ${received(value)}`)
  }
  if (value !== 'exclusive' && value !== 'shared') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The "${name}" argument must be 'exclusive' (the default: one holder, who may write) or 'shared' (readers together, no writer). ${received(value)}`)
  }
  return value
}

/** A lock timeout: ms as checkMs takes them, or 'adaptive' (from the lock's holds and queue: docs/priorities.md). */
const checkTimeout = (name, value, fallback) => (value === 'adaptive' ? value : checkMs(name, value, fallback))

/**
 * Lock options as every entry point takes them: a timeout in ms (or 'adaptive'), or `{ timeout,
 * staleThreshold, priority, mode }`; what is not given comes from `defaults` (the package's, or a
 * FileLockManager's config).
 */
function checkLockOptions(timeoutOrOptions, defaults) {
  if (typeof timeoutOrOptions !== 'object' && timeoutOrOptions !== undefined) {
    return { timeout: checkTimeout('timeout', timeoutOrOptions), staleThreshold: defaults.staleThreshold, priority: defaults.priority ?? 0, mode: defaults.mode ?? 'exclusive' }
  }
  const { timeout, staleThreshold, priority, mode } = checkObject('options', timeoutOrOptions)
  return {
    timeout: checkTimeout('options.timeout', timeout, defaults.timeout),
    staleThreshold: checkMs('options.staleThreshold', staleThreshold, defaults.staleThreshold, false),
    priority: checkPriority('options.priority', priority, defaults.priority ?? 0),
    mode: checkMode('options.mode', mode, defaults.mode ?? 'exclusive'),
  }
}

/**
 * An option of acquireLock for this package's own use (never a caller's): the `performance.now()`
 * at which the caller first asked, when it asks again after an earlier wait ended (a coalesced
 * update whose batch's wait ended at another caller's timeout). It keeps its rank in the queue.
 */
const WAITED_SINCE = Symbol.for('flowforge-lock.waited-since')

/**
 * A value that goes into a JSON file must survive JSON.stringify (no BigInt, no cycles). Returns a
 * copy of `value` as it will be written. An update runs later than its call (after the lock
 * is taken): a caller changing its object meanwhile must change neither what is written nor,
 * with a value JSON cannot write, the other updates of the same batch.
 */
function checkJson(name, value) {
  let text
  try {
    text = JSON.stringify(value)
  } catch (err) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The "${name}" argument cannot be written as JSON: ${err.message}`)
  }
  return text === undefined ? undefined : JSON.parse(text)
}

module.exports = { checkString, checkFunction, checkObject, checkMs, checkPriority, checkLockOptions, checkJson, codedError, WAITED_SINCE }
