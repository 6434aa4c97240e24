'use strict'
// Which locks the current async context holds (AsyncLocalStorage), so that a nested
// withLock/updateWithLock on a file its caller already holds re-enters instead of waiting on
// itself, and a nested raw acquireLock of it fails fast. One store per process, shared by every
// copy of this package that is loaded.

const path = require('node:path')
const { AsyncLocalStorage } = require('node:async_hooks')

const STORE = Symbol.for('flowforge-lock.held-in-context')
const storage = (globalThis[STORE] ??= new AsyncLocalStorage())

/** The lockId this async context holds for `filePath`, if any. */
function heldInContext(filePath) {
  return storage.getStore()?.get(path.resolve(filePath))
}

/** What the current async context holds, to run work for it later (see runHolding). */
function heldNow() {
  return storage.getStore()
}

/**
 * Runs `fn` in a context that holds `lockId` for `filePath`, plus what `outer` held (default:
 * what the current context holds).
 */
function runHolding(filePath, lockId, fn, outer = storage.getStore()) {
  const held = new Map(outer)
  held.set(path.resolve(filePath), lockId)
  return storage.run(held, fn)
}

module.exports = { heldInContext, heldNow, runHolding }
