// npm run bench -- stream [--engines embedded,kafka] [--events N]
// For each engine: keyed batched publish and group consumption (events/s), and
// publish-to-handler latency (p50, p99) at a fixed rate, each beside a baseline run in
// the same process: raw node:sqlite for the embedded log, the raw Kafka client for Kafka.
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { Consumer, type MessageToProduce, Producer } from '@platformatic/kafka'
import { createEvent, encodeEvent } from '../src/contracts/envelope.ts'
import { SqliteLog, sqliteLogDefaults } from '../src/engines/stream/embedded/sqlite-log.ts'
import { EventStream } from '../src/engines/stream/event-stream.ts'
import {
  deserializers,
  KafkaStream,
  kafkaStreamDefaults,
  serializers,
} from '../src/engines/stream/kafka/kafka-stream.ts'
import { type OutgoingRecord, partitionForKey, type StreamEngine } from '../src/engines/stream/port.ts'
import { silentLogger } from '../src/platform/logger.ts'
import { Metrics } from '../src/platform/metrics.ts'
import { percentile, progress, type Row, row } from './rows.ts'

const partitions = 8
const batchSize = 1_000
const latencyRatePerS = 10_000
const latencySeconds = 5
/** Sent at the same rate before the measured seconds, and not measured: connections, JIT, first writes to each partition. */
const warmupSeconds = 1

export async function benchStream(options: {
  engines: string[]
  events: number
  kafka: string
}): Promise<Row[]> {
  const rows: Row[] = []
  const records = makeRecords(options.events)
  for (const engine of options.engines) {
    if (engine === 'embedded') rows.push(...(await benchEmbedded(records)))
    else if (engine === 'kafka') rows.push(...(await benchKafka(records, options.kafka)))
    else throw new Error(`unknown engine ${engine}`)
  }
  return rows
}

function makeRecords(count: number): OutgoingRecord[] {
  return Array.from({ length: count }, (_, i) => {
    const sku = `sku-${i % 5_000}`
    const event = createEvent({
      type: 'product.upserted',
      source: 'bench',
      subject: sku,
      data: {
        sku,
        name: `Product ${i}`,
        description: 'A thing',
        category: 'bench',
        priceMinor: 1_000 + i,
        currency: 'EUR',
      },
    })
    return encodeEvent(event, { eventBytesMax: 65_536 })
  })
}

function withTopic(records: OutgoingRecord[], topic: string): OutgoingRecord[] {
  return records.map((record) => ({ ...record, topic }))
}

async function publishAll(engine: StreamEngine, records: OutgoingRecord[], label: string): Promise<number> {
  const started = performance.now()
  const tick = progress(label, records.length)
  for (let i = 0; i < records.length; i += batchSize) {
    await engine.publish(records.slice(i, i + batchSize))
    tick(i + batchSize)
  }
  return records.length / ((performance.now() - started) / 1000)
}

async function consumeAll(engine: StreamEngine, topic: string, count: number): Promise<number> {
  let seen = 0
  const started = performance.now()
  let done: () => void = () => {}
  const finished = new Promise<void>((resolve) => {
    done = resolve
  })
  const handle = await engine.consume({
    group: `bench-${randomUUID()}`,
    topics: [topic],
    startAt: 'earliest',
    batchSizeMax: 500,
    onBatch: async (batch) => {
      seen += batch.records.length
      if (seen >= count) done()
    },
  })
  await finished
  const rate = count / ((performance.now() - started) / 1000)
  await handle.stop()
  return rate
}

