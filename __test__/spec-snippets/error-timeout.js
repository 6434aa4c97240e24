// FILE_LOCKING.md, "Lock Acquisition Timeout". Harness: updateTaskFile, data.
const { updateTaskFile } = require('flowforge-lock/file-lock-integration')
const data = { id: 7, status: 'in_progress' }
;(async () => {
// --- snippet ---
try {
    await updateTaskFile(data, { timeout: 5000 });
} catch (error) {
    if (error.message.includes('timeout')) {
        console.error('Could not acquire lock - file may be in use');
        // Implement retry logic or user notification
    }
}
// --- end snippet ---
  console.log('DONE')
})()
