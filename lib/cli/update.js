'use strict'
// flowforge-lock update: the JSON on stdin becomes FILE's content, atomically, under its lock.

const { writeJson } = require('../dead-letters.js')
const { EXIT } = require('./exit-codes.js')

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

async function update(file, { timeout }) {
  const text = await readStdin()
  let content
  try {
    content = JSON.parse(text)
  } catch (err) {
    process.stderr.write(`flowforge-lock: stdin is not valid JSON (${err.message}); ${file} was not changed.\n`)
    return EXIT.DATAERR
  }
  // Kept in the dead-letter queue if the lock times out or the disk is full (replay later).
  await writeJson(file, content, { timeout })
  return EXIT.OK
}

module.exports = { update }
