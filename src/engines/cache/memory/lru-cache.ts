import { oldestKeys } from '../../../platform/oldest-keys.ts'
import { assertValueSize, type Cache, type CacheLimits } from '../port.ts'

interface Entry {
  value: string
  expiresAtMs: number
}

/** In-process LRU with TTLs. Atomic by construction: every operation runs to completion on the event loop. */
export class LruCache implements Cache {
  readonly kind = 'memory' as const
  readonly #entries = new Map<string, Entry>()
  readonly #leastRecentlyUsed = oldestKeys(this.#entries)
  readonly #limits: CacheLimits
  readonly #now: () => number

  constructor(limits: CacheLimits, now: () => number = Date.now) {
    this.#limits = limits
    this.#now = now
  }

  get size(): number {
    return this.#entries.size
  }

  async get(key: string): Promise<string | undefined> {
    return this.#read(key)
  }

  async set(key: string, value: string, options: { ttlMs?: number } = {}): Promise<void> {
    this.#write(key, value, options.ttlMs)
  }

  async setIfAbsent(key: string, value: string, options: { ttlMs?: number } = {}): Promise<boolean> {
    if (this.#read(key) !== undefined) return false
    this.#write(key, value, options.ttlMs)
    return true
  }

  async delete(key: string): Promise<boolean> {
    return this.#entries.delete(key)
  }

  async compareAndSet(
    key: string,
    expected: string | undefined,
    next: string,
    options: { ttlMs?: number } = {},
  ): Promise<boolean> {
    if (this.#read(key) !== expected) return false
    this.#write(key, next, options.ttlMs)
    return true
  }

  async increment(key: string, options: { by?: number; ttlMs?: number } = {}): Promise<number> {
    const current = this.#entries.get(key)
    const live = current && current.expiresAtMs > this.#now() ? current : undefined
    const value = (live ? Number(live.value) : 0) + (options.by ?? 1)
    if (!Number.isSafeInteger(value)) throw new RangeError(`${key} does not hold an integer`)
    this.#write(key, String(value), undefined, live ? live.expiresAtMs : this.#expiry(options.ttlMs))
    return value
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    this.#entries.clear()
  }

  #read(key: string): string | undefined {
    const entry = this.#entries.get(key)
    if (!entry) return undefined
    if (entry.expiresAtMs <= this.#now()) {
      this.#entries.delete(key)
      return undefined
    }
    // Re-insert: a Map iterates in insertion order, so the first key is the least recently used.
    this.#entries.delete(key)
    this.#entries.set(key, entry)
    return entry.value
  }

  #write(key: string, value: string, ttlMs: number | undefined, expiresAtMs = this.#expiry(ttlMs)): void {
    assertValueSize(key, value, this.#limits.valueBytesMax)
    this.#entries.delete(key)
    this.#entries.set(key, { value, expiresAtMs })
    while (this.#entries.size > this.#limits.entriesMax) {
      this.#entries.delete(this.#leastRecentlyUsed()!)
    }
  }

  #expiry(ttlMs: number | undefined): number {
    return ttlMs === undefined ? Number.POSITIVE_INFINITY : this.#now() + ttlMs
  }
}
