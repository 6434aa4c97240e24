'use strict'
// Releases this process's locks when it really ends: on `exit`, and on SIGINT/SIGTERM when
// nobody else listens for the signal (then the signal still ends the process as Node would
// have: no swallowed Ctrl-C). An application that listens for the signal itself decides whether
// the process ends; while it goes on, its locks stay held under its in-flight work, and if it
// exits, `exit` releases them. A worker thread releases only the locks it took itself: the
// native core is shared by the whole process. (A worker terminated before its JS saw a lock, in
// the middle of a wait, runs no `exit` listener: the core releases what each JS environment took
// when that environment is torn down.) Installed once per thread.

const { isMainThread } = require('node:worker_threads')
const native = require('../native.js')

const INSTALLED = Symbol.for('flowforge-lock.exit-cleanup')
/** lockId -> file, for the locks a worker thread holds (a main thread releases everything). */
const heldByThisThread = new Map()

function noteAcquired(filePath, lockId) {
  if (!isMainThread) heldByThisThread.set(lockId, filePath)
}

function noteReleased(lockId) {
  // Empty on the main thread: skip the delete, which would hash the fresh lockId string.
  if (heldByThisThread.size !== 0) heldByThisThread.delete(lockId)
}

function releaseThisThreadsLocks() {
  for (const [lockId, filePath] of heldByThisThread) {
    try {
      native.release(filePath, lockId)
    } catch {
      // Already gone (released, or lost): nothing left to give up.
    }
  }
  heldByThisThread.clear()
}

/**
 * `signals: false` leaves SIGINT/SIGTERM to the caller (the CLI's `exec` forwards them to its
 * child and releases only once the child has ended).
 */
function installExitCleanup({ signals = true } = {}) {
  if (process[INSTALLED]) return
  process[INSTALLED] = true
  if (!isMainThread) {
    process.on('exit', releaseThisThreadsLocks)
    return
  }
  process.on('exit', () => native.releaseAll())
  if (!signals) return
  for (const signal of ['SIGINT', 'SIGTERM']) {
    const onSignal = () => {
      // Somebody else listens: the application decides whether the process ends.
      if (process.listenerCount(signal) > 1) return
      native.releaseAll()
      // Our listener disabled Node's default action: restore it and re-raise, so the process
      // dies by the signal, with the usual exit status.
      process.removeListener(signal, onSignal)
      process.kill(process.pid, signal)
    }
    process.on(signal, onSignal)
  }
}

module.exports = { installExitCleanup, noteAcquired, noteReleased }
