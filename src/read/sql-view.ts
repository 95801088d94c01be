// Views kept in the `views` store (a SQLite file, or a PostgreSQL schema): each generation
// has its own tables, and the positions live in one table written in the same transaction
// as the documents.
import { requestRole } from '../contracts/requests.ts'
import { forgetConsumer, recordAllHandled } from '../engines/store/inbox.ts'
import type { Migration, Store, Tx } from '../engines/store/port.ts'
import type { RecordPosition } from '../engines/stream/port.ts'
import {
  dumpText,
  type PartitionPosition,
  partitionKey,
  positionsAfter,
  unapplied,
  type ViewEvent,
  type ViewName,
  type ViewStorage,
} from './view.ts'

export const viewStoreMigrations: Migration[] = [
  {
    id: 'views-0001-registry',
    sql: `CREATE TABLE IF NOT EXISTS view_generations (
      view TEXT NOT NULL, generation INTEGER NOT NULL, schema_version INTEGER NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('building', 'live', 'retired')),
      created_at TEXT NOT NULL, switched_at TEXT,
      PRIMARY KEY (view, generation));
    CREATE TABLE IF NOT EXISTS view_positions (
      view TEXT NOT NULL, generation INTEGER NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL,
      next_offset BIGINT NOT NULL, last_event_ms BIGINT NOT NULL,
      PRIMARY KEY (view, generation, topic, part))`,
  },
  {
    id: 'views-0002-pending-requests',
    sql: `CREATE TABLE IF NOT EXISTS view_pending_requests (
      view TEXT NOT NULL, generation INTEGER NOT NULL, request_id TEXT NOT NULL,
      topic TEXT NOT NULL, part INTEGER NOT NULL, at_offset BIGINT NOT NULL,
      PRIMARY KEY (view, generation, request_id));
    CREATE INDEX IF NOT EXISTS view_pending_requests_position
      ON view_pending_requests (view, generation, topic, part, at_offset)`,
  },
]

/** How one view folds events into SQL tables of a generation. */
export interface SqlFold {
  /** DDL creating the generation's tables; statements separated by ";" on their own. */
  createSql(kind: Store['kind'], generation: number): string[]
  /** The generation's tables, dropped with it. */
  tables(generation: number): string[]
  /** Applies one event; adds to `changed` the cache keys whose documents it changed. */
  apply(
    tx: Tx,
    kind: Store['kind'],
    generation: number,
    event: ViewEvent,
    changed: Set<string>,
  ): Promise<void>
  /** Every document, canonical order. */
  dump(store: Store, generation: number): Promise<unknown[]>
  /** The requests (contracts/requests.ts) whose outcome changes this view's documents. */
  awaits?: string[]
}

export class SqlViewStorage implements ViewStorage {
  readonly view: ViewName
  readonly store: Store
  readonly fold: SqlFold
  /**
   * The position of each partition ("generation topic/partition") as this process last
   * stored or read it. A batch of one partition found here does not read it back: its
   * write asserts it instead (an UPDATE that must find it), so a position another process
   * has moved meanwhile fails the batch, which is then applied from a fresh read.
   */
  readonly #lastStored = new Map<string, number>()
  readonly #awaits: ReadonlySet<string>

  constructor(view: ViewName, store: Store, fold: SqlFold) {
    this.view = view
    this.store = store
    this.fold = fold
    this.#awaits = new Set(fold.awaits)
  }

  async create(generation: number): Promise<void> {
    await this.store.transaction(async (tx) => {
      for (const statement of this.fold.createSql(this.store.kind, generation)) await tx.execute(statement)
    })
  }

  async apply(generation: number, events: ViewEvent[]): Promise<string[]> {
    if (events.length === 0) return []
    const remembered = this.#remembered(generation, events)
    if (remembered) {
      try {
        return await this.#apply(generation, events, remembered)
      } catch {
        // The position may have moved elsewhere (PositionMoved, or a fold that failed on an
        // event applied already): forget it, and apply the batch from a fresh read.
        for (const key of remembered.keys()) this.#lastStored.delete(`${generation} ${key}`)
      }
    }
    return this.#apply(generation, events, undefined)
  }

