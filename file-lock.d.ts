// flowforge-lock/file-lock: drop-in for FlowForge's scripts/utils/file-lock.js.

export interface LockOptions {
  /** ms to wait; 0 = one try; Infinity = wait for ever. Default 30000. */
  timeout?: number
  /** ms without heartbeat after which another host's record is stale. Default 30000. */
  staleThreshold?: number
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
}

export interface CleanupEntry extends Partial<Omit<LockInfo, 'state'>> {
  lockFile: string
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
  /** Report what would be removed, remove nothing. */
  dryRun?: boolean
}

export interface ListedLock extends Partial<Omit<LockInfo, 'state'>> {
  lockFile: string
  /** `unsafe`: the lock file could not be inspected (a symlink, …); `code` and `staleReason` say why. */
  state: 'held' | 'stale' | 'unsafe'
  code?: string
}

/** Resolves to the lockId. Rejects with `ELOCKTIMEOUT`, `ELOCKDEADLOCK`, `ELOCKDIRUNSAFE`, `ELOCKSYMLINK`, … */
export function acquireLock(filePath: string, timeout?: number | LockOptions): Promise<string>
/** true: released; false: nothing to release. Rejects with `ELOCKMISMATCH` for a wrong lockId. */
export function releaseLock(filePath: string, lockId: string): Promise<boolean>
export function isLocked(filePath: string, options?: InspectOptions): Promise<boolean>
export function getLockInfo(filePath: string, options?: InspectOptions): Promise<LockInfo | null>
export function cleanupStaleLocks(options?: CleanupOptions): Promise<CleanupReport>
export function listLocks(options?: { root?: string; staleThreshold?: number }): ListedLock[]
/** Throws `ELOCKLOST` unless this process still holds `lockId` on `filePath` (checked with the backend). */
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
