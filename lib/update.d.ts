export interface UpdateOptions {
  /** Lock wait in ms (default 30000), or 'adaptive' (see LockOptions). */
  timeout?: number | 'adaptive'
  staleThreshold?: number
  /** Higher goes first among the lock's waiters (default 0; see LockOptions). */
  priority?: number
  /**
   * Write under a hold the caller already has (a lockId from acquireLock): no new lock is
   * taken, and the write still checks that the hold is ours just before its rename.
   */
  lockId?: string
  /**
   * Optimistic update: write only if the file is still at this version (as readJSONVersioned
   * gave it); otherwise reject with `EVERSION` and change nothing. A file changed outside the
   * library (`foreignWrite`) is always refused.
   */
  ifVersion?: number
}

/**
 * Under the file's lock: `next = await updater(current)` (null when the file does not exist),
 * write `next` atomically, resolve to it. Rejects with EJSONPARSE, ELOCKTIMEOUT, ELOCKLOST,
 * ENOTDURABLE (written, but the directory sync failed: do not retry blindly), EVERSION
 * (`ifVersion` no longer holds), EVERSIONCORRUPT (the version sidecar is garbled), …
 */
export function updateWithLock<T = any>(filePath: string, updater: (current: any) => T | Promise<T>, options?: UpdateOptions): Promise<T>
