'use strict'
// The flowforge-lock command: the same lock (same Rust core, same lock files) as the JS API,
// for shell scripts and for people. Each command lives in its own module, loaded on use so
// that `status` starts fast.

const { parseArgs } = require('node:util')
const { EXIT, exitCodeOf } = require('./exit-codes.js')

const COMMANDS = {
  exec: {
    usage: 'flowforge-lock exec [--timeout MS] [--priority N] [--quiet] FILE -- COMMAND [ARGS...]',
    summary: "hold FILE's lock while COMMAND runs; exit with COMMAND's status",
    options: { timeout: { type: 'string' }, priority: { type: 'string' }, quiet: { type: 'boolean', short: 'q' } },
    details: `Like flock(1): stdin, stdout and stderr pass through; SIGINT and SIGTERM are forwarded to
COMMAND and the lock is released after it ends. A Node process using flowforge-lock on the
same FILE is excluded, and excludes it. On timeout (default 30000 ms) exits 75 and names the
holder on stderr. --priority N (a number, default 0) is passed to acquireLock: higher goes
first, between exec commands and other processes too (aging and arrival order as in
docs/priorities.md; not on network file systems). On a terminal, a wait
longer than a second shows one line (holder, time held, time left); --quiet hides it.`,
  },
  update: {
    usage: 'flowforge-lock update [--timeout MS] [--quiet] FILE < new-content.json',
    summary: 'replace FILE with the JSON on stdin, atomically, under its lock',
    options: { timeout: { type: 'string' }, quiet: { type: 'boolean', short: 'q' } },
    details: `The shell counterpart of updateWithLock(). Invalid JSON on stdin: exit 65, FILE untouched.
The write is atomic and durable (temp file, fsync, rename, fsync of the directory). If the
lock times out (or the disk is full, …) the content is kept as a dead letter: see dead-letters.
On a terminal, a wait longer than a second shows one line; --quiet hides it.`,
  },
  status: {
    usage: 'flowforge-lock status [--json] [ROOT]',
    summary: 'every lock of the project: held, free or stale (and why)',
    options: { json: { type: 'boolean' } },
    details: `ROOT defaults to FLOWFORGE_ROOT_OVERRIDE, else the nearest directory above the current one
holding .flowforge/. FlowForge's three critical files are listed even without a lock file
(free). Colours only on a terminal (and never with NO_COLOR); --json for scripts.`,
  },
  cleanup: {
    usage: 'flowforge-lock cleanup [--dry-run] [--json] [ROOT]',
    summary: 'remove stale lock files (cleanupStaleLocks) and report what went and what stayed',
    options: { 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } },
    details: 'A live lock is never removed: see the staleness rules in the README.',
  },
  'dead-letters': {
    usage: 'flowforge-lock dead-letters list|show ID|replay [ID] [--timeout MS]|drop ID [--json] [--root ROOT]',
    summary: 'operations that failed for a reason a retry can fix: list, show, replay or drop them',
    options: { json: { type: 'boolean' }, root: { type: 'string' }, timeout: { type: 'string' } },
    details: `updateTaskFile, batchUpdateTasks, the timer and session calls and \`update\` keep what they
were asked to do in .flowforge/.dead-letters/ when the lock timed out or was lost, the disk was
full, … (not when the call itself was wrong). replay applies them in call order, each under its
file's lock, at most once; one that fails again stays (attempts + 1) and exits 75.`,
  },
  doctor: {
    usage: 'flowforge-lock doctor [ROOT]',
    summary: 'check the lock directory and whether kernel locks work on its file system',
    options: {},
    details: `Checks that .flowforge/.locks exists (or can be made), is not world-writable without the
sticky bit, is on the same file system as the data, and that a kernel lock taken here is seen
by another process. Exits 0 when all is well, 78 when something must be fixed.`,
  },
}

function usage() {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`)
  return `Usage: flowforge-lock <command> [options]

Commands:
${lines.join('\n')}

Run 'flowforge-lock <command> --help' for a command's options. --version prints the version.
Exit codes: 0 ok, 64 usage, 65 bad data, 70 internal error, 73 cannot write, 75 lock timeout
(try again), 77 permission denied, 78 configuration to fix, else the status of exec's COMMAND.
`
}

function commandHelp(name) {
  const c = COMMANDS[name]
  return `Usage: ${c.usage}\n\n${c.summary[0].toUpperCase()}${c.summary.slice(1)}.\n${c.details}\n`
}

class UsageError extends Error {}

function parseTimeout(text) {
  if (text === undefined) return undefined
  const ms = Number(text)
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(ms)) throw new UsageError(`--timeout takes milliseconds (a whole number), not '${text}'`)
  return ms
}

function parsePriority(text) {
  if (text === undefined) return undefined
  const n = Number(text)
  if (text.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--priority takes a number, not '${text}'`)
  return n
}

function parse(name, args) {
  const c = COMMANDS[name]
  const dashDash = args.indexOf('--')
  const own = dashDash >= 0 && name === 'exec' ? args.slice(0, dashDash) : args
  let parsed
  try {
    parsed = parseArgs({ args: own, options: { ...c.options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true })
  } catch (err) {
    throw new UsageError(err.message)
  }
  return { ...parsed, rest: dashDash >= 0 && name === 'exec' ? args.slice(dashDash + 1) : [] }
}

async function run(argv) {
  const [name, ...args] = argv
  if (name === '--version' || name === '-v') {
    process.stdout.write(`${require('../../package.json').version}\n`)
    return EXIT.OK
  }
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage())
    return EXIT.OK
  }
  if (!Object.hasOwn(COMMANDS, name)) throw new UsageError(`unknown command '${name}'`)
  const { values, positionals, rest } = parse(name, args)
  if (values.help) {
    process.stdout.write(commandHelp(name))
    return EXIT.OK
  }
  const timeout = parseTimeout(values.timeout)
  switch (name) {
    case 'exec':
      if (positionals.length !== 1 || rest.length === 0) throw new UsageError('exec takes FILE, then -- and the command to run')
      return require('./exec.js').exec(positionals[0], rest, { timeout, priority: parsePriority(values.priority), quiet: values.quiet })
    case 'update':
      if (positionals.length !== 1) throw new UsageError('update takes exactly one FILE')
      return require('./update.js').update(positionals[0], { timeout, quiet: values.quiet })
    case 'dead-letters':
      return require('./dead-letters.js').deadLetters(positionals, { ...values, timeout })
    case 'status':
    case 'cleanup':
    case 'doctor':
      if (positionals.length > 1) throw new UsageError(`${name} takes at most one ROOT`)
      return require(`./${name}.js`)[name](positionals[0], values)
  }
}

function main(argv) {
  run(argv).then(
    (code) => {
      if (code !== undefined) process.exitCode = code
    },
    (err) => {
      if (err instanceof UsageError) {
        process.stderr.write(`flowforge-lock: ${err.message}\n\n${usage()}`)
        process.exitCode = EXIT.USAGE
        return
      }
      process.stderr.write(`flowforge-lock: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`)
      process.exitCode = exitCodeOf(err)
    },
  )
}

module.exports = { main }
