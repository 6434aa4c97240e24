'use strict'
// The bench chart: per scenario, how many times flowforge-lock beats each peer, and how many
// times the raw flock loop beats flowforge-lock, as bars on a log scale. Plain SVG, no deps.

const COLOURS = { 'proper-lockfile': '#d95f02', lockfile: '#7570b3', flock: '#1b9e77' }
const LABELS = { 'proper-lockfile': 'flowforge-lock vs proper-lockfile', lockfile: 'flowforge-lock vs lockfile', flock: 'flock limit vs flowforge-lock' }

function ratios(results) {
  const ff = 'flowforge-lock'
  const lower = (values) => ({
    'proper-lockfile': values['proper-lockfile'] / values[ff],
    lockfile: values.lockfile / values[ff],
    flock: values.flock === undefined ? undefined : values[ff] / values.flock,
  })
  const higher = (values) => ({
    'proper-lockfile': values[ff] / values['proper-lockfile'],
    lockfile: values[ff] / values.lockfile,
    flock: values.flock === undefined ? undefined : values.flock / values[ff],
  })
  const pick = (source, key) => Object.fromEntries(Object.entries(source).map(([lib, r]) => [lib, r[key]]))
  return [
    ['A uncontended, p50', lower(pick(results.A, 'p50Us'))],
    ['B P=8, updates/s', higher(pick(results.B[8], 'updatesPerSec'))],
    ['C handoff, p50', lower(pick(results.C, 'p50Us'))],
    ['D durable upserts/s', higher(pick(results.D, 'updatesPerSec'))],
  ]
}

function renderChart(results) {
  const groups = ratios(results)
  const series = Object.keys(COLOURS)
  const barH = 16
  const groupH = series.length * (barH + 4) + 18
  const left = 170
  const width = 800
  const plotW = width - left - 70
  const top = 40
  const height = top + groups.length * groupH + 50
  const max = Math.max(10, ...groups.flatMap(([, r]) => Object.values(r).filter(Number.isFinite)))
  const decades = Math.ceil(Math.log10(max))
  const x = (ratio) => left + (Math.log10(Math.max(ratio, 1)) / decades) * plotW
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">flowforge-lock: times better than each peer, and the flock limit's lead (log scale)</text>`,
  ]
  for (let d = 0; d <= decades; d++) {
    const gx = left + (d / decades) * plotW
    parts.push(`<line x1="${gx}" y1="${top}" x2="${gx}" y2="${height - 40}" stroke="#ddd"/>`)
    parts.push(`<text x="${gx}" y="${height - 26}" text-anchor="middle">${10 ** d}x</text>`)
  }
  groups.forEach(([name, r], g) => {
    const gy = top + g * groupH
    parts.push(`<text x="${left - 8}" y="${gy + groupH / 2}" text-anchor="end" font-weight="bold">${name}</text>`)
    series.forEach((s, i) => {
      if (!Number.isFinite(r[s])) return
      const y = gy + 6 + i * (barH + 4)
      parts.push(`<rect x="${left}" y="${y}" width="${Math.max(1, x(r[s]) - left)}" height="${barH}" fill="${COLOURS[s]}"/>`)
      parts.push(`<text x="${x(r[s]) + 4}" y="${y + 12}">${r[s] >= 10 ? Math.round(r[s]) : r[s].toFixed(1)}x</text>`)
    })
  })
  let lx = 20
  for (const s of series) {
    parts.push(`<rect x="${lx}" y="${height - 16}" width="10" height="10" fill="${COLOURS[s]}"/>`)
    parts.push(`<text x="${lx + 14}" y="${height - 7}">${LABELS[s]}</text>`)
    lx += 14 + LABELS[s].length * 7 + 24 // about 7 px a character at 12 px
  }
  parts.push('</svg>')
  return `${parts.join('\n')}\n`
}

module.exports = { renderChart }
