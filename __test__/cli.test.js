'use strict'
// The flowforge-lock command, run as a real process against real lock files.
const fs = require('node:fs')
const path = require('node:path')
const { spawn, spawnSync } = require('node:child_process')
const { acquireLock, isLocked } = require('../file-lock')
const { makeProject, runFixture, startFixture, runOnTerminal, IS_ROOT, PACKAGE_ROOT } = require('./helpers')
const { untilFile, untilKernelWaiter, makeFifo } = require('./fixtures/wait-for')
const { failpointBinary, failpointEnv } = require('./failpoint-binary')

const BIN = path.join(PACKAGE_ROOT, 'bin', 'flowforge-lock.js')

/** Starts the command: { child, done } where done resolves to { status, signal, stdout, stderr }. */
function startCli(args, { cwd, input, env } = {}) {
  const child = spawn(process.execPath, [BIN, ...args], { cwd, env: env && { ...process.env, ...env } })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c) => (stdout += c))
  child.stderr.on('data', (c) => (stderr += c))
  child.stdin.end(input ?? '')
  const done = new Promise((resolve) => child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr })))
  return { child, done }
}

const cli = (args, options) => startCli(args, options).done

describe('exec', () => {
  test('holds the lock while the command runs: a Node acquireLock times out meanwhile', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const marker = path.join(root, 'inside')
    const fifo = makeFifo(root)
    // The command runs until the test writes a line to the fifo.
    const running = cli(['exec', file, '--', 'sh', '-c', `touch ${marker}; read line < ${fifo}`])
    await untilFile(marker)
    expect(await isLocked(file)).toBe(true)
    const err = await acquireLock(file, 200).catch((e) => e)
    expect(err.code).toBe('ELOCKTIMEOUT')
    await fs.promises.writeFile(fifo, 'done\n')
    expect((await running).status).toBe(0)
    expect(await isLocked(file)).toBe(false)
  })

  test('waits for a Node holder, and exits 75 naming the holder on timeout', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const holder = await startFixture('hold-lock', [file], 'LOCKED')
    const timedOut = await cli(['exec', '--timeout', '300', file, '--', 'true'])
    expect(timedOut.status).toBe(75)
    expect(timedOut.stderr).toContain('timeout')
    expect(timedOut.stderr).toContain(`pid ${holder.child.pid}`)
    expect(timedOut.stderr).toContain('[ELOCKTIMEOUT]')
    const waiting = startCli(['exec', '--timeout', '30000', file, '--', 'sh', '-c', 'echo got it'])
    await untilKernelWaiter(path.join(root, '.flowforge', '.locks', 'tasks.json.lock'), waiting.child.pid)
    holder.child.kill('SIGKILL')
    const got = await waiting.done
    expect(got).toMatchObject({ status: 0, stdout: 'got it\n' })
    await holder.exited
  })

  test("exits with the command's status, passes stdin/stdout/stderr, 127 for a missing command, 126 for one not runnable", async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const run = await cli(['exec', file, '--', 'sh', '-c', 'cat; echo err >&2; exit 7'], { input: 'piped in\n' })
    expect(run).toMatchObject({ status: 7, stdout: 'piped in\n', stderr: 'err\n' })
    expect((await cli(['exec', file, '--', 'no-such-command-xyz'])).status).toBe(127)
    const notRunnable = path.join(root, 'not-executable.sh')
    fs.writeFileSync(notRunnable, '#!/bin/sh\n', { mode: 0o644 })
    expect((await cli(['exec', file, '--', notRunnable])).status).toBe(126)
    expect(await isLocked(file)).toBe(false)
  })

  test('a command killed by a signal Node ignores or reserves (SIGPIPE, SIGUSR1): the wrapper dies by the same signal', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    for (const signal of ['SIGPIPE', 'SIGUSR1', 'SIGHUP']) {
      const run = await cli(['exec', file, '--', 'sh', '-c', `kill -${signal.slice(3)} $$`])
      expect({ signal, status: run.status, died: run.signal, stderr: run.stderr }).toEqual({ signal, status: null, died: signal, stderr: '' })
    }
    expect(await isLocked(file)).toBe(false)
  })

  test.each(['SIGINT', 'SIGTERM'])('forwards %s to the command and releases only after it ended', async (signal) => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const log = path.join(root, 'log')
    const fifo = makeFifo(root)
    // On TERM the command logs it, then cleans up until the test writes a line to the fifo.
    // (`wait` returns at once when a trapped signal arrives; the idle `sleep` is then killed.)
    const name = signal.slice(3)
    const script = `trap 'echo got ${name} >> ${log}; read line < ${fifo}; echo done >> ${log}; kill $idle; exit 0' ${name}; sleep 1000 & idle=$!; echo ready >> ${log}; wait $idle`
    const { child, done } = startCli(['exec', file, '--', 'sh', '-c', script])
    await untilFile(log, (text) => text === 'ready\n')
    child.kill(signal)
    await untilFile(log, (text) => text === `ready\ngot ${name}\n`)
    expect(await isLocked(file)).toBe(true) // the command is still cleaning up
    await fs.promises.writeFile(fifo, 'go\n')
    const result = await done
    expect(fs.readFileSync(log, 'utf8')).toBe(`ready\ngot ${name}\ndone\n`)
    expect(result.status).toBe(0)
    expect(await isLocked(file)).toBe(false)
  })

  test('shell writers through exec and Node writers through acquireLock exclude each other: exact count', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'counter.json')
    fs.writeFileSync(file, JSON.stringify({ count: 0 }))
    const shellIncrement = `n=$(sed 's/[^0-9]//g' ${file}); sleep 0.001; echo "{\\"count\\":$((n+1))}" > ${file}`
    const shellWriter = () =>
      new Promise((resolve) => {
        const loop = `for i in $(seq 1 25); do node ${BIN} exec ${file} -- sh -c '${shellIncrement}' || exit 1; done`
        spawn('sh', ['-c', loop], { stdio: 'inherit' }).on('close', resolve)
      })
    const codes = await Promise.all([shellWriter(), shellWriter(), runFixture('counter-worker', [file, 50, 'lock']), runFixture('counter-worker', [file, 50, 'lock'])])
    expect(codes.map((c) => (typeof c === 'number' ? c : c.code))).toEqual([0, 0, 0, 0])
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).count).toBe(150)
  }, 60000)
})

