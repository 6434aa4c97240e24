// Compiled by types.test.js with `tsc --noEmit --strict`: every public call, typed as documented.
import {
  acquireLock,
  releaseLock,
  assertHeld,
  configure,
  isLocked,
  getLockInfo,
  cleanupStaleLocks,
  listLocks,
  updateWithLock,
  updateTaskFile,
  batchUpdateTasks,
  startTaskTimer,
  pauseTaskTimer,
  resumeTaskTimer,
  stopTaskTimer,
  registerSession,
  touchSession,
  endSession,
  cleanupStaleSessions,
  listSessions,
  getLockMetrics,
  resetLockMetrics,
  listDeadLetters,
  replayDeadLetters,
  dropDeadLetter,
  acquireLockSync,
  releaseLockSync,
  withLockSync,
  readJSON,
  readJSONSync,
  readJSONVersioned,
  updateWithLockSync,
  FileLockManager,
  DEFAULT_TIMEOUT,
  HEARTBEAT_INTERVAL,
  STALE_THRESHOLD,
  LockInfo,
  LockMode,
  ReaderInfo,
} from 'flowforge-lock'
import ManagerFromSubpath = require('flowforge-lock/FileLockManager')
import * as fileLock from 'flowforge-lock/file-lock'
import * as integration from 'flowforge-lock/file-lock-integration'

async function main(): Promise<void> {
  const id: string = await acquireLock('.flowforge/tasks.json', 5000)
  await acquireLock('x.json', { timeout: 0, staleThreshold: 60000 })
  assertHeld('.flowforge/tasks.json', id)
  const released: boolean = await releaseLock('.flowforge/tasks.json', id)
  configure({ backend: 'file' })
  const syncId: string = acquireLockSync('sync.json', { timeout: 100 })
  const syncReleased: boolean = releaseLockSync('sync.json', syncId)
  const inside: number = withLockSync('sync.json', () => 7)
  // 'adaptive' is taken by the synchronous calls as by acquireLock (checkLockOptions, adaptiveOr).
  releaseLockSync('sync.json', acquireLockSync('sync.json', 'adaptive'))
  const adaptiveSync: number = withLockSync('sync.json', () => 8, 'adaptive')
  const doc: { n: number } | null = await readJSON<{ n: number }>('sync.json', { maxAgeMs: 0 })
  const docSync: { n: number } | null = readJSONSync<{ n: number }>('sync.json')
  const versioned = await readJSONVersioned<{ n: number }>('sync.json')
  const version: number = versioned.version
  const bumped: { n: number } = updateWithLockSync('sync.json', (current: { n: number } | null) => ({ n: (current?.n ?? 0) + 1 }), { ifVersion: version })
  configure({ backend: null })
  const locked: boolean = await isLocked('x.json', { staleThreshold: 1000 })
  const info: LockInfo | null = await getLockInfo('x.json')
  if (info) {
    const state: 'held' | 'stale' = info.state
    const pid: number | null = info.pid
    void state, pid
  }
  const report = await cleanupStaleLocks({ dryRun: true })
  const reasons: string[] = report.removed.map((r) => r.reason)
  const states = listLocks().map((l) => l.state)
  const anyFree: boolean = states.includes('free') // a released lock file, as listLocks reports it
  const next = await updateWithLock('x.json', async (current: { n?: number } | null) => ({ n: (current?.n ?? 0) + 1 }))
  const n: number = next.n
  const task = await updateTaskFile({ id: 142, status: 'completed' }, { timeout: 5000 })
  await batchUpdateTasks([{ id: 1, status: 'completed' }, { id: '2' }])
  const started = await startTaskTimer(142, { user: 'alice' })
  const autoPaused: string[] = started.autoPaused
  await pauseTaskTimer(142, 'Lunch')
  await pauseTaskTimer(142, { timeout: 10 })
  await resumeTaskTimer('142')
  const stopped = await stopTaskTimer(142)
  const hours: number = stopped.totalHours
  const session = await registerSession({ taskId: '214' })
  await touchSession(session.sessionId, { lastAction: 'x' })
  await endSession(session.sessionId)
  const { removed } = await cleanupStaleSessions({ maxAgeMs: 1000 })
  const sessions = listSessions()
  const metrics = getLockMetrics()
  const wait: number = metrics.averageWaitTime + metrics.totalTimeouts + metrics.files['x'].maxWaitTime
  resetLockMetrics()
  const kept: number = metrics.deadLetters.kept + listDeadLetters({ root: '/p' }).length
  const adaptive: number = metrics.files['x'].adaptiveTimeoutMs + metrics.waitByPriority['0'].p99WaitTime
  await releaseLock('x', await acquireLock('x', { timeout: 'adaptive', priority: 2 }))
  await updateTaskFile({ id: 2 }, { timeout: 'adaptive', priority: -1 })
  const prioritised = new FileLockManager({ priority: 3, timeout: 'adaptive' }).config.priority
  const managerMode: LockMode = new FileLockManager({ mode: 'shared' }).config.mode
  const replay = await replayDeadLetters({ timeout: 1000 })
  const statuses: string[] = replay.results.map((r) => r.status)
  const dropped: string = (await dropDeadLetter('id')).operation
  await updateTaskFile({ id: 1 }, { deadLetter: false })
  const manager = new FileLockManager()
  manager.config.timeout = 10000
  const value: number = await manager.withLock('custom.json', async () => 42)
  const aborted: boolean = await manager.withLock('custom.json', (signal: AbortSignal) => signal.aborted)
  // withLock takes lock options (a timeout in ms, or { timeout, staleThreshold, priority }), as the code does;
  // an update's { lockId } or { ifVersion } would be ignored by it, so they are not accepted.
  await manager.withLock('custom.json', () => 1, 5000)
  await manager.withLock('custom.json', () => 1, { timeout: 'adaptive', priority: 1 })
  // @ts-expect-error withLock does not write under a caller's hold
  await manager.withLock('custom.json', () => 1, { lockId: 'abc' })
  await manager.release('custom.json', await manager.acquire('custom.json', 100))
  const readers: number = await manager.withReadLock('custom.json', async (signal: AbortSignal) => ((await getLockInfo('custom.json'))?.readers.length ?? 0) + Number(signal.aborted))
  await manager.withReadLock('custom.json', () => 1, { timeout: 100, priority: 1 })
  const mode: LockMode = 'shared'
  const readId: string = await acquireLock('custom.json', { mode, timeout: 1000 })
  const readInfo = await getLockInfo('custom.json')
  const heldMode: LockMode | null = readInfo ? readInfo.mode : null
  const reader: ReaderInfo | undefined = readInfo?.readers[0]
  const readerFile: string | undefined = reader?.readerFile
  await releaseLock('custom.json', readId)
  releaseLockSync('custom.json', acquireLockSync('custom.json', { mode: 'shared', timeout: 0 }))
  const readManaged: string = await manager.acquire('custom.json', { mode: 'shared' })
  const other = new ManagerFromSubpath.FileLockManager({ timeout: 1 })
  const count: number = await other.releaseAll()
  const constants: number = DEFAULT_TIMEOUT + HEARTBEAT_INTERVAL + STALE_THRESHOLD
  const sameFn: typeof fileLock.acquireLock = acquireLock
  const sameUpdate: typeof integration.updateWithLock = fileLock.updateWithLock
  void readers, heldMode, readerFile, readManaged, adaptive, prioritised, kept, statuses, dropped, released, locked, reasons, states, n, task, autoPaused, hours, removed, sessions, wait, value, count, constants, sameFn, sameUpdate
}

void main
