'use strict'
// flowforge-lock status: every lock of a project, judged, as a table or as JSON. With a lock
// server (Redis, etcd) each lock also shows its fencing token, its lease's time left and how many
// wait for it; those columns appear when some lock has them. A lock held in shared mode shows one
// row per reader (MODE shared), so every reader is listed.

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
  const row = (lock, holder) => ({
    file: holder.file ?? lock.file ?? path.basename(lockName(lock), '.lock'),
    lockFile: lock.lockFile,
    state: holder.state,
    mode: holder.mode ?? null,
    reason: holder.staleReason ?? null,
    pid: holder.pid ?? null,
    user: holder.username ?? null,
    host: holder.hostname ?? null,
    heldForMs: holder.heldForMs ?? null,
    heartbeatAgeMs: holder.heartbeatAgeMs ?? null,
    token: lock.fencingToken ?? null,
    ttlLeftMs: lock.ttlLeftMs ?? null,
    queueLength: lock.queueLength ?? null,
    readerFile: holder.readerFile ?? null,
  })
  // Held shared: a row per reader (live, or left by a dead one); otherwise the lock's own row,
  // plus any reader file a dead reader left beside it.
  const rows = locks.flatMap((lock) => {
    const readers = lock.readers ?? []
    if (lock.mode === 'shared') return readers.map((reader) => row(lock, reader))
    return [row(lock, lock), ...readers.map((reader) => row(lock, reader))]
  })
  const taken = new Set(locks.map(lockName))
  // FlowForge's critical files are listed as free when they have no lock file.
  for (const relative of Object.values(FILES)) {
    const file = path.join(projectRoot, relative)
    const lockFile = path.join(projectRoot, '.flowforge', '.locks', `${path.basename(relative)}.lock`)
    if (!taken.has(path.basename(lockFile))) {
      rows.push({ file, lockFile, state: 'free', mode: null, reason: null, pid: null, user: null, host: null, heldForMs: null, heartbeatAgeMs: null, token: null, ttlLeftMs: null, queueLength: null, readerFile: null })
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
    r.mode ?? '-',
    r.user ?? '-',
    r.host ?? '-',
    r.state === 'free' ? '-' : duration(r.heldForMs),
    ...(leased ? [r.token === null ? '-' : String(r.token), duration(r.ttlLeftMs), r.queueLength === null ? '-' : String(r.queueLength)] : [duration(r.heartbeatAgeMs)]),
    r.reason ?? '',
  ])
  const headers = ['FILE', 'STATE', 'PID', 'MODE', 'USER', 'HOST', 'HELD FOR', ...(leased ? ['TOKEN', 'TTL LEFT', 'QUEUE'] : ['HEARTBEAT']), 'WHY STALE']
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
