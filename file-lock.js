'use strict'
// flowforge-lock/file-lock: drop-in for FlowForge's scripts/utils/file-lock.js.
// The low-level lock: acquire, release, inspect, clean up. All the work happens in the Rust
// core (native.js); this module checks arguments and shapes the promises.

const native = require('./native.js')
const { checkString, checkFunction, checkMs, checkObject, checkLockOptions, codedError, WAITED_SINCE } = require('./lib/args.js')
const { installExitCleanup, noteAcquired, noteReleased } = require('./lib/exit-cleanup.js')
const { heldInContext, runHolding, callUnderHold, noteShared, forgetShared, writing, writesSettled } = require('./lib/context.js')

const DEFAULT_TIMEOUT = native.DEFAULT_TIMEOUT
const HEARTBEAT_INTERVAL = native.HEARTBEAT_INTERVAL
const STALE_THRESHOLD = native.STALE_THRESHOLD

const DEFAULTS = { timeout: DEFAULT_TIMEOUT, staleThreshold: STALE_THRESHOLD }

/**
 * `acquireLock(file, 5000)` or `acquireLock(file, { timeout: 5000, staleThreshold: 60000, priority: 1, mode })`:
 * among this process's waiters for the lock, higher priorities go first (docs/priorities.md).
 * `mode: 'shared'` takes a read lock: held beside other readers, never beside a writer, and
 * never granted past a writer that waits (docs/reads.md); a write under it fails with ELOCKSHARED.
 */
async function acquireLock(filePath, timeout = DEFAULT_TIMEOUT) {
  checkString('filePath', filePath)
  const options = checkLockOptions(timeout, DEFAULTS)
  if (heldInContext(filePath) !== undefined) {
    throw codedError(
      Error,
      'ELOCKDEADLOCK',
      `acquireLock(${filePath}) inside withLock/updateWithLock of the same lock would wait on itself. Do the work inside the outer callback instead.`,
    )
  }
  installExitCleanup()
  // An uncontended lock is taken right here (a lock server's one answer waited for no longer than
  // the caller's timeout); only a wait goes to a worker thread.
  const bound = Number.isFinite(options.timeout) ? options.timeout : null
  let lockId = native.tryAcquire(filePath, options.staleThreshold, options.priority, nativeMode(options.mode), bound)
  if (lockId === null) {
    const wait = adaptiveOr(filePath, options)
    const since = typeof timeout === 'object' && timeout !== null ? timeout[WAITED_SINCE] : undefined
    const waited = since === undefined ? undefined : performance.now() - since
    lockId = await native.acquire(filePath, wait, options.staleThreshold, options.priority, nativeMode(options.mode), waited)
  }
  noteAcquired(filePath, lockId)
  if (options.mode === 'shared') noteShared(lockId)
  return lockId
}

/**
 * The wait in ms for the core (null: for ever). 'adaptive' is decided now, when the caller joins
 * the queue: from this lock's recent holds and who is ahead (native adaptiveTimeout).
 */
function adaptiveOr(filePath, options) {
  if (options.timeout === 'adaptive') return native.adaptiveTimeout(filePath, options.priority)
  return Number.isFinite(options.timeout) ? options.timeout : null
}

/** The mode as the core takes it: nothing for its default, 'exclusive' (a string less to convert per call). */
const nativeMode = (mode) => (mode === 'exclusive' ? undefined : mode)

async function releaseLock(filePath, lockId) {
  checkString('filePath', filePath)
  checkString('lockId', lockId)
  // The library's writes under this hold land first. (The core would also make the release wait
  // for a write past its lock check, but blocking the event loop; and one not yet at its check
  // would fail with ELOCKLOST instead of landing.)
  if (writing(lockId)) await writesSettled(lockId)
  const released = native.release(filePath, lockId)
  noteReleased(lockId)
  forgetShared(lockId)
  return released
}

/**
 * acquireLock for scripts and CLIs: blocks this thread until the lock is ours, with a real
 * timeout (ELOCKTIMEOUT). Fails at once with ELOCKDEADLOCK when this process already holds the
 * lock or waits for it through the asynchronous API: that holder or waiter needs the event loop
 * this call blocks, so waiting could never end.
 */
