'use strict'
// One process of the demo: <mode> is "unlocked", "locked" or "pingpong".
//  unlocked/locked <tasksFile> <updates>: read .flowforge/tasks.json, bump a counter, write it back.
//  pingpong <file> <rounds>: take and release the lock, printing when (for handoff latency).
const fs = require('node:fs')
const { acquireLock, releaseLock } = require('../file-lock')
const { getLockMetrics } = require('../native.js')

const [mode, file, count] = process.argv.slice(2)
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000)
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function bump() {
  const data = JSON.parse(fs.readFileSync(file, 'utf8'))
  await pause(0) // the time real code spends between reading and writing
  data.metadata.demoUpdates += 1
  // Replaced by rename, so that even the unlocked run never leaves a torn file (overlapping
  // plain writes can leave invalid JSON for good): the demo counts lost updates only.
  const temp = `${file}.${process.pid}.tmp`
  fs.writeFileSync(temp, JSON.stringify(data, null, 2))
  fs.renameSync(temp, file)
}

async function main() {
  const events = []
  for (let i = 0; i < Number(count); i++) {
    if (mode === 'unlocked') {
      await bump()
      continue
    }
    const lockId = await acquireLock(file)
    const acquiredAt = nowUs()
    if (mode === 'locked') await bump()
    else await pause(1 + Math.random() * 9)
    const releasedAt = nowUs()
    await releaseLock(file, lockId)
    events.push([acquiredAt, releasedAt])
  }
  console.log(JSON.stringify({ pid: process.pid, events, metrics: getLockMetrics() }))
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
