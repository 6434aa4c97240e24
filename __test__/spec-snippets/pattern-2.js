// FILE_LOCKING.md, "Pattern 2: Batch Operations".
;(async () => {
// --- snippet ---
const { batchUpdateTasks } = require('flowforge-lock/file-lock-integration');

// Single lock for multiple updates
await batchUpdateTasks([
    { id: 1, status: 'completed' },
    { id: 2, status: 'in-progress' },
    { id: 3, status: 'blocked' }
]);
// --- end snippet ---
  console.log('DONE')
})()
