// FILE_LOCKING.md, "Stale Lock Recovery".
;(async () => {
// --- snippet ---
// Automatic cleanup on startup
const { cleanupStaleLocks } = require('flowforge-lock/file-lock');
await cleanupStaleLocks();
// --- end snippet ---
  console.log('DONE')
})()
