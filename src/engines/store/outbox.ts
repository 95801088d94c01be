// The transactional outbox: a service writes the events it emits into its own store, in
// the same transaction as its state change; the relay publishes them and marks them sent.
// A crash between publish and mark publishes again; the consumer's inbox absorbs it.
// Rows committed in this process are handed to its relay as they commit, so a relay that
// keeps up never reads the table back; it reads it at start, after a failure, and on its
// poll, for rows committed elsewhere or not handed over.
import type { CloudEvent } from '../../contracts/envelope.ts'
import { eventRegistry } from '../../contracts/registry.ts'
import { errorMessage } from '../../platform/errors.ts'
import { sleep } from '../../platform/limits.ts'
import type { Logger } from '../../platform/logger.ts'
import type { Metrics } from '../../platform/metrics.ts'
import type { EventStream } from '../stream/event-stream.ts'
import type { Store, Tx } from './port.ts'

/** Rows looked at by one prune statement. */
const pruneBatchSize = 1_000

/** Per store, the relays of this process, each told of the rows a commit added. */
const listeners = new WeakMap<object, Set<(rows: OutboxRow[]) => void>>()

/** Rows per INSERT statement: well within both stores' limit on parameters. */
const insertRowsMax = 500

/** Adds events to the outbox inside `tx`; they are validated now, so a bad event rolls the transaction back. */
export async function addToOutbox(store: Store, tx: Tx, events: CloudEvent[]): Promise<void> {
  const now = new Date().toISOString()
  for (const event of events) eventRegistry.assertValid(event)
  const rows: OutboxRow[] = []
  for (let start = 0; start < events.length; start += insertRowsMax) {
    const chunk = events.slice(start, start + insertRowsMax)
    const inserted = await tx.query<{ id: number }>(
      `INSERT INTO mercato_outbox (event, created_at)
       VALUES ${chunk.map((_, i) => `($${i + 2}, $1)`).join(', ')} RETURNING id`,
      [now, ...chunk.map((event) => JSON.stringify(event))],
    )
    // One statement takes its ids in the order of its rows; RETURNING need not list them so.
    const ids = inserted.map((row) => Number(row.id)).sort((a, b) => a - b)
    rows.push(...chunk.map((event, i) => ({ id: ids[i], event })))
  }
  tx.afterCommit(() => {
    for (const listen of listeners.get(store) ?? []) listen(rows)
  })
}

export interface OutboxRow {
  id: number
  event: CloudEvent
}

export interface OutboxRelayOptions {
  batchSizeMax: number
  pollIntervalMs: number
  sentRetentionMs: number
}

export class OutboxRelay {
  readonly #store: Store
  readonly #stream: EventStream
  readonly #options: OutboxRelayOptions
  readonly #log: Logger
  readonly #metrics: Metrics
  readonly #stop = new AbortController()
  #wake: (() => void) | undefined
  #running: Promise<void> | undefined
  #lastPruneMs = 0
  /** Rows committed in this process and not yet relayed, in commit order. */
  #handed: OutboxRow[] = []
  /** The table may hold unsent rows that were not handed over: read it next. */
  #mustRead = true
  /** Ids the last read of the table found: a commit handed over after that read is not relayed twice. */
  #lastRead = new Set<number>()
  #lastReadMs = 0

  constructor(store: Store, stream: EventStream, options: OutboxRelayOptions, log: Logger, metrics: Metrics) {
    this.#store = store
    this.#stream = stream
    this.#options = options
    this.#log = log
    this.#metrics = metrics
  }

