'use strict'
// Torture part 8 (issue 12): lock-free readers beside writers that are SIGKILLed at random and
// at the worst instant (after the version sidecar names the new file, before the rename that
// publishes it: the failpoint store::before_rename), and fuzzed version sidecars. A row fails
// on any torn or half-applied document, a version that does not match its document, a version
// that goes backwards, or a fuzzed sidecar that is believed. Also: shared (read) holders
// SIGKILLed while a writer waits release at once, and never let the writer in beside a live one.

const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const { failpointBinary, failpointEnv } = require('../__test__/failpoint-binary.js')
const { untilAnyKernelWaiter } = require('../__test__/fixtures/wait-for.js')

const FIXTURES = path.join(__dirname, '..', '__test__', 'fixtures')

function child(script, args, env = {}) {
  const proc = spawn(process.execPath, [path.join(FIXTURES, script), ...args.map(String)], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
  const lines = []
  const waiting = []
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    const next = waiting.shift()
    if (next) next(line)
    else lines.push(line)
  })
  const closed = new Promise((resolve) => proc.on('close', (code, signal) => resolve({ code, signal })))
  const failpoint = new Promise((resolve, reject) => {
    readline.createInterface({ input: proc.stderr }).on('line', (line) => line.startsWith('FAILPOINT ') && resolve(line))
    closed.then((how) => reject(new Error(`${script} ended before its failpoint: ${JSON.stringify(how)}`)))
  })
  failpoint.catch(() => {})
  const nextLine = () => (lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve)))
  return { proc, nextLine, closed, failpoint }
}

/** Two readers (cached and not) that read until `stop` exists; resolves with their reports. */
async function startReaders(file, stop) {
  const readers = [child('reads-reader.js', [file, 256, stop, 'cache']), child('reads-reader.js', [file, 256, stop, 'nocache'])]
  for (const r of readers) await r.nextLine()
  return async () => {
    fs.writeFileSync(stop, '')
    const reports = []
    for (const r of readers) {
      const line = await r.nextLine()
      try {
        reports.push(JSON.parse(line))
      } catch {
        reports.push({ reads: 0, torn: 1, faults: [line], badVersion: 0, backwards: 0, foreign: 0 })
      }
    }
    return reports
  }
}

function judge(reports) {
  const sum = (key) => reports.reduce((s, r) => s + r[key], 0)
  return { reads: sum('reads'), torn: sum('torn'), badVersion: sum('badVersion'), backwards: sum('backwards'), foreign: sum('foreign'), faults: reports.flatMap((r) => r.faults) }
}

async function randomKills(record, project, kills) {
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  const stop = path.join(root, 'stop')
  const finish = await startReaders(file, stop)
  let acked = 0
  for (let i = 0; i < kills; i++) {
    const writer = child('reads-committer.js', [file, 1000000])
    await writer.nextLine()
    writer.proc.stdin.write('go\n')
    // Kill after 1-4 acknowledged commits, while the next one is somewhere in flight.
    for (let k = 0; k < 1 + (i % 4); k++) if ((await writer.nextLine()).startsWith('ACK ')) acked++
    writer.proc.kill('SIGKILL')
    await writer.closed
  }
  const seen = judge(await finish())
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'))
  record(8, `lock-free readers beside ${kills} SIGKILLed writers`, {
    runs: seen.reads,
    corrupt: seen.torn + seen.badVersion + seen.backwards,
    lost: Math.max(0, acked - doc.count),
    ok: seen.foreign === 0,
    note: `${seen.reads} reads: ${seen.torn} torn, ${seen.badVersion} with a wrong version, ${seen.backwards} backwards${seen.faults.length ? `; ${seen.faults.slice(0, 2).join('; ')}` : ''}`,
  })
}

