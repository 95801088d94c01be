// The key-value and cache port: strings in, strings out, with TTLs, and two atomic
// operations for counters and optimistic updates.

export interface Cache {
  readonly kind: 'memory' | 'redis'
  get(key: string): Promise<string | undefined>
  set(key: string, value: string, options?: { ttlMs?: number }): Promise<void>
  /** Sets only when absent; resolves true when it did. */
  setIfAbsent(key: string, value: string, options?: { ttlMs?: number }): Promise<boolean>
  delete(key: string): Promise<boolean>
  /**
   * Atomically replaces the value when it equals `expected` (undefined: when absent);
   * resolves true when it did. Many callers, one winner.
   */
  compareAndSet(
    key: string,
    expected: string | undefined,
    next: string,
    options?: { ttlMs?: number },
  ): Promise<boolean>
  /** Atomically adds `by` (default 1) and resolves with the new value; the TTL is set when the key is created. */
  increment(key: string, options?: { by?: number; ttlMs?: number }): Promise<number>
  ping(): Promise<void>
  close(): Promise<void>
}

export interface CacheLimits {
  /** In-process LRU: entries kept before the least recently used is evicted. */
  entriesMax: number
  valueBytesMax: number
  commandTimeoutMs: number
}

export const cacheLimitDefaults: CacheLimits = {
  entriesMax: 100_000,
  valueBytesMax: 1_048_576,
  commandTimeoutMs: 1_000,
}

export function assertValueSize(key: string, value: string, valueBytesMax: number): void {
  const bytes = Buffer.byteLength(value)
  if (bytes > valueBytesMax)
    throw new RangeError(`value for ${key} is ${bytes} bytes, over the limit of ${valueBytesMax}`)
}
