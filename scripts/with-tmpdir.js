#!/usr/bin/env node
'use strict'
// node scripts/with-tmpdir.js <command> [args...]: runs the command with TMPDIR pointing at a
// fresh directory and removes it afterwards, so that `npm test`'s cargo tests (which make a
// directory per case, and start etcd servers with data directories) leave nothing in /tmp.
// Exits with the command's status.
const fs = require('node:fs')
const { spawnSync } = require('node:child_process')
const { useRunTmpdir } = require('../__test__/helpers.js')

const dir = useRunTmpdir('ffl-cargo-')
const [command, ...args] = process.argv.slice(2)
const { status, signal, error } = spawnSync(command, args, { stdio: 'inherit' })
fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
if (error) throw error
if (signal) console.error(`${command} ended by ${signal}`)
process.exit(status ?? 1)
