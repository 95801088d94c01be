import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { LruCache } from '../../src/engines/cache/memory/lru-cache.ts'
import { cacheLimitDefaults } from '../../src/engines/cache/port.ts'
import { type CachedAnswer, QueryCache, tombstone } from '../../src/read/query-cache.ts'

const answer = (body: string): CachedAnswer => ({ positions: { 'orders/0': 1 }, etag: `"${body}"`, body })

describe('query cache', () => {
  it('answers a hit with what the entry holds now, whoever changed it since the last hit', async () => {
    const cache = new LruCache(cacheLimitDefaults)
    const reader = new QueryCache(cache, 60_000)
    const other = new QueryCache(cache, 60_000) // another process sharing the cache
    assert.equal((await reader.lookup('k')).answer, undefined)
    await reader.fill('k', undefined, answer('one'))
    assert.equal((await reader.lookup('k')).answer?.body, 'one')
    assert.equal((await reader.lookup('k')).answer?.body, 'one')

    await cache.set('k', tombstone())
    assert.equal((await reader.lookup('k')).answer, undefined)
    const { raw } = await other.lookup('k')
    await other.fill('k', raw, answer('two'))
    assert.equal((await reader.lookup('k')).answer?.body, 'two')

    await cache.set('k', JSON.stringify(answer('three')))
    assert.equal((await reader.lookup('k')).answer?.body, 'three')
  })

  it('does not fill an entry that changed since it was looked up', async () => {
    const cache = new LruCache(cacheLimitDefaults)
    const reader = new QueryCache(cache, 60_000)
    const { raw } = await reader.lookup('k')
    await cache.set('k', tombstone())
    await reader.fill('k', raw, answer('stale'))
    assert.equal((await reader.lookup('k')).answer, undefined)
  })
})
