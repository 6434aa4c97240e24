'use strict'
// index.d.ts and the subpath .d.ts files match what the modules export, and type-check a use
// of every public call under `tsc --strict`.
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { PACKAGE_ROOT } = require('./helpers')

const declared = (dts) => {
  const text = fs.readFileSync(path.join(PACKAGE_ROOT, dts), 'utf8')
  return [...text.matchAll(/export (?:declare )?(?:function|const|class) (\w+)/g)].map((m) => m[1])
}

test.each([
  ['file-lock', ['file-lock.d.ts', 'lib/update.d.ts']],
  ['file-lock-integration', ['file-lock-integration.d.ts', 'lib/update.d.ts']],
])('every export of %s is declared, and nothing more', (mod, files) => {
  const runtime = Object.keys(require(path.join(PACKAGE_ROOT, mod))).sort()
  const types = [...new Set(files.flatMap(declared))].sort()
  expect(types).toEqual(runtime)
})

test('every member of FileLockManager is declared in FileLockManager.d.ts, and nothing more', () => {
  const text = fs.readFileSync(path.join(PACKAGE_ROOT, 'FileLockManager.d.ts'), 'utf8')
  const body = text.slice(text.indexOf('declare class FileLockManager {'), text.indexOf('\n}\n'))
  const declared = (isStatic) => [...body.matchAll(/^  (static )?(\w+)(?=[(<:])/gm)].filter((m) => Boolean(m[1]) === isStatic).map((m) => m[2]).sort()
  const FileLockManager = require(path.join(PACKAGE_ROOT, 'FileLockManager'))
  const manager = new FileLockManager()
  const members = [...Object.getOwnPropertyNames(FileLockManager.prototype).filter((n) => n !== 'constructor'), ...Object.keys(manager)]
  expect(declared(false)).toEqual(['constructor', ...members].sort())
  expect(declared(true)).toEqual(Object.keys(FileLockManager).sort())
})

test('a use of every public call type-checks with tsc --strict', () => {
  const tsc = path.join(PACKAGE_ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const run = spawnSync(
    process.execPath,
    [tsc, '--noEmit', '--strict', '--esModuleInterop', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', path.join(__dirname, 'types-usage.ts')],
    { encoding: 'utf8', cwd: PACKAGE_ROOT },
  )
  expect(run.stdout + run.stderr).toBe('')
  expect(run.status).toBe(0)
}, 60000)
