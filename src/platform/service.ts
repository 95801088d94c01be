// What every service is made of: its own store (with the inbox and the outbox), a
// consumer group on the stream, and periodic jobs. A handler changes the service's state
// and emits events in one local transaction, recorded in the inbox under the event's id,
// so a redelivered event has no second effect and an emitted event is never lost.
import { type CloudEvent, createEvent, type NewEvent } from '../contracts/envelope.ts'
import { handleOnce, markHandled, pruneInbox, recordAllHandled, wasHandled } from '../engines/store/inbox.ts'
import { addToOutbox, OutboxRelay } from '../engines/store/outbox.ts'
import type { Migration, Store, Tx } from '../engines/store/port.ts'
import type { EventStream, PositionedEvent, Subscription } from '../engines/stream/event-stream.ts'
import { joinBatches } from './batch-joiner.ts'
import { errorMessage, isOutage } from './errors.ts'
import { sleep } from './limits.ts'
import type { Logger } from './logger.ts'
import type { Metrics } from './metrics.ts'
import { currentTraceparent, inSpan, SpanKind } from './tracing.ts'

/** An event to emit: the source, cause and trace are filled in by the service. */
export type Emit = (event: Omit<NewEvent, 'source' | 'cause'>) => void

export interface HandlerTools {
  /**
   * Runs `work` in one transaction of the service's store, at most once for the event being
   * handled: resolves undefined when the event had been handled already. Events given to
   * `emit` are written to the outbox in the same transaction.
   */
  transact<T>(work: (tx: Tx, emit: Emit) => Promise<T>): Promise<T | undefined>
}

export type Handler = (event: CloudEvent, tools: HandlerTools) => Promise<void>

export interface ServiceDeps {
  name: string
  store: Store
  stream: EventStream
  log: Logger
  metrics: Metrics
  /** How long the inbox remembers a handled event (see pruneInbox); kept for ever when unset. */
  inboxRetentionMs?: number
}

/** How often a service deletes its inbox rows past the retention. */
const inboxPruneIntervalMs = 60_000

/** The most events one batch transaction holds: a run takes whole partition batches up to it. */
const batchEventsMax = 500

export class Service {
  readonly name: string
  readonly store: Store
  readonly stream: EventStream
  readonly log: Logger
  readonly metrics: Metrics
  readonly source: string
  readonly #relay: OutboxRelay
  readonly #subscriptions: Subscription[] = []
  readonly #jobs: Promise<void>[] = []
  readonly #stopping = new AbortController()
  readonly #inboxRetentionMs: number | undefined

