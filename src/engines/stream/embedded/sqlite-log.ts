// The embedded stream engine: a durable partitioned log in one SQLite file (WAL).
// Publishes are group-committed (PublishBatcher): concurrent callers share one
// transaction, and each is acknowledged once that transaction has committed. Consumer groups work across
// processes on the same file: members heartbeat into a table, partitions are spread
// round-robin over the live members, and a partition changes hands only through an
// ownership row, so two members never consume one partition at once.
import { randomUUID } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { DatabaseSync, type StatementSync } from 'node:sqlite'
import { sleep } from '../../../platform/limits.ts'
import { checkpointInBackground } from '../../sqlite/wal-checkpoints.ts'
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

export interface SqliteLogOptions {
  path: string
  /** 'normal' survives a process crash (kill -9); 'full' also survives power loss, at an fsync per commit. */
  synchronous: 'normal' | 'full'
  publishBatchSizeMax: number
  publishQueueLengthMax: number
  pollIntervalMs: number
  heartbeatIntervalMs: number
  sessionTimeoutMs: number
  busyTimeoutMs: number
}

export const sqliteLogDefaults: Omit<SqliteLogOptions, 'path'> = {
  synchronous: 'normal',
  publishBatchSizeMax: 5_000,
  publishQueueLengthMax: 100_000,
  pollIntervalMs: 20,
  heartbeatIntervalMs: 1_000,
  sessionTimeoutMs: 3_000,
  busyTimeoutMs: 5_000,
}

const schema = `
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS heads (topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (topic, partition)) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
  ts INTEGER NOT NULL, key TEXT NOT NULL, headers TEXT NOT NULL, value BLOB,
  PRIMARY KEY (topic, partition, offset)) STRICT;
CREATE TABLE IF NOT EXISTS group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
  committed INTEGER NOT NULL, PRIMARY KEY (grp, topic, partition)) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (grp TEXT NOT NULL, member TEXT NOT NULL, topics TEXT NOT NULL,
  heartbeat_ms INTEGER NOT NULL, PRIMARY KEY (grp, member)) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partition_owners (grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
  member TEXT NOT NULL, PRIMARY KEY (grp, topic, partition)) STRICT, WITHOUT ROWID;
`

/** How often an idle partition worker reads the log anyway, in case a wake-up was missed. */
const idleReadIntervalMs = 1_000

/**
 * A partition worker commits at most this often: committing after every batch, the groups'
 * offsets were a quarter of all statements the saga made. Records handled since the last
 * commit come again after a crash, and the inbox absorbs them.
 */
const commitIntervalMs = 100

/**
 * Records of a partition this process appended last, kept for its consumers to read from
 * memory. Consumers that keep up read a record within milliseconds of its append; one that
 * lags further reads the file. The bound keeps the memory small (a few MB per busy topic).
 */
const recentRecordsMax = 256

interface PendingCommit {
  group: string
  member: string
  topic: string
  partition: number
  offset: number
  resolve(owned: boolean): void
  reject(error: unknown): void
}

interface LogRow {
  partition: number
  offset: number
  ts: number
  key: string
  headers: string
  value: Uint8Array | null
}

export class SqliteLog implements StreamEngine {
  readonly kind = 'embedded' as const
  readonly options: SqliteLogOptions
  readonly db: DatabaseSync
  readonly #partitions = new Map<string, number>()
  readonly #members = new Set<GroupMember>()
  readonly #wakers = new Map<string, Set<() => void>>()
  readonly #batcher: PublishBatcher
  /** The next offset of each partition as last seen (own appends, or the watcher's look at others'). */
  readonly #knownEnds = new Map<string, number>()
  /**
   * The records this process appended last to each partition, contiguous from `first`: every
   * group in the process reads a new record, and most read it from here rather than the file.
   */
  readonly #recent = new Map<string, { first: number; records: StreamRecord[] }>()
  #pendingCommits: PendingCommit[] = []
  #closed = false
  #otherWriters: { timer: NodeJS.Timeout; dataVersion: number } | undefined
  readonly #sql: Record<string, StatementSync>
  readonly #checkpoints: { release(): Promise<void> }

