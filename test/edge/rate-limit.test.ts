// Rate limits as the gateway counts them: a sliding window in the cache port. On Redis,
// every gateway instance counts against the same keys, so a client cannot multiply its
// allowance by spreading requests over instances.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { RateLimiter } from '../../src/edge/rate-limit.ts'
import { LruCache } from '../../src/engines/cache/memory/lru-cache.ts'
import { cacheLimitDefaults } from '../../src/engines/cache/port.ts'
import { RedisCache } from '../../src/engines/cache/redis/redis-cache.ts'
import { serverUrls, skipUnlessReachable } from '../support/servers.ts'

const rule = { limit: 5, windowMs: 60_000 }

describe('rate limits in process', () => {
  it('allows the limit, then refuses with a Retry-After until the window slides on', async () => {
    const limiter = new RateLimiter(new LruCache(cacheLimitDefaults), 'test:')
    const start = 120_000 // the start of a window
    const verdicts = []
    for (let i = 0; i < 6; i++) verdicts.push(await limiter.take('k', rule, start + i))
    assert.deepEqual(
      verdicts.map((v) => v.allowed),
      [true, true, true, true, true, false],
    )
    assert.deepEqual(
      verdicts.map((v) => v.remaining),
      [4, 3, 2, 1, 0, 0],
    )
    // The five weigh in full at the next window's start, and 5 × (1 − 12/60) + 1 fits: 72 s.
    assert.equal(verdicts[5].retryAfterSeconds, 72)
    // With nothing left, Reset says when the quota comes back, as Retry-After does, not the
    // window's end (60 s); with some left, the window's end.
    assert.deepEqual(
      verdicts.map((v) => v.resetSeconds),
      [60, 60, 60, 60, 72, 72],
    )
    // Half a window later the previous window still weighs half (the refused sixth not
    // counted): 5 × 0.5 = 2.5, so 2 more fit.
    const later = [] as boolean[]
    for (let i = 0; i < 3; i++) later.push((await limiter.take('k', rule, start + 90_000 + i)).allowed)
    assert.deepEqual(later, [true, true, false])
    assert.equal((await limiter.take('other', rule, start + 5)).allowed, true, 'keys are counted apart')
  })

  it('lets in a client that waits out its Retry-After, whatever came before', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 30 }),
        fc.array(fc.integer({ min: 0, max: 30_000 }), { minLength: 1, maxLength: 120 }),
        async (limit, gaps) => {
          const limiter = new RateLimiter(new LruCache(cacheLimitDefaults), 'test:')
          const rule = { limit, windowMs: 60_000 }
          let now = 1_000_000
          for (const gap of gaps) {
            now += gap
            const verdict = await limiter.take('k', rule, now)
            if (verdict.allowed) continue
            assert.ok(verdict.retryAfterSeconds <= 120, `Retry-After ${verdict.retryAfterSeconds} s`)
            now += verdict.retryAfterSeconds * 1000
            assert.ok(
              (await limiter.take('k', rule, now)).allowed,
              `refused again after ${verdict.retryAfterSeconds} s`,
            )
          }
        },
      ),
      { numRuns: 300 },
    )
  })
})

const skip = await skipUnlessReachable('rate limits on Redis', 'redis')

describe('rate limits shared through Redis', { skip }, () => {
  const caches: RedisCache[] = []
  before(async () => {
    for (let i = 0; i < 2; i++) {
      const cache = new RedisCache(serverUrls.redis, cacheLimitDefaults, `mercato-test-${process.pid}:`)
      await cache.connect()
      caches.push(cache)
    }
  })
  after(async () => {
    for (const cache of caches) await cache.close()
  })

  it('two gateway instances count one client together', async () => {
    const [one, two] = caches.map((cache) => new RateLimiter(cache, 'gateway:'))
    const key = `user:${randomUUID()}`
    const now = Date.now()
    const allowed: boolean[] = []
    for (let i = 0; i < 6; i++) allowed.push((await (i % 2 === 0 ? one : two).take(key, rule, now)).allowed)
    assert.deepEqual(allowed, [true, true, true, true, true, false])
    const refused = await one.take(key, rule, now)
    assert.equal(refused.allowed, false)
    assert.ok(refused.retryAfterSeconds >= 1)
  })
})
