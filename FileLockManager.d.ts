// flowforge-lock/FileLockManager: drop-in for FlowForge's scripts/utils/FileLockManager.js.
import type { LockMetrics } from './file-lock-integration'
import type { UpdateOptions } from './lib/update'
import type { LockOptions, LockMode } from './file-lock'

declare class FileLockManager {
  /** Defaults of this manager's calls; `mode` is `acquire`'s default (withLock and withReadLock set their own). */
  constructor(options?: { timeout?: number | 'adaptive'; staleThreshold?: number; priority?: number; mode?: LockMode })
  config: { timeout: number | 'adaptive'; staleThreshold: number; priority: number; mode: LockMode }
  /** lockId -> file of every lock this manager holds. */
  held: Map<string, string>
  acquire(filePath: string, options?: number | 'adaptive' | LockOptions): Promise<string>
  release(filePath: string, lockId?: string): Promise<boolean>
  /**
   * fn's result; the lock is always released. A nested withLock on the same lock re-enters.
   * `signal` aborts (its reason an ELOCKLOST error) if the lock is lost while fn runs.
   */
  withLock<T>(filePath: string, fn: (signal: AbortSignal) => T | Promise<T>, options?: number | 'adaptive' | Omit<LockOptions, 'mode'>): Promise<T>
  /**
   * withLock under a shared (read) lock: fn runs beside other readers, never beside a writer, and
   * a waiting writer goes before readers that arrive after it. Inside a withLock of the same lock
   * it re-enters; a write under it fails with `ELOCKSHARED`, and so does a withLock nested in it.
   * `ELOCKUNSUPPORTED` on a lock server backend.
   */
  withReadLock<T>(filePath: string, fn: (signal: AbortSignal) => T | Promise<T>, options?: number | 'adaptive' | Omit<LockOptions, 'mode'>): Promise<T>
  /** Throws `ELOCKLOST` unless `lockId` on `filePath` is still held. */
  assertHeld(filePath: string, lockId: string): void
  updateJson<T = any>(filePath: string, updater: (current: any) => T | Promise<T>, options?: UpdateOptions): Promise<T>
  /** Releases every lock of this manager; resolves to how many were released. */
  releaseAll(): Promise<number>
  getMetrics(): LockMetrics
  static FileLockManager: typeof FileLockManager
  static default: typeof FileLockManager
}

export = FileLockManager
