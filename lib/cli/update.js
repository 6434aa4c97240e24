'use strict'
// flowforge-lock update: the JSON on stdin becomes FILE's content, atomically, under its lock.

const { writeJson } = require('../dead-letters.js')
const { EXIT } = require('./exit-codes.js')
const { showWaiting } = require('./waiting.js')
const { DEFAULT_TIMEOUT } = require('../../file-lock.js')

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

async function update(file, { timeout, quiet }) {
  const text = await readStdin()
  let content
  try {
    content = JSON.parse(text)
  } catch (err) {
    process.stderr.write(`flowforge-lock: stdin is not valid JSON (${err.message}); ${file} was not changed.\n`)
    return EXIT.DATAERR
  }
  // Kept in the dead-letter queue if the lock times out or the disk is full (replay later).
  const stopShowing = showWaiting(file, { timeout: timeout ?? DEFAULT_TIMEOUT, quiet })
  try {
    await writeJson(file, content, { timeout })
  } finally {
    stopShowing()
  }
  return EXIT.OK
}

module.exports = { update }
