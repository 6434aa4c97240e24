'use strict'
// Releases this process's locks when it ends: on `exit`, and on SIGINT/SIGTERM, after which
// the signal still ends the process as Node would have (no swallowed Ctrl-C). Installed once
// per process, however many copies of this package or lock managers are loaded.

const native = require('../native.js')

const INSTALLED = Symbol.for('flowforge-lock.exit-cleanup')

/**
 * `signals: false` leaves SIGINT/SIGTERM to the caller (the CLI's `exec` forwards them to its
 * child and releases only once the child has ended).
 */
function installExitCleanup({ signals = true } = {}) {
  if (process[INSTALLED]) return
  process[INSTALLED] = true
  process.on('exit', () => native.releaseAll())
  if (!signals) return
  for (const signal of ['SIGINT', 'SIGTERM']) {
    const onSignal = () => {
      native.releaseAll()
      // Our listener disabled Node's default action. If nobody else listens, restore it and
      // re-raise so the process dies by the signal, with the usual exit status.
      if (process.listenerCount(signal) === 1) {
        process.removeListener(signal, onSignal)
        process.kill(process.pid, signal)
      }
    }
    process.on(signal, onSignal)
  }
}

module.exports = { installExitCleanup }
