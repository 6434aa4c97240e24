'use strict'
// Terminal output helpers: durations, colours (only on a TTY, never with NO_COLOR). Tables
// are lib/table.js's, shared with the bench and torture reports.

const useColour = process.stdout.isTTY && !process.env.NO_COLOR && process.env.TERM !== 'dumb'
const COLOURS = { red: 31, green: 32, yellow: 33, dim: 2, bold: 1 }

function paint(colour, text) {
  return useColour ? `\x1b[${COLOURS[colour]}m${text}\x1b[0m` : text
}

function duration(ms) {
  if (ms === null || ms === undefined) return '-'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`
  if (ms < 7200000) return `${Math.round(ms / 60000)} min`
  return `${(ms / 3600000).toFixed(1)} h`
}

module.exports = { paint, duration }
