// FILE_LOCKING.md, "Metrics". Harness: one locked update first, so there is something to measure.
;(async () => {
  await require('flowforge-lock/file-lock-integration').updateTaskFile({ id: 1, status: 'test' })
// --- snippet ---
const { getLockMetrics } = require('flowforge-lock/file-lock-integration');

const metrics = getLockMetrics();
console.log(`Average lock wait time: ${metrics.averageWaitTime}ms`);
console.log(`Total timeouts: ${metrics.totalTimeouts}`);
// --- end snippet ---
  console.log('DONE')
})()
