'use strict'
// flowforge-lock cleanup: cleanupStaleLocks() with a report.

const path = require('node:path')
const { cleanupStaleLocks } = require('../../file-lock.js')
const { paint } = require('./format.js')
const { EXIT } = require('./exit-codes.js')

async function cleanup(root, values) {
  const dryRun = Boolean(values['dry-run'])
  const report = await cleanupStaleLocks({ root, dryRun })
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ ...report, dryRun }, null, 2)}\n`)
    return EXIT.OK
  }
  const verb = dryRun ? 'would remove' : 'removed'
  for (const entry of report.removed) {
    process.stdout.write(`${paint('red', verb)}  ${path.basename(entry.readerFile ?? entry.lockFile)}: ${entry.reason}\n`)
  }
  for (const entry of report.kept) {
    process.stdout.write(`${paint('green', 'kept')}  ${path.basename(entry.readerFile ?? entry.lockFile)}: ${entry.reason}\n`)
  }
  process.stdout.write(`${report.removed.length} stale lock(s) ${verb}, ${report.kept.length} kept, in ${report.root}\n`)
  return EXIT.OK
}

module.exports = { cleanup }
