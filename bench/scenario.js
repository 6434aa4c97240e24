'use strict'
// The frame both lock-server benches (etcd.js, redis.js) put every scenario in: a project of its
// own in the temp dir holding the one counter file its workers share, and a timed start of the
// workers together. What the workers do and report stays each bench's own.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

/** A fresh project in the temp dir (named `prefix`…) holding the scenario's counter file,
 * `counter-<mode>-<procs>.json` = {"count": 0}. The caller removes `root`. */
function counterProject(prefix, mode, procs) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  fs.mkdirSync(path.join(root, '.flowforge'))
  const file = path.join(root, `counter-${mode}-${procs}.json`)
  fs.writeFileSync(file, JSON.stringify({ count: 0 }))
  return { root, file }
}

/** Once every worker is `ready`, sends each `go` at once; resolves with the seconds from then
 * until every one is `done`. */
async function timeTogether(workers) {
  await Promise.all(workers.map((w) => w.ready))
  const started = process.hrtime.bigint()
  for (const w of workers) w.child.stdin.write('go\n')
  await Promise.all(workers.map((w) => w.done))
  return Number(process.hrtime.bigint() - started) / 1e9
}

module.exports = { counterProject, timeTogether }
