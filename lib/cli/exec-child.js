'use strict'
// flowforge-lock exec under a lock server: the process that becomes the command. Started by the
// wrapper as `node exec-child.js <wrapper pid> COMMAND [ARGS…]`, it asks the kernel to SIGKILL
// it when the wrapper ends and then replaces itself with COMMAND (execvp), which keeps that
// request. A lock server's lock ends with the wrapper (its connection closes, its lease is no
// longer renewed): nothing the command inherits keeps it, so the command must end with the
// wrapper, even one that is SIGKILLed, before anyone else can run beside it.

const native = require('../../native.js')

const [parent, command, ...args] = process.argv.slice(2)
try {
  native.execWithParentDeath(Number(parent), command, args)
} catch (error) {
  process.stderr.write(`flowforge-lock: cannot run ${command}: ${error.message}\n`)
  // The shell's conventions: 127 not found, 126 found but not runnable.
  process.exitCode = error.code === 'ENOENT' ? 127 : 126
}
