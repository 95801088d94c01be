// `npm run bench -- query`:
//  1. cached GET /v1/orders/{id} beside a bare fastify server answering the same documents
//     from memory, same autocannon settings, in turns with it: on the query API as the gateway
//     of a distributed deployment calls it (service token and user token), and on a whole
//     `mercato start` process through its gateway (whose own cost `npm run bench -- gateway`
//     measures);
//  2. catalog search over 100,000 products, on SQLite FTS5 and PostgreSQL (bench/search.ts);
//  3. projection lag at 1,000 events/s: from append to the change visible in the
//     order-status view, beside a bare consumer's append-to-handler time on the same stream,
//     on the embedded engines and on Kafka + PostgreSQL + Redis.
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createEvent } from '../src/contracts/envelope.ts'
import type { PositionedEvent } from '../src/engines/stream/event-stream.ts'
import { silentLogger } from '../src/platform/logger.ts'
import { Metrics } from '../src/platform/metrics.ts'
import { Projector } from '../src/read/projector.ts'
import { openViews } from '../src/read/views.ts'
import { resolveTargets } from '../src/runtime/components.ts'
import { loadConfig } from '../src/runtime/config.ts'
import { openCache, openEventStream, redisKeyPrefix, storeOpener } from '../src/runtime/engines.ts'
import { deleteKafkaTopics, dropPostgresSchemas } from '../test/support/servers.ts'
import { tempDir } from '../test/support/wait.ts'
import { alternate, type DrivenRequest, drive, withBearer } from './drive.ts'
import { placeOrders } from './gateway.ts'
import { cpuPerRequest, type Started, startProcess } from './mercato-process.ts'
import { percentile, type Row, row } from './rows.ts'
import { benchSearch } from './search.ts'
import { benchLimits, benchTokens } from './tokens.ts'

export interface QueryBenchOptions {
  engines: string[]
  seconds: number
  connections: number
  kafka: string
  postgres: string
  redis: string
  /** Which parts to run: cached, search, lag. */
  parts: string[]
}

export async function benchQuery(options: QueryBenchOptions): Promise<Row[]> {
  const rows: Row[] = []
  const wanted = (part: string) => options.parts.includes(part)
  if (wanted('cached')) rows.push(...(await benchCachedOrder(options)))
  // Search on the embedded engine (SQLite FTS5) always; on PostgreSQL when the
  // distributed engines are asked for.
  if (wanted('search'))
    rows.push(
      ...(await benchSearch({
        products: 100_000,
        postgres: options.engines.includes('kafka') ? options.postgres : undefined,
      })),
    )
  if (wanted('lag'))
    for (const engine of options.engines) rows.push(...(await benchProjectionLag(engine, options)))
  return rows
}

const getOrders = (ids: string[], bearer = '') => ({
  method: 'GET' as const,
  headers: withBearer({}, bearer),
  paths: ids.map((id) => `/v1/orders/${id}`),
})

