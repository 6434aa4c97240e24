'use strict'
// One benchmark process. Prints one JSON line with its raw measurements.
//   cycle <lib> <file> <n>               A: acquire+release cycles, µs each
//   counter <lib> <file> <data> <n>      B: read-increment-write cycles, acquire waits in µs;
//                                        takes and releases the lock once (its first call's
//                                        set-up), prints READY, starts on a line on stdin, and
//                                        after its result stays until stdin ends (run.js's barrier)
//   pingpong <lib> <file> <rounds>       C: hold 1-10 ms, release, re-request after 1 ms
//   upsert <lib> <tasksFile> <worker> <n>  D: durable upserts into tasks.json
const fs = require('node:fs')
const { adapters } = require('./adapters.js')

const [mode, lib, ...args] = process.argv.slice(2)
const adapter = adapters[lib]
// CLOCK_MONOTONIC, one clock for every process of the host (as bench/reads.js and flock_limit).
const nowUs = () => Number(process.hrtime.bigint()) / 1e3
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function durableUpsert(tasksFile, task) {
  if (lib === 'flowforge-lock') {
    await require('../file-lock-integration.js').updateTaskFile(task, { file: tasksFile })
    return
  }
  // The same upsert done by hand with the peer lock and write-file-atomic (fsync on).
  const release = await adapter.lock(tasksFile)
  try {
    const doc = JSON.parse(fs.readFileSync(tasksFile, 'utf8'))
    const index = doc.tasks.findIndex((t) => String(t.id) === String(task.id))
    if (index >= 0) doc.tasks[index] = { ...doc.tasks[index], ...task }
    else doc.tasks.push(task)
    await require('write-file-atomic')(tasksFile, `${JSON.stringify(doc, null, 2)}\n`, { fsync: true })
  } finally {
    await release()
  }
}

async function main() {
  if (mode === 'cycle') {
    const [file, n] = args
    const cyclesUs = []
    for (let i = 0; i < Number(n); i++) {
      const start = performance.now()
      const release = await adapter.lock(file)
      await release()
      cyclesUs.push((performance.now() - start) * 1000)
    }
    return { cyclesUs }
  }
  if (mode === 'counter') {
    const [file, data, n] = args
    await (await adapter.lock(file))()
    process.stdout.write('READY\n')
    await new Promise((resolve) => process.stdin.once('data', resolve))
    const waitsUs = []
    for (let i = 0; i < Number(n); i++) {
      const start = performance.now()
      const release = await adapter.lock(file)
      waitsUs.push((performance.now() - start) * 1000)
      const { count } = JSON.parse(fs.readFileSync(data, 'utf8'))
      fs.writeFileSync(data, JSON.stringify({ count: count + 1 }))
      await release()
    }
    return { waitsUs }
  }
  if (mode === 'pingpong') {
    const [file, rounds] = args
    const events = []
    for (let i = 0; i < Number(rounds); i++) {
      const release = await adapter.lock(file)
      const acquired = nowUs()
      await sleep(1 + Math.random() * 9)
      const released = nowUs()
      await release()
      events.push([acquired, released])
      await sleep(1)
    }
    return { pid: process.pid, events }
  }
  if (mode === 'upsert') {
    const [tasksFile, worker, n] = args
    for (let i = 0; i < Number(n); i++) await durableUpsert(tasksFile, { id: `w${worker}-${i}`, status: 'done', worker: Number(worker) })
    return {}
  }
  throw new Error(`unknown mode ${mode}`)
}

main().then(
  (result) => {
    // Exit once the output is flushed (a pipe takes it in pieces), and for B once stdin ends
    // too: proper-lockfile keeps timers for its mtime updates, which would otherwise keep the
    // process alive.
    const finished = mode === 'counter' ? new Promise((resolve) => process.stdin.on('end', resolve).resume()) : Promise.resolve()
    process.stdout.write(`${JSON.stringify(result)}\n`, () => finished.then(() => process.exit(0)))
  },
  (err) => {
    console.error(err)
    process.exit(1)
  },
)