async function killsBetweenTheRenames(record, project, binary, runs) {
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  const stop = path.join(root, 'stop')
  const finish = await startReaders(file, stop)
  const lib = require('../file-lock-integration.js')
  let wrong = 0
  for (let run = 0; run < runs; run++) {
    // Stopped after its sidecar names the next file, before the data rename: readers must still
    // get the previous document at the previous version, vouched for.
    const writer = child('reads-committer.js', [file, 10], failpointEnv(binary, `store::before_rename=${run % 3}*off->return(stop)`))
    await writer.nextLine()
    writer.proc.stdin.write('go\n')
    await writer.failpoint
    const seen = await lib.readJSONVersioned(file, { cache: false })
    if (seen.foreignWrite || (seen.data === null ? 0 : seen.data.count) !== seen.version) wrong++
    writer.proc.kill('SIGKILL')
    await writer.closed
  }
  const seen = judge(await finish())
  const after = await lib.readJSONVersioned(file, { cache: false })
  record(8, 'readers while writers are stopped between sidecar and rename (store::before_rename), then SIGKILLed', {
    runs: runs + seen.reads,
    corrupt: wrong + seen.torn + seen.badVersion + seen.backwards,
    ok: seen.foreign === 0 && !after.foreignWrite,
    note: `${runs} kills at the instant, ${seen.reads} reads; ${wrong} reads at the instant not at the previous version`,
  })
}

/** A byte-level edit of `text`, seeded. */
function mutate(text, seed) {
  const rnd = (n) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff
    return seed % n
  }
  const bytes = Buffer.from(text)
  switch (rnd(6)) {
    case 0:
      return bytes.subarray(0, rnd(bytes.length))
    case 1: {
      const at = rnd(bytes.length)
      bytes[at] ^= 1 << rnd(8)
      return bytes
    }
    case 2: {
      const digits = [...text.matchAll(/\d/g)]
      const d = digits[rnd(digits.length)]
      return Buffer.from(text.slice(0, d.index) + String((Number(d[0]) + 1 + rnd(8)) % 10) + text.slice(d.index + 1))
    }
    case 3:
      return Buffer.concat([bytes.subarray(0, rnd(bytes.length)), Buffer.from([rnd(256), rnd(256)]), bytes.subarray(rnd(bytes.length))])
    case 4:
      return Buffer.from(text.replace(/"(\w+)":/, (_, key) => `"${key}${rnd(2) ? 'x' : ''}":`).replace('"check"', rnd(2) ? '"check"' : '"x":0,"check"'))
    default:
      return Buffer.alloc(rnd(8192), rnd(256))
  }
}

async function fuzzedSidecars(record, project, cases) {
  const lib = require('../file-lock-integration.js')
  const root = project()
  const file = path.join(root, '.flowforge', 'tasks.json')
  await lib.updateWithLock(file, () => ({ n: 1 }))
  await lib.updateWithLock(file, () => ({ n: 2 }))
  const sidecar = path.join(path.dirname(file), `.${path.basename(file)}.flowforge-version`)
  const good = fs.readFileSync(sidecar, 'utf8')
  const before = fs.readFileSync(file, 'utf8')
  let believed = 0
  let refused = 0
  let harmless = 0
  const odd = []
  for (let i = 0; i < cases; i++) {
    const bad = mutate(good, i + 1)
    fs.writeFileSync(sidecar, bad)
    const read = await lib.readJSONVersioned(file, { cache: false }).catch((e) => e)
    if (read.code === 'EVERSIONCORRUPT') {
      refused++
      const write = await lib.updateWithLock(file, () => ({ n: 'never' })).catch((e) => e)
      if (write.code !== 'EVERSIONCORRUPT' || fs.readFileSync(file, 'utf8') !== before) {
        believed++
        odd.push(`write ${write.code}`)
      }
    } else if (read instanceof Error) {
      believed++
      odd.push(read.code)
    } else if (read.version === 2 && !read.foreignWrite && JSON.stringify(JSON.parse(bad)) === JSON.stringify(JSON.parse(good))) {
      harmless++ // the edit left the same sidecar (whitespace, or a byte changed back)
    } else {
      believed++
      if (odd.length < 3) odd.push(`believed ${bad.toString('utf8').slice(0, 80)} -> ${JSON.stringify(read)}`)
    }
  }
  fs.writeFileSync(sidecar, good)
  record(8, 'fuzzed version sidecars are refused (EVERSIONCORRUPT), never trusted', {
    runs: cases,
    corrupt: believed,
    ok: true,
    note: `${refused} refused by readers and writers, ${harmless} harmless edits${odd.length ? `; ${odd.join('; ')}` : ''}`,
  })
}

