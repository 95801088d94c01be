// Cache-aside for query answers. The projector invalidates an entry by writing a tombstone
// over it; a reader that missed fills the entry only if what it found before reading the
// view is still there (compare-and-set), so an answer read before a change can never be
// cached after the change's invalidation.
import { createHash, randomUUID } from 'node:crypto'
import type { Cache } from '../engines/cache/port.ts'
import type { ViewName } from './view.ts'

export interface CachedAnswer {
  /** The view's positions when the answer was read: partition key → next offset. */
  positions: Record<string, number>
  etag: string
  body: string
  /** The customer the answer belongs to, when it belongs to one: authorization needs it on a hit too. */
  owner?: string
}

export function queryCacheKey(view: ViewName, generation: number, key: string): string {
  return `q:${view}:g${generation}:${key}`
}

export function tombstone(): string {
  return `~${randomUUID()}`
}

export function etagOf(body: string): string {
  return `"${createHash('sha1').update(body).digest('base64url').slice(0, 22)}"`
}

/** Parsed answers kept beside the cache, so a hot entry is not parsed again on every hit. */
const parsedMax = 10_000

export class QueryCache {
  readonly #cache: Cache
  readonly #ttlMs: number
  /** Cache key → the raw entry last parsed and its answer (read-only: shared by every hit). */
  #parsed = new Map<string, { raw: string; answer: CachedAnswer }>()

  constructor(cache: Cache, ttlMs: number) {
    this.#cache = cache
    this.#ttlMs = ttlMs
  }

  /** The cached answer if any, and the entry's raw value (answer, tombstone or nothing) to hand back to `fill`. */
  async lookup(key: string): Promise<{ raw: string | undefined; answer?: CachedAnswer }> {
    const raw = await this.#cache.get(key)
    if (raw === undefined || raw.startsWith('~')) return { raw }
    const parsed = this.#parsed.get(key)
    // The entry is what was parsed only if it is the same text: any change, here or in
    // another process, makes a new value.
    if (parsed?.raw === raw) return { raw, answer: parsed.answer }
    const answer = JSON.parse(raw) as CachedAnswer
    this.#remember(key, raw, answer)
    return { raw, answer }
  }

  /** Stores `answer` unless the entry changed since `previous` was looked up. */
  async fill(key: string, previous: string | undefined, answer: CachedAnswer): Promise<void> {
    const raw = JSON.stringify(answer)
    if (await this.#cache.compareAndSet(key, previous, raw, { ttlMs: this.#ttlMs }))
      this.#remember(key, raw, answer)
  }

  #remember(key: string, raw: string, answer: CachedAnswer): void {
    if (this.#parsed.size >= parsedMax) this.#parsed = new Map()
    this.#parsed.set(key, { raw, answer })
  }
}
