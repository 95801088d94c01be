import assert from 'node:assert/strict'
import { it } from 'node:test'
import fc from 'fast-check'
import { LruCache } from '../../../src/engines/cache/memory/lru-cache.ts'
import { cacheLimitDefaults } from '../../../src/engines/cache/port.ts'
import { defineCacheConformance } from './conformance.ts'

defineCacheConformance('in-process LRU', undefined, async () => new LruCache(cacheLimitDefaults))

it('the LRU evicts the least recently used entry at its bound', async () => {
  const cache = new LruCache({ ...cacheLimitDefaults, entriesMax: 2 })
  await cache.set('a', '1')
  await cache.set('b', '2')
  await cache.get('a')
  await cache.set('c', '3')
  assert.equal(cache.size, 2)
  assert.equal(await cache.get('b'), undefined)
  assert.equal(await cache.get('a'), '1')
})

it('keeps the entries a reference LRU keeps, whatever the sets, reads and deletes', async () => {
  const operation = fc.record({
    op: fc.constantFrom('set', 'get', 'delete'),
    key: fc.integer({ min: 0, max: 12 }).map(String),
  })
  await fc.assert(
    fc.asyncProperty(fc.array(operation, { maxLength: 200 }), async (operations) => {
      const cache = new LruCache({ ...cacheLimitDefaults, entriesMax: 5 })
      // The reference: keys from least to most recently used.
      let recency: string[] = []
      const touch = (key: string) => {
        recency = [...recency.filter((k) => k !== key), key]
      }
      for (const [i, { op, key }] of operations.entries()) {
        if (op === 'set') {
          await cache.set(key, String(i))
          touch(key)
          if (recency.length > 5) recency = recency.slice(1)
        } else if (op === 'get') {
          const found = await cache.get(key)
          assert.equal(found !== undefined, recency.includes(key))
          if (found !== undefined) touch(key)
        } else {
          assert.equal(await cache.delete(key), recency.includes(key))
          recency = recency.filter((k) => k !== key)
        }
        assert.equal(cache.size, recency.length)
      }
      for (const key of recency) assert.notEqual(await cache.get(key), undefined)
    }),
  )
})