  start(): void {
    let set = listeners.get(this.#store)
    if (!set) listeners.set(this.#store, (set = new Set()))
    set.add(this.#onCommit)
    this.#running = this.#loop()
  }

  readonly #onCommit = (rows: OutboxRow[]) => {
    // A relay far behind lets go of what it was handed and reads the table instead.
    if (this.#handed.length + rows.length > this.#options.batchSizeMax * 10) {
      this.#handed = []
      this.#mustRead = true
    } else for (const row of rows) if (!this.#lastRead.has(row.id)) this.#handed.push(row)
    this.#wake?.()
  }

  async #loop(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      let relayed = 0
      try {
        relayed = await this.relayOnce()
        await this.#pruneIfDue()
      } catch (error) {
        this.#log.warn(
          { store: this.#store.service, err: errorMessage(error) },
          'outbox relay failed; will retry',
        )
        this.#handed = []
        this.#mustRead = true
        await sleep(this.#options.pollIntervalMs * 10, this.#stop.signal)
      }
      if (relayed === 0 && this.#handed.length === 0) {
        // Woken by a commit that added events, or by stop(); the timer is a safety net.
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, this.#options.pollIntervalMs)
          this.#wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
        this.#wake = undefined
      }
    }
  }

  /** Publishes one batch of unsent events and marks them sent; resolves with how many. */
  async relayOnce(): Promise<number> {
    // The table is read at least once a poll interval, for rows another process committed.
    const readDue = this.#mustRead || Date.now() - this.#lastReadMs >= this.#options.pollIntervalMs
    const rows = readDue ? await this.#readTable() : this.#handed.splice(0, this.#options.batchSizeMax)
    if (rows.length === 0) return 0
    await this.publish(rows)
    await this.markSent(rows)
    return rows.length
  }

  /** Reads the unsent rows; those handed over meanwhile are in it, or come after it. */
  async #readTable(): Promise<OutboxRow[]> {
    this.#mustRead = false
    this.#lastReadMs = Date.now()
    const rows = await this.pending()
    this.#lastRead = new Set(rows.map((row) => row.id))
    this.#handed = this.#handed.filter((row) => !this.#lastRead.has(row.id))
    // A full batch may have left unsent rows behind: the next round reads again.
    if (rows.length === this.#options.batchSizeMax) this.#mustRead = true
    return rows
  }

  async pending(): Promise<OutboxRow[]> {
    const rows = await this.#store.query<{ id: number; event: string }>(
      'SELECT id, event FROM mercato_outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1',
      [this.#options.batchSizeMax],
    )
    return rows.map((row) => ({ id: Number(row.id), event: JSON.parse(row.event) }))
  }

  async publish(rows: OutboxRow[]): Promise<void> {
    await this.#stream.publish(rows.map((row) => row.event))
    this.#metrics
      .counter('mercato_outbox_relayed_total', 'Events relayed from a service outbox to the stream.', [
        'store',
      ])
      .inc({ store: this.#store.service }, rows.length)
  }

  async markSent(rows: OutboxRow[]): Promise<void> {
    // The list is padded to a power of two with its last id, so the statement takes one of
    // a few shapes: each is prepared once (per connection), not once per batch size.
    const ids = rows.map((row) => row.id)
    while (ids.length & (ids.length - 1)) ids.push(ids[ids.length - 1])
    const placeholders = ids.map((_, i) => `$${i + 2}`).join(', ')
    await this.#store.execute(`UPDATE mercato_outbox SET sent_at = $1 WHERE id IN (${placeholders})`, [
      new Date().toISOString(),
      ...ids,
    ])
  }

  async #pruneIfDue(): Promise<void> {
    const now = Date.now()
    if (now - this.#lastPruneMs < 60_000) return
    this.#lastPruneMs = now
    await this.prune(now)
  }

  /** Deletes the rows sent longer than the retention before `now`. */
  async prune(now = Date.now()): Promise<void> {
    const before = new Date(now - this.#options.sentRetentionMs).toISOString()
    // Rows are sent in id order, so the ones to delete lead the table. Deleting them from the
    // front, a bounded batch at a time, never scans the whole table nor holds the store long.
    while (!this.#stop.signal.aborted) {
      const deleted = await this.#store.execute(
        `DELETE FROM mercato_outbox WHERE sent_at < $1
           AND id IN (SELECT id FROM mercato_outbox ORDER BY id LIMIT ${pruneBatchSize})`,
        [before],
      )
      if (deleted === 0) return
    }
  }

  async stop(): Promise<void> {
    this.#stop.abort()
    this.#wake?.()
    listeners.get(this.#store)?.delete(this.#onCommit)
    await this.#running
  }
}
