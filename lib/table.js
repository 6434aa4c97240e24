'use strict'
// The one table printer: `flowforge-lock status`, `npm run bench` and `npm run torture` all
// print their columns through it. Hand-written rather than cli-table3 on purpose: the package
// has no runtime dependencies, and a drop-in lock library should not gain its first (plus the
// string-width/colour packages cli-table3 pulls in) for left-aligned columns of ASCII-width
// text. Widths are counted in UTF-16 units, so a cell of double-width characters (CJK file
// names) would push its row's later columns right; nothing else is affected.

/**
 * `headers` and `rows` hold strings. Options: `separator` between columns (two spaces), `rule`
 * (a dashed line under the headers, shaped by the separator), `style(text, row, column)` to
 * decorate a padded cell (`row` is null for the headers), e.g. with colours: padding happens
 * before styling, so escape codes never count towards a width. Lines carry no trailing blanks.
 */
function table(headers, rows, { separator = '  ', rule = false, style = (text) => text } = {}) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells, row) =>
    cells
      .map((cell, i) => style(i === cells.length - 1 ? cell : cell.padEnd(widths[i]), row, i))
      .join(separator)
      .trimEnd()
  const lines = [line(headers, null)]
  if (rule) lines.push(widths.map((w) => '-'.repeat(w)).join(separator.replace(/ /g, '-')))
  for (const row of rows) lines.push(line(row, row))
  return lines.join('\n')
}

module.exports = { table }
