// The distributed stream engine: Apache Kafka through @platformatic/kafka. The producer is
// idempotent (acks from all in-sync replicas, no duplicates on its own retries); records
// are partitioned by the same key hash as the embedded engine. Each consumer handle is one
// member of a Kafka consumer group; its records are queued per partition and handed over
// one partition batch at a time, and the offset is committed only after the batch is handled.
import { randomUUID } from 'node:crypto'
import {
  Admin,
  Consumer,
  type Message,
  type MessagesStream,
  Producer,
  stringDeserializer,
  stringSerializer,
} from '@platformatic/kafka'
import { errorMessage } from '../../../platform/errors.ts'
import { sleep, withTimeout } from '../../../platform/limits.ts'
import {
  type ConsumeOptions,
  type ConsumerHandle,
  type OutgoingRecord,
  type PartitionEnd,
  type PartitionLag,
  partitionForKey,
  type RecordPosition,
  type SeekTarget,
  type StreamEngine,
  type StreamRecord,
} from '../port.ts'
import { PublishBatcher } from '../publish-batcher.ts'

export interface KafkaStreamOptions {
  brokers: string[]
  clientId: string
  replicationFactor: number
  requestTimeoutMs: number
  publishBatchSizeMax: number
  publishQueueLengthMax: number
  sessionTimeoutMs: number
  heartbeatIntervalMs: number
  fetchWaitMaxMs: number
  /** How long the clients trust their cluster metadata; a stale-metadata error refreshes it sooner. */
  metadataMaxAgeMs: number
  /** Records fetched but not yet handled, per member; past it the member stops fetching. */
  bufferedRecordsMax: number
  /** A member commits its handled offsets at most this often (a stopping member at once). */
  commitIntervalMs: number
}

export const kafkaStreamDefaults: Omit<KafkaStreamOptions, 'brokers' | 'clientId'> = {
  replicationFactor: 1,
  requestTimeoutMs: 10_000,
  publishBatchSizeMax: 5_000,
  publishQueueLengthMax: 100_000,
  sessionTimeoutMs: 10_000,
  heartbeatIntervalMs: 1_000,
  // The broker answers a fetch as soon as one record is there (minBytes 1): a longer wait
  // costs no latency, only fewer empty fetches from idle consumers.
  fetchWaitMaxMs: 500,
  // The client's own default (5 s) makes a send or a fetch wait for a metadata round trip
  // every 5 s, a spike in the p99 publish-to-handler latency; Kafka's Java clients use 5 min.
  metadataMaxAgeMs: 300_000,
  bufferedRecordsMax: 10_000,
  // A commit per handled batch made offset commits the broker's busiest request at a low
  // rate (five per event, one per group). Offsets handled since the last commit come again
  // after a crash or a rebalance, and the inbox absorbs them.
  commitIntervalMs: 200,
}

type KafkaMessage = Message<string, Buffer, string, string>

const identity = (data?: Buffer) => data
/** Keys and headers as strings, values as raw bytes. */
export const serializers = {
  key: stringSerializer,
  value: identity,
  headerKey: stringSerializer,
  headerValue: stringSerializer,
}
export const deserializers = {
  key: (data?: Buffer) => stringDeserializer(data) ?? '',
  value: identity as (data?: Buffer) => Buffer,
  headerKey: (data?: Buffer) => stringDeserializer(data) ?? '',
  headerValue: (data?: Buffer) => stringDeserializer(data) ?? '',
}

/** The pause before offsets a commit request had refused go again. */
const commitRetryMs = 500

const LATEST = -1n
const EARLIEST = -2n

export class KafkaStream implements StreamEngine {
  readonly kind = 'kafka' as const
  readonly options: KafkaStreamOptions
  readonly #admin: Admin
  readonly #producer: Producer<string, Buffer, string, string>
  readonly #batcher: PublishBatcher
  readonly #partitions = new Map<string, number>()
  readonly #members = new Set<KafkaMember>()

