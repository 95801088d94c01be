// Rate limits as sliding-window counters in the cache port: in-process embedded, Redis in a
// distributed deployment, where every gateway instance counts against the same keys. The
// window slides by weighing the previous fixed window by how much of it still overlaps, so
// a burst at a window's edge is not allowed twice over.
import type { Cache } from '../engines/cache/port.ts'

export interface RateRule {
  /** Requests allowed per window. */
  limit: number
  windowMs: number
}

export interface RateVerdict {
  allowed: boolean
  limit: number
  remaining: number
  /** Seconds until the current window ends (at least 1): when the quota comes back. */
  resetSeconds: number
  /** When refused: seconds until a request would be allowed again (at least 1). */
  retryAfterSeconds: number
}

export class RateLimiter {
  readonly #cache: Cache
  readonly #prefix: string

  constructor(cache: Cache, prefix: string) {
    this.#cache = cache
    this.#prefix = prefix
  }

  /** Counts one request against `key` under `rule`, and says whether it may go on. */
  async take(key: string, rule: RateRule, now = Date.now()): Promise<RateVerdict> {
    const window = Math.floor(now / rule.windowMs)
    const elapsed = (now % rule.windowMs) / rule.windowMs
    const name = (w: number) => `${this.#prefix}rate:${rule.windowMs}:${key}:${w}`
    const [count, previousText] = await Promise.all([
      this.#cache.increment(name(window), { ttlMs: rule.windowMs * 2 }),
      this.#cache.get(name(window - 1)),
    ])
    const previous = Number(previousText ?? 0)
    const weighted = previous * (1 - elapsed) + count
    const allowed = weighted <= rule.limit
    let retryAfterSeconds = 0
    if (!allowed) {
      // The time until the previous window's weight has shrunk enough, or, when this
      // window alone is over, until this window ends.
      const excess = weighted - rule.limit
      const untilShrunk = previous > 0 ? (excess / previous) * rule.windowMs : Number.POSITIVE_INFINITY
      const untilWindowEnds = (1 - elapsed) * rule.windowMs
      const waitMs = count > rule.limit ? untilWindowEnds : Math.min(untilShrunk, untilWindowEnds)
      retryAfterSeconds = Math.max(1, Math.ceil(waitMs / 1000))
    }
    return {
      allowed,
      limit: rule.limit,
      remaining: Math.max(0, Math.floor(rule.limit - weighted)),
      resetSeconds: Math.max(1, Math.ceil(((1 - elapsed) * rule.windowMs) / 1000)),
      retryAfterSeconds,
    }
  }
}
