import assert from 'node:assert/strict'
import { it } from 'node:test'
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
