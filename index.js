'use strict'
// flowforge-lock: every public function of the package. FlowForge's scripts can also require
// the drop-in subpaths (flowforge-lock/file-lock, …) that mirror its own modules.

module.exports = {
  ...require('./file-lock.js'),
}
