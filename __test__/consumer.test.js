'use strict'
// The package as a FlowForge project gets it: `npm run package`, then the tarballs installed
// into a fresh temp project (`.flowforge/tasks.json` present) with cargo and rustc absent
// from PATH, and used the ways a project uses it: require and import of every subpath,
// TypeScript under `strict`, the CLI through npx, two processes updating tasks.json. Then the
// source fallback both ways: the main tarball alone builds with cargo, and fails the install
// with one clear message without it. Plus the package's layout: one version everywhere, and
// a tarball without tests, benchmarks, torture, fuzz corpus or build output.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn, spawnSync } = require('node:child_process')
const { PACKAGE_ROOT } = require('./helpers')
const { currentPlatform, declaredPlatforms, localBinaryName } = require('../scripts/platform.js')

const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8'))
const HERE = currentPlatform()
const PLATFORMS = declaredPlatforms(pkg)
/** `flowforge-lock`, `flowforge-lock/file-lock`, …: every entry of package.json `exports`. */
const SPECIFIERS = Object.keys(pkg.exports)
  .filter((key) => key !== './package.json')
  .map((key) => (key === '.' ? pkg.name : `${pkg.name}/${key.slice(2)}`))
const TSC = path.join(PACKAGE_ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
// The source build uses the checkout's target dir, so the dependencies `cargo test --release`
// compiled (npm test runs it first) are reused; the crate itself is compiled from the installed
// tarball's sources, whose path is new every run (the test checks cargo's "Compiling" line).
// Nothing reads what it leaves in target/release/: napi build writes target/<triple>/release/.
const FALLBACK_TARGET_DIR = path.join(PACKAGE_ROOT, 'target')

const isExecutable = (file) => {
  try {
    fs.accessSync(file, fs.constants.X_OK)
    return fs.statSync(file).isFile()
  } catch {
    return false
  }
}
/** PATH without any directory that holds cargo or rustc. */
const NO_RUST_PATH = process.env.PATH.split(path.delimiter)
  .filter((dir) => dir && !['cargo', 'rustc'].some((tool) => isExecutable(path.join(dir, tool))))
  .join(path.delimiter)

function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  fs.chmodSync(dir, 0o755)
  return dir
}