/** Publishes at a fixed rate through the full event path (validation, encoding, decoding) and times each event to its handler. */
async function latencyThroughEvents(engine: StreamEngine, prefix: string): Promise<number[]> {
  const stream = new EventStream(
    engine,
    {
      topicPrefix: prefix,
      partitions,
      eventBytesMax: 65_536,
      batchSizeMax: 500,
      retry: { attemptsMax: 3, backoffBaseMs: 10, backoffMaxMs: 100 },
      lagIntervalMs: 60_000,
    },
    silentLogger(),
    new Metrics(),
  )
  await stream.ensureTopics(['products'])
  const sentAt = new Map<string, number>()
  const latencies: number[] = []
  const subscription = await stream.subscribe({
    group: `latency-${randomUUID()}`,
    topics: ['products'],
    startAt: 'latest',
    handle: async (event) => {
      const at = sentAt.get(event.id)
      if (at !== undefined) latencies.push(performance.now() - at)
    },
  })
  await new Promise((resolve) => setTimeout(resolve, engine.kind === 'kafka' ? 3_000 : 200))
  let expected = 0
  await warmThenMeasure(async (i, measured) => {
    const sku = `sku-${i % 1_000}`
    const event = createEvent({
      type: 'product.upserted',
      source: 'bench',
      subject: sku,
      data: { sku, name: `P${i}`, description: '', category: 'bench', priceMinor: i, currency: 'EUR' },
    })
    if (measured) {
      sentAt.set(event.id, performance.now())
      expected++
    }
    await stream.publish([event])
  })
  const deadline = Date.now() + 10_000
  while (latencies.length < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  await subscription.stop()
  return latencies
}

/** `fixedRate` for the warm-up, then for the measured seconds; `i` counts on across both. */
async function warmThenMeasure(send: (i: number, measured: boolean) => Promise<void>): Promise<void> {
  const warmup = warmupSeconds * latencyRatePerS
  await fixedRate(warmupSeconds, latencyRatePerS, (i) => send(i, false))
  await fixedRate(latencySeconds, latencyRatePerS, (i) => send(warmup + i, true))
}

/** Calls `send` `ratePerS` times a second for `seconds`, in 1 ms ticks; sends are not awaited one by one. */
async function fixedRate(
  seconds: number,
  ratePerS: number,
  send: (i: number) => Promise<void>,
): Promise<void> {
  const total = seconds * ratePerS
  const started = performance.now()
  const pending: Promise<void>[] = []
  let sent = 0
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * ratePerS))
    for (; sent < due; sent++) pending.push(send(sent))
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
  await Promise.all(pending)
}

function latencyRows(scenario: string, engine: string, measured: number[], baseline: number[]): Row[] {
  return (['p50', 'p99'] as const).map((metric) => {
    const q = metric === 'p50' ? 0.5 : 0.99
    return row(scenario, engine, metric, percentile(measured, q), 'ms', percentile(baseline, q))
  })
}

// ---- embedded ----

