'use strict'
// Lock-free reads of protected JSON files, and their cache (docs/reads.md).
//
// A read never takes a lock and never waits behind a writer: every commit of this library
// replaces the file by rename, so one descriptor (opened, fstat'ed and read by the core, see
// src/versions.rs) always holds one whole committed document, and the version sidecar says
// which version it is.
//
// The cache: per file, the last document read, keyed by the inode it came from (device, inode,
// size, mtime in ns; every commit makes a new inode) and its version. A re-read costs one
// `stat` when nothing changed, and none at all within `maxAgeMs` of the last check (a bounded-
// stale answer, off by default). Cached documents are deeply frozen, not copied: a hit on a
// 1 MiB file is then O(1), and a caller cannot corrupt what the next caller gets (writes to a
// frozen object throw in strict mode, and are ignored otherwise). `{ cache: false }` gives a
// fresh, mutable parse. Trade-off, said plainly: a stat sees a change only if the key changes.
// Within one tick of the clock that stamps mtime it may not: a freed inode number is handed out
// again, so commits k and k+2 of one size within a tick can share a key (where mtime is the
// kernel's coarse clock: ext2/3, or any file system before Linux 6.13), and a foreign program
// rewriting the file in place with the same size keeps it. So a document is only cached once
// its mtime is older than a tick (git's "racily clean" rule): RACY_MS, or WHOLE_SECOND_RACY_MS
// on a file system that keeps whole seconds. A file read within that window of its last change
// is read again in full by the next read.

const path = require('node:path')
const fs = require('node:fs')
const native = require('../native.js')
const { checkString, checkObject, checkMs, codedError } = require('./args.js')

/** How old a file's mtime must be before a stat can be trusted to see its next change. */
const RACY_MS = 100
/** The same where mtimes are whole seconds (FAT keeps two). */
const WHOLE_SECOND_RACY_MS = 2100
/** Files kept in the cache (least recently read are dropped first). */
const MAX_ENTRIES = 128

/** Resolved path -> { key, data, version, foreignWrite, checkedAt }. */
const cache = new Map()

function readOptions(options) {
  const opts = checkObject('options', options)
  if (opts.cache !== undefined && typeof opts.cache !== 'boolean') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "options.cache" argument must be of type boolean. Received ${typeof opts.cache}`)
  }
  return { maxAgeMs: checkMs('options.maxAgeMs', opts.maxAgeMs, 0), cache: opts.cache !== false }
}

function deepFreeze(value) {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const key of Object.keys(value)) deepFreeze(value[key])
  }
  return value
}

/** The cache key of what is at `file` now (null: missing), from a stat that follows symlinks. */
function statKey(file) {
  const st = fs.statSync(file, { bigint: true, throwIfNoEntry: false })
  return st === undefined ? null : `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`
}

function parse(file, text) {
  if (text === null) return null
  try {
    return JSON.parse(text)
  } catch (err) {
    native.throwJsonParseError(file, text, err.message)
  }
}

/**
 * One full read through the core, through one descriptor: the document and its key, and with
 * `withVersion` its version (the sidecar read and the content hashed), which a cached entry
 * keeps for later versioned reads; a read that neither needs a version nor is cached skips that
 * work, and costs what readFileSync does. A garbled sidecar fails versioned reads
 * (EVERSIONCORRUPT) but not plain ones.
 */
function readFresh(file, needVersion, withVersion = needVersion) {
  let raw
  try {
    raw = native.readVersioned(file, withVersion)
  } catch (err) {
    if (err.code !== 'EVERSIONCORRUPT' || needVersion) throw err
    raw = native.readVersioned(file, false)
  }
  // The core leaves out what it does not have (no file: no text and no key; no version asked).
  return { key: raw.key ?? null, data: parse(file, raw.text ?? null), version: raw.version ?? null, foreignWrite: raw.foreignWrite }
}

/** Whether a stat will see the next change of this content (see RACY_MS). */
function trustworthy(entry, now) {
  if (entry.key === null) return true
  const mtimeNs = BigInt(entry.key.split(':')[3])
  const racyMs = mtimeNs % 1000000000n === 0n ? WHOLE_SECOND_RACY_MS : RACY_MS
  return BigInt(now) * 1000000n - mtimeNs > BigInt(racyMs) * 1000000n
}

function read(filePath, options, needVersion) {
  checkString('filePath', filePath)
  const opts = readOptions(options)
  if (!opts.cache) return readFresh(filePath, needVersion)
  const file = path.resolve(filePath)
  const now = performance.now()
  let entry = cache.get(file)
  if (entry !== undefined && (!needVersion || entry.version !== null)) {
    if (opts.maxAgeMs > 0 && now - entry.checkedAt <= opts.maxAgeMs) return entry
    if (statKey(file) === entry.key) {
      entry.checkedAt = now
      cache.delete(file)
      cache.set(file, entry)
      return entry
    }
  }
  cache.delete(file)
  // The rule is judged by when the read began: a write in place that kept the identity during a
  // read that ended late (a paused process, a long parse) must not be hidden by a cached copy.
  const readBegan = Date.now()
  entry = readFresh(file, needVersion, true)
  deepFreeze(entry.data)
  entry.checkedAt = now
  if (trustworthy(entry, readBegan)) {
    cache.set(file, entry)
    if (cache.size > MAX_ENTRIES) cache.delete(cache.keys().next().value)
  }
  return entry
}

function versioned(entry) {
  return Object.freeze({ data: entry.data, version: entry.version, foreignWrite: entry.foreignWrite })
}

/**
 * The parsed content of `filePath` (null when it does not exist), without a lock: a whole
 * committed document. Options: `{ maxAgeMs, cache }` (see above).
 */
async function readJSON(filePath, options) {
  return read(filePath, options, false).data
}

function readJSONSync(filePath, options) {
  return read(filePath, options, false).data
}

/** `{ data, version, foreignWrite }`: the document and its version (see docs/reads.md). */
async function readJSONVersioned(filePath, options) {
  return versioned(read(filePath, options, true))
}

module.exports = { readJSON, readJSONSync, readJSONVersioned }