function acquireLockSync(filePath, timeout = DEFAULT_TIMEOUT) {
  checkString('filePath', filePath)
  const options = checkLockOptions(timeout, DEFAULTS)
  installExitCleanup()
  const lockId = native.acquireSync(filePath, adaptiveOr(filePath, options), options.staleThreshold, options.priority, nativeMode(options.mode))
  noteAcquired(filePath, lockId)
  if (options.mode === 'shared') noteShared(lockId)
  return lockId
}

function releaseLockSync(filePath, lockId) {
  checkString('filePath', filePath)
  checkString('lockId', lockId)
  const released = native.release(filePath, lockId)
  noteReleased(lockId)
  forgetShared(lockId)
  return released
}

/**
 * Runs the synchronous `fn()` under the lock and returns its result; the lock is released when
 * `fn` returns or throws. Calls of this library inside `fn` on the same lock write under this
 * hold (updateWithLockSync) instead of waiting on it.
 */
function withLockSync(filePath, fn, timeout = DEFAULT_TIMEOUT) {
  checkFunction('fn', fn)
  const lockId = acquireLockSync(filePath, timeout)
  let result
  try {
    result = callUnderHold(filePath, lockId, () => runHolding(filePath, lockId, fn))
  } finally {
    releaseLockSync(filePath, lockId)
  }
  if (result !== null && (typeof result === 'object' || typeof result === 'function') && typeof result.then === 'function') {
    throw codedError(
      TypeError,
      'ERR_INVALID_RETURN_VALUE',
      `withLockSync(${filePath}): the callback returned a promise, but the lock was released when it returned, before that work finished. Use withLock (FileLockManager) for asynchronous work.`,
    )
  }
  return result
}

/**
 * Throws ELOCKLOST unless this process still holds `lockId` on `filePath`, checked with the
 * backend (for a lock server: a round trip, and its fencing token against the one beside the
 * file), as every write of this library does just before its rename.
 */
function assertHeld(filePath, lockId) {
  checkString('filePath', filePath)
  checkString('lockId', lockId)
  native.verifyHeld(filePath, lockId)
}

/**
 * `configure({ backend })`: the lock backend of this process, a URL: 'file' (the default),
 * 'redis://host:6379/0?ttl=30000&refresh=5000', 'etcd://host:2379'. `backend: null` goes back to
 * FLOWFORGE_LOCK_BACKEND and the project's .flowforge/lock-config.json.
 */
function configure(options) {
  const { backend } = checkObject('options', options)
  if (backend !== undefined && backend !== null) checkString('options.backend', backend)
  native.configureBackend(backend ?? null)
}

/** The options of the inspecting calls: `{ root, staleThreshold, dryRun }`, checked. */
function inspectOptions(options) {
  const { root, staleThreshold, dryRun } = checkObject('options', options)
  if (root !== undefined) checkString('options.root', root)
  return { root, staleThreshold: checkMs('options.staleThreshold', staleThreshold, STALE_THRESHOLD, false), dryRun: Boolean(dryRun) }
}

async function isLocked(filePath, options) {
  checkString('filePath', filePath)
  return native.isLocked(filePath, inspectOptions(options).staleThreshold)
}

async function getLockInfo(filePath, options) {
  checkString('filePath', filePath)
  return native.getLockInfo(filePath, inspectOptions(options).staleThreshold)
}

/**
 * Removes the stale lock files of the project found from the cwd (or `options.root`):
 * resolves to `{ root, removed: [...], kept: [...] }`, each entry with its state and reason.
 */
async function cleanupStaleLocks(options) {
  const { root, staleThreshold, dryRun } = inspectOptions(options)
  return native.cleanupStaleLocks(root, staleThreshold, dryRun)
}

/** Every lock file of a project, judged: for status displays. */
function listLocks(options) {
  const { root, staleThreshold } = inspectOptions(options)
  return native.listLocks(root, staleThreshold)
}

/** FlowForge's session scripts look for updateWithLock here too (see file-lock-integration). */
function updateWithLock(filePath, updater, options) {
  // Required on use: lib/update.js itself builds on this module.
  return require('./lib/update.js').updateWithLock(filePath, updater, options)
}

module.exports = {
  acquireLock,
  releaseLock,
  acquireLockSync,
  releaseLockSync,
  withLockSync,
  assertHeld,
  configure,
  isLocked,
  getLockInfo,
  cleanupStaleLocks,
  listLocks,
  updateWithLock,
  DEFAULT_TIMEOUT,
  HEARTBEAT_INTERVAL,
  STALE_THRESHOLD,
}
