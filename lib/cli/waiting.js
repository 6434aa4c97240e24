'use strict'
// The line `exec` and `update` show while they wait for a lock, on a terminal only: after one
// second, one line redrawn in place with the file, its holder (user, host, pid), how long it has
// held, and the time left before the timeout; erased when the wait ends. Scripts (stderr not a
// TTY) and --quiet see nothing.

const native = require('../../native.js')
const { duration } = require('./format.js')

const SHOW_AFTER_MS = 1000
const REDRAW_MS = 250

function holderOf(file) {
  let info = null
  try {
    info = native.getLockInfo(file, native.STALE_THRESHOLD)
  } catch {
    // The line is a courtesy: a lock record it cannot read must not fail the command.
  }
  if (info === null || info.state !== 'held') return 'its holder'
  const who = [info.username, info.hostname].filter(Boolean).join('@') || 'an unknown user'
  const pid = info.pid === null ? '' : ` pid ${info.pid}`
  const age = info.heldForMs === null ? '' : ` for ${duration(info.heldForMs)}`
  return `${who}${pid}${age}`
}

/** Starts watching a wait for `file`'s lock; call the returned function when the wait is over. */
function showWaiting(file, { timeout, quiet }) {
  const stream = process.stderr
  if (quiet || !stream.isTTY) return () => {}
  const started = performance.now()
  let shown = false
  let interval
  const draw = () => {
    const waited = performance.now() - started
    const left = Number.isFinite(timeout) ? `; ${duration(Math.max(0, timeout - waited))} left` : ''
    stream.write(`\r\x1b[Kflowforge-lock: waiting for ${file}: held by ${holderOf(file)}; waited ${duration(waited)}${left} (Ctrl-C to give up)`)
    shown = true
  }
  const first = setTimeout(() => {
    draw()
    interval = setInterval(draw, REDRAW_MS)
    interval.unref()
  }, SHOW_AFTER_MS)
  first.unref()
  return () => {
    clearTimeout(first)
    clearInterval(interval)
    if (shown) stream.write('\r\x1b[K')
  }
}

module.exports = { showWaiting }
