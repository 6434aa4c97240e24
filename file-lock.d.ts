// flowforge-lock/file-lock: drop-in for FlowForge's scripts/utils/file-lock.js.

export interface LockOptions {
  /**
   * ms to wait; 0 = one try; Infinity = wait for ever. Default 30000. 'adaptive': from this
   * lock's recent hold times and the queue ahead, between 1 s and 120 s (30 s before any hold
   * was seen): docs/priorities.md.
   */
  timeout?: number | 'adaptive'
  /** ms without heartbeat after which another host's record is stale. Default 30000. */
  staleThreshold?: number
  /**
   * Higher goes first among the lock's waiters (default 0): this process's, and on the file
   * backend the other processes' of this host too (not on a network file system); equal
   * priorities keep arrival order; a waiter gains one level per second waited: docs/priorities.md.
   */
  priority?: number
  /**
   * 'exclusive' (default): one holder, who may write. 'shared': a read lock, held beside other
   * readers of any process and never beside a writer; a writer that waits goes before readers
   * that arrive after it. A write under it fails with `ELOCKSHARED`. File backend only (lock
   * servers, and lock directories on a network file system, refuse it with `ELOCKUNSUPPORTED`).
   */
  mode?: LockMode
}

/** How a lock is held: by one writer, or by readers together. */
export type LockMode = 'exclusive' | 'shared'

/** One shared holder of a lock: its record (in its reader file), judged. */
export interface ReaderInfo extends Omit<LockInfo, 'state' | 'lockFile' | 'readers' | 'unreadable' | 'mode'> {
  /** `<name>.lock.r-<pid>-<n>` beside the lock file: where this reader's record is. */
  readerFile: string
  mode: 'shared'
  /** `stale`: the reader is gone and left its file (cleanupStaleLocks removes it). */
  state: 'held' | 'stale'
}

export interface InspectOptions {
  staleThreshold?: number
}

/** A lock record as written by flowforge-lock (or read from a legacy FlowForge lock), judged. */
export interface LockInfo {
  lockId: string | null
  pid: number | null
  hostname: string | null
  /** The holder's kernel boot id: with the hostname, what "this host" means. */
  bootId: string | null
  username: string | null
  /** Legacy name of `username`. */
  holder: string | null
  uid: number | null
  /** The holder process's start time, ms since the epoch. */
  processStart: number | null
  file: string | null
  acquiredAt: number | null
  /** Legacy name of `acquiredAt`. */
  timestamp: number | null
  heartbeat: number | null
  lockFile: string
  state: 'held' | 'stale'
  staleReason: string | null
  /** Why the record could not be read, when it could not. */
  unreadable: string | null
  heldForMs: number | null
  heartbeatAgeMs: number | null
  heldByThisProcess: boolean
  /**
   * Who holds it: one writer, or readers (then the record fields above are the oldest live
   * reader's). `null` when nobody does (a stale lock).
   */
  mode: LockMode | null
  /** Every reader file of the lock, live and stale, oldest first (empty unless readers used it). */
  readers: ReaderInfo[]
}

export interface CleanupEntry extends Partial<Omit<LockInfo, 'state'>> {
  lockFile: string
  /** Set when the entry is a reader's file rather than the lock file. */
  readerFile?: string
  /** Removed: `stale`, or `free` (released, unused); kept: `held`, or `unsafe` (not inspected). */
  state: 'held' | 'free' | 'stale' | 'unsafe'
  reason: string
}

export interface CleanupReport {
  root: string
  removed: CleanupEntry[]
  kept: CleanupEntry[]
}

export interface CleanupOptions {
  /** Project root; default: found from the cwd (or FLOWFORGE_ROOT_OVERRIDE). */
  root?: string
  staleThreshold?: number
  /** Report what would be removed; write nothing (no file removed, no claim file taken). */
  dryRun?: boolean
}

export interface ListedLock extends Partial<Omit<LockInfo, 'state'>> {
  lockFile: string
  /**
   * `free`: a released lock file nobody holds (kept for the next acquire); `unsafe`: the lock file
   * could not be inspected (a symlink, …), `code` and `staleReason` say why.
   */
  state: 'held' | 'free' | 'stale' | 'unsafe'
  code?: string
}

/**
 * Resolves to the lockId. Rejects with `ELOCKTIMEOUT`, `ELOCKDEADLOCK`, `ELOCKDIRUNSAFE`, `ELOCKSYMLINK`,
 * `ELOCKUNSUPPORTED` (`mode: 'shared'` where only exclusive locks exist), …
 */
export function acquireLock(filePath: string, timeout?: number | 'adaptive' | LockOptions): Promise<string>
/** true: released; false: nothing to release. Rejects with `ELOCKMISMATCH` for a wrong lockId. */
export function releaseLock(filePath: string, lockId: string): Promise<boolean>
/**
 * Blocks this thread until the lock is ours; returns the lockId. Throws `ELOCKTIMEOUT` after
 * `timeout` ms, and `ELOCKDEADLOCK` at once when this process already holds the lock, or is
 * taking (an `acquireLock` with timeout 0 still asking a lock server) or waiting for it through
 * the asynchronous API (they need the event loop this call blocks).
 */
export function acquireLockSync(filePath: string, timeout?: number | 'adaptive' | LockOptions): string
/** true: released; false: nothing to release. Throws `ELOCKMISMATCH` for a wrong lockId. */
export function releaseLockSync(filePath: string, lockId: string): boolean
/**
 * Runs the synchronous `fn` under the lock and returns its result; the lock is released when
 * `fn` returns or throws. A `fn` that returns a promise throws `ERR_INVALID_RETURN_VALUE`.
 */
export function withLockSync<T>(filePath: string, fn: () => T, timeout?: number | 'adaptive' | LockOptions): T
export function isLocked(filePath: string, options?: InspectOptions): Promise<boolean>
export function getLockInfo(filePath: string, options?: InspectOptions): Promise<LockInfo | null>
export function cleanupStaleLocks(options?: CleanupOptions): Promise<CleanupReport>
export function listLocks(options?: { root?: string; staleThreshold?: number }): ListedLock[]
/**
 * Throws `ELOCKLOST` unless this process still holds `lockId` on `filePath` (checked with the
 * backend), and `ELOCKSHARED` when `lockId` is a shared (read) lock, under which nothing is written.
 */
export function assertHeld(filePath: string, lockId: string): void
/**
 * The lock backend of this process: `'file'` (default), `'redis://host:6379/0?ttl=30000&refresh=5000'`,
 * `'etcd://host:2379'`; `null` goes back to FLOWFORGE_LOCK_BACKEND and .flowforge/lock-config.json.
 */
export function configure(options: { backend?: string | null }): void

export { updateWithLock } from './lib/update'

export const DEFAULT_TIMEOUT: number
export const HEARTBEAT_INTERVAL: number
export const STALE_THRESHOLD: number
