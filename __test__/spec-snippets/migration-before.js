// FILE_LOCKING.md, "Migration Guide", Before (No Locking): the unsafe code, run once as written.
// Alone it appends; with concurrent writers it loses updates (`npm run demo` shows how many).
// Harness: fs, newTask.
const fs = require('fs')
const newTask = { id: 499, title: 'Unlocked task', status: 'pending' }
// --- snippet ---
// Unsafe - can corrupt data
const data = JSON.parse(fs.readFileSync('.flowforge/tasks.json'));
data.tasks.push(newTask);
fs.writeFileSync('.flowforge/tasks.json', JSON.stringify(data));
// --- end snippet ---
console.log('DONE')