  /**
   * Applies `events` in one transaction, with their partitions' positions as `remembered`
   * (then asserted by the write) or, when undefined, as read in the transaction.
   */
  async #apply(
    generation: number,
    events: ViewEvent[],
    remembered: Map<string, number> | undefined,
  ): Promise<string[]> {
    const changed = new Set<string>()
    let known: Map<string, number> | undefined
    await this.store.transaction(async (tx) => {
      known = remembered ?? (await positionMap(tx, this.store.kind, this.view, generation, events))
      const fresh = unapplied(events, known)
      if (fresh.length === 0) return
      // A copy of an event at another offset (an outbox that published again after a crash,
      // a dead letter replayed) is the same event: the inbox, by id, keeps it from a second
      // effect, as in the services. Its position is passed all the same.
      const firstSeen = await recordAllHandled(
        tx,
        inboxConsumerOf(this.view, generation),
        fresh.map(({ event }) => event.id),
      )
      for (const event of fresh) {
        if (!firstSeen.delete(event.event.id)) continue
        await this.#trackRequest(tx, generation, event)
        await this.fold.apply(tx, this.store.kind, generation, event, changed)
      }
      const reached = positionsAfter(fresh)
      if (remembered) await this.#move(tx, generation, reached, remembered)
      else await this.#store(tx, generation, reached)
      for (const p of reached) known.set(partitionKey(p.topic, p.partition), p.nextOffset)
    })
    for (const [key, nextOffset] of known ?? []) this.#lastStored.set(`${generation} ${key}`, nextOffset)
    return [...changed]
  }

  /**
   * For a batch of one partition, its position as this process last stored or read it;
   * undefined when that is not known, or the batch spans several partitions (one read of
   * them all costs less than an assertion per partition): then the batch reads them.
   */
  #remembered(generation: number, events: ViewEvent[]): Map<string, number> | undefined {
    const { topic, partition } = events[0].position
    if (events.some(({ position }) => position.topic !== topic || position.partition !== partition))
      return undefined
    const key = partitionKey(topic, partition)
    const nextOffset = this.#lastStored.get(`${generation} ${key}`)
    return nextOffset === undefined ? undefined : new Map([[key, nextOffset]])
  }

  /** Moves each partition's stored position from the remembered one; throws PositionMoved if it was not that. */
  async #move(tx: Tx, generation: number, reached: PartitionPosition[], remembered: Map<string, number>) {
    for (const p of reached) {
      const key = partitionKey(p.topic, p.partition)
      const moved = await tx.execute(
        `UPDATE view_positions SET next_offset = $1, last_event_ms = $2
          WHERE view = $3 AND generation = $4 AND topic = $5 AND part = $6 AND next_offset = $7`,
        [p.nextOffset, p.lastEventMs, this.view, generation, p.topic, p.partition, remembered.get(key)!],
      )
      if (moved !== 1) throw new PositionMoved()
    }
  }

  async #store(tx: Tx, generation: number, reached: PartitionPosition[]): Promise<void> {
    await tx.execute(
      `INSERT INTO view_positions (view, generation, topic, part, next_offset, last_event_ms)
       VALUES ${reached.map((_, i) => `($1, $2, $${4 * i + 3}, $${4 * i + 4}, $${4 * i + 5}, $${4 * i + 6})`).join(', ')}
       ON CONFLICT (view, generation, topic, part)
       DO UPDATE SET next_offset = excluded.next_offset, last_event_ms = excluded.last_event_ms`,
      [this.view, generation, ...reached.flatMap((p) => [p.topic, p.partition, p.nextOffset, p.lastEventMs])],
    )
  }

  async #trackRequest(tx: Tx, generation: number, { event, position }: ViewEvent): Promise<void> {
    const role = requestRole(this.#awaits, event)
    if (role?.kind === 'request')
      await tx.execute(
        `INSERT INTO view_pending_requests (view, generation, request_id, topic, part, at_offset)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
        [this.view, generation, event.id, position.topic, position.partition, position.offset],
      )
    else if (role?.kind === 'outcome')
      await tx.execute(
        'DELETE FROM view_pending_requests WHERE view = $1 AND generation = $2 AND request_id = $3',
        [this.view, generation, role.requestId],
      )
  }

  async pending(generation: number, position: RecordPosition): Promise<boolean> {
    if (this.#awaits.size === 0) return false
    const rows = await this.store.query(
      `SELECT 1 FROM view_pending_requests
       WHERE view = $1 AND generation = $2 AND topic = $3 AND part = $4 AND at_offset = $5`,
      [this.view, generation, position.topic, position.partition, position.offset],
    )
    return rows.length > 0
  }

  async positions(generation: number): Promise<PartitionPosition[]> {
    const rows = await this.store.query<{
      topic: string
      part: number
      next_offset: number
      last_event_ms: number
    }>(
      'SELECT topic, part, next_offset, last_event_ms FROM view_positions WHERE view = $1 AND generation = $2',
      [this.view, generation],
    )
    return rows.map((r) => ({
      topic: r.topic,
      partition: Number(r.part),
      nextOffset: Number(r.next_offset),
      lastEventMs: Number(r.last_event_ms),
    }))
  }

  async dump(generation: number): Promise<string> {
    return dumpText(await this.fold.dump(this.store, generation))
  }

  async drop(generation: number): Promise<void> {
    for (const key of this.#lastStored.keys())
      if (key.startsWith(`${generation} `)) this.#lastStored.delete(key)
    await this.store.transaction(async (tx) => {
      for (const table of this.fold.tables(generation)) await tx.execute(`DROP TABLE IF EXISTS ${table}`)
      for (const table of ['view_positions', 'view_pending_requests'])
        await tx.execute(`DELETE FROM ${table} WHERE view = $1 AND generation = $2`, [this.view, generation])
    })
    // Its inbox may hold a row for every event of the stream (a rebuild's): a batch at a time,
    // so no statement holds the store for long.
    await forgetConsumer(this.store, inboxConsumerOf(this.view, generation))
  }
}

/** Whose events a generation's inbox rows are (the views store's inbox serves every view). */
function inboxConsumerOf(view: ViewName, generation: number): string {
  return `view.${view}.g${generation}`
}

/** A partition's stored position was not the one this process remembered: another process moved it. */
class PositionMoved extends Error {}

/**
 * The stored positions of the partitions `events` come from, in one read. On PostgreSQL the
 * rows stay locked to the end of the transaction, so two processes applying one partition
 * (a rebalance's overlap) take turns and the second reads what the first stored; SQLite has
 * one writer at a time already.
 */
async function positionMap(
  tx: Tx,
  kind: Store['kind'],
  view: string,
  generation: number,
  events: ViewEvent[],
): Promise<Map<string, number>> {
  const partitions = [
    ...new Map(
      events.map(({ position }) => [partitionKey(position.topic, position.partition), position]),
    ).values(),
  ]
  const rows = await tx.query<{ topic: string; part: number; next_offset: number }>(
    `SELECT topic, part, next_offset FROM view_positions WHERE view = $1 AND generation = $2
     AND (${partitions.map((_, i) => `(topic = $${2 * i + 3} AND part = $${2 * i + 4})`).join(' OR ')})
     ${kind === 'postgres' ? 'FOR UPDATE' : ''}`,
    [view, generation, ...partitions.flatMap((p) => [p.topic, p.partition])],
  )
  return new Map(rows.map((row) => [partitionKey(row.topic, Number(row.part)), Number(row.next_offset)]))
}
