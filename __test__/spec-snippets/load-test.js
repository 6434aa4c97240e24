// FILE_LOCKING.md, "Load Testing". Harness: updateTaskFile.
const { updateTaskFile } = require('flowforge-lock/file-lock-integration')
;(async () => {
// --- snippet ---
// Simulate high concurrency
const promises = [];
for (let i = 0; i < 100; i++) {
    promises.push(updateTaskFile({ id: i, status: 'test' }));
}
await Promise.all(promises);
// --- end snippet ---
  console.log('DONE')
})()
