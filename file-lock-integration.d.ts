// flowforge-lock/file-lock-integration: drop-in for FlowForge's scripts/utils/file-lock-integration.js.

export { updateWithLock, UpdateOptions } from './lib/update'
import type { UpdateOptions } from './lib/update'

export interface FileOptions {
  /** Lock wait in ms (default 30000; 0 = one try; Infinity = for ever; 'adaptive': see LockOptions). */
  timeout?: number | 'adaptive'
  staleThreshold?: number
  /** Higher goes first among the lock's waiters (default 0; see LockOptions). */
  priority?: number
  /** The file to update instead of the project's default one. */
  file?: string
  /** The project root instead of the one found from the cwd. */
  root?: string
  /** Write only if the file is still at this version, else reject with `EVERSION` (see UpdateOptions). */
  ifVersion?: number
  /** false: a failure a retry could fix is not kept in .flowforge/.dead-letters/ (default true). */
  deadLetter?: boolean
}

export interface ReadOptions {
  /**
   * Accept an answer checked at most this many ms ago without even a `stat` (bounded staleness).
   * Default 0: every read checks the file, so any commit that finished before the call is seen.
   */
  maxAgeMs?: number
  /**
   * Default true: documents come from the per-process cache and are deeply frozen (copy them,
   * e.g. with structuredClone, to edit). false: a fresh, mutable parse, no cache.
   */
  cache?: boolean
}

export interface Versioned<T = any> {
  /** The document, or null when the file does not exist. */
  data: T | null
  /** Rises by one with every commit of the library to the file (docs/reads.md). */
  version: number
  /** The file was changed outside the library since its last commit: `version` is not vouched for, and `ifVersion` refuses it. */
  foreignWrite: boolean
}

/** The parsed file (null when missing), read without a lock: always a whole committed document. */
export function readJSON<T = any>(filePath: string, options?: ReadOptions): Promise<T | null>
/** readJSON with the file's version. Rejects with `EVERSIONCORRUPT` when the version sidecar is garbled. */
export function readJSONVersioned<T = any>(filePath: string, options?: ReadOptions): Promise<Versioned<T>>
export function readJSONSync<T = any>(filePath: string, options?: ReadOptions): T | null
/**
 * updateWithLock for scripts: blocks until the lock is ours (or the timeout), applies the
 * synchronous updater, writes atomically, releases; returns the new content.
 */
export function updateWithLockSync<T = any>(filePath: string, updater: (current: any) => T, options?: UpdateOptions): T

/** A FlowForge task: `id` plus any other keys. */
export interface Task {
  id: number | string
  [key: string]: unknown
}

/** Upserts by id into tasks[] of .flowforge/tasks.json; resolves to the task as written. */
export function updateTaskFile(task: Task, options?: FileOptions): Promise<Task>
/** Many upserts under one lock and one write, all or nothing. */
export function batchUpdateTasks(updates: Task[], options?: FileOptions): Promise<Task[]>

export interface TimerOptions extends FileOptions {
  /** Default: $USER. */
  user?: string
  /** Default: $CLAUDE_INSTANCE_ID, else user@host:pid:epochSeconds of this process. */
  instanceId?: string
}

export interface TimeSession {
  start: string
  user: string
  instance_id: string
  end?: string
  /** Hours, 2 decimals. */
  duration?: number
  reason?: string
}

export function startTaskTimer(taskId: string | number, options?: TimerOptions): Promise<{ taskId: string; session: TimeSession; autoPaused: string[] }>
export function resumeTaskTimer(taskId: string | number, options?: TimerOptions): Promise<{ taskId: string; session: TimeSession; autoPaused: string[] }>
export function pauseTaskTimer(taskId: string | number, reason?: string | TimerOptions, options?: TimerOptions): Promise<{ taskId: string; session: TimeSession }>
export function stopTaskTimer(taskId: string | number, reason?: string | TimerOptions, options?: TimerOptions): Promise<{ taskId: string; totalHours: number; sessions: number }>

export interface WorkSession {
  sessionId: string
  taskId?: string
  user?: string
  instanceId?: string
  pid?: number
  hostname?: string
  status?: string
  startTime?: string | number
  lastActivity?: string | number
  [key: string]: unknown
}

export function registerSession(session?: Partial<WorkSession>, options?: FileOptions): Promise<WorkSession>
export function touchSession(sessionId: string, fields?: Record<string, unknown>, options?: FileOptions): Promise<WorkSession>
export function endSession(sessionId: string, options?: FileOptions & { status?: string }): Promise<WorkSession & { endTime: string }>
export function cleanupStaleSessions(options?: FileOptions & { maxAgeMs?: number }): Promise<{
  removed: Array<WorkSession & { staleReason: string }>
  kept: WorkSession[]
}>
export function listSessions(options?: FileOptions): WorkSession[]

/** Times in ms. */
export interface FileLockMetrics {
  acquisitions: number
  contendedAcquisitions: number
  totalTimeouts: number
  averageWaitTime: number
  maxWaitTime: number
  averageHoldTime: number
  staleLocksRecovered: number
}

export interface LockMetrics extends FileLockMetrics {
  p50WaitTime: number
  p99WaitTime: number
  files: Record<string, FileLockMetrics & {
    /** What timeout: 'adaptive' would allow a caller of this file arriving now, in ms. */
    adaptiveTimeoutMs: number
  }>
  /** Wait percentiles of the acquisitions of each priority ("0", "5", "-1", …), in ms. */
  waitByPriority: Record<string, { acquisitions: number; p50WaitTime: number; p99WaitTime: number; maxWaitTime: number }>
  /** Dead letters this process kept, replayed and dropped since it started (or resetLockMetrics). */
  deadLetters: { kept: number; replayed: number; dropped: number }
}

export function getLockMetrics(): LockMetrics
export function resetLockMetrics(): void

/** An operation kept in .flowforge/.dead-letters/ after a failure a retry can fix. */
export interface DeadLetter {
  /** Sorts in call order. */
  id: string
  operation: 'updateTaskFile' | 'batchUpdateTasks' | 'startTaskTimer' | 'pauseTaskTimer' | 'resumeTaskTimer' | 'stopTaskTimer' | 'registerSession' | 'touchSession' | 'endSession' | 'writeJson'
  /** The arguments as they were at the call (taken as JSON then), the options last. */
  args: unknown[]
  /** The data file it changes. */
  file: string
  error: { code: string | null; message: string }
  calledAt: string
  firstFailedAt: string
  lastFailedAt: string
  attempts: number
  pid: number
  hostname: string
  /** Set when an interrupted replay cannot tell whether it was applied: never applied again. */
  inDoubt?: string
}

export interface ReplayResult {
  id: string
  /** 'gone': replayed or dropped by another process meanwhile. */
  status: 'replayed' | 'already-applied' | 'failed' | 'skipped' | 'in-doubt' | 'gone'
  result?: unknown
  error?: { code: string | null; message: string }
  reason?: string
}

/** The project's dead letters (from the cwd, or `root`), oldest call first. */
export function listDeadLetters(options?: { root?: string }): DeadLetter[]
/** Applies them in call order, each under its file's lock, at most once; failures stay (attempts + 1). */
export function replayDeadLetters(options?: { root?: string; id?: string; timeout?: number }): Promise<{
  dir: string
  replayed: number
  failed: number
  skipped: number
  results: ReplayResult[]
}>
/** Removes one without applying it (under its file's lock, as replay does); resolves to it. */
export function dropDeadLetter(id: string, options?: { root?: string }): Promise<DeadLetter>
