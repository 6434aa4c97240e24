'use strict'
// flowforge-lock exec: hold a file's lock while a command runs, like flock(1). As with flock(1),
// the command inherits the locked descriptor (as fd 3, named by FLOWFORGE_LOCK_FD), so the lock
// lives exactly as long as the command: even if this wrapper is SIGKILLed, the command keeps the
// lock until it ends, and nobody else runs beside it.

const { spawn } = require('node:child_process')
const native = require('../../native.js')
const { acquireLock, releaseLock } = require('../../file-lock.js')
const { installExitCleanup } = require('../exit-cleanup.js')
const { EXIT } = require('./exit-codes.js')

const FORWARDED = ['SIGINT', 'SIGTERM']
/** Where the command finds the inherited lock descriptor. */
const LOCK_FD = 3

async function exec(file, [command, ...args], { timeout }) {
  // Signals are ours to forward while the command runs; the lock goes when it has ended.
  installExitCleanup({ signals: false })
  const lockId = await acquireLock(file, timeout)
  const fd = native.inheritableFd(file, lockId)
  const stdio = fd === null ? 'inherit' : ['inherit', 'inherit', 'inherit', fd]
  const env = fd === null ? process.env : { ...process.env, FLOWFORGE_LOCK_FD: String(LOCK_FD) }
  const child = spawn(command, args, { stdio, env })
  const forward = (signal) => child.kill(signal)
  for (const signal of FORWARDED) process.on(signal, forward)
  const outcome = await new Promise((resolve) => {
    child.on('error', (error) => resolve({ error }))
    child.on('exit', (code, signal) => resolve({ code, signal }))
  })
  for (const signal of FORWARDED) process.removeListener(signal, forward)
  await releaseLock(file, lockId)
  if (outcome.error) {
    process.stderr.write(`flowforge-lock: cannot run ${command}: ${outcome.error.message}\n`)
    // The shell's conventions: 127 not found, 126 found but not runnable.
    return outcome.error.code === 'ENOENT' ? 127 : 126
  }
  if (outcome.signal) {
    // Die by the same signal, so our caller sees what the command did.
    process.kill(process.pid, outcome.signal)
    return EXIT.SOFTWARE
  }
  return outcome.code
}

module.exports = { exec }