describe('update', () => {
  test('writes the JSON from stdin atomically under the lock', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'sessions', 'current.json')
    const run = await cli(['update', file], { input: '{"sessionId":"session-1-2","pausedAt":"2025-09-16T10:35:00.000Z"}' })
    expect(run).toMatchObject({ status: 0, stderr: '' })
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ sessionId: 'session-1-2', pausedAt: '2025-09-16T10:35:00.000Z' })
  })

  test('invalid JSON on stdin exits 65 and leaves the file byte for byte', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const original = Buffer.from('{ "tasks": [ {"id": 1} ] }\n  ')
    fs.writeFileSync(file, original)
    const run = await cli(['update', file], { input: '{"tasks": [' })
    expect(run.status).toBe(65)
    expect(run.stderr).toContain('not valid JSON')
    expect(fs.readFileSync(file)).toEqual(original)
  })

  // Decoded leniently, a Latin-1 "é" became U+FFFD and was written: the user's text silently changed.
  test('stdin that is not UTF-8 exits 65 and leaves the file byte for byte', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, '{"tasks":[]}')
    const run = await cli(['update', file], { input: Buffer.from('{"tasks":[{"id":1,"title":"Caf\xe9"}]}', 'latin1') })
    expect(run.status).toBe(65)
    expect(run.stderr).toContain('stdin is not UTF-8 text')
    expect(fs.readFileSync(file, 'utf8')).toBe('{"tasks":[]}')
  })

  test('a corrupt target is not overwritten either (65, EJSONPARSE)', async () => {
    const root = makeProject()
    const file = path.join(root, '.flowforge', 'tasks.json')
    fs.writeFileSync(file, '{oops')
    const run = await cli(['update', file], { input: '{}' })
    expect(run.status).toBe(65)
    expect(run.stderr).toContain('[EJSONPARSE]')
    expect(fs.readFileSync(file, 'utf8')).toBe('{oops')
  })
})

