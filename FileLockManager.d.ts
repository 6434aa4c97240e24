// flowforge-lock/FileLockManager: drop-in for FlowForge's scripts/utils/FileLockManager.js.
import type { LockMetrics } from './file-lock-integration'
import type { UpdateOptions } from './lib/update'

declare class FileLockManager {
  constructor(options?: { timeout?: number; staleThreshold?: number })
  config: { timeout: number; staleThreshold: number }
  /** lockId -> file of every lock this manager holds. */
  held: Map<string, string>
  acquire(filePath: string, options?: UpdateOptions): Promise<string>
  release(filePath: string, lockId?: string): Promise<boolean>
  /**
   * fn's result; the lock is always released. A nested withLock on the same lock re-enters.
   * `signal` aborts (its reason an ELOCKLOST error) if the lock is lost while fn runs.
   */
  withLock<T>(filePath: string, fn: (signal: AbortSignal) => T | Promise<T>, options?: UpdateOptions): Promise<T>
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
