// A real event stream on the embedded SQLite log in a temp dir, and service stores beside
// it: what a service test runs on. Shared by the notification, user and flags tests.
import { join } from 'node:path'
import pg from 'pg'
import { type CloudEvent, createEvent } from '../../../src/contracts/envelope.ts'
import { type Store, storeLimitDefaults } from '../../../src/engines/store/port.ts'
import { PostgresStore } from '../../../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../../../src/engines/store/sqlite/sqlite-store.ts'
import { SqliteLog, sqliteLogDefaults } from '../../../src/engines/stream/embedded/sqlite-log.ts'
import { EventStream } from '../../../src/engines/stream/event-stream.ts'
import { type Logger, silentLogger } from '../../../src/platform/logger.ts'
import { Metrics } from '../../../src/platform/metrics.ts'
import { Service } from '../../../src/platform/service.ts'
import { serverUrls, skipUnlessReachable } from '../../support/servers.ts'
import { tempDir, uniqueName } from '../../support/wait.ts'

export type StoreKind = 'sqlite' | 'postgres'

/** The store engines a service suite runs on: SQLite always, PostgreSQL when it answers (else the reason to skip). */
export async function storeKinds(suite: string): Promise<{ kind: StoreKind; skip: string | undefined }[]> {
  return [
    { kind: 'sqlite', skip: undefined },
    { kind: 'postgres', skip: await skipUnlessReachable(`${suite} on PostgreSQL`, 'postgres') },
  ]
}

export interface Harness {
  stream: EventStream
  metrics: Metrics
  /** A service with its own store: a SQLite file in the harness's dir, or a fresh PostgreSQL schema. */
  service(name: string): Service
  /** Publishes one event (source `test`); resolves with it once it is durable. */
  publish(
    type: string,
    subject: string,
    data: Record<string, unknown>,
    extra?: Partial<CloudEvent>,
  ): Promise<CloudEvent>
  /** Collects every event of `topics` from the start, in a group of its own. */
  collect(topics: string[]): Promise<{ events: CloudEvent[]; stop(): Promise<void> }>
  close(): Promise<void>
}

export async function openHarness(
  storeKind: StoreKind = 'sqlite',
  log: Logger = silentLogger(),
): Promise<Harness> {
  const dir = tempDir()
  const metrics = new Metrics()
  const engine = new SqliteLog({
    ...sqliteLogDefaults,
    path: join(dir.path, 'stream.db'),
    heartbeatIntervalMs: 50,
    sessionTimeoutMs: 1_000,
  })
  const stream = new EventStream(
    engine,
    {
      topicPrefix: `${uniqueName('t')}.`,
      partitions: 2,
      eventBytesMax: 65_536,
      batchSizeMax: 100,
      retry: { attemptsMax: 3, backoffBaseMs: 5, backoffMaxMs: 20 },
      lagIntervalMs: 60_000,
    },
    log,
    metrics,
  )
  await stream.ensureTopics()
  const stores: Store[] = []
  const schemas: string[] = []
  return {
    stream,
    metrics,
    service(name) {
      let store: Store
      if (storeKind === 'sqlite') {
        store = new SqliteStore(join(dir.path, 'stores'), name, storeLimitDefaults)
      } else {
        const schema = uniqueName(name).toLowerCase()
        schemas.push(schema)
        store = new PostgresStore(serverUrls.postgres, name, storeLimitDefaults, schema)
      }
      stores.push(store)
      return new Service({ name, store, stream, log, metrics })
    },
    async publish(type, subject, data, extra = {}) {
      const event = { ...createEvent({ type, subject, data, source: 'test' }), ...extra }
      await stream.publish([event])
      return event
    },
    async collect(topics) {
      const events: CloudEvent[] = []
      const subscription = await stream.subscribe({
        group: uniqueName('collector'),
        topics,
        startAt: 'earliest',
        handle: async (event) => {
          events.push(event)
        },
      })
      return { events, stop: () => subscription.stop() }
    },
    async close() {
      // Stops every subscription still running (collectors, services not stopped), then the log.
      await stream.close()
      await Promise.all(stores.map((s) => s.close().catch(() => {})))
      dir.remove()
      if (schemas.length > 0) {
        const client = new pg.Client(serverUrls.postgres)
        await client.connect()
        for (const schema of schemas) await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
        await client.end()
      }
    },
  }
}
