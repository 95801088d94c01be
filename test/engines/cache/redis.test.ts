import { cacheLimitDefaults } from '../../../src/engines/cache/port.ts'
import { RedisCache } from '../../../src/engines/cache/redis/redis-cache.ts'
import { serverUrls, skipUnlessReachable } from '../../support/servers.ts'
import { defineCacheConformance } from './conformance.ts'

const skip = await skipUnlessReachable('cache port conformance: Redis', 'redis')

defineCacheConformance('Redis', skip, async () => {
  const cache = new RedisCache(serverUrls.redis, cacheLimitDefaults, `mercato-test-${process.pid}:`)
  await cache.connect()
  return cache
})
