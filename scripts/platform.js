'use strict'
// Which napi-rs platform this machine is, and which platforms the package declares. Used by
// the install step (scripts/install.js, shipped) and by `npm run package` (scripts/package.js).
// Platform names follow napi-rs: the binary is `flowforge-lock.<name>.node`, its package
// `flowforge-lock-<name>`.

const fs = require('node:fs')
const path = require('node:path')

const PACKAGE_ROOT = path.resolve(__dirname, '..')

/** Rust target triple -> napi-rs platform name, for the targets this package may declare. */
const TRIPLE_TO_NAME = {
  'x86_64-unknown-linux-gnu': 'linux-x64-gnu',
  'aarch64-unknown-linux-gnu': 'linux-arm64-gnu',
  'x86_64-unknown-linux-musl': 'linux-x64-musl',
  'aarch64-unknown-linux-musl': 'linux-arm64-musl',
  'x86_64-apple-darwin': 'darwin-x64',
  'aarch64-apple-darwin': 'darwin-arm64',
  'x86_64-unknown-freebsd': 'freebsd-x64',
}

const ARCH_TO_RUST = { x64: 'x86_64', arm64: 'aarch64', ia32: 'i686', arm: 'armv7', riscv64: 'riscv64gc', s390x: 's390x', ppc64: 'powerpc64le', loong64: 'loongarch64' }

function isMusl() {
  if (process.platform !== 'linux') return false
  if (process.report) process.report.excludeNetwork = true
  const report = process.report && typeof process.report.getReport === 'function' ? process.report.getReport() : null
  return !(report && report.header && report.header.glibcVersionRuntime)
}

/** This machine: `{ name: 'linux-x64-gnu', triple: 'x86_64-unknown-linux-gnu' }`. */
function currentPlatform() {
  const arch = ARCH_TO_RUST[process.arch] || process.arch
  let name
  let triple
  if (process.platform === 'linux') {
    const libc = isMusl() ? 'musl' : 'gnu'
    name = `linux-${process.arch}-${libc}`
    triple = `${arch}-unknown-linux-${libc}`
  } else if (process.platform === 'darwin') {
    name = `darwin-${process.arch}`
    triple = `${arch}-apple-darwin`
  } else if (process.platform === 'win32') {
    name = `win32-${process.arch}-msvc`
    triple = `${arch}-pc-windows-msvc`
  } else {
    name = `${process.platform}-${process.arch}`
    triple = `${arch}-unknown-${process.platform}`
  }
  return { name, triple }
}

function rootPackage() {
  return JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8'))
}

/** The platforms package.json declares (`napi.targets`): `[{ name, triple, packageName }]`. */
function declaredPlatforms(pkg = rootPackage()) {
  return pkg.napi.targets.map((triple) => {
    const name = TRIPLE_TO_NAME[triple]
    if (!name) throw new Error(`package.json napi.targets: no platform name known for ${triple} (add it to scripts/platform.js)`)
    return { name, triple, packageName: `${pkg.name}-${name}` }
  })
}

/** The file native.js loads from the package directory itself, before the platform package. */
function localBinaryName(name) {
  return `flowforge-lock.${name}.node`
}

module.exports = { PACKAGE_ROOT, currentPlatform, declaredPlatforms, localBinaryName, rootPackage }
