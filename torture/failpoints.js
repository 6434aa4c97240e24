'use strict'
// Torture part 7: the dangerous instants of issue 9, reached with failpoints (the addon built
// with `--features failpoints`, loaded by children through NAPI_RS_NATIVE_LIBRARY_PATH) rather
// than by chance. One row per failpoint; the core's own (heartbeat, directory sync) come from
// `cargo test --test failpoints`.

const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { spawn, spawnSync } = require('node:child_process')
const { failpointBinary, failpointEnv } = require('../__test__/failpoint-binary.js')

const ROOT = path.resolve(__dirname, '..')
const FIXTURES = path.join(ROOT, '__test__', 'fixtures')

/** A child node process: its stdout lines as a queue, its FAILPOINT stderr line as a promise. */
function child(script, args, env, { cwd } = {}) {
  const proc = spawn(process.execPath, [path.join(FIXTURES, script), ...args.map(String)], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  const lines = []
  const waiting = []
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    const next = waiting.shift()
    if (next) next(line)
    else lines.push(line)
  })
  const closed = new Promise((resolve) => proc.on('close', (code, signal) => resolve({ code, signal })))
  const failpoint = new Promise((resolve, reject) => {
    readline.createInterface({ input: proc.stderr }).on('line', (line) => {
      if (line.startsWith('FAILPOINT ')) resolve(line)
    })
    closed.then((how) => reject(new Error(`${script} ended before its failpoint: ${JSON.stringify(how)}`)))
  })
  failpoint.catch(() => {})
  const nextLine = () => (lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve)))
  return { proc, nextLine, closed, failpoint, lines }
}

async function killedMidWrite(record, project, binary, runs) {
  const root = project()
  const tasks = path.join(root, '.flowforge', 'tasks.json')
  fs.writeFileSync(tasks, '{"version":"2.0.0","tasks":[]}\n')
  let next = 1
  let lost = 0
  let corrupt = 0
  let applied = 0
  const acknowledged = []
  for (let run = 0; run < runs; run++) {
    const writer = child('crash-writer.js', ['t', next], failpointEnv(binary, `store::before_rename=${run % 5}*off->return(stop)`), { cwd: root })
    await writer.failpoint
    writer.proc.kill('SIGKILL')
    await writer.closed
    const acks = writer.lines.filter((l) => l.startsWith('ACK ')).map((l) => Number(l.slice(4)))
    acknowledged.push(...acks)
    next += acks.length + 1
    let doc
    try {
      doc = JSON.parse(fs.readFileSync(tasks, 'utf8'))
    } catch {
      corrupt++
      break
    }
    const ids = new Set(doc.tasks.map((t) => t.id))
    lost += acknowledged.filter((seq) => !ids.has(`t-${seq}`)).length
    if (ids.has(`t-${next - 1}`)) applied++
  }
  record(7, 'writers stopped between temp write and rename (store::before_rename), then SIGKILLed', {
    runs,
    lost,
    corrupt: corrupt + applied,
    ok: true,
    note: `${runs} of ${runs} kills landed between temp write and rename; ${acknowledged.length} acknowledged updates all checked`,
  })
}

async function hostRace(record, project, binary, rounds) {
  if (spawnSync('unshare', ['--uts', 'true']).status !== 0) {
    record(7, 'two hosts without shared kernel locks racing for claims (claim::judged)', { runs: 0, skip: true, ok: false, note: 'skipped: needs root (unshare --uts)' })
    return
  }
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  const inside = path.join(root, 'inside')
  const env = { ...process.env, ...failpointEnv(binary, 'claim::judged=sleep(1)'), FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' }
  const hosts = ['race-host-a', 'race-host-b'].map((name) => {
    const script = `hostname ${name} && exec "${process.execPath}" "${path.join(FIXTURES, 'fp-race.js')}" "${file}" ${rounds} "${inside}"`
    const proc = spawn('unshare', ['--uts', 'sh', '-c', script], { env, stdio: ['pipe', 'pipe', 'inherit'] })
    const out = readline.createInterface({ input: proc.stdout })
    const lines = out[Symbol.asyncIterator]()
    return { proc, next: async () => (await lines.next()).value }
  })
  for (const host of hosts) await host.next()
  for (const host of hosts) host.proc.stdin.end('go\n')
  let overlaps = 0
  let ok = true
  for (const host of hosts) {
    const result = JSON.parse((await host.next()) ?? '{}')
    if (result.rounds !== rounds) ok = false
    overlaps += result.overlaps ?? 0
  }
  record(7, 'two hosts without shared kernel locks racing for claims (claim::judged)', {
    runs: 2 * rounds,
    corrupt: overlaps,
    ok,
    note: `overlapping holds: ${overlaps}`,
  })
}

async function twinHost(record, project, binary) {
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  const env = { ...failpointEnv(binary, 'identity::boot_id=return(another-boot)'), FLOWFORGE_LOCK_SIMULATE_NO_KERNEL_LOCKS: '1' }
  const holder = child('hold-lock.js', [file], env)
  await holder.nextLine()
  const lib = require('../file-lock.js')
  const outcome = await lib.acquireLock(file, 300).then(
    (id) => lib.releaseLock(file, id).then(() => 'acquired'),
    (err) => err.code,
  )
  holder.proc.kill('SIGKILL')
  await holder.closed
  record(7, `same hostname, another boot (identity::boot_id): live lock respected`, {
    runs: 1,
    corrupt: outcome === 'acquired' ? 1 : 0,
    ok: outcome === 'ELOCKTIMEOUT',
    note: outcome,
  })
}

function coreFailpoints(record) {
  const run = spawnSync('cargo', ['test', '--release', '--features', 'failpoints', '--test', 'failpoints'], { cwd: ROOT, encoding: 'utf8' })
  for (const [, name, result] of run.stdout.matchAll(/^test (\S+) \.\.\. (ok|FAILED)$/gm)) {
    record(7, `core: ${name.replaceAll('_', ' ')}`, { runs: 1, ok: result === 'ok' })
  }
  if (run.status !== 0) record(7, 'core failpoint tests', { runs: 1, ok: false, note: run.stderr.slice(-300) })
}

async function failpoints({ record, project, smoke }) {
  console.log('7. Failpoints (the dangerous instants, reached on purpose)')
  const binary = failpointBinary()
  await killedMidWrite(record, project, binary, smoke ? 10 : 100)
  await hostRace(record, project, binary, smoke ? 200 : 1000)
  await twinHost(record, project, binary)
  coreFailpoints(record)
  return 0
}

module.exports = { failpoints }
