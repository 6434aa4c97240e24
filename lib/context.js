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

/** Runs `fn` in a context that holds `lockId` for `filePath` (plus what the caller held). */
function runHolding(filePath, lockId, fn) {
  const held = new Map(storage.getStore())
  held.set(path.resolve(filePath), lockId)
  return storage.run(held, fn)
}

module.exports = { heldInContext, runHolding }
