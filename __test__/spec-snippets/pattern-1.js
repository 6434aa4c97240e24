// FILE_LOCKING.md, "Pattern 1: Simple File Update".
;(async () => {
// --- snippet ---
const { updateTaskFile } = require('flowforge-lock/file-lock-integration');

// Atomic task update
await updateTaskFile({
    id: 142,
    status: 'completed',
    completedAt: new Date().toISOString()
});
// --- end snippet ---
  console.log('DONE')
})()
