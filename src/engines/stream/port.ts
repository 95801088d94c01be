// The event stream port: what every engine (embedded SQLite log, Kafka) provides. Records
// are opaque here; events, validation, retries and dead-lettering live in event-stream.ts,
// on top of any engine.

export interface OutgoingRecord {
  topic: string
  key: string
  value: Buffer
  headers: Record<string, string>
}

export interface StreamRecord extends OutgoingRecord {
  partition: number
  offset: number
  timestampMs: number
}

export interface RecordPosition {
  topic: string
  partition: number
  offset: number
}

/** Records of one partition, in offset order. */
export interface RecordBatch {
  topic: string
  partition: number
  records: StreamRecord[]
}

export interface ConsumeOptions {
  group: string
  topics: string[]
  /** Where a group with no committed offset starts. */
  startAt: 'earliest' | 'latest'
  /**
   * Called with one partition's records at a time; partitions run concurrently, a partition's
   * batches one after another. When it resolves, the engine commits the offset after the
   * batch's last record. When it rejects, nothing is committed and the batch is delivered again.
   */
  onBatch: (batch: RecordBatch) => Promise<void>
  batchSizeMax: number
}

export interface ConsumerHandle {
  readonly group: string
  /** The partitions this member owns now, as "topic/partition". */
  assignment(): string[]
  /** Graceful: finish in-flight batches, commit, leave the group. */
  stop(): Promise<void>
  /** Like a crash: stop at once, commit nothing, do not leave politely. For fault tests. */
  abort(): Promise<void>
}

export interface PartitionEnd {
  topic: string
  partition: number
  /** The offset the partition's next record will get. */
  end: number
}

export interface PartitionLag extends PartitionEnd {
  /** The group's next offset; 0 when it has none (see `hasCommitted`). */
  committed: number
  lag: number
  /** Whether the group has a position of its own on the partition. */
  hasCommitted: boolean
}

export type SeekTarget = { offset: number } | { timestampMs: number } | 'earliest' | 'latest'

export interface StreamEngine {
  readonly kind: 'embedded' | 'kafka'
  ensureTopics(topics: string[], partitions: number): Promise<void>
  partitionsOf(topic: string): Promise<number>
  /** Appends the records (a batch, keyed); resolves once they are durable, with their positions in input order. */
  publish(records: OutgoingRecord[]): Promise<RecordPosition[]>
  consume(options: ConsumeOptions): Promise<ConsumerHandle>
  /** Moves a group's committed offsets on every partition of a topic (for replay). The group must be stopped. */
  seek(group: string, topic: string, target: SeekTarget): Promise<void>
  /**
   * Sets a group's committed offset (the offset of the next record it reads) on single
   * partitions, the others left as they are. The group must be stopped.
   */
  commitOffsets(group: string, offsets: RecordPosition[]): Promise<void>
  /** The end of every partition of `topics` (on Kafka one ListOffsets request for all of them). */
  ends(topics: string[]): Promise<PartitionEnd[]>
  /** The ends with `group`'s committed offsets beside them. */
  lag(group: string, topics: string[]): Promise<PartitionLag[]>
  /** Forgets a group: its committed offsets and its membership. The group must be stopped; an unknown group is no error. */
  deleteGroup(group: string): Promise<void>
  /** Reads records from a partition without a group (inspection, DLQ listing). */
  read(topic: string, partition: number, fromOffset: number, countMax: number): Promise<StreamRecord[]>
  ping(): Promise<void>
  close(): Promise<void>
}

/** The partition for a key: the same key always lands on the same partition. */
export function partitionForKey(key: string, partitions: number): number {
  // FNV-1a, 32 bit: stable across processes and engines.
  let hash = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return (hash >>> 0) % partitions
}

export function dlqTopicOf(topic: string): string {
  return `${topic}.dlq`
}
