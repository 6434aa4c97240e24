'use strict'
// node cycle.js <file> <n>: n acquire/release cycles; prints fd count and RSS before and after.
const fs = require('node:fs')
const { acquireLock, releaseLock } = require('../../file-lock.js')

const [file, n] = process.argv.slice(2)
const fds = () => fs.readdirSync('/proc/self/fd').length
const rssMiB = () => Math.round((process.memoryUsage().rss / 2 ** 20) * 10) / 10

;(async () => {
  // One round first, so that lazily made things (threads, handles, caches) exist at the start.
  await releaseLock(file, await acquireLock(file))
  global.gc?.()
  const start = { fds: fds(), rssMiB: rssMiB() }
  for (let i = 0; i < Number(n); i++) await releaseLock(file, await acquireLock(file))
  global.gc?.()
  console.log(JSON.stringify({ start, end: { fds: fds(), rssMiB: rssMiB() } }))
})()
