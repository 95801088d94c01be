// How fresh each view is, for answers and for metrics. Every `sampleMs` it reads the live
// generation, the view's positions and the stream's end on every partition. A partition
// the view has caught up with is fresh; one behind is stale by the age of the oldest event
// the view may be missing, bounded by the last time it was caught up and by the append
// time of the last event it applied. Readers holding a consistency token wait here.
import type { EventStream } from '../engines/stream/event-stream.ts'
import type { PartitionEnd, RecordPosition } from '../engines/stream/port.ts'
import { errorMessage, MercatoError } from '../platform/errors.ts'
import { sleep } from '../platform/limits.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'
import type { Generation } from './generations.ts'
import { type PartitionPosition, partitionKey, type ViewName, viewNames } from './view.ts'
import { groupOf, type Views } from './views.ts'

interface PartitionState {
  /** The view's own position: what its answers reflect. */
  nextOffset: number
  /** How far the view has come, records its group passed without applying (dead-lettered) counted. */
  reached: number
  end: number
  lastEventMs: number
  /** The last sample at which the view had applied everything on this partition. */
  caughtUpAt: number
}

interface ViewSample {
  generation: number
  sampledAt: number
  partitions: Map<string, PartitionState>
}

/** Where a wait for a token ended: in which generation, and from which offset of the token's partition an answer reflects the write. */
export interface Reached {
  generation: number
  from: number
}

export class Freshness {
  readonly #views: Views
  readonly #stream: EventStream
  readonly #log: Logger
  readonly #sampleMs: number
  readonly #samples = new Map<ViewName, ViewSample>()
  /** What this process last read of each view's positions between samples (see positions). */
  readonly #seen = new Map<ViewName, { generation: number; at: number; positions: Record<string, number> }>()
  /** When each view's projector group was last asked how far it has passed (see #sample). */
  readonly #groupAskedAt = new Map<ViewName, number>()
  readonly #waiters = new Map<ViewName, Set<() => void>>()
  readonly #stopping = new AbortController()
  readonly #startedAt = Date.now()
  #loop: Promise<void> | undefined
  /** Every topic a view follows. */
  readonly #topics: string[]
  readonly #lagGauge
  readonly #stalenessGauge

