#!/usr/bin/env node
'use strict'
// npm run package: every tarball a user installs, in dist/.
//   dist/flowforge-lock-<version>.tgz              the main package (JS, types, CLI, and the
//                                                  Rust sources for the install step's fallback)
//   dist/flowforge-lock-<platform>-<version>.tgz   the prebuilt binary of this machine's
//                                                  platform (napi-rs layout: npm/<platform>/)
// Steps: sync every version to package.json's (scripts/sync-versions.js); build the addon
// for this platform straight into npm/<platform>/ (cargo's incremental build: seconds when
// `npm install` built it already; the checkout's own flowforge-lock.*.node and native.js are
// left alone); pack the platform package; stage the files `npm pack` would take for the main
// package in dist/.stage/, add `optionalDependencies` on every platform package at the same
// version to the staged package.json (napi-rs's pre-publish step; the checkout's package.json
// does not carry them, or `npm ci` would refuse its lock file), and pack that. No lifecycle
// scripts run. Prints the tarballs as JSON on the last line of stdout. Other platforms'
// packages are built on those platforms: docs/releasing.md.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { PACKAGE_ROOT, currentPlatform, declaredPlatforms, localBinaryName, rootPackage } = require('./platform.js')
const { sync, differences, optionalDependencies } = require('./sync-versions.js')

const DIST = path.join(PACKAGE_ROOT, 'dist')

function run(command, args, options) {
  const result = spawnSync(command, args, { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', ...options })
  if (result.error) throw result.error
  if (result.status !== 0) {
    process.stderr.write(result.stdout || '')
    throw new Error(`${command} ${args.join(' ')} failed (exit ${result.status ?? result.signal}) in ${options.cwd}`)
  }
  return result.stdout
}

/** `npm pack` of `dir` into dist/: `{ file, size }`. */
function pack(dir) {
  const out = run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', DIST], { cwd: dir })
  const [info] = JSON.parse(out)
  const file = path.join(DIST, info.filename)
  return { file, size: fs.statSync(file).size, entries: info.entryCount }
}

/**
 * Cargo.toml without the [[test]], [[bench]] and [[example]] targets whose source files are not
 * shipped: cargo refuses a manifest that names a missing target file, even for `cargo build`,
 * and the tarball leaves tests, benches and examples out.
 */
function pruneCargoTargets(text, shipped) {
  const out = []
  let block = null
  const flush = () => {
    if (!block) return
    // Blank and comment lines at the end belong to what follows: always keep them.
    let end = block.lines.length
    while (end > 1 && /^\s*(#.*)?$/.test(block.lines[end - 1])) end--
    const body = block.lines.slice(0, end).join('\n')
    const name = /^\s*name\s*=\s*"([^"]+)"/m.exec(body)?.[1]
    const explicit = /^\s*path\s*=\s*"([^"]+)"/m.exec(body)?.[1]
    const dir = { test: 'tests', bench: 'benches', example: 'examples' }[block.kind]
    const candidates = explicit ? [explicit] : [`${dir}/${name}.rs`, `${dir}/${name}/main.rs`]
    if (candidates.some(shipped)) out.push(...block.lines.slice(0, end))
    out.push(...block.lines.slice(end))
    block = null
  }
  for (const line of text.split('\n')) {
    const header = /^\s*\[\[(test|bench|example)\]\]\s*$/.exec(line)
    if (header || (block && /^\s*\[/.test(line))) flush()
    if (header) block = { kind: header[1], lines: [line] }
    else if (block) block.lines.push(line)
    else out.push(line)
  }
  flush()
  return out.join('\n')
}

/** A copy of what `npm pack` takes from the checkout, its package.json with optionalDependencies. */
function stageMain(pkg) {
  const stage = path.join(DIST, '.stage', pkg.name)
  fs.rmSync(path.join(DIST, '.stage'), { recursive: true, force: true })
  const listed = JSON.parse(run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: PACKAGE_ROOT }))[0].files
  for (const { path: file } of listed) {
    fs.mkdirSync(path.dirname(path.join(stage, file)), { recursive: true })
    fs.copyFileSync(path.join(PACKAGE_ROOT, file), path.join(stage, file))
  }
  const cargoToml = path.join(stage, 'Cargo.toml')
  const shipped = new Set(listed.map((f) => f.path))
  fs.writeFileSync(cargoToml, pruneCargoTargets(fs.readFileSync(cargoToml, 'utf8'), (file) => shipped.has(file.replace(/^\.\//, ''))))
  const staged = { ...pkg, optionalDependencies: optionalDependencies(pkg) }
  fs.writeFileSync(path.join(stage, 'package.json'), `${JSON.stringify(staged, null, 2)}\n`)
  return stage
}

function main() {
  sync()
  const left = differences()
  if (left.length) throw new Error(`versions still differ: ${JSON.stringify(left)}`)
  const pkg = rootPackage()
  const here = currentPlatform()
  const platform = declaredPlatforms(pkg).find((p) => p.name === here.name)
  if (!platform) throw new Error(`this machine (${here.name}, ${here.triple}) is not in package.json napi.targets`)

  const platformDir = path.join(PACKAGE_ROOT, 'npm', platform.name)
  const binary = path.join(platformDir, localBinaryName(platform.name))
  fs.rmSync(binary, { force: true })
  process.stderr.write(`building ${localBinaryName(platform.name)} (release) into npm/${platform.name}/\n`)
  const napi = path.join(PACKAGE_ROOT, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
  run(process.execPath, [napi, 'build', '--platform', '--release', '--no-js', '--output-dir', platformDir], {
    cwd: PACKAGE_ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  if (!fs.existsSync(binary)) throw new Error(`napi build did not write ${binary}`)
  // --no-js also skips the type definitions, but check nothing else landed next to the binary.
  for (const name of fs.readdirSync(platformDir)) {
    if (!['package.json', 'README.md', localBinaryName(platform.name)].includes(name)) fs.rmSync(path.join(platformDir, name), { recursive: true })
  }

  fs.mkdirSync(DIST, { recursive: true })
  for (const old of fs.readdirSync(DIST)) if (old.endsWith('.tgz')) fs.rmSync(path.join(DIST, old))
  const native = pack(platformDir)
  const main = pack(stageMain(pkg))
  fs.rmSync(path.join(DIST, '.stage'), { recursive: true, force: true })
  const kib = (n) => `${(n / 1024).toFixed(1)} KiB`
  process.stderr.write(`\n${path.relative(PACKAGE_ROOT, main.file)}  ${kib(main.size)}, ${main.entries} files\n`)
  process.stderr.write(`${path.relative(PACKAGE_ROOT, native.file)}  ${kib(native.size)}, ${native.entries} files\n`)
  process.stdout.write(`${JSON.stringify({ version: pkg.version, platform: platform.name, main, native })}\n`)
}

if (require.main === module) {
  try {
    main()
  } catch (err) {
    process.stderr.write(`npm run package: ${err.message}\n`)
    process.exit(1)
  }
}

module.exports = { pruneCargoTargets }
