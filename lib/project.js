'use strict'
// Where FlowForge's files are: <root>/.flowforge/…, with <root> from `options.root`,
// FLOWFORGE_ROOT_OVERRIDE, or the nearest ancestor of the cwd holding .flowforge/.

const path = require('node:path')
const os = require('node:os')
const native = require('../native.js')
const { checkString, codedError } = require('./args.js')

const FILES = {
  tasks: path.join('.flowforge', 'tasks.json'),
  timeTracking: path.join('.flowforge', 'billing', 'time-tracking.json'),
  activeSessions: path.join('.flowforge', 'sessions', 'active-sessions.json'),
}

/** `options.file` if given, else the project's copy of `which` (a key of FILES). */
function projectFile(which, options = {}) {
  if (options.file !== undefined) return checkString('options.file', options.file)
  if (options.root !== undefined) checkString('options.root', options.root)
  return path.join(native.projectRoot(options.root), FILES[which])
}

/** FlowForge's timestamps: `date -u +%Y-%m-%dT%H:%M:%SZ`, no milliseconds. */
function isoSeconds(date = new Date()) {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z')
}

function currentUser() {
  return process.env.USER || os.userInfo().username
}

/** FlowForge's instance id: CLAUDE_INSTANCE_ID, else `user@host:pid:epochSeconds` of this process. */
const PROCESS_INSTANCE_ID = `${currentUser()}@${os.hostname()}:${process.pid}:${Math.floor(Date.now() / 1000)}`
function currentInstanceId() {
  return process.env.CLAUDE_INSTANCE_ID || PROCESS_INSTANCE_ID
}

/** `obj[key]` if it is obj's own property (never one inherited from Object.prototype, such as `__proto__` or `constructor`). */
function getOwn(obj, key) {
  return Object.hasOwn(obj, key) ? obj[key] : undefined
}

/** `obj[key] = value` as an own property, even for `__proto__` (which would otherwise set the prototype). */
function setOwn(obj, key, value) {
  Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true })
}

function isPlainObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** The file holds a JSON value of a shape we cannot update without reshaping it. */
function shapeError(filePath, what) {
  return codedError(
    Error,
    'EDATASHAPE',
    `${filePath}: ${what}. The file was left unchanged; fix its shape (or restore a backup) and retry.`,
  )
}

/** An operation that does not fit the current state (start an active timer, …). */
function stateError(message) {
  return codedError(Error, 'ESTATE', message)
}

module.exports = { FILES, projectFile, isoSeconds, currentUser, currentInstanceId, isPlainObject, getOwn, setOwn, shapeError, stateError }
