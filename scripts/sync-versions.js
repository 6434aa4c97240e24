#!/usr/bin/env node
'use strict'
// One version for every package: the root package.json's `version`. This writes it into each
// npm/<platform>/package.json and into the root's `optionalDependencies` (one entry per
// platform in `napi.targets`, at exactly that version). `npm version <v>` runs it (the
// `version` script); `npm run package` runs it before packing. `--check` changes nothing and
// exits 1 listing what differs (the consumer test runs the same comparison).

const fs = require('node:fs')
const path = require('node:path')
const { PACKAGE_ROOT, declaredPlatforms, rootPackage } = require('./platform.js')

/** What should change to make every version the root's: `[{ file, field, is, should }]`. */
function differences() {
  const pkg = rootPackage()
  const out = []
  const platforms = declaredPlatforms(pkg)
  const wanted = Object.fromEntries(platforms.map((p) => [p.packageName, pkg.version]))
  const have = pkg.optionalDependencies || {}
  if (JSON.stringify(have) !== JSON.stringify(wanted)) {
    out.push({ file: 'package.json', field: 'optionalDependencies', is: have, should: wanted })
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

/** Rewrites the files so that `differences()` is empty (platform dirs must exist already). */
function sync() {
  const pkg = rootPackage()
  const platforms = declaredPlatforms(pkg)
  pkg.optionalDependencies = Object.fromEntries(platforms.map((p) => [p.packageName, pkg.version]))
  fs.writeFileSync(path.join(PACKAGE_ROOT, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`)
  for (const p of platforms) {
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

module.exports = { differences, sync }
