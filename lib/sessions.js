'use strict'
// Work sessions in .flowforge/sessions/active-sessions.json:
// { version, lastUpdated, sessions: { <sessionId>: {...} } } (an array of sessions is read and
// kept as an array). Register, touch, end, and clean up stale sessions: a session is stale when
// its process is gone on this host, or its last activity is older than 24 h.

const os = require('node:os')
const { changeProjectFile, readJson } = require('./update.js')
const { projectFile, currentUser, currentInstanceId, isPlainObject, getOwn, setOwn, shapeError, stateError } = require('./project.js')
const { checkObject, checkString, checkMs, checkJson, codedError } = require('./args.js')
const { deadLettered } = require('./dead-letters.js')

const STALE_SESSION_MS = 24 * 3600 * 1000

function newDocument() {
  return { version: '2.0.0', lastUpdated: new Date().toISOString(), sessions: {} }
}

/** The sessions container of a document, checked; an object keyed by id, or an array. */
function sessionsOf(doc, file) {
  if (!isPlainObject(doc)) throw shapeError(file, 'the document is not a JSON object')
  if (doc.sessions === undefined) doc.sessions = {}
  if (!isPlainObject(doc.sessions) && !Array.isArray(doc.sessions)) throw shapeError(file, '"sessions" is neither an object nor an array')
  return doc.sessions
}

function find(sessions, id) {
  if (Array.isArray(sessions)) return sessions.find((s) => isPlainObject(s) && s.sessionId === id)
  return getOwn(sessions, id)
}

function put(sessions, session) {
  if (!Array.isArray(sessions)) {
    setOwn(sessions, session.sessionId, session)
    return
  }
  const index = sessions.findIndex((s) => isPlainObject(s) && s.sessionId === session.sessionId)
  if (index >= 0) sessions[index] = session
  else sessions.push(session)
}

function remove(sessions, id) {
  if (!Array.isArray(sessions)) {
    delete sessions[id]
    return
  }
  const index = sessions.findIndex((s) => isPlainObject(s) && s.sessionId === id)
  if (index >= 0) sessions.splice(index, 1)
}

/** Removes the sessions `isGone` picks, whatever the container; returns them. */
function removeWhere(sessions, isGone) {
  const gone = []
  if (Array.isArray(sessions)) {
    for (let i = sessions.length - 1; i >= 0; i--) {
      if (isPlainObject(sessions[i]) && isGone(sessions[i])) gone.unshift(...sessions.splice(i, 1))
    }
  } else {
    for (const [key, session] of Object.entries(sessions)) {
      if (isPlainObject(session) && isGone(session)) {
        gone.push(session)
        delete sessions[key]
      }
    }
  }
  return gone
}

function entries(sessions) {
  return Array.isArray(sessions) ? sessions.filter(isPlainObject) : Object.values(sessions).filter(isPlainObject)
}

let lastIssued = { seconds: -1, ms: -1 }
/**
 * A new session id as FlowForge's START writes it, `session-<epoch s>-<pid>`, unique in this
 * process: a second one within the same second takes the epoch in ms (SSM's form), one past the
 * last one issued, instead of repeating the first (which would replace its session).
 */
function newSessionId() {
  const now = Date.now()
  const seconds = Math.floor(now / 1000)
  if (seconds !== lastIssued.seconds) {
    lastIssued = { seconds, ms: lastIssued.ms }
    return `session-${seconds}-${process.pid}`
  }
  lastIssued.ms = Math.max(now, lastIssued.ms + 1)
  return `session-${lastIssued.ms}-${process.pid}`
}

function withSessions(options, change) {
  return changeProjectFile('activeSessions', options, newDocument, (doc, file, opts) => {
    const result = change(sessionsOf(doc, file), file, opts)
    if ('lastUpdated' in doc) doc.lastUpdated = new Date().toISOString()
    return result
  })
}

/** Adds (or replaces) a session; fills sessionId, user, pid, hostname, instanceId, status and times when absent. */
function registerSession(given = {}, options) {
  if (!isPlainObject(given)) throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'The "session" argument must be an object.')
  const session = checkJson('session', given)
  return withSessions(options, (sessions) => {
    const now = new Date().toISOString()
    const stored = {
      sessionId: session.sessionId ?? newSessionId(),
      user: currentUser(),
      instanceId: currentInstanceId(),
      pid: process.pid,
      hostname: os.hostname(),
      status: 'active',
      startTime: now,
      lastActivity: now,
      ...session,
    }
    put(sessions, stored)
    return { ...stored }
  })
}

