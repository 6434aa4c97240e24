'use strict'
// Locks lost while held (a lease that could not be renewed in time, a lock file removed or
// taken over): the core reports each once, and this module turns that into an aborted
// AbortSignal for whoever asked to watch the lock. A loss never throws into the event loop:
// callers see it through the signal, assertHeld(), or the ELOCKLOST of their next write.

const native = require('../native.js')
const { codedError } = require('./args.js')

/**
 * lockId -> AbortControllers watching that hold. One per thread (the main one, each worker),
 * shared by every copy of this module loaded there (a second copy of the package, or a test
 * runner's fresh module registry): the core tells each thread's listener, registered by whichever
 * copy came first, of the losses of the holds that thread took.
 */
const STATE = Symbol.for('flowforge-lock.lost-watchers')
const state = (globalThis[STATE] ??= { watchers: new Map(), listening: false })
const { watchers } = state

function lostError(file, reason) {
  return codedError(Error, 'ELOCKLOST', `The lock on ${file} was lost while held (${reason}). Stop writing under it; retry the work under a new lock.`)
}

function onLost(lockId, file, reason) {
  const controllers = watchers.get(lockId)
  if (!controllers) return
  watchers.delete(lockId)
  const error = lostError(file, reason)
  for (const controller of controllers) controller.abort(error)
}

/**
 * An AbortSignal that aborts (with an ELOCKLOST error as its reason) if the hold `lockId` of
 * `filePath`, taken on this thread, is lost; already aborted if it was lost before (the core
 * tells a loss once, to the watches of that moment). `stop()` ends the watch when the hold ends.
 */
function watchHold(lockId, filePath) {
  if (!state.listening) {
    native.onLockLost(onLost)
    state.listening = true
  }
  const controller = new AbortController()
  const lostBefore = native.lostReason(lockId)
  if (lostBefore !== null) controller.abort(lostError(filePath, lostBefore))
  if (!watchers.has(lockId)) watchers.set(lockId, new Set())
  watchers.get(lockId).add(controller)
  const stop = () => {
    const controllers = watchers.get(lockId)
    if (!controllers) return
    controllers.delete(controller)
    if (controllers.size === 0) watchers.delete(lockId)
  }
  return { signal: controller.signal, stop }
}

module.exports = { watchHold }
