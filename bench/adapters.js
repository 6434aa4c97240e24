'use strict'
// The lock libraries under comparison, behind one shape: `lock(file)` resolves to `release()`.
// Peers are configured to wait, as the issue asks: proper-lockfile retries every 1-20 ms,
// lockfile polls every 10 ms.

const { promisify } = require('node:util')
const { acquireLock, releaseLock } = require('../file-lock.js')

const adapters = {
  'flowforge-lock': {
    async lock(file) {
      const lockId = await acquireLock(file, 60000)
      return () => releaseLock(file, lockId)
    },
  },
  'proper-lockfile': {
    lock(file) {
      return require('proper-lockfile').lock(file, {
        realpath: false,
        retries: { retries: 1000, minTimeout: 1, maxTimeout: 20 },
      })
    },
  },
  lockfile: {
    async lock(file) {
      const lockfile = require('lockfile')
      const lockPath = `${file}.lock`
      await promisify(lockfile.lock)(lockPath, { wait: 30000, pollPeriod: 10 })
      return () => promisify(lockfile.unlock)(lockPath)
    },
  },
}

function version(name) {
  if (name === 'flowforge-lock') return require('../package.json').version
  return require(`${name}/package.json`).version
}

module.exports = { adapters, version }
