'use strict'
// flowforge-lock update: the JSON on stdin becomes FILE's content, atomically, under its lock.

const { writeJson } = require('../dead-letters.js')
const { EXIT } = require('./exit-codes.js')
const { showWaiting } = require('./waiting.js')
const { DEFAULT_TIMEOUT } = require('../../file-lock.js')

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks)
}

async function update(file, { timeout, quiet }) {
  const bytes = await readStdin()
  let text
  try {
    // Strictly: a lenient decode turns bytes of another encoding into U+FFFD, and that would be
    // written as the user's text. (A BOM is kept, and refused by JSON.parse as before.)
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes)
  } catch {
    process.stderr.write(`flowforge-lock: stdin is not UTF-8 text; ${file} was not changed. Convert it first (iconv -t UTF-8).\n`)
    return EXIT.DATAERR
  }
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
