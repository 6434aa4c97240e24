// flowforge-lock: every public function of the package.
export * from './file-lock'
export * from './file-lock-integration'
import FileLockManager = require('./FileLockManager')
export { FileLockManager }
