'use strict'
// Child processes for the lock-server suites (etcd, Redis): fixtures that print one line per
// event, read commands on stdin, and may run in a UTS namespace of their own (a "host").
const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const { PACKAGE_ROOT } = require('./helpers')

const FIXTURES = path.join(__dirname, 'fixtures')
const BIN = path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js')

/**
 * A starter whose children are all SIGKILLed after each test of the calling file, so a failed
 * assertion leaves no children (and their pipes) behind. Call it at the top of a test file.
 * `nodeArgs` go before every child's script (e.g. --unhandled-rejections=strict).
 */
function childStarter({ nodeArgs = [] } = {}) {
  const children = new Set()
  afterEach(() => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    children.clear()
  })
  /**
   * Starts `node fixtures/<name>.js args` (or, with `cli`, the flowforge-lock command) with
   * `env`; `host` runs it in a UTS namespace of its own under that hostname. `until(re)` resolves
   * with the next stdout line matching `re` (every line stays in `lines`); `send(line)` writes a
   * command.
   */
  return function start(name, args, env, { host, cli } = {}) {
    const node = [process.execPath, ...nodeArgs, cli ? BIN : path.join(FIXTURES, `${name}.js`), ...args.map(String)]
    const [cmd, ...argv] = host ? ['unshare', '--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', host, ...node] : node
    const child = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
    children.add(child)
    const lines = []
    const waiting = []
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      lines.push(line)
      for (const w of waiting.splice(0)) if (!w()) waiting.push(w)
    })
    // One cursor: each `until` looks from just after the line the previous one returned.
    let cursor = 0
    const until = (re) =>
      new Promise((resolve, reject) => {
        const look = () => {
          const i = lines.findIndex((l, j) => j >= cursor && re.test(l))
          if (i < 0) return false
          cursor = i + 1
          resolve(lines[i])
          return true
        }
        if (look()) return
        waiting.push(look)
        exited.then((how) => reject(new Error(`${name} ended (${JSON.stringify(how)}) before ${re}:\n${lines.join('\n')}\n${stderr}`)))
      })
    const send = (line) => child.stdin.write(`${line}\n`)
    return { child, lines, until, send, exited, stderr: () => stderr }
  }
}

module.exports = { childStarter }
