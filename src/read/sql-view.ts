// Views kept in the `views` store (a SQLite file, or a PostgreSQL schema): each generation
// has its own tables, and the positions live in one table written in the same transaction
// as the documents.
import type { Migration, Store, Tx } from '../engines/store/port.ts'
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
}

export class SqlViewStorage implements ViewStorage {
  readonly view: ViewName
  readonly store: Store
  readonly fold: SqlFold

  constructor(view: ViewName, store: Store, fold: SqlFold) {
    this.view = view
    this.store = store
    this.fold = fold
  }

  async create(generation: number): Promise<void> {
    await this.store.transaction(async (tx) => {
      for (const statement of this.fold.createSql(this.store.kind, generation)) await tx.execute(statement)
    })
  }

  async apply(generation: number, events: ViewEvent[]): Promise<string[]> {
    if (events.length === 0) return []
    const changed = new Set<string>()
    await this.store.transaction(async (tx) => {
      const fresh = unapplied(events, await positionMap(tx, this.view, generation, events))
      if (fresh.length === 0) return
      for (const event of fresh) await this.fold.apply(tx, this.store.kind, generation, event, changed)
      const reached = positionsAfter(fresh)
      await tx.execute(
        `INSERT INTO view_positions (view, generation, topic, part, next_offset, last_event_ms)
         VALUES ${reached.map((_, i) => `($1, $2, $${4 * i + 3}, $${4 * i + 4}, $${4 * i + 5}, $${4 * i + 6})`).join(', ')}
         ON CONFLICT (view, generation, topic, part)
         DO UPDATE SET next_offset = excluded.next_offset, last_event_ms = excluded.last_event_ms`,
        [
          this.view,
          generation,
          ...reached.flatMap((p) => [p.topic, p.partition, p.nextOffset, p.lastEventMs]),
        ],
      )
    })
    return [...changed]
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
    await this.store.transaction(async (tx) => {
      for (const table of this.fold.tables(generation)) await tx.execute(`DROP TABLE IF EXISTS ${table}`)
      await tx.execute('DELETE FROM view_positions WHERE view = $1 AND generation = $2', [
        this.view,
        generation,
      ])
    })
  }
}

/** The stored positions of the partitions `events` come from, in one read. */
async function positionMap(
  tx: Tx,
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
     AND (${partitions.map((_, i) => `(topic = $${2 * i + 3} AND part = $${2 * i + 4})`).join(' OR ')})`,
    [view, generation, ...partitions.flatMap((p) => [p.topic, p.partition])],
  )
  return new Map(rows.map((row) => [partitionKey(row.topic, Number(row.part)), Number(row.next_offset)]))
}