  constructor(deps: ServiceDeps) {
    this.name = deps.name
    this.store = deps.store
    this.stream = deps.stream
    this.log = deps.log
    this.metrics = deps.metrics
    this.source = `mercato/${deps.name}`
    this.#inboxRetentionMs = deps.inboxRetentionMs
    this.#relay = new OutboxRelay(
      deps.store,
      deps.stream,
      { batchSizeMax: 500, pollIntervalMs: 200, sentRetentionMs: 3_600_000 },
      deps.log,
      deps.metrics,
    )
  }

  /**
   * Applies the service's migrations (the store adds the inbox and outbox), then starts the
   * outbox relay and, with a retention, the inbox's pruning.
   */
  async start(migrations: Migration[]): Promise<void> {
    await this.store.migrate(migrations)
    this.#relay.start()
    const retentionMs = this.#inboxRetentionMs
    if (retentionMs !== undefined)
      this.every('inbox-prune', inboxPruneIntervalMs, async () => {
        const pruned = await pruneInbox(this.store, new Date(Date.now() - retentionMs), this.#stopping.signal)
        if (pruned > 0) this.log.debug({ pruned }, 'forgot handled events past the inbox retention')
      })
  }

  /**
   * Consumes `topics` as the service's consumer group; events of types without a handler are
   * passed over undecoded.
   *
   * A commit costs more than the work in it (an fsync, and round trips on PostgreSQL), so
   * events are handled in batches, one transaction for many. On PostgreSQL the batches the
   * partitions hand in while a transaction runs are joined into the next (see joinBatches),
   * and runs never overlap, so partitions never lock each other's rows; on SQLite the store
   * itself joins the transactions of one turn into one commit. When a batch's transaction
   * fails (a handler's transaction threw, even if the handler caught it), its events are
   * handled again one at a time, each in transactions of its own, so an event that fails
   * costs only itself and a handler that recovers from a failed transaction (inventory's
   * shortage) works as it would alone.
   *
   * `oneAtATime` asks for transactions of their own for every event, side by side on the
   * pool: it is for handlers that call out of the store (payment's provider) between their
   * reads and their transaction, since a batch must not hold the store across a network call.
   */
  async consume(
    topics: string[],
    handlers: Record<string, Handler>,
    options: { group?: string; oneAtATime?: boolean } = {},
  ): Promise<void> {
    const group = options.group ?? this.name
    const types = Object.keys(handlers)
    const run = (batch: PositionedEvent[]) => this.#handleBatch(group, handlers, batch)
    const runAlone = async (batch: PositionedEvent[]) => {
      for (const { event } of batch)
        await inEventSpan(group, event, () => this.#handleAlone(group, handlers, event, false))
    }
    // SQLite's store joins the transactions of one turn of the event loop into one commit
    // already: there the partitions' batches go side by side, and a run never waits for the
    // commit of the one before.
    const runOrEachAlone = async (batch: PositionedEvent[]) => {
      try {
        await run(batch)
      } catch (error) {
        if (isOutage(error)) throw error
        await runAlone(batch)
      }
    }
    const handleBatch =
      this.store.kind === 'sqlite' ? runOrEachAlone : joinBatches({ run, runAlone, itemsMax: batchEventsMax })
    const subscription = await this.stream.subscribe(
      options.oneAtATime
        ? { group, topics, types, handle: (event) => this.#handleAlone(group, handlers, event, true) }
        : { group, topics, types, handleBatch },
    )
    this.#subscriptions.push(subscription)
  }

  async #handleAlone(
    group: string,
    handlers: Record<string, Handler>,
    event: CloudEvent,
    callsOut: boolean,
  ): Promise<void> {
    const handler = handlers[event.type]
    if (!handler) return
    // The inbox row written in the handler's transaction (or by markHandled when it found
    // nothing to do) keeps a redelivered event from a second effect in the store. A handler
    // that calls out before its transaction asks first, so a redelivery does not call again.
    if (callsOut && (await wasHandled(this.store, group, event.id))) return
    let transacted = false
    await handler(event, {
      transact: (work) => {
        transacted = true
        return this.#transactOnce(group, event, work)
      },
    })
    if (!transacted) await markHandled(this.store, group, event.id)
  }

  /** Handles `batch` in one transaction; throws (rolling it all back) if any handler's transaction threw. */
  async #handleBatch(group: string, handlers: Record<string, Handler>, batch: PositionedEvent[]) {
    const wanted = batch.filter(({ event }) => handlers[event.type])
    if (wanted.length === 0) return
    await this.store.transaction(async (tx) => {
      const fresh = await recordAllHandled(
        tx,
        group,
        wanted.map(({ event }) => event.id),
      )
      const outbox: CloudEvent[] = []
      let failed: { error: unknown } | undefined
      for (const { event } of wanted) {
        if (!fresh.delete(event.id)) continue // redelivered
        await inEventSpan(group, event, () =>
          handlers[event.type](event, {
            transact: async (work) => {
              try {
                return await work(tx, this.#emitter(outbox, event))
              } catch (error) {
                failed ??= { error }
                throw error
              }
            },
          }),
        )
      }
      if (failed) throw failed.error
      if (outbox.length > 0) await addToOutbox(this.store, tx, outbox)
    })
  }

  /**
   * Runs `work` in a transaction of the store; emitted events go to the outbox in it. A
   * `cause` (an order's earlier event, for a job acting on it) gives them its correlation id
   * and trace.
   */
  transact<T>(work: (tx: Tx, emit: Emit) => Promise<T>, cause?: NewEvent['cause']): Promise<T> {
    const traceparent = traceparentOf(cause)
    if (!traceparent) return this.store.transaction((tx) => this.#withOutbox(tx, cause, work))
    // A span of its own, a child of the cause's: the events it emits are a hop of their own
    // in the order's trace, not the cause's span again.
    return inSpan(`${this.name} job`, { traceparent }, () =>
      this.store.transaction((tx) => this.#withOutbox(tx, cause, work)),
    )
  }

  async #transactOnce<T>(
    group: string,
    event: CloudEvent,
    work: (tx: Tx, emit: Emit) => Promise<T>,
  ): Promise<T | undefined> {
    let result: T | undefined
    await handleOnce(this.store, group, event.id, async (tx) => {
      result = await this.#withOutbox(tx, event, work)
    })
    return result
  }

  /** Runs `work` in `tx`; the events it emits go to the outbox in the same transaction. */
  async #withOutbox<T>(
    tx: Tx,
    cause: NewEvent['cause'] | undefined,
    work: (tx: Tx, emit: Emit) => Promise<T>,
  ): Promise<T> {
    const events: CloudEvent[] = []
    const result = await work(tx, this.#emitter(events, cause))
    if (events.length > 0) await addToOutbox(this.store, tx, events)
    return result
  }

  /**
   * Events emitted continue the span they are emitted in: a handler's, or the one a job with
   * a cause runs in (both children of the cause's). Outside any, the cause's trace.
   */
  #emitter(into: CloudEvent[], cause: NewEvent['cause'] | undefined): Emit {
    return (event) => {
      const traceparent = currentTraceparent() ?? traceparentOf(cause)
      into.push(
        createEvent({
          ...event,
          source: this.source,
          cause,
          traceparent: event.traceparent ?? traceparent,
        }),
      )
    }
  }

  /**
   * Runs `job` every `intervalMs` until the service stops; a failing run is logged, not
   * fatal. The signal tells a run in progress that the service is stopping.
   */
  every(name: string, intervalMs: number, job: (stopping: AbortSignal) => Promise<void>): void {
    const signal = this.#stopping.signal
    this.#jobs.push(
      (async () => {
        while (!signal.aborted) {
          await sleep(intervalMs, signal)
          if (signal.aborted) break
          try {
            await job(signal)
          } catch (error) {
            this.log.warn({ job: name, err: errorMessage(error) }, 'periodic job failed; will run again')
          }
        }
      })(),
    )
  }

  /** Stops consuming (in-flight handlers finish, offsets commit), the jobs, then the relay. */
  async stop(): Promise<void> {
    this.#stopping.abort()
    await Promise.all(this.#subscriptions.map((s) => s.stop()))
    await Promise.all(this.#jobs)
    await this.#relay.stop()
  }
}

/**
 * Handles an event of a batch in a span of its own, child of its producer's: what it emits
 * continues its trace, and what is logged carries its correlation id.
 */
function inEventSpan<T>(group: string, event: CloudEvent, handle: () => Promise<T>): Promise<T> {
  return inSpan(
    `${group} handle ${event.type}`,
    { traceparent: event.traceparent, kind: SpanKind.CONSUMER, correlationId: event.correlationid },
    handle,
  )
}

/**
 * An event as the cause a job later acts under (stored beside the row it created), so that
 * what the job emits keeps the order's correlation id and trace.
 */
export function storedCause(event: CloudEvent): string {
  return JSON.stringify({ id: event.id, correlationid: event.correlationid, traceparent: event.traceparent })
}

/** The cause stored by storedCause; undefined for a row written before causes were kept. */
export function causeFrom(stored: string | null | undefined): NewEvent['cause'] | undefined {
  return stored ? (JSON.parse(stored) as NewEvent['cause']) : undefined
}

/** How often to look for rows due within `periodMs`: a few times per period, at least once a second. */
export function sweepIntervalFor(periodMs: number): number {
  return Math.max(10, Math.min(1_000, Math.floor(periodMs / 4)))
}

/** The trace a cause carries (an event's, or a job's cause given as one), if any. */
function traceparentOf(cause: NewEvent['cause'] | undefined): string | undefined {
  return (cause && 'traceparent' in cause ? cause.traceparent : undefined) as string | undefined
}
