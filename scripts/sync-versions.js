#!/usr/bin/env node
'use strict'
// One version for every package: the root package.json's `version`. This writes it into each
// npm/<platform>/package.json. The main package's `optionalDependencies` (one entry per platform
// in `napi.targets`, at exactly that version) are written by `npm run package` into the
// package.json it packs, as napi-rs's pre-publish step does: in the checkout they would name
// packages the registry does not have yet, and `npm ci` would refuse the lock file.
// `npm version <v>` runs this (the `version` script); `npm run package` runs it before packing.
// `--check` changes nothing and exits 1 listing what differs (the consumer test checks the same).

const fs = require('node:fs')
const path = require('node:path')
const { PACKAGE_ROOT, declaredPlatforms, rootPackage } = require('./platform.js')

/** The main package's optionalDependencies: every declared platform package at the root version. */
function optionalDependencies(pkg = rootPackage()) {
  return Object.fromEntries(declaredPlatforms(pkg).map((p) => [p.packageName, pkg.version]))
}

/** What should change to make every version the root's: `[{ file, field, is, should }]`. */
function differences() {
  const pkg = rootPackage()
  const out = []
  const platforms = declaredPlatforms(pkg)
  if (pkg.optionalDependencies !== undefined) {
    out.push({ file: 'package.json', field: 'optionalDependencies', is: pkg.optionalDependencies, should: '(absent: npm run package adds them)' })
  }
  const dirs = fs.readdirSync(path.join(PACKAGE_ROOT, 'npm'))
  for (const p of platforms) {
    if (!dirs.includes(p.name)) out.push({ file: `npm/${p.name}/package.json`, field: '(file)', is: 'missing', should: 'present' })
  }
  for (const dir of dirs) {
    const file = `npm/${dir}/package.json`
    const platform = platforms.find((p) => p.name === dir)
    if (!platform) {
      out.push({ file, field: '(file)', is: 'present', should: `absent: ${dir} is not in package.json napi.targets` })
      continue
    }
    const sub = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, file), 'utf8'))
    if (sub.name !== platform.packageName) out.push({ file, field: 'name', is: sub.name, should: platform.packageName })
    if (sub.version !== pkg.version) out.push({ file, field: 'version', is: sub.version, should: pkg.version })
  }
  return out
}

/** Rewrites npm/<platform>/package.json so that `differences()` is empty (the dirs must exist). */
function sync() {
  const pkg = rootPackage()
  for (const p of declaredPlatforms(pkg)) {
    const file = path.join(PACKAGE_ROOT, 'npm', p.name, 'package.json')
    const sub = JSON.parse(fs.readFileSync(file, 'utf8'))
    sub.version = pkg.version
    fs.writeFileSync(file, `${JSON.stringify(sub, null, 2)}\n`)
  }
}

if (require.main === module) {
  if (!process.argv.includes('--check')) sync()
  const left = differences()
  for (const d of left) console.error(`${d.file} ${d.field}: is ${JSON.stringify(d.is)}, should be ${JSON.stringify(d.should)}`)
  if (left.length) process.exit(1)
  console.log(`every package at ${rootPackage().version}`)
}

module.exports = { differences, sync, optionalDependencies }
