import { assertValueSize, type Cache, type CacheLimits } from '../port.ts'

interface Entry {
  key: string
  value: string
  expiresAtMs: number
  /** Neighbours in the recency list. */
  newer: Entry | undefined
  older: Entry | undefined
}

/** In-process LRU with TTLs. Atomic by construction: every operation runs to completion on the event loop. */
export class LruCache implements Cache {
  readonly kind = 'memory' as const
  // Recency is a doubly linked list through the entries, not the Map's insertion order: a
  // Map that is read by delete-and-set and evicted by keys().next() leaves a hole per
  // delete, and V8 walks every hole from the front on each eviction (14 µs a set into a
  // full 100,000-entry cache).
  readonly #entries = new Map<string, Entry>()
  #newest: Entry | undefined
  #oldest: Entry | undefined
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
    const entry = this.#entries.get(key)
    if (entry) this.#remove(entry)
    return entry !== undefined
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
    this.#newest = this.#oldest = undefined
  }

  #read(key: string): string | undefined {
    const entry = this.#entries.get(key)
    if (!entry) return undefined
    if (entry.expiresAtMs <= this.#now()) {
      this.#remove(entry)
      return undefined
    }
    this.#unlink(entry)
    this.#linkNewest(entry)
    return entry.value
  }

  #write(key: string, value: string, ttlMs: number | undefined, expiresAtMs = this.#expiry(ttlMs)): void {
    assertValueSize(key, value, this.#limits.valueBytesMax)
    const known = this.#entries.get(key)
    if (known) {
      known.value = value
      known.expiresAtMs = expiresAtMs
      this.#unlink(known)
      this.#linkNewest(known)
      return
    }
    const entry: Entry = { key, value, expiresAtMs, newer: undefined, older: undefined }
    this.#entries.set(key, entry)
    this.#linkNewest(entry)
    while (this.#entries.size > this.#limits.entriesMax && this.#oldest) this.#remove(this.#oldest)
  }

  #remove(entry: Entry): void {
    this.#unlink(entry)
    this.#entries.delete(entry.key)
  }

  #unlink(entry: Entry): void {
    if (entry.newer) entry.newer.older = entry.older
    else this.#newest = entry.older
    if (entry.older) entry.older.newer = entry.newer
    else this.#oldest = entry.newer
    entry.newer = entry.older = undefined
  }

  #linkNewest(entry: Entry): void {
    entry.older = this.#newest
    if (this.#newest) this.#newest.newer = entry
    this.#newest = entry
    this.#oldest ??= entry
  }

  #expiry(ttlMs: number | undefined): number {
    return ttlMs === undefined ? Number.POSITIVE_INFINITY : this.#now() + ttlMs
  }
}
