#!/usr/bin/env node
'use strict'
// npm run demo: what flowforge-lock is for, in ten seconds. Several processes update the same
// .flowforge/tasks.json of a fresh temp FlowForge project: first without a lock (updates get
// lost), then with flowforge-lock (none do). Then two processes pass a lock back and forth to
// show how fast a waiting process takes over.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { promisify } = require('node:util')

const run = promisify(execFile)
const PROCESSES = Number(process.env.DEMO_PROCESSES || 6)
const UPDATES = Number(process.env.DEMO_UPDATES || 100)
const worker = path.join(__dirname, 'demo-worker.js')

function makeProject() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'flowforge-demo-'))
  fs.mkdirSync(path.join(root, '.flowforge'))
  const tasksFile = path.join(root, '.flowforge', 'tasks.json')
  const tasks = {
    version: '2.0.0',
    lastSync: null,
    tasks: [{ id: 101, title: 'Audit time tracking', status: 'in_progress', createdAt: new Date().toISOString() }],
    metadata: { demoUpdates: 0 },
  }
  fs.writeFileSync(tasksFile, JSON.stringify(tasks, null, 2))
  return { root, tasksFile }
}

async function workers(mode, file, count, processes) {
  const started = process.hrtime.bigint()
  const results = await Promise.all(
    Array.from({ length: processes }, () => run(process.execPath, [worker, mode, file, String(count)])),
  )
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  return { seconds, reports: results.map((r) => JSON.parse(r.stdout)) }
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

async function main() {
  const { root, tasksFile } = makeProject()
  const expected = PROCESSES * UPDATES
  console.log(`flowforge-lock demo: ${PROCESSES} processes x ${UPDATES} updates of ${tasksFile}\n`)

  const plain = await workers('unlocked', tasksFile, UPDATES, PROCESSES)
  const lost = expected - JSON.parse(fs.readFileSync(tasksFile, 'utf8')).metadata.demoUpdates
  console.log(`1. Without a lock:   ${expected - lost} of ${expected} updates survived, ${lost} lost (${plain.seconds.toFixed(2)} s)`)

  const data = JSON.parse(fs.readFileSync(tasksFile, 'utf8'))
  data.metadata.demoUpdates = 0
  fs.writeFileSync(tasksFile, JSON.stringify(data, null, 2))
  const locked = await workers('locked', tasksFile, UPDATES, PROCESSES)
  const counted = JSON.parse(fs.readFileSync(tasksFile, 'utf8')).metadata.demoUpdates
  console.log(`2. With flowforge-lock: ${counted} of ${expected} updates survived, ${expected - counted} lost (${locked.seconds.toFixed(2)} s)`)

  const sum = (key) => locked.reports.reduce((total, r) => total + r.metrics[key], 0)
  const acquisitions = sum('acquisitions')
  const avgWait = locked.reports.reduce((t, r) => t + r.metrics.averageWaitTime * r.metrics.acquisitions, 0) / acquisitions
  console.log('\n   Lock metrics, all processes (getLockMetrics() in each):')
  console.log(`   acquisitions ${acquisitions}, contended ${sum('contendedAcquisitions')}, timeouts ${sum('totalTimeouts')}`)
  console.log(`   average wait ${avgWait.toFixed(3)} ms, max wait ${Math.max(...locked.reports.map((r) => r.metrics.maxWaitTime)).toFixed(3)} ms, average hold ${(locked.reports.reduce((t, r) => t + r.metrics.averageHoldTime, 0) / PROCESSES).toFixed(3)} ms`)

  // Handoff: the time from one process releasing to the waiting one holding the lock.
  const pingpong = await workers('pingpong', path.join(root, '.flowforge', 'handoff.json'), 100, 2)
  const events = pingpong.reports
    .flatMap((r) => r.events.map(([acquiredAt, releasedAt]) => ({ pid: r.pid, acquiredAt, releasedAt })))
    .sort((a, b) => a.acquiredAt - b.acquiredAt)
  const handoffs = []
  for (let i = 1; i < events.length; i++) {
    if (events[i].pid !== events[i - 1].pid) handoffs.push(events[i].acquiredAt - events[i - 1].releasedAt)
  }
  console.log(`\n3. Handoff between two processes: median ${median(handoffs)} µs over ${handoffs.length} handoffs (holder keeps the lock 1-10 ms)`)
  console.log(`\n   Lock files left in ${path.join(root, '.flowforge', '.locks')}: ${fs.readdirSync(path.join(root, '.flowforge', '.locks')).length}`)
  fs.rmSync(root, { recursive: true, force: true })
  if (counted !== expected) {
    console.error('\nUpdates were lost under the lock: this is a bug, please report it.')
    process.exit(1)
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