/** Marks activity on a session (and merges `fields` into it). */
function touchSession(sessionId, fields = {}, options) {
  checkString('sessionId', sessionId)
  const copy = checkJson('fields', checkObject('fields', fields))
  return withSessions(options, (sessions, file) => {
    const session = find(sessions, sessionId)
    if (!isPlainObject(session)) throw stateError(`No active session ${sessionId} in ${file}.`)
    for (const [key, value] of Object.entries({ ...copy, lastActivity: new Date().toISOString() })) setOwn(session, key, value)
    return { ...session }
  })
}

/** Removes a session from the active ones; resolves to it, with its endTime and status. */
function endSession(sessionId, options) {
  checkString('sessionId', sessionId)
  const { status = 'ended' } = checkObject('options', options)
  return withSessions(options, (sessions, file) => {
    const session = find(sessions, sessionId)
    if (!isPlainObject(session)) throw stateError(`No active session ${sessionId} in ${file}.`)
    remove(sessions, sessionId)
    return { ...session, status, endTime: new Date().toISOString() }
  })
}

/** ISO strings, epoch ms, or epoch seconds (numbers below 1e12), as FlowForge writes them. */
function toMs(value) {
  if (typeof value === 'number') return value < 1e12 ? value * 1000 : value
  if (typeof value === 'string') return Date.parse(value)
  return NaN
}

function pidAlive(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM'
  }
}

function staleReason(session, now, maxAgeMs) {
  const pid = Number(session.pid ?? /:(\d+):/.exec(session.instanceId ?? '')?.[1])
  if (session.hostname === os.hostname() && Number.isInteger(pid) && !pidAlive(pid)) return `process ${pid} is gone`
  const last = toMs(session.lastActivity ?? session.startTime)
  if (Number.isNaN(last)) return 'no readable lastActivity or startTime'
  if (now - last > maxAgeMs) return `no activity for ${Math.round((now - last) / 3.6e6)} h`
  return null
}

/** Removes stale sessions; resolves to { removed, kept } (removed ones carry their reason). */
async function cleanupStaleSessions(options) {
  const { maxAgeMs } = checkObject('options', options)
  const limit = checkMs('options.maxAgeMs', maxAgeMs, STALE_SESSION_MS, false)
  return withSessions(options, (sessions) => {
    const now = Date.now()
    const reasons = new Map()
    const removed = removeWhere(sessions, (session) => {
      const reason = staleReason(session, now, limit)
      if (reason !== null) reasons.set(session, reason)
      return reason !== null
    })
    return {
      removed: removed.map((session) => ({ ...session, staleReason: reasons.get(session) })),
      kept: entries(sessions),
    }
  })
}

/** The active sessions, read without taking the lock (writes are atomic renames). */
function listSessions(options) {
  const file = projectFile('activeSessions', checkObject('options', options))
  const doc = readJson(file)
  return doc === null ? [] : entries(sessionsOf(doc, file))
}

// A failure a retry can fix is kept in the dead-letter queue (dead-letters.js). A registered
// session's generated fields are pinned at call time, so a replay registers the same session.
function pinSession(args) {
  const session = { ...(isPlainObject(args[0]) ? args[0] : {}) }
  session.sessionId ??= newSessionId()
  session.user ??= currentUser()
  session.instanceId ??= currentInstanceId()
  session.pid ??= process.pid
  session.hostname ??= os.hostname()
  args[0] = session
}
module.exports = {
  registerSession: deadLettered('registerSession', registerSession, { which: 'activeSessions', normalize: ([s, o]) => [s, o], pin: pinSession }),
  touchSession: deadLettered('touchSession', touchSession, { which: 'activeSessions', normalize: ([id, f, o]) => [id, f ?? {}, o] }),
  endSession: deadLettered('endSession', endSession, { which: 'activeSessions', normalize: ([id, o]) => [id, o] }),
  cleanupStaleSessions,
  listSessions,
}
