'use strict'
// Jest's global setup: every temp directory of this run (suites, fixtures, child processes, the
// servers they start) goes under one directory, which global-teardown.js removes. The workers
// and their children inherit TMPDIR.
const { useRunTmpdir } = require('./helpers.js')

module.exports = () => {
  process.env.FFL_JEST_TMPDIR = useRunTmpdir('ffl-jest-')
}
