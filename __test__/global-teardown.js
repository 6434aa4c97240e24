'use strict'
// Removes the run's temp directory made by global-setup.js.
const fs = require('node:fs')

module.exports = () => {
  const dir = process.env.FFL_JEST_TMPDIR
  if (dir) fs.rmSync(dir, { recursive: true, force: true })
}
