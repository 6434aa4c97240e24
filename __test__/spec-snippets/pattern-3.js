// FILE_LOCKING.md, "Pattern 3: Custom Operations". Harness: FileLockManager, fs, custom.json.
const FileLockManager = require('flowforge-lock/FileLockManager')
const fs = require('fs').promises
;(async () => {
// --- snippet ---
const lockManager = new FileLockManager();

// Custom operation with locking
const result = await lockManager.withLock('custom.json', async () => {
    const data = await fs.readFile('custom.json', 'utf8');
    const parsed = JSON.parse(data);
    // ... custom logic ...
    await fs.writeFile('custom.json', JSON.stringify(parsed));
    return parsed;
});
// --- end snippet ---
  console.log(`DONE ${JSON.stringify(result)}`)
})()