async function benchEmbedded(records: OutgoingRecord[]): Promise<Row[]> {
  const dir = mkdtempSync(join(tmpdir(), 'mercato-bench-'))
  try {
    const rawPublish = rawSqliteInsert(join(dir, 'raw.db'), records)
    const rawRead = rawSqliteRead(join(dir, 'raw.db'), records.length)
    const log = new SqliteLog({ ...sqliteLogDefaults, path: join(dir, 'stream.db') })
    await log.ensureTopics(['bench'], partitions)
    const published = await publishAll(log, withTopic(records, 'bench'), 'embedded publish')
    const consumed = await consumeAll(log, 'bench', records.length)
    const baselineLatency = await rawSqliteLatency(join(dir, 'latency.db'))
    const latency = await latencyThroughEvents(log, 'lat.')
    await log.close()
    return [
      row(
        `keyed batched publish, ${batchSize}/batch`,
        'embedded',
        'throughput',
        published,
        'events/s',
        rawPublish,
      ),
      row('group consumption', 'embedded', 'throughput', consumed, 'events/s', rawRead),
      ...latencyRows(
        `publish-to-handler at ${latencyRatePerS} events/s`,
        'embedded',
        latency,
        baselineLatency,
      ),
    ]
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

const rawSchema = `PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
  CREATE TABLE IF NOT EXISTS log (topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
  ts INTEGER NOT NULL, key TEXT NOT NULL, headers TEXT NOT NULL, value BLOB, PRIMARY KEY (topic, partition, offset)) STRICT;`

/** The baseline: the same rows, inserted in transactions of the same size, offsets counted in memory. */
function rawSqliteInsert(path: string, records: OutgoingRecord[]): number {
  const db = new DatabaseSync(path)
  db.exec(rawSchema)
  const insert = db.prepare(
    'INSERT INTO log (topic, partition, offset, ts, key, headers, value) VALUES (?, ?, ?, ?, ?, ?, ?)',
  )
  const next = new Array(partitions).fill(0)
  const started = performance.now()
  for (let i = 0; i < records.length; i += batchSize) {
    db.exec('BEGIN IMMEDIATE')
    for (const record of records.slice(i, i + batchSize)) {
      const partition = partitionForKey(record.key, partitions)
      insert.run(
        'bench',
        partition,
        next[partition]++,
        Date.now(),
        record.key,
        JSON.stringify(record.headers),
        record.value,
      )
    }
    db.exec('COMMIT')
  }
  const rate = records.length / ((performance.now() - started) / 1000)
  db.close()
  return rate
}

/** The baseline: read every row back, partition by partition, in pages of the same size, decoding headers. */
function rawSqliteRead(path: string, count: number): number {
  const db = new DatabaseSync(path)
  const page = db.prepare(
    'SELECT offset, key, headers, value FROM log WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT 500',
  )
  const started = performance.now()
  let seen = 0
  for (let p = 0; p < partitions; p++) {
    for (let from = 0; ; ) {
      const rows = page.all('bench', p, from) as { offset: number; headers: string }[]
      if (rows.length === 0) break
      for (const r of rows) JSON.parse(r.headers)
      seen += rows.length
      from = rows[rows.length - 1].offset + 1
    }
  }
  const rate = seen / ((performance.now() - started) / 1000)
  db.close()
  if (seen !== count) throw new Error(`raw read saw ${seen} of ${count}`)
  return rate
}

/** The baseline: one insert per event at the same rate, and a reader polling on every turn of the event loop. */
async function rawSqliteLatency(path: string): Promise<number[]> {
  const writer = new DatabaseSync(path)
  writer.exec(rawSchema)
  const reader = new DatabaseSync(path)
  const insert = writer.prepare(
    'INSERT INTO log (topic, partition, offset, ts, key, headers, value) VALUES (?, 0, ?, ?, ?, ?, ?)',
  )
  const poll = reader.prepare(
    'SELECT offset FROM log WHERE topic = ? AND partition = 0 AND offset >= ? ORDER BY offset',
  )
  const sentAt: { at: number; measured: boolean }[] = []
  const latencies: number[] = []
  let next = 0
  let stop = false
  const polling = (async () => {
    while (!stop || next < sentAt.length) {
      for (const r of poll.all('lat', next) as { offset: number }[]) {
        const sent = sentAt[r.offset]
        if (sent.measured) latencies.push(performance.now() - sent.at)
        next = r.offset + 1
      }
      await new Promise((resolve) => setImmediate(resolve))
    }
  })()
  await warmThenMeasure(async (i, measured) => {
    sentAt[i] = { at: performance.now(), measured }
    insert.run('lat', i, Date.now(), 'k', '{}', Buffer.from('x'))
  })
  stop = true
  await polling
  writer.close()
  reader.close()
  return latencies
}

// ---- Kafka ----

async function benchKafka(records: OutgoingRecord[], broker: string): Promise<Row[]> {
  const run = randomUUID().slice(0, 8)
  const engine = new KafkaStream({ ...kafkaStreamDefaults, brokers: [broker], clientId: 'mercato-bench' })
  const rawTopic = `bench-raw-${run}`
  const topic = `bench-${run}`
  await engine.ensureTopics([rawTopic, topic, `bench-rawlat-${run}`], partitions)
  const rawPublish = await rawKafkaPublish(broker, withTopic(records, rawTopic))
  const rawConsume = await rawKafkaConsume(broker, rawTopic, records.length)
  const published = await publishAll(engine, withTopic(records, topic), 'kafka publish')
  const consumed = await consumeAll(engine, topic, records.length)
  const baselineLatency = await rawKafkaLatency(broker, `bench-rawlat-${run}`)
  const latency = await latencyThroughEvents(engine, `lat-${run}.`)
  await engine.close()
  return [
    row(
      `keyed batched publish, ${batchSize}/batch`,
      'kafka',
      'throughput',
      published,
      'events/s',
      rawPublish,
    ),
    row('group consumption', 'kafka', 'throughput', consumed, 'events/s', rawConsume),
    ...latencyRows(`publish-to-handler at ${latencyRatePerS} events/s`, 'kafka', latency, baselineLatency),
  ]
}

function rawProducer(broker: string) {
  return new Producer({
    clientId: 'bench-raw',
    bootstrapBrokers: [broker],
    metadataMaxAge: kafkaStreamDefaults.metadataMaxAgeMs,
    idempotent: true,
    serializers: serializers,
  })
}

async function rawKafkaPublish(broker: string, records: OutgoingRecord[]): Promise<number> {
  const producer = rawProducer(broker)
  const started = performance.now()
  for (let i = 0; i < records.length; i += batchSize) {
    await producer.send({
      messages: records.slice(i, i + batchSize).map((r) => ({
        topic: r.topic,
        key: r.key,
        value: r.value,
        headers: r.headers,
        partition: partitionForKey(r.key, partitions),
      })),
    })
  }
  const rate = records.length / ((performance.now() - started) / 1000)
  await producer.close()
  return rate
}

async function rawKafkaConsume(broker: string, topic: string, count: number): Promise<number> {
  const consumer = new Consumer({
    clientId: 'bench-raw',
    groupId: `bench-raw-${randomUUID()}`,
    bootstrapBrokers: [broker],
    metadataMaxAge: kafkaStreamDefaults.metadataMaxAgeMs,
    deserializers: deserializers,
  })
  const started = performance.now()
  const stream = await consumer.consume({
    topics: [topic],
    mode: 'earliest',
    autocommit: false,
    maxWaitTime: 50,
  })
  let seen = 0
  for await (const _ of stream) if (++seen >= count) break
  const rate = count / ((performance.now() - started) / 1000)
  await stream.close()
  await consumer.close(true)
  return rate
}

async function rawKafkaLatency(broker: string, topic: string): Promise<number[]> {
  const producer = rawProducer(broker)
  const consumer = new Consumer({
    clientId: 'bench-raw-lat',
    groupId: `bench-raw-lat-${randomUUID()}`,
    bootstrapBrokers: [broker],
    metadataMaxAge: kafkaStreamDefaults.metadataMaxAgeMs,
    deserializers: deserializers,
  })
  const stream = await consumer.consume({
    topics: [topic],
    mode: 'latest',
    autocommit: false,
    maxWaitTime: 50,
  })
  const sentAt = new Map<string, number>()
  const latencies: number[] = []
  stream.on('data', (message) => {
    const at = sentAt.get(message.key)
    if (at !== undefined) latencies.push(performance.now() - at)
  })
  await new Promise((resolve) => setTimeout(resolve, 3_000))
  // The messages of one tick go in one produce request, as a client that batches sends them.
  let tick:
    | { messages: MessageToProduce<string, Buffer, string, string>[]; sent: Promise<unknown> }
    | undefined
  await warmThenMeasure(async (i, measured) => {
    const key = `k${i}`
    if (measured) sentAt.set(key, performance.now())
    if (!tick) {
      const messages: MessageToProduce<string, Buffer, string, string>[] = []
      const sent = new Promise((resolve) => setImmediate(resolve)).then(() => {
        tick = undefined
        return producer.send({ messages })
      })
      tick = { messages, sent }
    }
    tick.messages.push({ topic, key, value: Buffer.from('x'), partition: i % partitions })
    await tick.sent
  })
  const deadline = Date.now() + 10_000
  while (latencies.length < sentAt.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  await stream.close()
  await consumer.close(true)
  await producer.close()
  return latencies
}