  constructor(options: KafkaStreamOptions) {
    this.options = options
    const base = this.baseOptions
    this.#admin = new Admin({ ...base, clientId: `${options.clientId}-admin` })
    this.#producer = new Producer({
      ...base,
      clientId: `${options.clientId}-producer`,
      idempotent: true,
      serializers,
    })
    this.#batcher = new PublishBatcher((records) => this.#send(records), {
      batchSizeMax: options.publishBatchSizeMax,
      queueLengthMax: options.publishQueueLengthMax,
    })
  }

  get baseOptions() {
    return {
      bootstrapBrokers: this.options.brokers,
      timeout: this.options.requestTimeoutMs,
      retries: 3,
      metadataMaxAge: this.options.metadataMaxAgeMs,
    }
  }

  async ensureTopics(topics: string[], partitions: number): Promise<void> {
    const existing = new Set(await this.#admin.listTopics())
    const missing = topics.filter((topic) => !existing.has(topic))
    for (const topic of missing) {
      try {
        await this.#admin.createTopics({
          topics: [topic],
          partitions,
          replicas: this.options.replicationFactor,
        })
      } catch (error) {
        if (!/already exists/i.test(errorMessage(error)) && !/TOPIC_ALREADY_EXISTS/.test(String(error)))
          throw error
      }
    }
  }

  async partitionsOf(topic: string): Promise<number> {
    let count = this.#partitions.get(topic)
    if (count === undefined) {
      const metadata = await this.#admin.metadata({ topics: [topic] })
      count = metadata.topics.get(topic)?.partitionsCount ?? 0
      if (count > 0) this.#partitions.set(topic, count)
    }
    return count
  }

  publish(records: OutgoingRecord[]): Promise<RecordPosition[]> {
    return this.#batcher.publish(records)
  }

  async #send(records: OutgoingRecord[]): Promise<RecordPosition[]> {
    const counts = new Map<string, number>()
    for (const topic of new Set(records.map((record) => record.topic))) {
      const partitions = await this.partitionsOf(topic)
      if (partitions === 0) throw new Error(`topic ${topic} does not exist`)
      counts.set(topic, partitions)
    }
    const partitioned = records.map((record) => ({
      record,
      partition: partitionForKey(record.key, counts.get(record.topic)!),
    }))
    const result = await this.#producer.send({
      messages: partitioned.map(({ record, partition }) => ({
        topic: record.topic,
        partition,
        key: record.key,
        value: record.value,
        headers: record.headers,
      })),
    })
    // Kafka answers with the base offset of each partition's batch; records follow in order.
    const next = new Map<string, number>()
    for (const { topic, partition, offset } of result.offsets ?? [])
      next.set(`${topic}/${partition}`, Number(offset))
    return partitioned.map(({ record, partition }) => {
      const key = `${record.topic}/${partition}`
      const offset = next.get(key)
      if (offset === undefined) throw new Error(`no offset acknowledged for ${key}`)
      next.set(key, offset + 1)
      return { topic: record.topic, partition, offset }
    })
  }

  async consume(options: ConsumeOptions): Promise<ConsumerHandle> {
    for (const topic of options.topics) {
      if ((await this.partitionsOf(topic)) === 0) throw new Error(`topic ${topic} does not exist`)
    }
    const member = new KafkaMember(this, options, () => this.#members.delete(member))
    this.#members.add(member)
    await member.start()
    return member
  }

  async seek(group: string, topic: string, target: SeekTarget): Promise<void> {
    const partitions = await this.partitionsOf(topic)
    const indexes = [...Array(partitions).keys()]
    const ends = await this.#listOffsets(topic, indexes, LATEST)
    let offsets: bigint[]
    if (target === 'earliest') offsets = await this.#listOffsets(topic, indexes, EARLIEST)
    else if (target === 'latest') offsets = ends
    else if ('offset' in target) {
      const starts = await this.#listOffsets(topic, indexes, EARLIEST)
      offsets = indexes.map((p) => {
        const wanted = BigInt(target.offset)
        return wanted < starts[p] ? starts[p] : wanted > ends[p] ? ends[p] : wanted
      })
    } else {
      const found = await this.#listOffsets(topic, indexes, BigInt(target.timestampMs))
      offsets = found.map((offset, p) => (offset < 0n ? ends[p] : offset))
    }
    await this.commitOffsets(
      group,
      offsets.map((offset, partition) => ({ topic, partition, offset: Number(offset) })),
    )
  }

  async commitOffsets(group: string, offsets: RecordPosition[]): Promise<void> {
    const topics = [...new Set(offsets.map((o) => o.topic))].map((name) => ({
      name,
      partitionOffsets: offsets
        .filter((o) => o.topic === name)
        .map(({ partition, offset }) => ({ partition, offset: BigInt(offset) })),
    }))
    try {
      await this.#admin.alterConsumerGroupOffsets({ groupId: group, topics })
    } catch (error) {
      // Kafka moves a group's offsets only while no member is connected.
      if (/not aware of this member|UNKNOWN_MEMBER_ID|NON_EMPTY_GROUP/i.test(errorMessage(error)))
        throw new Error(
          `group ${group} has members connected: stop the processes that consume as it, then replay`,
        )
      throw error
    }
  }

  async #listOffsets(topic: string, partitions: number[], timestamp: bigint): Promise<bigint[]> {
    const listed = await this.#admin.listOffsets({
      topics: [
        { name: topic, partitions: partitions.map((partitionIndex) => ({ partitionIndex, timestamp })) },
      ],
    })
    const byPartition = new Map((listed[0]?.partitions ?? []).map((p) => [p.partitionIndex, p.offset]))
    return partitions.map((partition) => byPartition.get(partition) ?? -1n)
  }

  async deleteGroup(group: string): Promise<void> {
    try {
      await this.#admin.deleteGroups({ groups: [group] })
    } catch (error) {
      const message = errorMessage(error)
      if (/GROUP_ID_NOT_FOUND|does not exist/i.test(message)) return
      if (/NON_EMPTY_GROUP|group is not empty/i.test(message))
        throw new Error(`group ${group} has members connected: stop the processes that consume as it first`)
      throw error
    }
  }

  async ends(topics: string[]): Promise<PartitionEnd[]> {
    const counts = await Promise.all(topics.map((topic) => this.partitionsOf(topic)))
    // One ListOffsets for every topic: freshness and admission control ask several times a second.
    const listed = await this.#admin.listOffsets({
      topics: topics.map((name, i) => ({
        name,
        partitions: [...Array(counts[i]).keys()].map((partitionIndex) => ({
          partitionIndex,
          timestamp: LATEST,
        })),
      })),
    })
    return topics.flatMap((topic, i) => {
      const ends = new Map(
        listed.find((t) => t.name === topic)?.partitions.map((p) => [p.partitionIndex, p.offset]),
      )
      return [...Array(counts[i]).keys()].map((partition) => ({
        topic,
        partition,
        end: Number(ends.get(partition) ?? -1n),
      }))
    })
  }

  async lag(group: string, topics: string[]): Promise<PartitionLag[]> {
    // Two requests whatever the number of topics: the group's offsets, and every topic's ends.
    const [[committed], ends] = await Promise.all([
      this.#admin.listConsumerGroupOffsets({ groups: [group] }),
      this.ends(topics),
    ])
    const offsets = new Map(
      committed?.topics.flatMap((t) =>
        t.partitions.map((p) => [`${t.name}/${p.partitionIndex}`, p.committedOffset]),
      ),
    )
    return ends.map(({ topic, partition, end }) => {
      const at = offsets.get(`${topic}/${partition}`) ?? -1n
      const from = at < 0n ? 0 : Number(at)
      return { topic, partition, committed: from, end, lag: Math.max(0, end - from), hasCommitted: at >= 0n }
    })
  }

  /** Reads one partition from an offset with a throwaway consumer (no group offsets are committed). */
  async read(
    topic: string,
    partition: number,
    fromOffset: number,
    countMax: number,
  ): Promise<StreamRecord[]> {
    const [end] = await this.#listOffsets(topic, [partition], LATEST)
    const last = Math.min(Number(end), fromOffset + countMax) - 1
    if (last < fromOffset) return []
    const consumer = new Consumer<string, Buffer, string, string>({
      ...this.baseOptions,
      clientId: `${this.options.clientId}-reader`,
      groupId: `mercato-reader-${randomUUID()}`,
      deserializers,
    })
    const records: StreamRecord[] = []
    try {
      const stream = await consumer.consume({
        topics: [topic],
        mode: 'manual',
        offsets: [{ topic, partition, offset: BigInt(fromOffset) }],
        autocommit: false,
        maxWaitTime: this.options.fetchWaitMaxMs,
      })
      await withTimeout(
        `reading ${topic}/${partition}`,
        this.options.requestTimeoutMs,
        (async () => {
          for await (const message of stream as AsyncIterable<KafkaMessage>) {
            if (message.partition !== partition || Number(message.offset) < fromOffset) continue
            records.push(toRecord(message))
            if (Number(message.offset) >= last) break
          }
        })(),
      )
      await stream.close()
    } finally {
      await consumer.close(true)
    }
    return records
  }

  async ping(): Promise<void> {
    await withTimeout('kafka metadata', this.options.requestTimeoutMs, this.#admin.metadata({ topics: [] }))
  }

  async close(): Promise<void> {
    await this.#batcher.flushed()
    await Promise.all([...this.#members].map((member) => member.stop()))
    await this.#producer.close()
    await this.#admin.close()
  }
}

function toRecord(message: KafkaMessage): StreamRecord {
  return {
    topic: message.topic,
    partition: message.partition,
    offset: Number(message.offset),
    timestampMs: Number(message.timestamp),
    key: message.key ?? '',
    value: message.value ?? Buffer.alloc(0),
    headers: Object.fromEntries(message.headers),
  }
}

interface PartitionQueue {
  topic: string
  partition: number
  records: StreamRecord[]
  leaderEpoch: number
  draining: Promise<void> | undefined
  /** The offset after the last record queued or handled, to drop what a re-fetch brings again. */
  next: number
}

class KafkaMember implements ConsumerHandle {
  readonly group: string
  readonly #engine: KafkaStream
  readonly #options: ConsumeOptions
  readonly #consumer: Consumer<string, Buffer, string, string>
  readonly #queues = new Map<string, PartitionQueue>()
  readonly #forget: () => void
  /** Per partition, the offset after the last batch handled, not yet committed. */
  readonly #toCommit = new Map<
    string,
    { topic: string; partition: number; offset: bigint; leaderEpoch: number }
  >()
  #committing: Promise<void> | undefined
  /** When the last commit request left; the next waits for the commit interval. */
  #committedAt = 0
  #commitTimer: NodeJS.Timeout | undefined
  #stream: MessagesStream<string, Buffer, string, string> | undefined
  #buffered = 0
  #stopping = false
  #abandoned = false

  constructor(engine: KafkaStream, options: ConsumeOptions, forget: () => void) {
    this.#engine = engine
    this.#options = options
    this.#forget = forget
    this.group = options.group
    this.#consumer = new Consumer({
      ...engine.baseOptions,
      clientId: `${engine.options.clientId}-${options.group}`,
      groupId: options.group,
      sessionTimeout: engine.options.sessionTimeoutMs,
      rebalanceTimeout: engine.options.sessionTimeoutMs,
      heartbeatInterval: engine.options.heartbeatIntervalMs,
      deserializers,
    })
  }

  async start(): Promise<void> {
    this.#consumer.on('consumer:group:join', () => {
      // After a rebalance the stream fetches again from the committed offsets: what is
      // queued and not yet handled will come again, to this member or another.
      for (const queue of this.#queues.values()) {
        this.#buffered -= queue.records.length
        queue.records = []
      }
      this.#resumeIfRoom()
    })
    this.#stream = await this.#consumer.consume({
      topics: this.#options.topics,
      mode: 'committed',
      fallbackMode: this.#options.startAt,
      autocommit: false,
      maxWaitTime: this.#engine.options.fetchWaitMaxMs,
      sessionTimeout: this.#engine.options.sessionTimeoutMs,
      heartbeatInterval: this.#engine.options.heartbeatIntervalMs,
    })
    this.#stream.on('data', (message: KafkaMessage) => this.#enqueue(message))
    this.#stream.on('error', () => {})
  }

  assignment(): string[] {
    return (this.#consumer.assignments ?? [])
      .flatMap(({ topic, partitions }) => partitions.map((p) => `${topic}/${p}`))
      .sort()
  }

  #enqueue(message: KafkaMessage): void {
    if (this.#stopping) return
    // Right after a rebalance the client may still deliver records of partitions the group
    // has given to another member; handling them here would run one partition in two places.
    if (!this.#owns(message.topic, message.partition)) return
    const key = `${message.topic}/${message.partition}`
    let queue = this.#queues.get(key)
    if (!queue) {
      queue = {
        topic: message.topic,
        partition: message.partition,
        records: [],
        leaderEpoch: 0,
        draining: undefined,
        next: 0,
      }
      this.#queues.set(key, queue)
    }
    const offset = Number(message.offset)
    if (queue.records.length > 0 && offset < queue.next) return
    queue.records.push(toRecord(message))
    queue.leaderEpoch = message.leaderEpoch
    queue.next = offset + 1
    this.#buffered++
    if (this.#buffered >= this.#engine.options.bufferedRecordsMax) this.#stream?.pause()
    if (!queue.draining) queue.draining = this.#drain(queue)
  }

  async #drain(queue: PartitionQueue): Promise<void> {
    while (queue.records.length > 0 && !this.#stopping) {
      const records = queue.records.splice(0, this.#options.batchSizeMax)
      this.#buffered -= records.length
      this.#resumeIfRoom()
      for (;;) {
        try {
          await this.#options.onBatch({ topic: queue.topic, partition: queue.partition, records })
          break
        } catch {
          if (this.#abandoned) break
          await sleep(100)
        }
      }
      if (this.#abandoned) break
      // Handling goes on while the commit travels: the next batch never waits on it.
      this.#toCommit.set(`${queue.topic}/${queue.partition}`, {
        topic: queue.topic,
        partition: queue.partition,
        offset: BigInt(records[records.length - 1].offset + 1),
        leaderEpoch: queue.leaderEpoch,
      })
      this.#scheduleCommit()
    }
    queue.draining = undefined
  }

  #owns(topic: string, partition: number): boolean {
    return (this.#consumer.assignments ?? []).some(
      (a) => a.topic === topic && a.partitions.includes(partition),
    )
  }

  /**
   * Commits the member's handled offsets, one request at a time and at most once per
   * commit interval: the partitions handled meanwhile go together in the next request.
   */
  #scheduleCommit(): void {
    if (this.#committing || this.#commitTimer || this.#abandoned || this.#toCommit.size === 0) return
    const waitMs = this.#committedAt + this.#engine.options.commitIntervalMs - Date.now()
    if (waitMs > 0 && !this.#stopping) {
      this.#commitTimer = setTimeout(() => {
        this.#commitTimer = undefined
        this.#scheduleCommit()
      }, waitMs)
      return
    }
    this.#committedAt = Date.now()
    this.#committing = this.#commit().finally(() => {
      this.#committing = undefined
      this.#scheduleCommit()
    })
  }

  async #commit(): Promise<void> {
    // A partition a rebalance took is left out: its refusal would fail the whole request.
    const offsets = [...this.#toCommit.values()].filter((o) => this.#owns(o.topic, o.partition))
    this.#toCommit.clear()
    if (offsets.length === 0) return
    try {
      await this.#consumer.commit({ offsets })
    } catch {
      // Refused (a rebalance under way, the broker away): the offsets go again in the next
      // request, a moment later, unless a newer one has come. One of a partition given away
      // meanwhile is left out then; its next owner starts from the last commit, and the
      // inbox absorbs what it sees twice. A member that stops tries once more, no more.
      if (this.#stopping) return
      for (const o of offsets) {
        const key = `${o.topic}/${o.partition}`
        if (!this.#toCommit.has(key)) this.#toCommit.set(key, o)
      }
      await sleep(commitRetryMs)
    }
  }

  #resumeIfRoom(): void {
    if (
      !this.#stopping &&
      this.#stream?.isPaused() &&
      this.#buffered < this.#engine.options.bufferedRecordsMax / 2
    ) {
      this.#stream.resume()
    }
  }

  async stop(): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    this.#stream?.pause()
    await Promise.all([...this.#queues.values()].map((queue) => queue.draining))
    // The last commit, without waiting out the interval: one more try if it had been
    // refused (stopping skips the pause).
    clearTimeout(this.#commitTimer)
    this.#commitTimer = undefined
    this.#scheduleCommit()
    while (this.#committing) await this.#committing
    await this.#close(false)
  }

  async abort(): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    this.#abandoned = true
    clearTimeout(this.#commitTimer)
    await this.#close(true)
  }

  async #close(force: boolean): Promise<void> {
    try {
      await this.#stream?.close()
      await this.#consumer.close(force)
    } catch (error) {
      if (!force) throw error
    } finally {
      this.#forget()
    }
  }
}
