// FILE_LOCKING.md, "Lock Mechanism". Harness: filePath and modifiedData.
const fs = require('fs').promises
const { acquireLock, releaseLock } = require('flowforge-lock/file-lock')
const filePath = '.flowforge/tasks.json'
const modifiedData = JSON.stringify({ version: '2.0.0', tasks: [{ id: 1, status: 'modified' }] })
;(async () => {
// --- snippet ---
// Lock acquisition with timeout
const lockId = await acquireLock(filePath, 30000);
try {
    // Critical operations here
    const data = await fs.readFile(filePath);
    // ... modify data ...
    await fs.writeFile(filePath, modifiedData);
} finally {
    // Always release lock
    await releaseLock(filePath, lockId);
}
// --- end snippet ---
  console.log('DONE')
})()
