// Builds each port's engine from the configuration: the only place that knows which
// engines exist. A server that does not answer is reported within the connect timeout.

import { LruCache } from '../engines/cache/memory/lru-cache.ts'
import { type Cache, cacheLimitDefaults } from '../engines/cache/port.ts'
import { RedisCache } from '../engines/cache/redis/redis-cache.ts'
import type { Store } from '../engines/store/port.ts'
import { PostgresStore } from '../engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../engines/store/sqlite/sqlite-store.ts'
import { SqliteLog, sqliteLogDefaults } from '../engines/stream/embedded/sqlite-log.ts'
import { EventStream } from '../engines/stream/event-stream.ts'
import { KafkaStream, kafkaStreamDefaults } from '../engines/stream/kafka/kafka-stream.ts'
import type { StreamEngine } from '../engines/stream/port.ts'
import { UnreachableError } from '../platform/errors.ts'
import { withTimeout } from '../platform/limits.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'
import { PolicyEngine, producerRefusal } from '../platform/policy.ts'
import type { Config } from './config.ts'

export function createStreamEngine(config: Config): StreamEngine {
  if (config.stream.kind === 'embedded') {
    return new SqliteLog({
      ...sqliteLogDefaults,
      path: config.stream.path,
      synchronous: config.stream.synchronous,
      publishQueueLengthMax: config.publishQueueLengthMax,
    })
  }
  return new KafkaStream({
    ...kafkaStreamDefaults,
    brokers: config.stream.brokers,
    replicationFactor: config.stream.replicationFactor,
    clientId: `mercato-${process.pid}`,
    requestTimeoutMs: config.connectTimeoutMs,
    publishQueueLengthMax: config.publishQueueLengthMax,
  })
}

/** The event stream; its consumers refuse events whose producer the policy does not allow. */
export async function openEventStream(
  config: Config,
  log: Logger,
  metrics: Metrics,
  policy?: PolicyEngine,
): Promise<EventStream> {
  policy ??= await loadPolicy(config)
  const engine = createStreamEngine(config)
  try {
    await withTimeout('event stream', config.connectTimeoutMs, engine.ping())
  } catch (error) {
    await engine.close().catch(() => {})
    const where =
      config.stream.kind === 'kafka' ? `kafka://${config.stream.brokers.join(',')}` : config.stream.path
    throw new UnreachableError('the event stream (MERCATO_STREAM)', where, error)
  }
  const stream = new EventStream(
    engine,
    {
      topicPrefix: config.streamTopicPrefix,
      partitions: config.streamPartitions,
      eventBytesMax: config.eventBytesMax,
      batchSizeMax: config.consumerBatchSizeMax,
      retry: {
        attemptsMax: config.handlerAttemptsMax,
        backoffBaseMs: config.handlerBackoffBaseMs,
        backoffMaxMs: config.handlerBackoffMaxMs,
      },
      lagIntervalMs: 5_000,
      refuseProducer: producerRefusal(policy),
    },
    log,
    metrics,
  )
  await stream.ensureTopics()
  return stream
}

/** The Cedar policies of MERCATO_POLICY_DIR, or the project's own. */
export function loadPolicy(config: Config): Promise<PolicyEngine> {
  return PolicyEngine.load(config.auth.policyDir ?? PolicyEngine.defaultDir())
}

export type OpenStore = (service: string) => Promise<Store>

export function storeOpener(config: Config): OpenStore {
  const limits = {
    poolSizeMax: config.storePoolSizeMax,
    queueLengthMax: config.storeQueueLengthMax,
    acquireTimeoutMs: config.storeAcquireTimeoutMs,
    statementTimeoutMs: config.storeStatementTimeoutMs,
  }
  const storeConfig = config.store
  return async (service) => {
    const store =
      storeConfig.kind === 'sqlite'
        ? new SqliteStore(storeConfig.dataDir, service, limits)
        : new PostgresStore(storeConfig.url, service, limits, `${config.storeSchemaPrefix}${service}`)
    try {
      await withTimeout(`store ${service}`, config.connectTimeoutMs, store.ping())
    } catch (error) {
      await store.close().catch(() => {})
      throw error instanceof UnreachableError
        ? error
        : new UnreachableError('the store (MERCATO_STORE)', 'postgres', error)
    }
    return store
  }
}

export async function openCache(config: Config): Promise<Cache> {
  const limits = {
    ...cacheLimitDefaults,
    entriesMax: config.cacheEntriesMax,
    commandTimeoutMs: config.cacheCommandTimeoutMs,
  }
  if (config.cache.kind === 'memory') return new LruCache(limits)
  const cache = new RedisCache(config.cache.url, limits, redisKeyPrefix(config))
  await cache.connect()
  return cache
}

/** Redis keys of one deployment (or test run): the stream's topic prefix keeps them apart. */
export function redisKeyPrefix(config: Config): string {
  return `mercato:${config.streamTopicPrefix}`
}

/** Where the order-status view lives when the cache is Redis; undefined keeps it in the views store. */
export function viewsRedisOf(config: Config) {
  return config.cache.kind === 'redis'
    ? {
        url: config.cache.url,
        keyPrefix: redisKeyPrefix(config),
        commandTimeoutMs: config.cacheCommandTimeoutMs,
      }
    : undefined
}