async function benchCachedOrder(options: QueryBenchOptions): Promise<Row[]> {
  const dir = tempDir('mercato-bench-query-')
  const env = {
    MERCATO_PORT: '0',
    MERCATO_DATA_DIR: dir.path,
    MERCATO_CARRIER_STEP_MS: '100',
    ...benchLimits,
  }
  let shop: Started | undefined = await startProcess(['src/main.ts', 'start'], env, /mercato is up/)
  const tokens = await benchTokens(env)
  const bearer = await tokens.customer('cus_demo_1')
  let bare: Started | undefined
  let queryApi: Started | undefined
  try {
    const ids = await placeOrders(shop.url, { authorization: `Bearer ${bearer}` })
    const documents = await documentsOnceEnded(shop.url, bearer, ids)
    const file = join(dir.path, 'documents.json')
    writeFileSync(file, JSON.stringify(documents))
    bare = await startProcess(
      ['bench/bare-read-server.ts'],
      { MERCATO_BENCH_DOCUMENTS: file },
      /bare server is up/,
    )
    // Each subject in turns with the bare server, rounds of two seconds or so: the machine's
    // speed drifts during a run, and then it drifts for both alike.
    const rounds = Math.max(1, Math.round(options.seconds / 2))
    const seconds = options.seconds / rounds
    const run = (process: Started, request: DrivenRequest) => async () => {
      const { result, cpuUs } = await cpuPerRequest(
        process,
        () => drive(process.url, seconds, options.connections, request),
        (driven) => driven.perSecond * seconds,
      )
      return { ...result, cpuUs }
    }
    const versusBare = async (process: Started, request: DrivenRequest) => {
      await drive(bare!.url, 2, options.connections, getOrders(ids)) // warm-up
      await drive(process.url, 2, options.connections, request) // warm-up, and fills the cache
      return alternate(run(bare!, getOrders(ids)), run(process, request), rounds)
    }
    // The whole shop: through the gateway's hook in the same process (token, rate limits,
    // route policy, security headers), as `mercato start` serves it.
    const whole = await versusBare(shop, getOrders(ids, bearer))
    await shop.stop()
    shop = undefined
    // The query API as a distributed deployment runs it: every component but the gateway,
    // called as the gateway calls it, with the user's token and a service token.
    queryApi = await startProcess(
      [
        'src/main.ts',
        'start',
        '--target',
        resolveTargets(['all'])
          .filter((name) => name !== 'gateway')
          .join(','),
      ],
      env,
      /mercato is up/,
    )
    const alone = await versusBare(queryApi, {
      ...getOrders(ids, bearer),
      headers: { ...withBearer({}, bearer), 'mercato-service-token': await tokens.service('query-api') },
    })
    console.error({ whole, alone })
    const rowsOf = (scenario: string, { subject, baseline }: typeof whole) => [
      row(scenario, 'embedded', 'throughput', subject.perSecond, 'answers/s', baseline.perSecond),
      row(scenario, 'embedded', 'p50', subject.p50, 'ms', baseline.p50),
      row(scenario, 'embedded', 'p99', subject.p99, 'ms', baseline.p99),
      row(scenario, 'embedded', 'cpu', subject.cpuUs, 'µs CPU/request', baseline.cpuUs),
    ]
    return [
      ...rowsOf(`cached GET /v1/orders/{id}, query-api, ${options.connections} connections`, alone),
      ...rowsOf(
        `cached GET /v1/orders/{id}, whole shop through the gateway, ${options.connections} connections`,
        whole,
      ),
    ]
  } finally {
    await tokens.close()
    await bare?.stop()
    await shop?.stop()
    await queryApi?.stop()
    dir.remove()
  }
}

