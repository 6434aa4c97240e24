'use strict'
// flowforge-lock dead-letters list | show ID | replay [ID] | drop ID: the kept operations of a
// project (lib/dead-letters.js), for people and scripts (--json).

const { listDeadLetters, showDeadLetter, dropDeadLetter, replayDeadLetters } = require('../dead-letters.js')
const { table } = require('../table.js')
const { paint } = require('./format.js')
const { EXIT } = require('./exit-codes.js')

const print = (value) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`)

function usageError(message) {
  const err = new Error(message)
  err.code = 'ERR_INVALID_ARG_VALUE'
  return err
}

async function deadLetters([action, id, ...extra], { json, root, timeout }) {
  const needsId = action === 'show' || action === 'drop'
  if (extra.length > 0 || (needsId && id === undefined) || (action === 'list' && id !== undefined)) {
    throw usageError('dead-letters takes list, show ID, replay [ID] or drop ID')
  }
  switch (action) {
    case 'list': {
      const letters = listDeadLetters({ root })
      if (json) {
        print(letters)
        return EXIT.OK
      }
      if (letters.length === 0) {
        process.stdout.write('No dead letters.\n')
        return EXIT.OK
      }
      const rows = letters.map((l) => [l.id, l.operation, l.file, l.error.code ?? '-', String(l.attempts), l.lastFailedAt, l.inDoubt ? 'in doubt' : ''])
      process.stdout.write(`${table(['ID', 'OPERATION', 'FILE', 'ERROR', 'ATTEMPTS', 'LAST FAILED', ''], rows)}\n`)
      return EXIT.OK
    }
    case 'show':
      print(showDeadLetter(id, { root }))
      return EXIT.OK
    case 'drop': {
      const letter = await dropDeadLetter(id, { root })
      if (json) print(letter)
      else process.stdout.write(`Dropped ${id} (${letter.operation} on ${letter.file}); it was not applied.\n`)
      return EXIT.OK
    }
    case 'replay': {
      const outcome = await replayDeadLetters({ root, id, timeout })
      if (json) print(outcome)
      else {
        for (const r of outcome.results) {
          const colour = r.status === 'failed' || r.status === 'in-doubt' || r.status === 'skipped' ? 'red' : 'green'
          const why = r.error ? `: ${r.error.code} ${r.error.message}` : r.reason ? `: ${r.reason}` : ''
          process.stdout.write(`${paint(colour, r.status.padEnd(15))} ${r.id}${why}\n`)
        }
        process.stdout.write(`${outcome.replayed} replayed, ${outcome.failed} failed, ${outcome.skipped} skipped.\n`)
      }
      return outcome.failed + outcome.skipped > 0 ? EXIT.TEMPFAIL : EXIT.OK
    }
    default:
      throw usageError(`dead-letters takes list, show ID, replay [ID] or drop ID, not '${action ?? ''}'`)
  }
}

module.exports = { deadLetters }
