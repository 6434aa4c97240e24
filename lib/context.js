'use strict'
// Which locks the current async context holds (AsyncLocalStorage), so that a nested
// withLock/updateWithLock on a lock its caller already holds re-enters instead of waiting on
// itself, and a nested raw acquireLock of it fails fast. Keys are lock keys (the lock file a
// path is locked through), since paths that share a lock file share the lock. Only the flow that
// holds a lock is treated as its holder: any other flow of the process queues for it as another
// process would. One store per process, shared by every copy of this package that is loaded.

const { AsyncLocalStorage } = require('node:async_hooks')
const native = require('../native.js')

const STORE = Symbol.for('flowforge-lock.held-in-context')
const storage = (globalThis[STORE] ??= new AsyncLocalStorage())

/** The lockId this async context holds for `filePath`'s lock, if any. */
function heldInContext(filePath) {
  const held = storage.getStore()
  return held === undefined ? undefined : held.get(native.lockKey(filePath))
}

/** What the current async context holds, to run work for it later (see runHolding). */
function heldNow() {
  return storage.getStore()
}

/**
 * Runs `fn` in a context that holds `lockId` for `filePath`'s lock, plus what `outer` held
 * (default: what the current context holds).
 */
function runHolding(filePath, lockId, fn, outer = storage.getStore()) {
  const held = new Map(outer)
  held.set(native.lockKey(filePath), lockId)
  return storage.run(held, fn)
}

/**
 * In a context's map: the lock keys of the files whose updater runs in that context (shared by
 * every copy of this package, as the store is; a file spelled another way has the same key).
 */
const UPDATING = Symbol.for('flowforge-lock.updating')

/**
 * runHolding for an updater of `filePath`: the context also notes that this file's updater runs,
 * so an update of the same file nested in it is refused (its write would be overwritten by the
 * outer one, made from the document the updater was given).
 */
function runUpdating(filePath, lockId, fn, outer = storage.getStore()) {
  const key = native.lockKey(filePath)
  const held = new Map(outer)
  held.set(key, lockId)
  held.set(UPDATING, new Set(outer?.get(UPDATING)).add(key))
  return storage.run(held, fn)
}

/** Whether the current async context runs inside an updater of `filePath`. */
function updatingInContext(filePath) {
  const updating = storage.getStore()?.get(UPDATING)
  return updating !== undefined && updating.has(native.lockKey(filePath))
}

/**
 * lockId -> the writes in flight under that hold (promises that settle when the rename is done or
 * refused): releaseLock awaits them, so they land before the lock is given up, without blocking
 * the event loop (the core's own guard, for every other way a hold ends, waits for a write past
 * its lock check on the releasing thread). One per process, as `storage`.
 */
const WRITES = Symbol.for('flowforge-lock.writes-in-flight')
const writes = (globalThis[WRITES] ??= new Map())

/** Runs `write()` (a promise) as a write in flight under `lockId`. */
function trackWrite(lockId, write) {
  const promise = write()
  const settled = promise.then(
    () => {},
    () => {},
  )
  if (!writes.has(lockId)) writes.set(lockId, new Set())
  writes.get(lockId).add(settled)
  settled.then(() => {
    const set = writes.get(lockId)
    set.delete(settled)
    if (set.size === 0) writes.delete(lockId)
  })
  return promise
}

/** Whether a write is in flight under `lockId` (usually not). */
const writing = (lockId) => writes.size !== 0 && writes.has(lockId)

/** Settles once no write is in flight under `lockId`. */
async function writesSettled(lockId) {
  while (writes.has(lockId)) await Promise.all(writes.get(lockId))
}

/**
 * `fn()`, the synchronous work under the hold `lockId` of withLockSync or updateWithLockSync, run
 * through the core: if fn's JS is stopped (a vm timeout's watchdog), no `finally` of ours runs,
 * and the core releases the lock instead. What fn throws is caught here, on the JS side, so that
 * it reaches the caller as it was thrown (any value, not only an Error).
 */
function callUnderHold(filePath, lockId, fn) {
  const outcome = native.callUnderHold(filePath, lockId, () => {
    try {
      return { value: fn() }
    } catch (error) {
      return { error, threw: true }
    }
  })
  if (outcome.threw) throw outcome.error
  return outcome.value
}

/** The lockIds of this process's shared (read) holds: a write lock cannot re-enter one. */
const SHARED = Symbol.for('flowforge-lock.shared-holds')
const shared = (globalThis[SHARED] ??= new Set())

const noteShared = (lockId) => shared.add(lockId)
// Usually empty (no shared holds): skip the delete, which would hash the fresh lockId string.
const forgetShared = (lockId) => shared.size !== 0 && shared.delete(lockId)
const isShared = (lockId) => shared.has(lockId)

module.exports = { heldInContext, heldNow, runHolding, runUpdating, callUnderHold, updatingInContext, trackWrite, writing, writesSettled, noteShared, forgetShared, isShared }