describe('status and cleanup', () => {
  test('show a held, a free and a SIGKILLed (stale) lock; cleanup removes the stale one; --json parses', async () => {
    const root = makeProject()
    const tasks = path.join(root, '.flowforge', 'tasks.json')
    const sessions = path.join(root, '.flowforge', 'sessions', 'active-sessions.json')
    const held = await startFixture('hold-lock', [tasks], 'LOCKED')
    const killed = await startFixture('hold-lock', [sessions], 'LOCKED')
    killed.child.kill('SIGKILL')
    await killed.exited

    const table = await cli(['status', root])
    expect(table.status).toBe(0)
    const lines = table.stdout.split('\n')
    expect(lines.find((l) => l.startsWith('.flowforge/tasks.json'))).toMatch(new RegExp(`held\\s+${held.child.pid}\\s`))
    expect(lines.find((l) => l.startsWith('.flowforge/billing/time-tracking.json'))).toMatch(/free/)
    expect(lines.find((l) => l.startsWith('.flowforge/sessions/active-sessions.json'))).toMatch(new RegExp(`stale\\s+${killed.child.pid}\\s.*process ${killed.child.pid} is gone`))
    expect(table.stdout).not.toContain('\x1b[') // no colours when not on a terminal

    const json = JSON.parse((await cli(['status', '--json'], { cwd: path.join(root, '.flowforge') })).stdout)
    expect(json.root).toBe(root)
    expect(json.locks.map((l) => l.state).sort()).toEqual(['free', 'held', 'stale'])

    const dry = JSON.parse((await cli(['cleanup', '--dry-run', '--json', root])).stdout)
    expect(dry.removed).toHaveLength(1)
    expect(dry.removed[0].state).toBe('stale')
    expect(dry.kept.map((k) => k.state)).toEqual(['held'])
    expect(fs.existsSync(path.join(root, '.flowforge', '.locks', 'active-sessions.json.lock'))).toBe(true)
    const cleaned = await cli(['cleanup', root])
    expect(cleaned.stdout).toMatch(/removed\s+active-sessions\.json\.lock: process \d+ is gone/)
    expect(cleaned.stdout).toMatch(/kept\s+tasks\.json\.lock/)
    expect(fs.existsSync(path.join(root, '.flowforge', '.locks', 'active-sessions.json.lock'))).toBe(false)
    held.child.kill('SIGKILL')
    await held.exited
  })

  test('cleanup --dry-run changes nothing on disk, also where removals need claim files, and reports what cleanup then removes', async () => {
    // Kernel locks off, as on a network file system: removing a lock file then needs its claim
    // file (src/file/claim.rs), which a dry run must neither take nor clear away.
    const env = { FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' }
    const root = makeProject()
    const locks = path.join(root, '.flowforge', '.locks')
    const data = (name) => path.join(root, '.flowforge', name)
    // Live: held from "another host" (another boot id: judged by its heartbeat, as across NFS),
    // its holder stopped so that no heartbeat rewrites the record meanwhile.
    const otherHost = { ...env, ...failpointEnv(failpointBinary(), 'identity::boot_id=return(host-a)') }
    const live = await startFixture('hold-lock', [data('tasks.json')], 'LOCKED', { env: otherHost })
    live.child.kill('SIGSTOP')
    try {
      await dryRunOver(env, root, locks, data)
    } finally {
      live.child.kill('SIGKILL')
      await live.exited
    }
  })

  async function dryRunOver(env, root, locks, data) {
    for (const name of ['stale.json', 'claimed.json']) {
      const dead = await startFixture('hold-lock', [data(name)], 'LOCKED', { env })
      dead.child.kill('SIGKILL')
      await dead.exited
    }
    // stale.json's claim was left by another host long ago (abandoned: a real cleanup clears it
    // away); claimed.json's is another host's claim under way (nobody may judge that lock now).
    fs.writeFileSync(path.join(locks, 'stale.json.lock.claim'), 'another-host some-boot 7\n')
    const longAgo = new Date(Date.now() - 3600 * 1000)
    fs.utimesSync(path.join(locks, 'stale.json.lock.claim'), longAgo, longAgo)
    fs.writeFileSync(path.join(locks, 'claimed.json.lock.claim'), 'another-host some-boot 7\n')
    const snapshot = () => {
      const dir = fs.statSync(locks, { bigint: true })
      const entries = fs.readdirSync(locks).sort().map((name) => {
        const stat = fs.statSync(path.join(locks, name), { bigint: true })
        return { name, ino: stat.ino, mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs, content: fs.readFileSync(path.join(locks, name)).toString('base64') }
      })
      return { dirMtimeNs: dir.mtimeNs, dirCtimeNs: dir.ctimeNs, entries }
    }
    const before = snapshot()
    const run = await cli(['cleanup', '--dry-run', '--json', root], { env })
    expect({ status: run.status, stderr: run.stderr }).toEqual({ status: 0, stderr: '' })
    expect(snapshot()).toEqual(before)
    const dry = JSON.parse(run.stdout)
    const summary = (entries) => entries.map((e) => `${path.basename(e.lockFile)} ${e.state}: ${e.reason}`).sort()
    expect(summary(dry.removed)).toEqual([expect.stringMatching(/^stale\.json\.lock stale: process \d+ is gone/)])
    expect(summary(dry.kept)).toEqual([
      expect.stringMatching(/^claimed\.json\.lock held: .*another host is claiming it/),
      'tasks.json.lock held: held: its record is live',
    ])
    // What it said is what a cleanup does.
    const real = JSON.parse((await cli(['cleanup', '--json', root], { env })).stdout)
    expect({ removed: summary(real.removed), kept: summary(real.kept) }).toEqual({ removed: summary(dry.removed), kept: summary(dry.kept) })
    expect(fs.readdirSync(locks).filter((name) => name.startsWith('stale.json'))).toEqual([])
  }

  test('status paints its table on a terminal, and not with NO_COLOR', async () => {
    const root = makeProject()
    const { NO_COLOR: _, ...env } = process.env
    const painted = await runOnTerminal([BIN, 'status', root], undefined, { ...env, TERM: 'xterm' })
    const plain = await runOnTerminal([BIN, 'status', root], undefined, { ...env, TERM: 'xterm', NO_COLOR: '1' })
    expect([painted.code, plain.code]).toEqual([0, 0])
    expect(painted.output).toContain('\x1b[1mFILE')
    expect(plain.output).toContain('FILE')
    expect(plain.output).not.toContain('\x1b[')
  })

  test('doctor passes on a healthy project and flags a world-writable lock dir, a lock dir on another file system and kernel locks no other process sees (exit 78)', async () => {
    const root = makeProject()
    const ok = await cli(['doctor', root])
    expect(ok.status).toBe(0)
    expect(ok.stdout).toMatch(/kernel locks on this file system .* are seen by other processes/)
    expect(ok.stdout).not.toContain('stale lock') // its own test lock is not one
    fs.chmodSync(path.join(root, '.flowforge', '.locks'), 0o777)
    const bad = await cli(['doctor', root])
    expect(bad.status).toBe(78)
    expect(bad.stdout).toMatch(/FIX .*world-writable without the sticky bit/)
    expect(bad.stdout).toContain('chmod o-w')
    // Where another process does not see a kernel lock taken here (kernel locks off, as on a
    // network file system mounted without lock support), doctor says so instead of passing.
    const blind = await cli(['doctor', makeProject()], { env: { FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' } })
    expect(blind.status).toBe(78)
    expect(blind.stdout).toMatch(/FIX .*kernel locks on this file system .* are NOT seen by other processes/)
    if (!IS_ROOT) return console.log('doctor: the lock dir on another file system is not checked: mounting a tmpfs needs root')
    const mounted = makeProject()
    const mountPoint = path.join(mounted, '.flowforge', '.locks')
    fs.mkdirSync(mountPoint)
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mountPoint]).status).toBe(0)
    try {
      const elsewhere = await cli(['doctor', mounted])
      expect(elsewhere.status).toBe(78)
      expect(elsewhere.stdout).toMatch(/FIX .*lock directory and data are not on the same file system/)
    } finally {
      spawnSync('umount', [mountPoint])
    }
  })
})

describe('exit codes of errors (sysexits)', () => {
  test('73 cannot write (EISDIR), 78 configuration to fix (ELOCKDIRUNSAFE, ELOCKSYMLINK), each code named on stderr', async () => {
    const root = makeProject()
    const locks = path.join(root, '.flowforge', '.locks')
    fs.mkdirSync(path.join(root, '.flowforge', 'a-directory.json'))
    const isDir = await cli(['update', path.join(root, '.flowforge', 'a-directory.json')], { input: '{}' })
    expect({ status: isDir.status, stderr: isDir.stderr }).toEqual({ status: 73, stderr: expect.stringContaining('[EISDIR]') })
    fs.mkdirSync(locks)
    fs.symlinkSync(path.join(root, 'victim'), path.join(locks, 'tasks.json.lock'))
    const symlink = await cli(['exec', path.join(root, '.flowforge', 'tasks.json'), '--', 'true'])
    expect({ status: symlink.status, stderr: symlink.stderr }).toEqual({ status: 78, stderr: expect.stringContaining('[ELOCKSYMLINK]') })
    fs.chmodSync(locks, 0o777)
    const unsafe = await cli(['exec', path.join(root, '.flowforge', 'time.json'), '--', 'true'])
    expect({ status: unsafe.status, stderr: unsafe.stderr }).toEqual({ status: 78, stderr: expect.stringContaining('[ELOCKDIRUNSAFE]') })
  })
})

describe('usage', () => {
  test.each([
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['exec', 'f.json'], /exec takes FILE, then --/],
    [['exec', '--timeout', 'soon', 'f.json', '--', 'true'], /--timeout takes milliseconds/],
    [['status', '--bogus'], /Unknown option '--bogus'/],
    [['update'], /update takes exactly one FILE/],
  ])('%j exits 64 with a message and the usage', async (args, message) => {
    const run = await cli(args)
    expect(run.status).toBe(64)
    expect(run.stderr).toMatch(message)
    expect(run.stderr).toContain('Usage: flowforge-lock')
  })

  test('--help for every command and --version', async () => {
    for (const command of ['exec', 'update', 'status', 'cleanup', 'doctor', 'dead-letters']) {
      const run = await cli([command, '--help'])
      expect(run.status).toBe(0)
      expect(run.stdout).toMatch(new RegExp(`^Usage: flowforge-lock ${command}`))
    }
    expect((await cli(['--version'])).stdout).toBe(`${require('../package.json').version}\n`)
  })
})