/** A fresh FlowForge project: package.json and .flowforge/tasks.json. */
function flowforgeProject() {
  const dir = tempDir('ffl-consumer-')
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify({ name: 'my-flowforge-project', version: '1.0.0', private: true }, null, 2)}\n`)
  fs.mkdirSync(path.join(dir, '.flowforge'))
  fs.writeFileSync(path.join(dir, '.flowforge', 'tasks.json'), `${JSON.stringify({ version: '2.0.0', tasks: [], metadata: {} }, null, 2)}\n`)
  return dir
}

function run(command, args, { cwd, env = {}, input } = {}) {
  const result = spawnSync(command, args, { cwd, input, encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 64 << 20 })
  return { ...result, output: `${result.stdout}${result.stderr}` }
}

const npmInstall = (cwd, tarballs, env) => run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts', ...tarballs], { cwd, env })

/** Runs `node -e script` (or an .mjs file) in the project, without Rust on PATH. */
const nodeIn = (cwd, args) => run(process.execPath, args, { cwd, env: { PATH: NO_RUST_PATH } })

/** What the checkout's own modules export, per specifier (the installed copy must match). */
function exportedNames(specifier) {
  const target = pkg.exports[specifier === pkg.name ? '.' : `./${specifier.slice(pkg.name.length + 1)}`].default
  const got = run(process.execPath, ['-e', `console.log(JSON.stringify(Object.keys(require(${JSON.stringify(path.join(PACKAGE_ROOT, target))})).sort()))`])
  if (got.status !== 0) throw new Error(got.output)
  return JSON.parse(got.stdout)
}

let packed
beforeAll(() => {
  const made = run('npm', ['run', '--silent', 'package'], { cwd: PACKAGE_ROOT })
  if (made.status !== 0) throw new Error(`npm run package failed:\n${made.output}`)
  packed = JSON.parse(made.stdout.trim().split('\n').pop())
}, 300000)

describe('npm run package', () => {
  test('writes the main tarball and this platform package into dist/, at the package version', () => {
    expect(packed.platform).toBe(HERE.name)
    expect(packed.main.file).toBe(path.join(PACKAGE_ROOT, 'dist', `${pkg.name}-${pkg.version}.tgz`))
    expect(packed.native.file).toBe(path.join(PACKAGE_ROOT, 'dist', `${pkg.name}-${HERE.name}-${pkg.version}.tgz`))
    const listed = run('tar', ['tzf', packed.native.file]).stdout.split('\n').filter(Boolean).sort()
    expect(listed).toEqual(['package/README.md', `package/${localBinaryName(HERE.name)}`, 'package/package.json'])
  })

  test('one version for every package: npm/*/package.json and optionalDependencies follow package.json', () => {
    const { differences } = require('../scripts/sync-versions.js')
    expect(differences()).toEqual([])
    const packedJson = (tarball) => JSON.parse(run('tar', ['xzOf', tarball, 'package/package.json']).stdout)
    const main = packedJson(packed.main.file)
    expect(main.version).toBe(pkg.version)
    expect(main.optionalDependencies).toEqual(Object.fromEntries(PLATFORMS.map((p) => [p.packageName, pkg.version])))
    expect(packedJson(packed.native.file)).toMatchObject({ name: `${pkg.name}-${HERE.name}`, version: pkg.version })
    // Everything else of the packed package.json is the checkout's.
    expect({ ...main, optionalDependencies: undefined }).toEqual({ ...pkg, optionalDependencies: undefined })
    expect(fs.readdirSync(path.join(PACKAGE_ROOT, 'npm')).sort()).toEqual(PLATFORMS.map((p) => p.name).sort())
    // native.js is generated by `napi build` from package.json: it must name the same version.
    const inLoader = new Set([...fs.readFileSync(path.join(PACKAGE_ROOT, 'native.js'), 'utf8').matchAll(/expected ([^ ]+) but got/g)].map((m) => m[1]))
    expect([...inLoader]).toEqual([pkg.version])
  })

  test('declares no platform that nothing compiles for (no Windows)', () => {
    expect(pkg.napi.targets.filter((t) => /windows|win32/.test(t))).toEqual([])
    expect(fs.readdirSync(path.join(PACKAGE_ROOT, 'npm')).filter((d) => d.startsWith('win32'))).toEqual([])
  })

  test('the main tarball has no test, bench, torture, fuzz, example or target file, and has what a source build needs', () => {
    const dry = run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: PACKAGE_ROOT })
    expect(dry.status).toBe(0)
    const files = JSON.parse(dry.stdout)[0].files.map((f) => f.path)
    const unwanted = files.filter((f) => /(^|\/)(__test__|test|tests|bench|torture|fuzz|examples|target|dist)\/|\.test\.js$|fuzz_tests\.rs$|test_support\.rs$|\.node$|\.tgz$/.test(f))
    expect(unwanted).toEqual([])
    for (const needed of ['Cargo.toml', 'Cargo.lock', 'build.rs', 'src/lib.rs', 'scripts/install.js', 'native.js', 'bin/flowforge-lock.js']) {
      expect(files).toContain(needed)
    }
    for (const entry of Object.values(pkg.exports).filter((e) => typeof e === 'object')) {
      expect(files).toContain(entry.default.replace(/^\.\//, ''))
      expect(files).toContain(entry.types.replace(/^\.\//, ''))
    }
  })

  test("the main tarball's Cargo.toml is one cargo accepts without the files left out (tests, benches, examples)", () => {
    const dir = tempDir('ffl-unpacked-')
    expect(run('tar', ['xzf', packed.main.file, '-C', dir]).status).toBe(0)
    const got = run('cargo', ['metadata', '--no-deps', '--offline', '--format-version', '1'], { cwd: path.join(dir, 'package') })
    expect(got.stderr).toBe('')
    const [crate] = JSON.parse(got.stdout).packages
    const missing = crate.targets.map((t) => t.src_path).filter((src) => !fs.existsSync(src))
    expect(missing).toEqual([])
  })

  test('package.json carries repository, keywords, engines, files, an install step and types for every subpath', () => {
    expect(pkg.repository.url).toMatch(/\S/)
    expect(pkg.keywords.length).toBeGreaterThan(0)
    expect(pkg.engines.node).toMatch(/\d/)
    expect(pkg.files.length).toBeGreaterThan(0)
    expect(pkg.scripts.install).toBe('node scripts/install.js')
    expect(pkg.types).toBe('index.d.ts')
    for (const [key, entry] of Object.entries(pkg.exports)) {
      if (key === './package.json') continue
      expect(fs.existsSync(path.join(PACKAGE_ROOT, entry.types))).toBe(true)
    }
  })
})

describe('installed from both tarballs into a FlowForge project, without Rust on PATH', () => {
  let project
  let install
  beforeAll(() => {
    project = flowforgeProject()
    install = npmInstall(project, [packed.main.file, packed.native.file], { PATH: NO_RUST_PATH })
  }, 300000)

  test('the install succeeds with no Rust toolchain and uses the prebuilt binary', () => {
    expect(run('cargo', ['--version'], { env: { PATH: NO_RUST_PATH } }).error.code).toBe('ENOENT')
    expect(run('rustc', ['--version'], { env: { PATH: NO_RUST_PATH } }).error.code).toBe('ENOENT')
    expect(install.status).toBe(0)
    expect(install.output).not.toMatch(/compiling/i)
    const modules = path.join(project, 'node_modules')
    expect(fs.existsSync(path.join(modules, `${pkg.name}-${HERE.name}`, localBinaryName(HERE.name)))).toBe(true)
    expect(fs.readdirSync(path.join(modules, pkg.name)).filter((f) => f.endsWith('.node'))).toEqual([])
  })

  test.each(SPECIFIERS)('require(%p) exports what the checkout exports', (specifier) => {
    const got = nodeIn(project, ['-e', `console.log(JSON.stringify(Object.keys(require(${JSON.stringify(specifier)})).sort()))`])
    expect(got.stderr).toBe('')
    const names = JSON.parse(got.stdout)
    expect(names.length).toBeGreaterThan(0)
    expect(names).toEqual(exportedNames(specifier))
  })

  test.each(SPECIFIERS)('ESM: every export of %p is a named import', (specifier) => {
    const names = exportedNames(specifier).filter((n) => n !== 'default')
    const file = path.join(project, `esm-${specifier.replace(/\W/g, '_')}.mjs`)
    fs.writeFileSync(
      file,
      `import { ${names.join(', ')} } from ${JSON.stringify(specifier)}\n` +
        `const named = { ${names.join(', ')} }\n` +
        `console.log(JSON.stringify(Object.keys(named).filter((name) => named[name] === undefined)))\n`,
    )
    const got = nodeIn(project, [file])
    expect(got.stderr).toBe('')
    expect(got.stdout).toBe('[]\n')
  })

  test("ESM: import { acquireLock } from 'flowforge-lock' takes and releases a lock", () => {
    const file = path.join(project, 'lock.mjs')
    fs.writeFileSync(
      file,
      "import { acquireLock, releaseLock } from 'flowforge-lock'\n" +
        "const id = await acquireLock('.flowforge/tasks.json', 5000)\n" +
        "console.log(typeof id, await releaseLock('.flowforge/tasks.json', id))\n",
    )
    const got = nodeIn(project, [file])
    expect(got.stderr).toBe('')
    expect(got.stdout).toBe('string true\n')
  })

  // __test__/types-usage.ts calls every public function of the package with its types.
  test.each([
    ['node16', 'node16'],
    ['bundler', 'preserve'],
  ])('TypeScript: a file using every export compiles under strict, moduleResolution %s', (moduleResolution, module) => {
    const source = fs.readFileSync(path.join(__dirname, 'types-usage.ts'), 'utf8')
    const unused = exportedNames(pkg.name).filter((name) => name !== 'default' && !new RegExp(`\\b${name}\\b`).test(source))
    expect(unused).toEqual([])
    fs.writeFileSync(path.join(project, 'consumer.ts'), source)
    const config = path.join(project, `tsconfig.${moduleResolution}.json`)
    const compilerOptions = { strict: true, noEmit: true, target: 'es2022', module, moduleResolution, esModuleInterop: true, types: [] }
    fs.writeFileSync(config, JSON.stringify({ compilerOptions, files: ['consumer.ts'] }, null, 2))
    const got = run(process.execPath, [TSC, '-p', config, '--traceResolution'], { cwd: project })
    // The types came from the installed package, not from the checkout.
    const resolved = /Module name 'flowforge-lock' was successfully resolved to '([^']+)'/.exec(got.stdout)
    expect(resolved && fs.realpathSync(resolved[1])).toBe(path.join(fs.realpathSync(project), 'node_modules', 'flowforge-lock', 'index.d.ts'))
    const errors = got.stdout.split('\n').filter((line) => /error TS\d+/.test(line))
    expect(errors).toEqual([])
    expect(got.status).toBe(0)
  }, 60000)

  test('npx flowforge-lock status --json lists the project and its free tasks.json', () => {
    const got = run('npx', ['--offline', 'flowforge-lock', 'status', '--json'], { cwd: project, env: { PATH: NO_RUST_PATH } })
    expect(got.stderr).toBe('')
    expect(got.status).toBe(0)
    const report = JSON.parse(got.stdout)
    expect(report.root).toBe(fs.realpathSync(project))
    const tasks = report.locks.find((l) => l.file === path.join(report.root, '.flowforge', 'tasks.json'))
    expect(tasks.state).toBe('free')
  })

  test('two processes doing locked updateTaskFile calls lose none', async () => {
    const worker = path.join(project, 'worker.js')
    fs.writeFileSync(
      worker,
      "const { updateTaskFile } = require('flowforge-lock/file-lock-integration')\n" +
        "const [prefix, count] = process.argv.slice(2)\n" +
        "console.log('READY')\n" +
        "process.stdin.once('data', async () => {\n" +
        '  for (let i = 0; i < Number(count); i++) await updateTaskFile({ id: `${prefix}-${i}`, n: i })\n' +
        "  console.log('DONE')\n" +
        '  process.stdin.destroy()\n' +
        '})\n',
    )
    const COUNT = 100
    const start = (prefix) => {
      const child = spawn(process.execPath, [worker, prefix, String(COUNT)], { cwd: project, env: { ...process.env, PATH: NO_RUST_PATH } })
      let out = ''
      let err = ''
      child.stderr.on('data', (c) => (err += c))
      const ready = new Promise((resolve) => child.stdout.on('data', (c) => (out += c).includes('READY') && resolve()))
      const exited = new Promise((resolve) => child.on('close', (code) => resolve({ code, out, err })))
      return { child, ready, exited }
    }
    const workers = [start('a'), start('b')]
    await Promise.all(workers.map((w) => w.ready))
    for (const w of workers) w.child.stdin.write('GO\n')
    const results = await Promise.all(workers.map((w) => w.exited))
    for (const r of results) expect(r).toEqual({ code: 0, out: 'READY\nDONE\n', err: '' })
    const doc = JSON.parse(fs.readFileSync(path.join(project, '.flowforge', 'tasks.json'), 'utf8'))
    const ids = doc.tasks.map((t) => t.id).sort()
    const wanted = ['a', 'b'].flatMap((p) => Array.from({ length: COUNT }, (_, i) => `${p}-${i}`)).sort()
    expect(ids).toEqual(wanted)
    expect(doc.version).toBe('2.0.0')
  }, 60000)
})

describe('no prebuilt binary installed: the install step builds from source, or fails clearly', () => {
  test('with cargo on PATH, the main tarball alone compiles the shipped sources and works', () => {
    const project = flowforgeProject()
    const install = npmInstall(project, [packed.main.file], { CARGO_TARGET_DIR: FALLBACK_TARGET_DIR })
    expect(install.status).toBe(0)
    expect(install.output).toContain(`no prebuilt binary loads on ${HERE.name} (${HERE.triple}): compiling the Rust addon from source`)
    expect(install.output).toContain('this may take a minute or two')
    // cargo compiled the crate from the installed package's own copy of the sources.
    const installed = path.join(fs.realpathSync(project), 'node_modules', pkg.name)
    expect(install.output).toContain(`Compiling flowforge-lock v${pkg.version} (${installed})`)
    expect(fs.existsSync(path.join(installed, localBinaryName(HERE.name)))).toBe(true)
    expect(fs.existsSync(path.join(project, 'node_modules', `${pkg.name}-${HERE.name}`))).toBe(false)
    const got = nodeIn(project, [
      '-e',
      "require('flowforge-lock').updateTaskFile({ id: 7, status: 'built' }).then((t) => console.log(JSON.stringify(t)), (e) => { console.error(e); process.exit(1) })",
    ])
    expect(got.stderr).toBe('')
    expect(JSON.parse(got.stdout)).toEqual({ id: 7, status: 'built' })
  }, 900000)

  test('without cargo, the install fails naming the platform, the prebuilt platforms and how to install Rust', () => {
    const project = flowforgeProject()
    const install = npmInstall(project, [packed.main.file], { PATH: NO_RUST_PATH })
    expect(install.status).not.toBe(0)
    expect(install.output).toContain(`cannot install on ${HERE.name} (${HERE.triple})`)
    expect(install.output).toContain(`Prebuilt binaries exist for: ${PLATFORMS.map((p) => p.name).join(', ')}.`)
    expect(install.output).toContain('Building from source needs Rust >= 1.89')
    expect(install.output).toContain('curl https://sh.rustup.rs -sSf | sh')
    expect(install.output).not.toMatch(/compiling/i)
    // Nothing half-installed is left to throw on require.
    const left = nodeIn(project, ['-e', "require('flowforge-lock')"])
    expect(left.status).not.toBe(0)
    expect(left.stderr).toContain("Cannot find module 'flowforge-lock'")
  }, 300000)
})
