'use strict'
// flowforge-lock/file-lock-integration: drop-in for FlowForge's
// scripts/utils/file-lock-integration.js. Atomic operations on FlowForge's critical files:
// tasks (.flowforge/tasks.json), time tracking (.flowforge/billing/time-tracking.json) and
// work sessions (.flowforge/sessions/active-sessions.json), plus the process's lock metrics,
// lock-free versioned reads (lib/read.js) and the synchronous update.

const native = require('./native.js')
const { updateWithLock, updateWithLockSync } = require('./lib/update.js')
const { readJSON, readJSONVersioned, readJSONSync } = require('./lib/read.js')
const { updateTaskFile, batchUpdateTasks } = require('./lib/tasks.js')
const { startTaskTimer, pauseTaskTimer, resumeTaskTimer, stopTaskTimer } = require('./lib/time-tracking.js')
const { registerSession, touchSession, endSession, cleanupStaleSessions, listSessions } = require('./lib/sessions.js')
const deadLetters = require('./lib/dead-letters.js')
// Bound to names, so Node's ESM loader sees them as named exports (it reads `key` shorthand).
const { replayDeadLetters, listDeadLetters, dropDeadLetter } = deadLetters

/** Every lock this process took: averageWaitTime and the other times in ms, per file under `files`. */
function getLockMetrics() {
  return { ...native.getLockMetrics(), deadLetters: deadLetters.deadLetterCounts() }
}

function resetLockMetrics() {
  native.resetLockMetrics()
  deadLetters.resetDeadLetterCounts()
}

module.exports = {
  updateWithLock,
  updateWithLockSync,
  readJSON,
  readJSONVersioned,
  readJSONSync,
  updateTaskFile,
  batchUpdateTasks,
  startTaskTimer,
  pauseTaskTimer,
  resumeTaskTimer,
  stopTaskTimer,
  registerSession,
  touchSession,
  endSession,
  cleanupStaleSessions,
  listSessions,
  getLockMetrics,
  resetLockMetrics,
  replayDeadLetters,
  listDeadLetters,
  dropDeadLetter,
}
