// One conformance suite for the cache and key-value port, run against every engine.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import type { Cache } from '../../../src/engines/cache/port.ts'
import { uniqueName, waitFor } from '../../support/wait.ts'

export function defineCacheConformance(name: string, skip: string | undefined, open: () => Promise<Cache>) {
  describe(`cache port conformance: ${name}`, { skip }, () => {
    let cache: Cache
    before(async () => {
      cache = await open()
    })
    after(async () => {
      await cache.close()
    })
    const key = () => uniqueName('k')

    it('gets what was set, and nothing after delete', async () => {
      const k = key()
      assert.equal(await cache.get(k), undefined)
      await cache.set(k, 'v1')
      assert.equal(await cache.get(k), 'v1')
      assert.equal(await cache.delete(k), true)
      assert.equal(await cache.get(k), undefined)
      assert.equal(await cache.delete(k), false)
    })

    it('forgets an entry after its TTL', async () => {
      const k = key()
      await cache.set(k, 'short', { ttlMs: 50 })
      assert.equal(await cache.get(k), 'short')
      await waitFor('the entry to expire', async () => (await cache.get(k)) === undefined, 5_000)
    })

    it('sets only when absent', async () => {
      const k = key()
      assert.equal(await cache.setIfAbsent(k, 'first'), true)
      assert.equal(await cache.setIfAbsent(k, 'second'), false)
      assert.equal(await cache.get(k), 'first')
    })

    it('compare-and-set: among concurrent callers exactly one wins each round, and no update is lost', async () => {
      const k = key()
      assert.equal(await cache.compareAndSet(k, undefined, '0'), true)
      assert.equal(await cache.compareAndSet(k, undefined, 'again'), false)
      const callers = 20
      const wins = await Promise.all(
        Array.from({ length: callers }, async () => {
          // Each caller adds one by optimistic retry: read, then swap only if nobody else did.
          for (;;) {
            const current = (await cache.get(k))!
            if (await cache.compareAndSet(k, current, String(Number(current) + 1))) return 1
          }
        }),
      )
      assert.equal(wins.length, callers)
      assert.equal(await cache.get(k), String(callers))
      const round = await Promise.all(
        Array.from({ length: 10 }, (_, i) => cache.compareAndSet(k, String(callers), `w${i}`)),
      )
      assert.equal(round.filter(Boolean).length, 1)
    })

    it('increments atomically under concurrent callers, with a TTL on a new counter', async () => {
      const k = key()
      const values = await Promise.all(Array.from({ length: 100 }, () => cache.increment(k)))
      assert.equal(Math.max(...values), 100)
      assert.equal(new Set(values).size, 100)
      assert.equal(await cache.increment(k, { by: 5 }), 105)
      const windowed = key()
      assert.equal(await cache.increment(windowed, { ttlMs: 50 }), 1)
      await waitFor(
        'the counter window to pass',
        async () => (await cache.get(windowed)) === undefined,
        5_000,
      )
    })

    it('refuses a value over the size limit', async () => {
      await assert.rejects(cache.set(key(), 'x'.repeat(2_000_000)), RangeError)
    })
  })
}
