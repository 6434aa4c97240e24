'use strict'
// node contend.js <raw|update|task> <dataFile> <K> <startAtMs> <markerFile> <tag>
//  raw:    K x (acquireLock, check and set the "inside" marker, read-increment-write, clear, release)
//  update: K x updateWithLock appending task <tag>-<i>, the updater checking the marker the same way
//  task:   K x updateTaskFile({ id: `<tag>-<i>` }) (no marker: the write happens inside the library)
// Prints one JSON line: { overlaps, errors }.
const fs = require('node:fs')
const { acquireLock, releaseLock } = require('../../file-lock.js')
const { updateWithLock, updateTaskFile } = require('../../file-lock-integration.js')

const [mode, file, count, startAt, marker, tag] = process.argv.slice(2)
let overlaps = 0
let errors = 0

/** Claims the critical section: the marker must not exist (O_EXCL), else someone else is inside. */
function enter() {
  try {
    fs.writeFileSync(marker, String(process.pid), { flag: 'wx' })
  } catch (err) {
    if (err.code !== 'EEXIST') throw err
    overlaps++
    fs.writeFileSync(marker, String(process.pid))
  }
}

async function main() {
  await new Promise((resolve) => setTimeout(resolve, Number(startAt) - Date.now()))
  for (let i = 0; i < Number(count); i++) {
    try {
      if (mode === 'raw') {
        const lockId = await acquireLock(file, 120000)
        enter()
        const { count: n } = JSON.parse(fs.readFileSync(file, 'utf8'))
        fs.writeFileSync(file, JSON.stringify({ count: n + 1 }))
        fs.rmSync(marker)
        await releaseLock(file, lockId)
      } else if (mode === 'task') {
        await updateTaskFile({ id: `${tag}-${i}`, status: 'done' }, { file, timeout: 120000 })
      } else {
        await updateWithLock(
          file,
          (doc) => {
            enter()
            doc.tasks.push({ id: `${tag}-${i}`, status: 'done' })
            fs.rmSync(marker)
            return doc
          },
          { timeout: 120000 },
        )
      }
    } catch (err) {
      errors++
      console.error(err)
    }
  }
  process.stdout.write(`${JSON.stringify({ overlaps, errors })}\n`)
}

main()
