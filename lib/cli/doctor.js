'use strict'
// flowforge-lock doctor: is this project's lock directory safe, and do kernel locks work there?
// It refuses to pretend: if another process cannot see a kernel lock taken here, locking on
// this file system excludes nobody, and doctor says so. With a lock server (Redis, etcd) it
// also connects to it afresh and checks that it answers, and that a Redis is new enough.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const native = require('../../native.js')
const { acquireLock, releaseLock, cleanupStaleLocks } = require('../../file-lock.js')
const { paint } = require('./format.js')
const { EXIT } = require('./exit-codes.js')
const { deadLetterSummary } = require('../dead-letters.js')

/** Linux's statfs magic numbers of the file systems people keep projects on. */
const FS_TYPES = {
  0xef53: 'ext4/ext3',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x01021994: 'tmpfs',
  0x794c7630: 'overlayfs',
  0x6969: 'nfs',
  0xff534d42: 'cifs/smb',
  0xfe534d42: 'smb2',
  0x65735546: 'fuse',
  0x01021997: '9p',
  0x2fc12fc1: 'zfs',
  0x1badface: 'bfs',
  0x4d44: 'vfat',
  0x5346544e: 'ntfs',
  0x6a656a63: 'virtiofs',
}

/** Whether a separate process sees `file` as locked (it looks through the kernel lock). */
function seenLockedByAnotherProcess(file) {
  const script = `process.stdout.write(String(require(${JSON.stringify(path.resolve(__dirname, '../../native.js'))}).isLocked(${JSON.stringify(file)})))`
  const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
  return run.stdout === 'true'
}

async function checkKernelLocks(dataDir) {
  const probe = path.join(dataDir, `.doctor-probe-${process.pid}`)
  const lockId = await acquireLock(probe, 0)
  const whileHeld = seenLockedByAnotherProcess(probe)
  await releaseLock(probe, lockId)
  const afterRelease = seenLockedByAnotherProcess(probe)
  return whileHeld && !afterRelease
}

/** The oldest Redis the backend's scripts are written for (docs/redis-algorithm.md). */
const REDIS_MIN = [7, 0]

/** The lock server of the project, if any: does it answer, and is it a version we support? */
function checkBackend(projectRoot, check) {
  let health
  try {
    health = native.backendHealth(projectRoot)
  } catch (err) {
    check(false, `the lock server does not answer: ${err.message}`, 'start it, or fix FLOWFORGE_LOCK_BACKEND / .flowforge/lock-config.json')
    return
  }
  const { backend, version } = health
  if (backend === 'file') return
  if (!/^rediss?:/.test(backend)) {
    check(true, `lock server ${backend} answers`, null)
    return
  }
  const [major, minor] = String(version).split('.').map(Number)
  const supported = major > REDIS_MIN[0] || (major === REDIS_MIN[0] && minor >= REDIS_MIN[1])
  check(supported, `Redis at ${backend} answers, version ${version}${supported ? '' : `: older than ${REDIS_MIN.join('.')}`}`, `upgrade the server to Redis ${REDIS_MIN.join('.')} or newer`)
}

async function doctor(root) {
  const projectRoot = native.projectRoot(root)
  const dataDir = path.join(projectRoot, '.flowforge')
  const lockDir = path.join(dataDir, '.locks')
  const results = []
  const check = (ok, what, fix) => results.push({ ok, what, fix })

  if (!fs.existsSync(dataDir)) {
    check(false, `no .flowforge/ directory in ${projectRoot}`, 'run doctor inside a FlowForge project, or pass its ROOT')
    return report(results)
  }
  checkBackend(projectRoot, check)
  const lockStat = fs.statSync(lockDir, { throwIfNoEntry: false })
  if (!lockStat) {
    let creatable = true
    try {
      fs.accessSync(dataDir, fs.constants.W_OK)
    } catch {
      creatable = false
    }
    check(creatable, `${lockDir} does not exist yet; it ${creatable ? 'will be' : 'cannot be'} created on the first lock`, `make ${dataDir} writable for this user`)
  } else if (!lockStat.isDirectory()) {
    check(false, `${lockDir} is not a directory`, `move that file away: mv ${lockDir} ${lockDir}.bak`)
  } else {
    // Whether its permissions are safe is the core's rule (paths.rs): the test lock below
    // applies it, and its error says what to change.
    const sameFs = lockStat.dev === fs.statSync(dataDir).dev
    check(sameFs, `lock directory and data ${sameFs ? 'are' : 'are not'} on the same file system`, `make ${lockDir} a plain directory inside ${dataDir}, not a mount or a link elsewhere`)
  }
  const type = fs.statfsSync(lockStat?.isDirectory() ? lockDir : dataDir).type
  // The magic numbers are Linux's; elsewhere statfs types mean other things.
  const fsName = process.platform === 'linux' ? (FS_TYPES[type] ?? `unknown (statfs type 0x${type.toString(16)})`) : `statfs type ${type}`
  try {
    const works = await checkKernelLocks(dataDir)
    check(
      works,
      `kernel locks on this file system (${fsName}) ${works ? 'are seen by other processes' : 'are NOT seen by other processes: locking here excludes nobody'}`,
      'keep the project on a local file system, or mount the network file system with lock support (NFSv4, or NFSv3 with lockd)',
    )
  } catch (err) {
    check(false, err.message, null)
  }
  if (results.every((r) => r.ok)) {
    const { removed } = await cleanupStaleLocks({ root: projectRoot, dryRun: true })
    const stale = removed.filter((entry) => entry.state === 'stale').length
    if (stale > 0) check(true, `${stale} stale lock file(s) present (harmless: the next acquirer takes them over)`, null)
  }
  // Operations kept after a failure a retry can fix are not an error of the set-up: reported, not failed.
  const { dir, pending } = deadLetterSummary(projectRoot)
  check(true, `${pending} dead letter(s) in ${dir}${pending > 0 ? ': `flowforge-lock dead-letters list`, then replay or drop them' : ''}`, null)
  return report(results)
}

function report(results) {
  for (const { ok, what, fix } of results) {
    process.stdout.write(`${ok ? paint('green', 'ok  ') : paint('red', 'FIX ')} ${what}\n`)
    if (!ok && fix) process.stdout.write(`     -> ${fix}\n`)
  }
  const problems = results.filter((r) => !r.ok).length
  process.stdout.write(problems ? `${problems} problem(s) to fix.\n` : 'All good.\n')
  return problems ? EXIT.CONFIG : EXIT.OK
}

module.exports = { doctor }