/** Waits for every saga to end, so the view no longer changes and every GET is a cache hit. */
async function documentsOnceEnded(
  url: string,
  bearer: string,
  ids: string[],
): Promise<Record<string, unknown>> {
  const documents: Record<string, unknown> = {}
  for (const id of ids) {
    for (;;) {
      const doc = (await (
        await fetch(`${url}/v1/orders/${id}`, { headers: { authorization: `Bearer ${bearer}` } })
      ).json()) as { status?: string }
      if (doc.status === 'DELIVERED' || doc.status === 'CANCELLED') {
        documents[id] = doc
        break
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  return documents
}

/** Publishes order.requested at 1,000 events/s and measures append → visible in the view, and append → bare handler. */
async function benchProjectionLag(engine: string, options: QueryBenchOptions): Promise<Row[]> {
  const dir = tempDir('mercato-bench-lag-')
  const prefix = `bench-lag-${Date.now().toString(36)}`
  const config = loadConfig({
    MERCATO_DATA_DIR: dir.path,
    MERCATO_LOG_LEVEL: 'silent',
    ...(engine === 'kafka'
      ? {
          MERCATO_STREAM: `kafka://${options.kafka}`,
          MERCATO_STREAM_TOPIC_PREFIX: `${prefix}.`,
          MERCATO_STREAM_PARTITIONS: '8',
          MERCATO_STORE: options.postgres,
          MERCATO_STORE_SCHEMA_PREFIX: `${prefix.replaceAll('-', '_')}_`,
          MERCATO_CACHE: options.redis,
        }
      : {}),
  })
  const log = silentLogger()
  const metrics = new Metrics()
  const stream = await openEventStream(config, log, metrics)
  const cache = await openCache(config)
  const store = await storeOpener(config)('views')
  const views = await openViews({
    store,
    redis:
      config.cache.kind === 'redis'
        ? { url: config.cache.url, keyPrefix: redisKeyPrefix(config), commandTimeoutMs: 1_000 }
        : undefined,
  })
  const viewLags: number[] = []
  const bareLags: number[] = []
  const storage = views.definitions['order-status'].storage
  const apply = storage.apply.bind(storage)
  storage.apply = async (generation, events) => {
    const changed = await apply(generation, events)
    const now = Date.now()
    for (const e of events) if (e.event.subject.startsWith('ord_lag_')) viewLags.push(now - e.timestampMs)
    return changed
  }
  const projector = new Projector(
    { views, stream, cache, log, metrics },
    {
      pollIntervalMs: 1_000,
      retiredKeepMs: 60_000,
      invalidationTtlMs: 30_000,
      inboxRetentionMs: config.inboxRetentionMs,
    },
  )
  await projector.start()
  const bare = await stream.subscribe({
    group: `bench-bare-${randomUUID()}`,
    topics: ['orders'],
    startAt: 'latest',
    handleBatch: async (events: PositionedEvent[]) => {
      const now = Date.now()
      for (const e of events) if (e.event.subject.startsWith('ord_lag_')) bareLags.push(now - e.timestampMs)
    },
  })
  const rate = 1_000
  const seconds = Math.max(5, options.seconds)
  const address = { name: 'L', line1: '1 Lag St', city: 'Lagville', postalCode: '1', country: 'US' }
  /** Publishes order.requested for `prefix`0, 1, … at `rate` a second for `seconds`; resolves with how many. */
  const publishFor = async (prefix: string, seconds: number): Promise<number> => {
    const started = Date.now()
    let sent = 0
    const inFlight: Promise<unknown>[] = []
    while (Date.now() - started < seconds * 1000) {
      const due = Math.floor(((Date.now() - started) / 1000) * rate)
      const events = []
      for (; sent < due; sent++) {
        const orderId = `${prefix}${sent}`
        events.push(
          createEvent({
            type: 'order.requested',
            subject: orderId,
            source: 'mercato/command-api',
            data: {
              orderId,
              customerId: `cus_${sent % 100}`,
              lines: [{ sku: 'LAG-1', quantity: 1 }],
              shippingAddress: address,
              paymentMethodToken: 'tok_visa',
            },
          }),
        )
      }
      if (events.length > 0) inFlight.push(stream.publish(events))
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    await Promise.all(inFlight)
    return sent
  }
  try {
    await new Promise((resolve) => setTimeout(resolve, 2_000)) // consumers join
    // A warm-up at the same rate, not measured: new topics, a cold broker and cold code
    // would otherwise weigh on the tail, as the HTTP benchmarks' warm-up keeps them out.
    await publishFor('ord_warm_', 3)
    const sent = await publishFor('ord_lag_', seconds)
    const deadline = Date.now() + 30_000
    while ((viewLags.length < sent || bareLags.length < sent) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50))
    console.error({ engine, sent, applied: viewLags.length, bare: bareLags.length })
    const scenario = `projection lag, order-status view, ${rate} events/s`
    const name = engine === 'kafka' ? 'kafka+postgres+redis' : 'embedded'
    return [
      row(scenario, name, 'p50', percentile(viewLags, 0.5), 'ms', percentile(bareLags, 0.5)),
      row(scenario, name, 'p99', percentile(viewLags, 0.99), 'ms', percentile(bareLags, 0.99)),
    ]
  } finally {
    await bare.stop()
    await projector.stop()
    await views.definitions['order-status'].storage.drop(1).catch(() => {})
    await views.close()
    await store.close()
    await cache.close()
    await stream.close()
    dir.remove()
    if (engine === 'kafka') {
      await deleteKafkaTopics(`${prefix}.`)
      await dropPostgresSchemas(`${prefix.replaceAll('-', '_')}_`, options.postgres)
    }
  }
}
