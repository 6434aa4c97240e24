export interface UpdateOptions {
  /** Lock wait in ms (default 30000). */
  timeout?: number
  staleThreshold?: number
  /**
   * Write under a hold the caller already has (a lockId from acquireLock): no new lock is
   * taken, and the write still checks that the hold is ours just before its rename.
   */
  lockId?: string
}

/**
 * Under the file's lock: `next = await updater(current)` (null when the file does not exist),
 * write `next` atomically, resolve to it. Rejects with EJSONPARSE, ELOCKTIMEOUT, ELOCKLOST,
 * ENOTDURABLE (written, but the directory sync failed: do not retry blindly), …
 */
export function updateWithLock<T = any>(filePath: string, updater: (current: any) => T | Promise<T>, options?: UpdateOptions): Promise<T>
