'use strict'
// node stall-holder.js <file> <heartbeatMs>
// Updates <file> under its lock, pausing inside the updater: prints "INSIDE <hostname>" and
// waits for "GO" on stdin (the parent freezes us meanwhile), then writes {"writer":"stalled"}.
// Prints "RESULT ok" or "RESULT <code>".
const os = require('node:os')
const native = require('../../native.js')
const { updateWithLock } = require('../../file-lock-integration.js')

const [file, heartbeatMs] = process.argv.slice(2)
native.setHeartbeatInterval(Number(heartbeatMs))

const go = new Promise((resolve) => {
  process.stdin.on('data', (chunk) => {
    if (String(chunk).includes('GO')) resolve()
  })
})

updateWithLock(file, async () => {
  console.log(`INSIDE ${os.hostname()}`)
  await go
  return { writer: 'stalled' }
}).then(
  () => console.log('RESULT ok'),
  (err) => console.log(`RESULT ${err.code}`),
).finally(() => process.exit(0))
