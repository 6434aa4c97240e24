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

/**
 * Lock options as every entry point takes them: a timeout in ms, or `{ timeout, staleThreshold }`;
 * what is not given comes from `defaults` (the package's, or a FileLockManager's config).
 */
function checkLockOptions(timeoutOrOptions, defaults) {
  if (typeof timeoutOrOptions !== 'object' && timeoutOrOptions !== undefined) {
    return { timeout: checkMs('timeout', timeoutOrOptions), staleThreshold: defaults.staleThreshold }
  }
  const { timeout, staleThreshold } = checkObject('options', timeoutOrOptions)
  return {
    timeout: checkMs('options.timeout', timeout, defaults.timeout),
    staleThreshold: checkMs('options.staleThreshold', staleThreshold, defaults.staleThreshold, false),
  }
}

/** A value that goes into a JSON file must survive JSON.stringify (no BigInt, no cycles). */
function checkJson(name, value) {
  try {
    JSON.stringify(value)
  } catch (err) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The "${name}" argument cannot be written as JSON: ${err.message}`)
  }
  return value
}

module.exports = { checkString, checkFunction, checkObject, checkMs, checkLockOptions, checkJson, codedError }
