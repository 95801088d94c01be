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

export class QueryCache {
  readonly #cache: Cache
  readonly #ttlMs: number

  constructor(cache: Cache, ttlMs: number) {
    this.#cache = cache
    this.#ttlMs = ttlMs
  }

  /** The cached answer if any, and the entry's raw value (answer, tombstone or nothing) to hand back to `fill`. */
  async lookup(key: string): Promise<{ raw: string | undefined; answer?: CachedAnswer }> {
    const raw = await this.#cache.get(key)
    if (raw === undefined || raw.startsWith('~')) return { raw }
    return { raw, answer: JSON.parse(raw) as CachedAnswer }
  }

  /** Stores `answer` unless the entry changed since `previous` was looked up. */
  async fill(key: string, previous: string | undefined, answer: CachedAnswer): Promise<void> {
    await this.#cache.compareAndSet(key, previous, JSON.stringify(answer), { ttlMs: this.#ttlMs })
  }
}