/** The next line of `c` that starts with `prefix`, or null if none came within `ms` (a hang). */
async function lineWithin(c, prefix, ms) {
  let timer
  const deadline = new Promise((resolve) => (timer = setTimeout(() => resolve(null), ms)))
  const wanted = (async () => {
    for (;;) {
      const line = await c.nextLine()
      if (line.startsWith(prefix)) return line
    }
  })()
  return Promise.race([wanted, deadline]).finally(() => clearTimeout(timer))
}

/**
 * Two readers hold shared, a writer waits for them (blocked in the kernel); both readers are
 * SIGKILLed one after the other. The writer must get the lock once the second is dead, not before
 * (checked on the enter/exit log), and the dead readers' files must be cleaned up.
 */
async function sigkilledReaders(record, project, runs) {
  const { cleanupStaleLocks } = require('../file-lock.js')
  let hung = 0
  let overlaps = 0
  let leftovers = 0
  const handoffsMs = []
  for (let run = 0; run < runs; run++) {
    const root = project()
    const file = path.join(root, '.flowforge', 'tasks.json')
    const lockFile = path.join(root, '.flowforge', '.locks', 'tasks.json.lock')
    const log = path.join(root, 'holds.log')
    const readers = [child('rw-holder.js', ['hold', file, 'shared', log]), child('rw-holder.js', ['hold', file, 'shared', log])]
    for (const r of readers) await lineWithin(r, 'HOLDING', 30000)
    const writer = child('rw-holder.js', ['hold', file, 'exclusive', log])
    await lineWithin(writer, 'QUEUED', 30000)
    await untilAnyKernelWaiter(lockFile)
    readers[0].proc.kill('SIGKILL')
    await readers[0].closed
    readers[1].proc.kill('SIGKILL')
    const killed = performance.now()
    const holding = await lineWithin(writer, 'HOLDING', 10000)
    if (holding === null) hung++
    else handoffsMs.push(performance.now() - killed)
    await readers[1].closed
    // The log: the writer entered only after both readers (which never logged an exit) were gone.
    const lines = fs.readFileSync(log, 'utf8').trim().split('\n')
    if (holding !== null && (lines.length !== 3 || !lines[2].startsWith('enter exclusive'))) overlaps++
    const report = await cleanupStaleLocks({ root })
    leftovers += 2 - report.removed.filter((r) => r.readerFile).length
    if (holding === null) writer.proc.kill('SIGKILL')
    else writer.proc.stdin.write('release\n')
    await writer.closed
  }
  const sorted = handoffsMs.sort((a, b) => a - b)
  record(8, 'SIGKILLed shared holders release at once; a waiting writer gets the lock only after the last one', {
    runs,
    hung,
    corrupt: overlaps + leftovers,
    ok: true,
    note: `kill of the last reader to the writer's grant: p50 ${sorted[Math.floor(sorted.length / 2)]?.toFixed(1)} ms, max ${sorted[sorted.length - 1]?.toFixed(1)} ms; ${leftovers} dead readers' files left after cleanup`,
  })
}

async function reads({ record, project, smoke }) {
  console.log('8. Lock-free reads and shared locks (issue 12)')
  await sigkilledReaders(record, project, smoke ? 3 : 40)
  await randomKills(record, project, smoke ? 10 : 200)
  await killsBetweenTheRenames(record, project, failpointBinary(), smoke ? 6 : 60)
  await fuzzedSidecars(record, project, smoke ? 300 : 5000)
  return 0
}

module.exports = { reads }
