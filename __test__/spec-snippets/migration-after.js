// FILE_LOCKING.md, "Migration Guide", After (With Locking). Harness: updateTaskFile, newTask.
const { updateTaskFile } = require('flowforge-lock/file-lock-integration')
const newTask = { id: 500, title: 'Migrated task', status: 'pending' }
;(async () => {
// --- snippet ---
// Safe - atomic operation
await updateTaskFile(newTask);
// --- end snippet ---
  console.log('DONE')
})()
