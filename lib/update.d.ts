export interface UpdateOptions {
  /** Lock wait in ms (default 30000). */
  timeout?: number
  staleThreshold?: number
}

/**
 * Under the file's lock: `next = await updater(current)` (null when the file does not exist),
 * write `next` atomically, resolve to it. Rejects with EJSONPARSE, ELOCKTIMEOUT, ELOCKLOST, …
 */
export function updateWithLock<T = any>(filePath: string, updater: (current: any) => T | Promise<T>, options?: UpdateOptions): Promise<T>
