'use strict'
// flowforge-lock exec: hold a file's lock while a command runs, like flock(1). As with flock(1),
// the command inherits the locked descriptor (as fd 3, named by FLOWFORGE_LOCK_FD), so the lock
// lives exactly as long as the command: even if this wrapper is SIGKILLed, the command keeps the
// lock until it ends, and nobody else runs beside it. A lock server's lock cannot be inherited:
// it ends with this wrapper, so there the command ends with the wrapper instead (exec-child.js).

const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const native = require('../../native.js')
const { acquireLock, releaseLock } = require('../../file-lock.js')
const { installExitCleanup } = require('../exit-cleanup.js')
const { watchHold } = require('../lost.js')
const { EXIT } = require('./exit-codes.js')
const { showWaiting } = require('./waiting.js')

const FORWARDED = ['SIGINT', 'SIGTERM']
/** How long a command gets to stop after SIGTERM, once the lock is lost, before SIGKILL. */
const STOP_GRACE_MS = 5000
/** Where the command finds the inherited lock descriptor. */
const LOCK_FD = 3
/** Runs the command so that it dies with this wrapper (see the file). */
const EXEC_CHILD = path.join(__dirname, 'exec-child.js')

async function exec(file, [command, ...args], { timeout, priority, quiet }) {
  // Signals are ours to forward while the command runs; the lock goes when it has ended.
  installExitCleanup({ signals: false })
  const stopShowing = showWaiting(file, { timeout: timeout ?? native.DEFAULT_TIMEOUT, quiet })
  let lockId
  try {
    lockId = await acquireLock(file, { timeout, priority })
  } finally {
    stopShowing()
  }
  const fd = native.inheritableFd(file, lockId)
  const stdio = fd === null ? 'inherit' : ['inherit', 'inherit', 'inherit', fd]
  const env = fd === null ? process.env : { ...process.env, FLOWFORGE_LOCK_FD: String(LOCK_FD) }
  // Forward from before the spawn: a signal in between would otherwise end this wrapper and
  // leave the command running without anyone to wait for it.
  let child
  const forward = (signal) => child?.kill(signal)
  for (const signal of FORWARDED) process.on(signal, forward)
  // A lock server's lock has no descriptor to inherit: it ends with this wrapper (its connection
  // closes, its lease is no longer renewed), so the command must end with it too, even when the
  // wrapper is SIGKILLed: it runs with the kernel's parent-death signal (Linux).
  child =
    fd === null && process.platform === 'linux'
      ? spawn(process.execPath, [EXEC_CHILD, String(process.pid), command, ...args], { stdio, env })
      : spawn(command, args, { stdio, env })
  // A lock server's lease can be lost while the command runs: then it must not go on as if it
  // held the lock. Stop it (SIGTERM, then SIGKILL after a grace period) and exit 75.
  const { signal: lost, stop: stopWatching } = watchHold(lockId, file)
  let killTimer
  const onLost = () => {
    process.stderr.write(`flowforge-lock: ${lost.reason.message} Stopping ${command}.\n`)
    child.kill('SIGTERM')
    killTimer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS)
    killTimer.unref()
  }
  // Lost already (before the watch began): no abort event comes.
  if (lost.aborted) onLost()
  else lost.addEventListener('abort', onLost, { once: true })
  const outcome = await new Promise((resolve) => {
    child.on('error', (error) => resolve({ error }))
    child.on('exit', (code, signal) => resolve({ code, signal }))
  })
  clearTimeout(killTimer)
  stopWatching()
  for (const signal of FORWARDED) process.removeListener(signal, forward)
  await releaseLock(file, lockId)
  if (lost.aborted) return EXIT.TEMPFAIL
  if (outcome.error) {
    process.stderr.write(`flowforge-lock: cannot run ${command}: ${outcome.error.message}\n`)
    // The shell's conventions: 127 not found, 126 found but not runnable.
    return outcome.error.code === 'ENOENT' ? 127 : 126
  }
  if (outcome.signal) {
    // Die by the same signal, so our caller sees what the command did. Node ignores SIGPIPE and
    // keeps SIGUSR1 for its inspector: a listener added and removed puts the default action back.
    const reset = () => {}
    process.on(outcome.signal, reset)
    process.removeListener(outcome.signal, reset)
    process.kill(process.pid, outcome.signal)
    // Still alive (a signal whose default is to be ignored): the shell's status for it.
    return 128 + (os.constants.signals[outcome.signal] ?? 0)
  }
  return outcome.code
}

module.exports = { exec }
