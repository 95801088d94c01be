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
  /**
   * Seconds until the quota comes back (at least 1): the current window's end, or, with
   * nothing left, when one more request fits.
   */
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

  /**
   * Counts one request against `key` under `rule`, and says whether it may go on. A refused
   * request is not counted, so a client that waits out its Retry-After is let in.
   */
  async take(key: string, rule: RateRule, now = Date.now()): Promise<RateVerdict> {
    const window = Math.floor(now / rule.windowMs)
    const elapsed = (now % rule.windowMs) / rule.windowMs
    let [count, previousText] = await Promise.all([
      this.#cache.increment(this.#name(key, rule, window), { ttlMs: rule.windowMs * 2 }),
      this.#cache.get(this.#name(key, rule, window - 1)),
    ])
    const previous = Number(previousText ?? 0)
    const allowed = previous * (1 - elapsed) + count <= rule.limit
    if (!allowed) count = await this.giveBack(key, rule, now)
    const remaining = Math.max(0, Math.floor(rule.limit - previous * (1 - elapsed) - count))
    // A millisecond over, so a retry at exactly that second is never refused by a rounding.
    const nextInSeconds = () =>
      Math.max(1, Math.ceil((msUntilAllowed(previous, count, elapsed, rule) + 1) / 1000))
    return {
      allowed,
      limit: rule.limit,
      remaining,
      // With nothing left, the quota comes back (one request at a time) when Retry-After says,
      // not at the window's end: a client pacing itself by Reset would wait far too long.
      resetSeconds:
        remaining === 0 ? nextInSeconds() : Math.max(1, Math.ceil(((1 - elapsed) * rule.windowMs) / 1000)),
      retryAfterSeconds: allowed ? 0 : nextInSeconds(),
    }
  }

  /**
   * Takes back one request counted at `at`: one refused here, or by another limit after this
   * one let it through. Resolves with the window's count after it.
   */
  giveBack(key: string, rule: RateRule, at: number): Promise<number> {
    const window = Math.floor(at / rule.windowMs)
    return this.#cache.increment(this.#name(key, rule, window), { by: -1, ttlMs: rule.windowMs * 2 })
  }

  #name(key: string, rule: RateRule, window: number): string {
    return `${this.#prefix}rate:${rule.windowMs}:${key}:${window}`
  }
}

/**
 * How long until one more request fits, when nothing else is counted meanwhile: in this
 * window once the previous one's weight has shrunk enough, or else in the next, where this
 * window's count is the weight that shrinks.
 */
function msUntilAllowed(previous: number, count: number, elapsed: number, rule: RateRule): number {
  const { limit, windowMs } = rule
  if (count + 1 <= limit && previous > 0) {
    const fitsAt = 1 - (limit - count - 1) / previous
    if (fitsAt < 1) return Math.max(0, fitsAt - elapsed) * windowMs
  }
  const fitsAtNext = count > 0 ? Math.max(0, 1 - (limit - 1) / count) : 0
  return (1 - elapsed + fitsAtNext) * windowMs
}
