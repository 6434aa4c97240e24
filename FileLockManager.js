'use strict'
// flowforge-lock/FileLockManager: drop-in for FlowForge's scripts/utils/FileLockManager.js.
// An object wrapper: withLock(file, fn) runs fn under the file's lock and always releases.
// A nested withLock (or updateWithLock) on a file that the same async context already holds
// re-enters: fn runs at once under the outer lock (AsyncLocalStorage tracks what a context holds).
// withReadLock(file, fn) is the same under a shared (read) lock: many readers at once, no writer.

const { acquireLock, releaseLock, assertHeld, DEFAULT_TIMEOUT, STALE_THRESHOLD } = require('./file-lock.js')
const { updateWithLock } = require('./lib/update.js')
const { heldInContext, runHolding, isShared } = require('./lib/context.js')
const { checkString, checkFunction, checkLockOptions, codedError } = require('./lib/args.js')
const { installExitCleanup } = require('./lib/exit-cleanup.js')
const { watchHold } = require('./lib/lost.js')

class FileLockManager {
  constructor(options) {
    this.config = checkLockOptions(options, { timeout: DEFAULT_TIMEOUT, staleThreshold: STALE_THRESHOLD })
    /** lockId -> file, for every lock this manager acquired and has not released. */
    this.held = new Map()
    installExitCleanup()
  }

  async acquire(filePath, options) {
    const lockId = await acquireLock(filePath, checkLockOptions(options, this.config))
    this.held.set(lockId, filePath)
    return lockId
  }

  /** Releases `lockId`, or without one, every lock this manager holds on `filePath`. */
  async release(filePath, lockId) {
    checkString('filePath', filePath)
    if (lockId !== undefined) {
      this.held.delete(lockId)
      return releaseLock(filePath, lockId)
    }
    let released = false
    for (const [id, file] of this.held) {
      if (file !== filePath) continue
      this.held.delete(id)
      released = (await releaseLock(file, id)) || released
    }
    return released
  }

  /**
   * Resolves to fn's result; the lock is released whatever fn does. `fn(signal)` gets an
   * AbortSignal that aborts, with an ELOCKLOST error as its reason, if the lock is lost while
   * fn runs (a lease that could not be renewed, a lock file taken over).
   */
  async withLock(filePath, fn, options) {
    return this.#withMode(filePath, fn, options, 'exclusive')
  }

  /**
   * withLock under a shared (read) lock: fn runs beside other readers of this and other
   * processes, never beside a writer, and a writer waiting for the lock goes before readers that
   * arrive after it. fn gets the same AbortSignal. Inside a withLock of the same lock it re-enters
   * (a writer may read); a write under the read lock fails with ELOCKSHARED.
   */
  async withReadLock(filePath, fn, options) {
    return this.#withMode(filePath, fn, options, 'shared')
  }

  async #withMode(filePath, fn, options, mode) {
    checkString('filePath', filePath)
    checkFunction('fn', fn)
    const outer = heldInContext(filePath)
    if (outer !== undefined) {
      if (mode === 'exclusive' && isShared(outer)) {
        throw codedError(
          Error,
          'ELOCKSHARED',
          `withLock(${filePath}) inside withReadLock of the same lock: a read lock cannot become a write lock (it would wait on itself). Take the write lock (withLock) for the whole work instead.`,
        )
      }
      return this.#underWatch(filePath, outer, (signal) => fn(signal))
    }
    const lockId = await this.acquire(filePath, { ...checkLockOptions(options, this.config), mode })
    try {
      return await this.#underWatch(filePath, lockId, (signal) => runHolding(filePath, lockId, () => fn(signal)))
    } finally {
      await this.release(filePath, lockId)
    }
  }

  async #underWatch(filePath, lockId, run) {
    const { signal, stop } = watchHold(lockId, filePath)
    try {
      return await run(signal)
    } finally {
      stop()
    }
  }

  /** Throws ELOCKLOST unless `lockId` on `filePath` is still held (see file-lock's assertHeld). */
  assertHeld(filePath, lockId) {
    assertHeld(filePath, lockId)
  }

  /**
   * updateWithLock with this manager's lock options as defaults (bad options reject, as every call
   * here does). The caller's other options (`lockId`, `ifVersion`) go through unchanged: dropped,
   * an `ifVersion` write would land over a newer version.
   */
  async updateJson(filePath, updater, options) {
    const own = typeof options === 'object' && options !== null ? options : {}
    return updateWithLock(filePath, updater, { ...own, ...checkLockOptions(options, this.config) })
  }

  async releaseAll() {
    const held = [...this.held]
    this.held.clear()
    const results = await Promise.allSettled(held.map(([id, file]) => releaseLock(file, id)))
    return results.filter((r) => r.status === 'fulfilled' && r.value).length
  }

  /** getLockMetrics() of file-lock-integration: this process's locks and dead letters. */
  getMetrics() {
    return require('./file-lock-integration.js').getLockMetrics()
  }
}

module.exports = FileLockManager
module.exports.FileLockManager = FileLockManager
module.exports.default = FileLockManager
