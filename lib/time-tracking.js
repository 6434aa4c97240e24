'use strict'
// Task timers in .flowforge/billing/time-tracking.json, the shape FlowForge's task-time.sh
// writes: an object keyed by task id (string), each with status active|paused|closed,
// current_session while active, sessions[] of closed sessions (duration in hours, 2 decimals).
// Every operation is one locked read-modify-write, so no two sessions can double-book time.
// Only the task entries an operation owns are touched; other keys and shapes stay as they are.

const { changeProjectFile } = require('./update.js')
const {
  isoSeconds,
  currentUser,
  currentInstanceId,
  isPlainObject,
  getOwn,
  setOwn,
  shapeError,
  stateError,
} = require('./project.js')
const { codedError, checkString } = require('./args.js')
const { deadLettered, pinTimer } = require('./dead-letters.js')

function checkTaskId(taskId) {
  if ((typeof taskId !== 'string' && typeof taskId !== 'number') || String(taskId) === '') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "taskId" argument must be a non-empty string or a number. Received ${typeof taskId}`)
  }
  return String(taskId)
}

const hoursBetween = (start, end) => Math.round(((Date.parse(end) - Date.parse(start)) / 3.6e6) * 100) / 100

/** Moves the entry's current session into sessions[] with its end, duration and reason. */
function closeSession(entry, now, reason) {
  const session = { ...entry.current_session, end: now, duration: Math.max(0, hoursBetween(entry.current_session.start, now)), reason }
  if (!Array.isArray(entry.sessions)) entry.sessions = []
  entry.sessions.push(session)
  delete entry.current_session
  return session
}

/** One locked read-modify-write of the time-tracking file; `change(data, file, opts)` returns the result. */
function withTimes(options, change) {
  return changeProjectFile('timeTracking', options, () => ({}), (data, file, opts) => {
    if (!isPlainObject(data)) throw shapeError(file, 'the time-tracking data is not a JSON object keyed by task id')
    return change(data, file, opts)
  })
}

function entryOf(data, key, file) {
  const entry = getOwn(data, key)
  if (entry !== undefined && !isPlainObject(entry)) throw shapeError(file, `the entry of task ${key} is not an object`)
  return entry
}

/** Starts (or, for a paused one, resumes) a task's timer; other active tasks of the same instance are paused. */
function begin(data, key, file, opts, allowed) {
  const user = opts.user === undefined ? currentUser() : checkString('options.user', opts.user)
  const instanceId = opts.instanceId === undefined ? currentInstanceId() : checkString('options.instanceId', opts.instanceId)
  const entry = entryOf(data, key, file)
  const status = entry?.status
  if (!allowed.includes(status)) {
    throw stateError(`Task ${key} cannot start: its timer is ${status ?? 'not started'} in ${file}.`)
  }
  const now = isoSeconds()
  const autoPaused = []
  for (const [otherKey, other] of Object.entries(data)) {
    if (otherKey !== key && isPlainObject(other) && other.status === 'active' && other.current_session?.instance_id === instanceId) {
      closeSession(other, now, `Auto-paused: started task ${key}`)
      other.status = 'paused'
      autoPaused.push(otherKey)
    }
  }
  const next = entry ?? { sessions: [] }
  next.status = 'active'
  next.current_session = { start: now, user, instance_id: instanceId }
  if (!Array.isArray(next.sessions)) next.sessions = []
  setOwn(data, key, next)
  return { taskId: key, session: next.current_session, autoPaused }
}

function startTaskTimer(taskId, options) {
  const key = checkTaskId(taskId)
  return withTimes(options, (data, file, opts) => begin(data, key, file, opts, [undefined, 'paused', 'closed', 'completed']))
}

function resumeTaskTimer(taskId, options) {
  const key = checkTaskId(taskId)
  return withTimes(options, (data, file, opts) => begin(data, key, file, opts, ['paused']))
}

/** `(taskId, options)` is accepted too: the reason is optional. */
function reasonAndOptions(reason, options, fallback) {
  return isPlainObject(reason) ? [fallback, reason] : [reason ?? fallback, options]
}

function pauseTaskTimer(taskId, why, maybeOptions) {
  const key = checkTaskId(taskId)
  const [reason, options] = reasonAndOptions(why, maybeOptions, 'Paused')
  return withTimes(options, (data, file) => {
    const entry = entryOf(data, key, file)
    if (entry?.status !== 'active' || !isPlainObject(entry.current_session)) {
      throw stateError(`Task ${key} cannot pause: its timer is ${entry?.status ?? 'not started'} in ${file}.`)
    }
    const session = closeSession(entry, isoSeconds(), String(reason))
    entry.status = 'paused'
    return { taskId: key, session }
  })
}

/** Stops a task's timer for good: closes its session, sets completed_at, total_hours and metrics. */
function stopTaskTimer(taskId, why, maybeOptions) {
  const key = checkTaskId(taskId)
  const [reason, options] = reasonAndOptions(why, maybeOptions, 'Completed')
  return withTimes(options, (data, file) => {
    const entry = entryOf(data, key, file)
    if (entry?.status !== 'active' && entry?.status !== 'paused') {
      throw stateError(`Task ${key} cannot stop: its timer is ${entry?.status ?? 'not started'} in ${file}.`)
    }
    const now = isoSeconds()
    if (entry.status === 'active' && isPlainObject(entry.current_session)) closeSession(entry, now, String(reason))
    const sessions = Array.isArray(entry.sessions) ? entry.sessions : []
    const total = Math.round(sessions.reduce((sum, s) => sum + (Number(s?.duration) || 0), 0) * 100) / 100
    entry.status = 'closed'
    entry.completed_at = now
    entry.total_hours = total
    entry.metrics = {
      total_hours: total,
      session_count: sessions.length,
      average_session: sessions.length ? Math.round((total / sessions.length) * 100) / 100 : 0,
    }
    return { taskId: key, totalHours: total, sessions: sessions.length }
  })
}

// A failure a retry can fix is kept in the dead-letter queue (dead-letters.js), the arguments in
// one shape: (taskId, options) or (taskId, reason, options).
const withReason = ([taskId, why, options]) => [taskId, ...reasonAndOptions(why, options, null)]
module.exports = {
  startTaskTimer: deadLettered('startTaskTimer', startTaskTimer, { which: 'timeTracking', normalize: ([id, o]) => [id, o], pin: pinTimer }),
  pauseTaskTimer: deadLettered('pauseTaskTimer', pauseTaskTimer, { which: 'timeTracking', normalize: withReason }),
  resumeTaskTimer: deadLettered('resumeTaskTimer', resumeTaskTimer, { which: 'timeTracking', normalize: ([id, o]) => [id, o], pin: pinTimer }),
  stopTaskTimer: deadLettered('stopTaskTimer', stopTaskTimer, { which: 'timeTracking', normalize: withReason }),
}