  constructor(deps: { views: Views; stream: EventStream; log: Logger; metrics: Metrics }, sampleMs: number) {
    this.#views = deps.views
    this.#stream = deps.stream
    this.#log = deps.log
    this.#sampleMs = sampleMs
    this.#topics = [
      ...new Set(
        viewNames.flatMap((view) => deps.views.definitions[view].topics.map((t) => deps.stream.topic(t))),
      ),
    ]
    this.#lagGauge = deps.metrics.gauge('mercato_view_lag_events', 'Events a view has not applied yet.', [
      'view',
    ])
    this.#stalenessGauge = deps.metrics.gauge(
      'mercato_view_staleness_seconds',
      'Age of the oldest event a view may be missing (0: caught up).',
      ['view'],
    )
  }

  async start(): Promise<void> {
    await this.#sampleAll()
    this.#loop = (async () => {
      const signal = this.#stopping.signal
      while (!signal.aborted) {
        await sleep(this.#sampleMs, signal)
        if (!signal.aborted) await this.#sampleAll()
      }
    })()
  }

  async stop(): Promise<void> {
    this.#stopping.abort()
    await this.#loop
    for (const waiters of this.#waiters.values()) for (const wake of waiters) wake()
  }

  /** Wakes readers waiting on `view` (the projector calls this after each batch in the same process). */
  applied(view: ViewName): void {
    for (const wake of this.#waiters.get(view) ?? []) wake()
  }

  generation(view: ViewName): number {
    const sample = this.#samples.get(view)
    if (!sample) throw new MercatoError('view-unavailable', 503, `the ${view} view has not been built yet`)
    return sample.generation
  }

  /** How stale `view` is now, in milliseconds (0: it had applied everything at the last sample). */
  stalenessMs(view: ViewName, now = Date.now()): number {
    const sample = this.#samples.get(view)
    if (!sample) return now - this.#startedAt
    let worst = 0
    for (const p of sample.partitions.values()) {
      if (p.reached >= p.end) continue
      const freshAsOf = Math.max(p.caughtUpAt, p.lastEventMs)
      worst = Math.max(worst, now - (freshAsOf || this.#startedAt))
    }
    return worst
  }

  /**
   * How long since this process last looked at the view's positions: an answer as of then
   * may miss what the view applied since, when no invalidation tells this process of it.
   */
  sinceLookedMs(view: ViewName, now = Date.now()): number {
    const sample = this.#samples.get(view)
    if (!sample) return now - this.#startedAt
    const seen = this.#seen.get(view)
    const lookedAt =
      seen?.generation === sample.generation ? Math.max(seen.at, sample.sampledAt) : sample.sampledAt
    return Math.max(0, now - lookedAt)
  }

  /**
   * Whether `view` had applied, at the last sample or as this process has read it since,
   * anything past `positions` (the view's when an answer was read): then the answer may be
   * out of date.
   */
  movedPast(view: ViewName, positions: Record<string, number>): boolean {
    const sample = this.#samples.get(view)
    if (!sample) return true
    for (const [key, p] of sample.partitions) if (p.nextOffset > (positions[key] ?? 0)) return true
    const seen = this.#seen.get(view)
    if (seen?.generation === sample.generation)
      for (const [key, nextOffset] of Object.entries(seen.positions))
        if (nextOffset > (positions[key] ?? 0)) return true
    return false
  }

  /** Whether `view` folds the topic `token` names at all (otherwise there is nothing to wait for). */
  follows(view: ViewName, token: RecordPosition): boolean {
    return this.#views.definitions[view].topics.some((topic) => this.#stream.topic(topic) === token.topic)
  }

  /**
   * The view's current positions, read from its storage. Kept as seen by this process (see
   * movedPast): a cached answer older than a position it has read (a token it just waited
   * for) is not served again.
   */
  async positions(view: ViewName, generation = this.generation(view)): Promise<Record<string, number>> {
    const positions: PartitionPosition[] = await this.#views.definitions[view].storage.positions(generation)
    const byPartition = Object.fromEntries(
      positions.map((p) => [partitionKey(p.topic, p.partition), p.nextOffset]),
    )
    const seen = this.#seen.get(view)
    if (seen?.generation !== generation)
      this.#seen.set(view, { generation, at: Date.now(), positions: { ...byPartition } })
    else {
      seen.at = Date.now()
      for (const [key, nextOffset] of Object.entries(byPartition))
        seen.positions[key] = Math.max(seen.positions[key] ?? 0, nextOffset)
    }
    return byPartition
  }

  /**
   * Waits until `view` has applied the event at `token` and, when that event is a request
   * the view awaits the outcome of (contracts/requests.ts), the outcome too; at most
   * `timeoutMs`. Resolves with where it was reached, or undefined when it was not.
   */
  async waitFor(view: ViewName, token: RecordPosition, timeoutMs: number): Promise<Reached | undefined> {
    if (!this.follows(view, token)) return { generation: this.generation(view), from: 0 }
    // A position the stream has not reached is no write's: answer at once, not after the
    // whole wait (a forged token must not hold a request, and its slot, that long).
    if (await this.#pastEnd(view, token)) return undefined
    const storage = this.#views.definitions[view].storage
    const key = partitionKey(token.topic, token.partition)
    const deadline = Date.now() + timeoutMs
    for (;;) {
      // A view not built yet (its projector starting) may be by the deadline: waited for too.
      const generation = this.#samples.get(view)?.generation
      // Pending is asked after the position is seen reached (so the request was applied),
      // and the position read again after it is seen settled (so it covers the outcome).
      if (
        generation !== undefined &&
        reaches(await this.positions(view, generation), token) &&
        !(await storage.pending(generation, token))
      )
        return { generation, from: (await this.positions(view, generation))[key] }
      const left = deadline - Date.now()
      if (left <= 0 || this.#stopping.signal.aborted) return undefined
      await this.#nextApplied(view, Math.min(left, 20))
    }
  }

  /** Whether `token` names a position at or past the end of its partition. */
  async #pastEnd(view: ViewName, token: RecordPosition): Promise<boolean> {
    const sampled = this.#samples.get(view)?.partitions.get(partitionKey(token.topic, token.partition))
    if (sampled && token.offset < sampled.end) return false
    // The sample may predate the write: ask the stream itself.
    const ends = await this.#stream.engine.ends([token.topic])
    const end = ends.find((p) => p.partition === token.partition)?.end ?? 0
    return token.offset >= end
  }

  /** Resolves after the next batch applied in this process, or after `ms` (another process may apply). */
  #nextApplied(view: ViewName, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const waiters = this.#waiters.get(view) ?? new Set()
      this.#waiters.set(view, waiters)
      const wake = () => {
        clearTimeout(timer)
        waiters.delete(wake)
        resolve()
      }
      const timer = setTimeout(wake, ms)
      waiters.add(wake)
    })
  }

  async #sampleAll(): Promise<void> {
    // The stream's ends are read once for every topic any view follows, not once per view;
    // a view caught up with them was caught up at least as late as just before they were read.
    const sampledAt = Date.now()
    let read: [PartitionEnd[], Map<ViewName, Generation>]
    try {
      read = await Promise.all([this.#stream.engine.ends(this.#topics), this.#views.registry.liveAll()])
    } catch (error) {
      this.#log.debug({ err: errorMessage(error) }, 'freshness not sampled')
      return
    }
    const [ends, live] = read
    for (const view of viewNames) {
      try {
        const generation = live.get(view)
        if (generation) await this.#sample(view, generation, ends, sampledAt)
      } catch (error) {
        this.#log.debug({ view, err: errorMessage(error) }, 'freshness not sampled')
      }
    }
  }

  async #sample(view: ViewName, live: Generation, allEnds: PartitionEnd[], sampledAt: number): Promise<void> {
    const definition = this.#views.definitions[view]
    const topics = new Set(definition.topics.map((topic) => this.#stream.topic(topic)))
    const ends = allEnds.filter((p) => topics.has(p.topic))
    const applied = new Map(
      (await definition.storage.positions(live.generation)).map((p) => [
        partitionKey(p.topic, p.partition),
        p,
      ]),
    )
    const previous = this.#samples.get(view)
    const earlier = previous?.generation === live.generation ? previous.partitions : undefined
    const nextOffsetOf = (key: string) => applied.get(key)?.nextOffset ?? 0
    // A record the projector dead-lettered is never applied: the view's position stays before
    // it while its group's committed offset passes it. When a partition is behind and has not
    // moved since the last sample, the group is asked, so such a record is not lag for ever.
    // (At most once a second: a projector that is down keeps every partition stuck.)
    const stuck =
      sampledAt - (this.#groupAskedAt.get(view) ?? 0) >= 1_000 &&
      ends.some(({ topic, partition, end }) => {
        const key = partitionKey(topic, partition)
        const before = earlier?.get(key)
        // (Not once the group was found past the end: that is kept below.)
        return nextOffsetOf(key) < end && before?.nextOffset === nextOffsetOf(key) && before.reached < end
      })
    if (stuck) this.#groupAskedAt.set(view, sampledAt)
    // Unanswered, the sample goes on with what it knows.
    const passed = stuck
      ? await this.#committed(view, live.generation, [...topics]).catch(() => undefined)
      : undefined
    const partitions = new Map<string, PartitionState>()
    let lag = 0
    for (const { topic, partition, end } of ends) {
      const key = partitionKey(topic, partition)
      const position = applied.get(key)
      const nextOffset = nextOffsetOf(key)
      // Kept from the last look at the group while the view has not moved on since.
      const before = earlier?.get(key)
      const groupPassed = passed?.get(key) ?? (before?.nextOffset === nextOffset ? before.reached : 0)
      const reached = Math.max(nextOffset, groupPassed)
      partitions.set(key, {
        nextOffset,
        reached,
        end,
        lastEventMs: position?.lastEventMs ?? 0,
        caughtUpAt: reached >= end ? sampledAt : (before?.caughtUpAt ?? 0),
      })
      lag += Math.max(0, end - reached)
    }
    this.#samples.set(view, { generation: live.generation, sampledAt, partitions })
    this.#lagGauge.set({ view }, lag)
    this.#stalenessGauge.set({ view }, this.stalenessMs(view, sampledAt) / 1000)
  }

  /** The committed offsets of the group that projects `generation` of `view`, by partition. */
  async #committed(view: ViewName, generation: number, topics: string[]): Promise<Map<string, number>> {
    const group = this.#stream.group(groupOf(view, generation))
    const lags = await this.#stream.engine.lag(group, topics)
    return new Map(lags.map((p) => [partitionKey(p.topic, p.partition), p.committed]))
  }
}

/** Whether `positions` (a view's) include the event at `token`. */
function reaches(positions: Record<string, number>, token: RecordPosition): boolean {
  return (positions[partitionKey(token.topic, token.partition)] ?? 0) > token.offset
}
