'use strict'
// flowforge-lock: every public function of the package. FlowForge's scripts can also require
// the drop-in subpaths that mirror its own modules: flowforge-lock/file-lock,
// flowforge-lock/file-lock-integration and flowforge-lock/FileLockManager.

const FileLockManager = require('./FileLockManager.js')

module.exports = {
  ...require('./file-lock.js'),
  ...require('./file-lock-integration.js'),
  FileLockManager,
}