  constructor(options: SqliteLogOptions) {
    this.options = options
    mkdirSync(dirname(options.path), { recursive: true })
    this.db = new DatabaseSync(options.path)
    this.db.exec(`PRAGMA journal_mode = WAL; PRAGMA synchronous = ${options.synchronous.toUpperCase()};
      PRAGMA busy_timeout = ${options.busyTimeoutMs}; PRAGMA foreign_keys = OFF;`)
    this.#checkpoints = checkpointInBackground(this.db, options.path)
    this.db.exec(schema)
    this.#batcher = new PublishBatcher((records) => this.#append(records), {
      batchSizeMax: options.publishBatchSizeMax,
      queueLengthMax: options.publishQueueLengthMax,
    })
    const prepare = (sql: string) => this.db.prepare(sql)
    this.#sql = {
      topic: prepare('SELECT partitions FROM topics WHERE name = ?'),
      insertTopic: prepare('INSERT INTO topics (name, partitions) VALUES (?, ?) ON CONFLICT DO NOTHING'),
      insertHead: prepare(
        'INSERT INTO heads (topic, partition, next_offset) VALUES (?, ?, 0) ON CONFLICT DO NOTHING',
      ),
      head: prepare('SELECT next_offset FROM heads WHERE topic = ? AND partition = ?'),
      setHead: prepare('UPDATE heads SET next_offset = ? WHERE topic = ? AND partition = ?'),
      append: prepare(
        'INSERT INTO log (topic, partition, offset, ts, key, headers, value) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      read: prepare(
        'SELECT partition, offset, ts, key, headers, value FROM log WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?',
      ),
      committed: prepare('SELECT committed FROM group_offsets WHERE grp = ? AND topic = ? AND partition = ?'),
      commit: prepare(
        'INSERT INTO group_offsets (grp, topic, partition, committed) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET committed = excluded.committed',
      ),
      firstAtOrAfter: prepare(
        'SELECT MIN(offset) AS offset FROM log WHERE topic = ? AND partition = ? AND ts >= ?',
      ),
      heartbeat: prepare(
        'INSERT INTO group_members (grp, member, topics, heartbeat_ms) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms',
      ),
      expireMembers: prepare('DELETE FROM group_members WHERE grp = ? AND heartbeat_ms < ?'),
      orphanOwners: prepare(
        'DELETE FROM partition_owners WHERE grp = ? AND member NOT IN (SELECT member FROM group_members WHERE grp = ?)',
      ),
      members: prepare('SELECT member, topics FROM group_members WHERE grp = ? ORDER BY member'),
      leave: prepare('DELETE FROM group_members WHERE grp = ? AND member = ?'),
      claim: prepare(
        'INSERT INTO partition_owners (grp, topic, partition, member) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING',
      ),
      owner: prepare('SELECT member FROM partition_owners WHERE grp = ? AND topic = ? AND partition = ?'),
      release: prepare(
        'DELETE FROM partition_owners WHERE grp = ? AND topic = ? AND partition = ? AND member = ?',
      ),
      dataVersion: prepare('PRAGMA data_version'),
      deleteOffsets: prepare('DELETE FROM group_offsets WHERE grp = ?'),
      deleteOwners: prepare('DELETE FROM partition_owners WHERE grp = ?'),
      deleteMembers: prepare('DELETE FROM group_members WHERE grp = ?'),
      heads: prepare('SELECT topic, partition, next_offset FROM heads'),
      topicHeads: prepare('SELECT partition, next_offset FROM heads WHERE topic = ?'),
      topicCommits: prepare('SELECT partition, committed FROM group_offsets WHERE grp = ? AND topic = ?'),
    }
  }

  async ensureTopics(topics: string[], partitions: number): Promise<void> {
    this.#transaction(() => {
      for (const topic of topics) {
        this.#sql.insertTopic.run(topic, partitions)
        const existing = this.#partitionCount(topic)
        for (let p = 0; p < existing; p++) this.#sql.insertHead.run(topic, p)
      }
    })
  }

  async partitionsOf(topic: string): Promise<number> {
    return this.#partitionCount(topic)
  }

  publish(records: OutgoingRecord[]): Promise<RecordPosition[]> {
    if (this.#closed) return Promise.reject(new Error('stream is closed'))
    return this.#batcher.publish(records)
  }

  /** Appends records in one transaction; wakes this process's consumers of the touched partitions. */
  async #append(records: OutgoingRecord[]): Promise<RecordPosition[]> {
    const heads = new Map<string, number>()
    const now = Date.now()
    const positions = this.#transaction(() => {
      const appended = records.map((record) => {
        const partitions = this.#partitionCount(record.topic)
        if (partitions === 0) throw new Error(`topic ${record.topic} does not exist`)
        const partition = partitionForKey(record.key, partitions)
        const headKey = `${record.topic}/${partition}`
        let offset = heads.get(headKey)
        if (offset === undefined) offset = this.endOffset(record.topic, partition)
        this.#sql.append.run(
          record.topic,
          partition,
          offset,
          now,
          record.key,
          JSON.stringify(record.headers),
          record.value,
        )
        heads.set(headKey, offset + 1)
        return { topic: record.topic, partition, offset }
      })
      for (const [headKey, next] of heads) {
        const slash = headKey.lastIndexOf('/')
        this.#sql.setHead.run(next, headKey.slice(0, slash), Number(headKey.slice(slash + 1)))
      }
      return appended
    })
    for (const [i, { topic, partition, offset }] of positions.entries()) {
      const { key, value, headers } = records[i]
      this.#remember({ topic, partition, offset, timestampMs: now, key, value, headers: { ...headers } })
    }
    for (const [key, next] of heads) {
      this.#knownEnds.set(key, next)
      for (const wake of this.#wakers.get(key) ?? []) wake()
    }
    return positions
  }

  async consume(options: ConsumeOptions): Promise<ConsumerHandle> {
    for (const topic of options.topics) {
      if (this.#partitionCount(topic) === 0) throw new Error(`topic ${topic} does not exist`)
    }
    this.#watchOtherWriters()
    const member = new GroupMember(this, options)
    this.#members.add(member)
    member.start()
    for (const other of this.#members) if (other !== member && other.group === options.group) other.nudge()
    return member
  }

  async seek(group: string, topic: string, target: SeekTarget): Promise<void> {
    const partitions = this.#partitionCount(topic)
    this.#transaction(() => {
      this.#refuseWhileConsuming(group)
      for (let p = 0; p < partitions; p++) {
        const end = this.endOffset(topic, p)
        let offset: number
        if (target === 'earliest') offset = 0
        else if (target === 'latest') offset = end
        else if ('offset' in target) offset = Math.max(0, Math.min(target.offset, end))
        else {
          const row = this.#sql.firstAtOrAfter.get(topic, p, target.timestampMs) as { offset: number | null }
          offset = row.offset ?? end
        }
        this.#sql.commit.run(group, topic, p, offset)
      }
    })
  }

  async commitOffsets(group: string, offsets: RecordPosition[]): Promise<void> {
    this.#transaction(() => {
      // A member would overwrite them with its next commit (Kafka refuses too).
      this.#refuseWhileConsuming(group)
      for (const { topic, partition, offset } of offsets)
        this.#sql.commit.run(group, topic, partition, offset)
    })
  }

  /** Throws while members of any process still beat in `group` (as Kafka refuses a group with members). */
  #refuseWhileConsuming(group: string): void {
    this.#sql.expireMembers.run(group, Date.now() - this.options.sessionTimeoutMs)
    if (this.#sql.members.all(group).length > 0)
      throw new Error(`group ${group} has members connected: stop the processes that consume as it first`)
  }

  async deleteGroup(group: string): Promise<void> {
    this.#transaction(() => {
      this.#refuseWhileConsuming(group)
      this.#sql.deleteOffsets.run(group)
      this.#sql.deleteOwners.run(group)
      this.#sql.deleteMembers.run(group)
    })
  }

  async ends(topics: string[]): Promise<PartitionEnd[]> {
    const ends: PartitionEnd[] = []
    for (const topic of topics) {
      const heads = new Map(
        (this.#sql.topicHeads.all(topic) as { partition: number; next_offset: number }[]).map((row) => [
          row.partition,
          row.next_offset,
        ]),
      )
      for (let p = 0; p < this.#partitionCount(topic); p++)
        ends.push({ topic, partition: p, end: heads.get(p) ?? 0 })
    }
    return ends
  }

  async lag(group: string, topics: string[]): Promise<PartitionLag[]> {
    // Two reads a topic, not two a partition: admission control and the metrics ask often.
    const commits = new Map<string, number>()
    for (const topic of topics)
      for (const row of this.#sql.topicCommits.all(group, topic) as {
        partition: number
        committed: number
      }[])
        commits.set(`${topic}/${row.partition}`, row.committed)
    return (await this.ends(topics)).map(({ topic, partition, end }) => {
      const committed = commits.get(`${topic}/${partition}`)
      const from = committed ?? 0
      return {
        topic,
        partition,
        committed: from,
        end,
        lag: Math.max(0, end - from),
        hasCommitted: committed !== undefined,
      }
    })
  }

  async read(
    topic: string,
    partition: number,
    fromOffset: number,
    countMax: number,
  ): Promise<StreamRecord[]> {
    return this.readSync(topic, partition, fromOffset, countMax)
  }

  /** Keeps a record just appended (and committed) with the partition's recent ones. */
  #remember(record: StreamRecord): void {
    const key = `${record.topic}/${record.partition}`
    const recent = this.#recent.get(key)
    if (!recent || recent.first + recent.records.length !== record.offset) {
      // Another process appended in between: start again from this record.
      this.#recent.set(key, { first: record.offset, records: [record] })
      return
    }
    recent.records.push(record)
    if (recent.records.length > recentRecordsMax) {
      const dropped = recent.records.length - recentRecordsMax / 2
      recent.records.splice(0, dropped)
      recent.first += dropped
    }
  }

  readSync(topic: string, partition: number, fromOffset: number, countMax: number): StreamRecord[] {
    const recent = this.#recent.get(`${topic}/${partition}`)
    if (recent && fromOffset >= recent.first && fromOffset < recent.first + recent.records.length) {
      const start = fromOffset - recent.first
      return recent.records.slice(start, start + countMax)
    }
    const rows = this.#sql.read.all(topic, partition, fromOffset, countMax) as unknown as LogRow[]
    return rows.map((row) => ({
      topic,
      partition: row.partition,
      offset: row.offset,
      timestampMs: row.ts,
      key: row.key,
      headers: JSON.parse(row.headers),
      value: row.value
        ? Buffer.from(row.value.buffer, row.value.byteOffset, row.value.byteLength)
        : Buffer.alloc(0),
    }))
  }

  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get()
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#batcher.flushed()
    await Promise.all([...this.#members].map((member) => member.stop()))
    clearInterval(this.#otherWriters?.timer)
    this.db.close()
    await this.#checkpoints.release()
  }

  // ---- used by GroupMember ----

  endOffset(topic: string, partition: number): number {
    const row = this.#sql.head.get(topic, partition) as { next_offset: number } | undefined
    return row?.next_offset ?? 0
  }

  committedOffset(group: string, topic: string, partition: number): number | undefined {
    const row = this.#sql.committed.get(group, topic, partition) as { committed: number } | undefined
    return row?.committed
  }

  /** Whether `topic/partition` may hold records at `offset` or later, as far as this process has seen. */
  mayHaveRecords(topic: string, partition: number, offset: number): boolean {
    const key = `${topic}/${partition}`
    let end = this.#knownEnds.get(key)
    if (end === undefined) this.#knownEnds.set(key, (end = this.endOffset(topic, partition)))
    return offset < end
  }

  /**
   * Commits only while `member` still owns the partition: a member that lost it is fenced
   * off. Commits asked for in the same turn of the event loop share one transaction.
   */
  commitIfOwner(group: string, member: string, topic: string, partition: number, offset: number) {
    return new Promise<boolean>((resolve, reject) => {
      this.#pendingCommits.push({ group, member, topic, partition, offset, resolve, reject })
      if (this.#pendingCommits.length === 1) setImmediate(() => this.#flushCommits())
    })
  }

  #flushCommits(): void {
    const commits = this.#pendingCommits
    this.#pendingCommits = []
    // Members stop (and commit) before the file closes; a commit asked for after that,
    // by an abandoned worker, is dropped, and the records come again to the next owner.
    if (!this.db.isOpen) {
      for (const commit of commits) commit.resolve(false)
      return
    }
    let owned: boolean[]
    try {
      owned = this.#transaction(() =>
        commits.map(({ group, member, topic, partition, offset }) => {
          const owner = this.#sql.owner.get(group, topic, partition) as { member: string } | undefined
          if (owner?.member !== member) return false
          this.#sql.commit.run(group, topic, partition, offset)
          return true
        }),
      )
    } catch (error) {
      for (const commit of commits) commit.reject(error)
      return
    }
    for (const [i, commit] of commits.entries()) commit.resolve(owned[i])
  }

  /** Heartbeats, expires dead members, and returns the partitions `member` should own now. */
  rebalance(group: string, member: string, topics: string[]): Set<string> {
    return this.#transaction(() => {
      const now = Date.now()
      this.#sql.heartbeat.run(group, member, JSON.stringify(topics), now)
      this.#sql.expireMembers.run(group, now - this.options.sessionTimeoutMs)
      this.#sql.orphanOwners.run(group, group)
      const members = (this.#sql.members.all(group) as { member: string; topics: string }[]).map((row) => ({
        member: row.member,
        topics: JSON.parse(row.topics) as string[],
      }))
      const desired = new Set<string>()
      for (const topic of topics) {
        const subscribers = members.filter((m) => m.topics.includes(topic)).map((m) => m.member)
        const index = subscribers.indexOf(member)
        const partitions = this.#partitionCount(topic)
        for (let p = index; index >= 0 && p < partitions; p += subscribers.length)
          desired.add(`${topic}/${p}`)
      }
      return desired
    })
  }

  claim(group: string, member: string, topic: string, partition: number): boolean {
    this.#sql.claim.run(group, topic, partition, member)
    const owner = this.#sql.owner.get(group, topic, partition) as { member: string } | undefined
    return owner?.member === member
  }

  release(group: string, member: string, topic: string, partition: number): void {
    this.#sql.release.run(group, topic, partition, member)
  }

  leave(group: string, member: string): void {
    this.#sql.leave.run(group, member)
    this.#sql.orphanOwners.run(group, group)
    for (const other of this.#members) if (other.group === group) other.nudge()
  }

  forget(member: GroupMember): void {
    this.#members.delete(member)
  }

  /**
   * Wakes this process's consumers when another process appends. Every `pollIntervalMs` it
   * asks SQLite whether another connection has committed since (`PRAGMA data_version`, no
   * read of the log); only then does it compare the partition heads, and it wakes the
   * consumers of the partitions that grew. A process alone on its file never reads the log
   * to find nothing.
   */
  #watchOtherWriters(): void {
    if (this.#otherWriters) return
    const dataVersion = () => (this.#sql.dataVersion.get() as { data_version: number }).data_version
    // Heads past what this process knows were appended by another: those partitions wake.
    const catchUp = (wake: boolean) => {
      for (const row of this.#sql.heads.all() as {
        topic: string
        partition: number
        next_offset: number
      }[]) {
        const key = `${row.topic}/${row.partition}`
        if (row.next_offset <= (this.#knownEnds.get(key) ?? -1)) continue
        this.#knownEnds.set(key, row.next_offset)
        if (wake) for (const waker of this.#wakers.get(key) ?? []) waker()
      }
    }
    const watch = { dataVersion: dataVersion(), timer: undefined as unknown as NodeJS.Timeout }
    catchUp(false)
    watch.timer = setInterval(() => {
      if (this.#closed) return
      const version = dataVersion()
      if (version === watch.dataVersion) return
      watch.dataVersion = version
      catchUp(true)
    }, this.options.pollIntervalMs)
    watch.timer.unref()
    this.#otherWriters = watch
  }

  /** Registers a callback run when records are appended to topic/partition (by this process, or another). */
  onAppend(key: string, wake: () => void): () => void {
    let set = this.#wakers.get(key)
    if (!set) this.#wakers.set(key, (set = new Set()))
    set.add(wake)
    return () => set.delete(wake)
  }

  #partitionCount(topic: string): number {
    let count = this.#partitions.get(topic)
    if (count === undefined) {
      const row = this.#sql.topic.get(topic) as { partitions: number } | undefined
      if (!row) return 0
      count = row.partitions
      this.#partitions.set(topic, count)
    }
    return count
  }

  #transaction<T>(work: () => T): T {
    this.db.exec('BEGIN IMMEDIATE')
    try {
      const result = work()
      this.db.exec('COMMIT')
      return result
    } catch (error) {
      this.db.exec('ROLLBACK')
      throw error
    }
  }
}

/** One member of a consumer group: owns some partitions and runs one worker per partition. */
class GroupMember implements ConsumerHandle {
  readonly group: string
  readonly id = randomUUID()
  readonly #log: SqliteLog
  readonly #options: ConsumeOptions
  readonly #workers = new Map<string, PartitionWorker>()
  readonly #stopping = new AbortController()
  #timer: NodeJS.Timeout | undefined
  #ticking: Promise<void> = Promise.resolve()

  constructor(log: SqliteLog, options: ConsumeOptions) {
    this.#log = log
    this.#options = options
    this.group = options.group
  }

  start(): void {
    this.nudge()
    this.#timer = setInterval(() => this.nudge(), this.#log.options.heartbeatIntervalMs)
  }

  assignment(): string[] {
    return [...this.#workers.keys()].sort()
  }

  /** Runs one rebalance round now (serialized with any round in progress). */
  nudge(): void {
    if (this.#stopping.signal.aborted) return
    this.#ticking = this.#ticking.then(() => this.#tick()).catch(() => {})
  }

  async #tick(): Promise<void> {
    if (this.#stopping.signal.aborted) return
    const desired = this.#log.rebalance(this.group, this.id, this.#options.topics)
    const releases: Promise<void>[] = []
    for (const [key, worker] of this.#workers) {
      if (desired.has(key)) continue
      this.#workers.delete(key)
      releases.push(
        worker.stop().then(() => this.#log.release(this.group, this.id, worker.topic, worker.partition)),
      )
    }
    await Promise.all(releases)
    for (const key of desired) {
      if (this.#workers.has(key)) continue
      const slash = key.lastIndexOf('/')
      const topic = key.slice(0, slash)
      const partition = Number(key.slice(slash + 1))
      if (!this.#log.claim(this.group, this.id, topic, partition)) continue
      const worker = new PartitionWorker(this.#log, this.#options, this.id, topic, partition)
      this.#workers.set(key, worker)
      worker.start()
    }
  }

  async stop(): Promise<void> {
    if (this.#stopping.signal.aborted) return
    this.#stopping.abort()
    clearInterval(this.#timer)
    await this.#ticking
    await Promise.all([...this.#workers.values()].map((worker) => worker.stop()))
    this.#workers.clear()
    this.#log.leave(this.group, this.id)
    this.#log.forget(this)
  }

  async abort(): Promise<void> {
    if (this.#stopping.signal.aborted) return
    this.#stopping.abort()
    clearInterval(this.#timer)
    for (const worker of this.#workers.values()) worker.abandon()
    this.#workers.clear()
    // A crashed member leaves its heartbeat row behind; the others take over after the session timeout.
    this.#log.forget(this)
  }
}

class PartitionWorker {
  readonly topic: string
  readonly partition: number
  readonly #log: SqliteLog
  readonly #options: ConsumeOptions
  readonly #member: string
  readonly #stop = new AbortController()
  #abandoned = false
  #running: Promise<void> = Promise.resolve()
  #wake: (() => void) | undefined

  constructor(log: SqliteLog, options: ConsumeOptions, member: string, topic: string, partition: number) {
    this.#log = log
    this.#options = options
    this.#member = member
    this.topic = topic
    this.partition = partition
  }

  start(): void {
    this.#running = this.#run()
  }

  async #run(): Promise<void> {
    const { group } = this.#options
    const committed = this.#log.committedOffset(group, this.topic, this.partition)
    let next =
      committed ??
      (this.#options.startAt === 'earliest' ? 0 : this.#log.endOffset(this.topic, this.partition))
    if (committed === undefined && !(await this.#commit(next))) return
    const unsubscribe = this.#log.onAppend(`${this.topic}/${this.partition}`, () => this.#wake?.())
    /** The offset handled up to and not yet committed, if any; when it was last committed. */
    let uncommitted: number | undefined
    let committedAt = Date.now()
    /** Commits what was handled (when the interval has passed, unless `now`); false once the partition is lost. */
    const commitHandled = async (now = false) => {
      if (uncommitted === undefined || (!now && Date.now() - committedAt < commitIntervalMs)) return true
      if (!(await this.#commit(uncommitted))) return false
      uncommitted = undefined
      committedAt = Date.now()
      return true
    }
    try {
      let lookAnyway = true
      while (!this.#stop.signal.aborted) {
        const records =
          lookAnyway || this.#log.mayHaveRecords(this.topic, this.partition, next)
            ? this.#log.readSync(this.topic, this.partition, next, this.#options.batchSizeMax)
            : []
        if (records.length === 0) {
          const commitInMs = committedAt + commitIntervalMs - Date.now()
          if (uncommitted !== undefined && commitInMs <= 0) {
            if (!(await commitHandled())) return
            continue // records appended while the commit was written would find no one to wake
          }
          // Woken by an append (this process's, or another's seen by the log's watcher); the
          // timeout is only a safety net, after which the log is read whatever is known (or
          // the time to commit what was handled). One timer, cleared on waking: a worker woken
          // hundreds of times a second must not leave a timer and an abort listener behind
          // each time. stop() wakes it too.
          lookAnyway = await new Promise<boolean>((resolve) => {
            const timer = setTimeout(
              () => resolve(true),
              uncommitted === undefined ? idleReadIntervalMs : commitInMs,
            )
            this.#wake = () => {
              clearTimeout(timer)
              resolve(false)
            }
          })
          this.#wake = undefined
          continue
        }
        lookAnyway = false
        try {
          await this.#options.onBatch({ topic: this.topic, partition: this.partition, records })
        } catch {
          // Not committed: the same records come again after a pause. What was handled
          // before them is committed meanwhile, however long they keep failing.
          if (!(await commitHandled())) return
          await sleep(100, this.#stop.signal)
          continue
        }
        if (this.#abandoned) return
        next = records[records.length - 1].offset + 1
        uncommitted = next
        if (!(await commitHandled())) return
      }
      if (!this.#abandoned) await commitHandled(true)
    } finally {
      unsubscribe()
    }
  }

  /**
   * Commits `offset` while this member owns the partition; resolves false once it does not
   * (or is stopping). A failed commit (the file busy) is tried again, not given up on.
   */
  async #commit(offset: number): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#log.commitIfOwner(
          this.#options.group,
          this.#member,
          this.topic,
          this.partition,
          offset,
        )
      } catch {
        // Stopping gives up after a second: the next owner starts from the last commit.
        if (this.#abandoned || (this.#stop.signal.aborted && attempt >= 10)) return false
        await sleep(100)
      }
    }
  }

  /** Finishes the batch in hand (and commits it), then stops. */
  async stop(): Promise<void> {
    this.#stop.abort()
    this.#wake?.()
    await this.#running
  }

  abandon(): void {
    this.#abandoned = true
    this.#stop.abort()
    this.#wake?.()
  }
}
