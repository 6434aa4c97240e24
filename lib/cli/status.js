'use strict'
// flowforge-lock status: every lock of a project, judged, as a table or as JSON. With a lock
// server (Redis, etcd) each lock also shows its fencing token, its lease's time left and how many
// wait for it; those columns appear when some lock has them.

const path = require('node:path')
const native = require('../../native.js')
const { listLocks } = require('../../file-lock.js')
const { FILES } = require('../project.js')
const { duration, paint } = require('./format.js')
const { table } = require('../table.js')
const { EXIT } = require('./exit-codes.js')
const { deadLetterSummary } = require('../dead-letters.js')

/** The lock file's name (`tasks.json.lock`): a Redis key ends with it after `{<projectId>}:`, an
 * etcd prefix as its last path segment. */
const lockName = (lock) => (lock.backend === 'redis' ? lock.lockFile.slice(lock.lockFile.indexOf('}:') + 2) : path.basename(lock.lockFile))

function rowsOf(root) {
  const locks = listLocks(root === undefined ? undefined : { root })
  const projectRoot = native.projectRoot(root)
  const rows = locks.map((lock) => ({
    file: lock.file ?? path.basename(lockName(lock), '.lock'),
    lockFile: lock.lockFile,
    state: lock.state,
    reason: lock.staleReason ?? null,
    pid: lock.pid ?? null,
    user: lock.username ?? null,
    host: lock.hostname ?? null,
    heldForMs: lock.heldForMs ?? null,
    heartbeatAgeMs: lock.heartbeatAgeMs ?? null,
    token: lock.fencingToken ?? null,
    ttlLeftMs: lock.ttlLeftMs ?? null,
    queueLength: lock.queueLength ?? null,
  }))
  const taken = new Set(locks.map(lockName))
  // FlowForge's critical files are listed as free when they have no lock file.
  for (const relative of Object.values(FILES)) {
    const file = path.join(projectRoot, relative)
    const lockFile = path.join(projectRoot, '.flowforge', '.locks', `${path.basename(relative)}.lock`)
    if (!taken.has(path.basename(lockFile))) {
      rows.push({ file, lockFile, state: 'free', reason: null, pid: null, user: null, host: null, heldForMs: null, heartbeatAgeMs: null, token: null, ttlLeftMs: null, queueLength: null })
    }
  }
  return { root: projectRoot, rows }
}

const STATE_COLOUR = { held: 'yellow', free: 'green', stale: 'red', unsafe: 'red', disconnected: 'red' }

function status(root, { json }) {
  const { root: projectRoot, rows } = rowsOf(root)
  const deadLetters = deadLetterSummary(projectRoot)
  if (json) {
    process.stdout.write(`${JSON.stringify({ root: projectRoot, locks: rows, deadLetters }, null, 2)}\n`)
    return EXIT.OK
  }
  const shown = (file) => (file.startsWith(projectRoot + path.sep) ? path.relative(projectRoot, file) : file)
  // A lock server's columns, when any lock has them (the file backend has heartbeats instead).
  const leased = rows.some((r) => r.token !== null || r.ttlLeftMs !== null)
  const cells = rows.map((r) => [
    shown(r.file),
    r.state,
    r.pid === null ? '-' : String(r.pid),
    r.user ?? '-',
    r.host ?? '-',
    r.state === 'free' ? '-' : duration(r.heldForMs),
    ...(leased ? [r.token === null ? '-' : String(r.token), duration(r.ttlLeftMs), r.queueLength === null ? '-' : String(r.queueLength)] : [duration(r.heartbeatAgeMs)]),
    r.reason ?? '',
  ])
  const headers = ['FILE', 'STATE', 'PID', 'USER', 'HOST', 'HELD FOR', ...(leased ? ['TOKEN', 'TTL LEFT', 'QUEUE'] : ['HEARTBEAT']), 'WHY STALE']
  process.stdout.write(`Locks of ${projectRoot}\n`)
  process.stdout.write(
    `${table(headers, cells, {
      style: (text, row, i) => (row === null ? paint('bold', text) : i === 1 && STATE_COLOUR[row[1]] ? paint(STATE_COLOUR[row[1]], text) : text),
    })}\n`,
  )
  if (deadLetters.pending > 0) {
    process.stdout.write(`${paint('yellow', `${deadLetters.pending} dead letter(s)`)} in ${deadLetters.dir}: \`flowforge-lock dead-letters list\`, then replay or drop.\n`)
  }
  return EXIT.OK
}

module.exports = { status }
