// The projector: one consumer group per view generation folds the stream into the views.
// After each batch it invalidates the cache entries the batch changed and wakes readers
// waiting for a position. It follows the registry: when a rebuild (here or in another
// process) makes a new generation live, it moves its consumer to that generation.
import type { Cache } from '../engines/cache/port.ts'
import { pruneInbox } from '../engines/store/inbox.ts'
import type { EventStream, PositionedEvent, Subscription } from '../engines/stream/event-stream.ts'
import { joinBatches } from '../platform/batch-joiner.ts'
import { errorMessage } from '../platform/errors.ts'
import { sleep } from '../platform/limits.ts'
import type { Logger } from '../platform/logger.ts'
import { latencyBucketsSeconds, type Metrics } from '../platform/metrics.ts'
import { queryCacheKey, tombstone } from './query-cache.ts'
import type { ViewName } from './view.ts'
import { groupOf, type ViewDefinition, type Views } from './views.ts'

export interface ProjectorOptions {
  /** How often to look for a generation switched by another process. */
  pollIntervalMs: number
  /** How long a retired generation is kept for readers still on it. */
  retiredKeepMs: number
  /** Lifetime of the tombstone that invalidates a cache entry. */
  invalidationTtlMs: number
  /** How long a view remembers an event it applied, to apply a copy of it no more (see pruneInbox). */
  inboxRetentionMs: number
}

/** How often the projector forgets applied events past the inbox retention. */
const inboxPruneIntervalMs = 60_000

export interface ProjectorDeps {
  views: Views
  stream: EventStream
  cache: Cache
  log: Logger
  metrics: Metrics
}

export type AppliedListener = (view: ViewName) => void

export class Projector {
  readonly #deps: ProjectorDeps
  readonly #options: ProjectorOptions
  readonly #running = new Map<
    ViewName,
    {
      generation: number
      subscription: Subscription
      partitions: number
      appliesAll: boolean
      checkedAt: number
    }
  >()
  readonly #listeners = new Set<AppliedListener>()
  readonly #stopping = new AbortController()
  readonly #background: Promise<unknown>[] = []

  constructor(deps: ProjectorDeps, options: ProjectorOptions) {
    this.#deps = deps
    this.#options = options
  }

  async start(): Promise<void> {
    const { views, log } = this.#deps
    for (const definition of Object.values(views.definitions)) {
      const live = await views.registry.ensureLive(definition.name, definition.schemaVersion)
      await definition.storage.create(live.generation)
      await this.#follow(definition, live.generation)
      if (live.schemaVersion !== definition.schemaVersion) {
        log.info(
          { view: definition.name, live: live.schemaVersion, code: definition.schemaVersion },
          'view schema version changed: rebuilding beside the live generation',
        )
        this.#background.push(
          rebuildView(this.#deps, definition.name, { signal: this.#stopping.signal }).catch((error) =>
            log.error({ view: definition.name, err: errorMessage(error) }, 'rebuild failed'),
          ),
        )
      }
    }
    this.#background.push(this.#watchRegistry())
  }

  /**
   * Whether this process applies every batch of `generation` of `view` (its consumer owns all
   * the view's partitions), so its cache invalidations cover every change. Another projector
   * process in the group takes partitions, and their changes are invalidated there only.
   */
  appliesAll(view: ViewName, generation: number): boolean {
    const running = this.#running.get(view)
    if (running?.generation !== generation) return false
    // Asked on every cache hit: the assignment (a sorted list) is looked at a few times a
    // second at most; a rebalance is rare, and the answer is that much late.
    const now = Date.now()
    if (now - running.checkedAt >= 100) {
      running.appliesAll = running.subscription.assignment().length >= running.partitions
      running.checkedAt = now
    }
    return running.appliesAll
  }

  /** Calls `listener` after every batch a view applies (readers waiting for a position). */
  onApplied(listener: AppliedListener): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  async #follow(definition: ViewDefinition, generation: number): Promise<void> {
    const subscription = await subscribeView(this.#deps, definition, generation, async (changed) => {
      await invalidate(
        this.#deps.cache,
        definition.name,
        generation,
        changed,
        this.#options.invalidationTtlMs,
      )
      for (const listener of this.#listeners) listener(definition.name)
    })
    const { stream } = this.#deps
    const counts = await Promise.all(
      definition.topics.map((t) => stream.engine.partitionsOf(stream.topic(t))),
    )
    const partitions = counts.reduce((sum, count) => sum + count, 0)
    this.#running.set(definition.name, {
      generation,
      subscription,
      partitions,
      appliesAll: false,
      checkedAt: 0,
    })
  }

  async #watchRegistry(): Promise<void> {
    const { views, log } = this.#deps
    const signal = this.#stopping.signal
    let prunedAt = Date.now()
    while (!signal.aborted) {
      await sleep(this.#options.pollIntervalMs, signal)
      if (signal.aborted) break
      if (Date.now() - prunedAt >= inboxPruneIntervalMs) {
        prunedAt = Date.now()
        const before = new Date(prunedAt - this.#options.inboxRetentionMs)
        await pruneInbox(views.store, before, signal).catch((error) =>
          log.warn({ err: errorMessage(error) }, 'forgetting applied events failed; will retry'),
        )
      }
      for (const definition of Object.values(views.definitions)) {
        try {
          const live = await views.registry.live(definition.name)
          const running = this.#running.get(definition.name)
          if (live && running && live.generation !== running.generation) {
            log.info(
              { view: definition.name, generation: live.generation },
              'following the new live generation',
            )
            await running.subscription.stop()
            await this.#follow(definition, live.generation)
          }
          await this.#dropRetired(definition)
        } catch (error) {
          log.warn({ view: definition.name, err: errorMessage(error) }, 'registry check failed; will retry')
        }
      }
    }
  }

  async #dropRetired(definition: ViewDefinition): Promise<void> {
    const { views } = this.#deps
    for (const g of await views.registry.all(definition.name)) {
      const retiredFor = g.switchedAt ? Date.now() - Date.parse(g.switchedAt) : 0
      if (g.state === 'retired' && retiredFor > this.#options.retiredKeepMs) {
        await definition.storage.drop(g.generation)
        // Its consumer group goes too; one a projector elsewhere still holds is left to Kafka's expiry.
        const group = this.#deps.stream.group(groupOf(definition.name, g.generation))
        await this.#deps.stream.engine.deleteGroup(group).catch((error) => {
          this.#deps.log.warn({ group, err: errorMessage(error) }, 'retired generation group not deleted')
        })
        await views.registry.forget(definition.name, g.generation)
        this.#deps.log.info({ view: definition.name, generation: g.generation }, 'retired generation dropped')
      }
    }
  }

  async stop(): Promise<void> {
    this.#stopping.abort()
    await Promise.all(this.#background)
    await Promise.all([...this.#running.values()].map(({ subscription }) => subscription.stop()))
    this.#running.clear()
  }
}

/** Consumes a generation's group: applies each batch, measures how far behind the stream it runs. */
async function subscribeView(
  deps: Pick<ProjectorDeps, 'stream' | 'metrics'>,
  definition: ViewDefinition,
  generation: number,
  afterApply: (changed: string[]) => Promise<void>,
): Promise<Subscription> {
  const lag = deps.metrics.histogram(
    'mercato_view_projection_lag_seconds',
    'Time from an event appended to its change visible in a view.',
    ['view'],
    latencyBucketsSeconds,
  )
  // One run at a time per view: partitions of different topics touch the same rows (an
  // order's payment and its order events), and concurrent transactions would deadlock. The
  // batches that arrive meanwhile share the next run's transaction.
  const apply = joinBatches<PositionedEvent>({
    run: async (events) => {
      const changed = await definition.storage.apply(generation, events)
      const now = Date.now()
      for (const { timestampMs } of events)
        lag.observe({ view: definition.name }, Math.max(0, now - timestampMs) / 1000)
      await afterApply(changed)
    },
    itemsMax: 1_000,
  })
  return deps.stream.subscribe({
    group: groupOf(definition.name, generation),
    topics: definition.topics,
    startAt: 'earliest',
    handleBatch: apply,
  })
}

async function invalidate(
  cache: Cache,
  view: ViewName,
  generation: number,
  keys: string[],
  ttlMs: number,
): Promise<void> {
  await Promise.all(
    keys.map((key) => cache.set(queryCacheKey(view, generation, key), tombstone(), { ttlMs })),
  )
}

export interface RebuildProgress {
  view: ViewName
  generation: number
  applied: number
  total: number
}

/**
 * Builds a new generation of `view` from the start of the stream beside the live one, up
 * to the end the stream had when the rebuild began, then makes it live. Readers keep the
 * live generation until the switch; the projector then follows the new one.
 */
export async function rebuildView(
  deps: Pick<ProjectorDeps, 'views' | 'stream' | 'metrics'>,
  view: ViewName,
  options: { signal?: AbortSignal; onProgress?: (progress: RebuildProgress) => void; pollMs?: number } = {},
): Promise<number> {
  const definition = deps.views.definitions[view]
  const { generation } = await deps.views.registry.beginBuild(view, definition.schemaVersion)
  await definition.storage.create(generation)
  const group = deps.stream.group(groupOf(view, generation))
  const topics = definition.topics.map((topic) => deps.stream.topic(topic))
  const ends = new Map(
    (await deps.stream.engine.ends(topics)).map((p) => [`${p.topic}/${p.partition}`, p.end]),
  )
  const total = [...ends.values()].reduce((sum, end) => sum + end, 0)
  const subscription = await subscribeView(deps, definition, generation, async () => {})
  try {
    for (;;) {
      // The group's committed offset counts too: records the view never sees (dead-lettered) move it.
      const reached = new Map(
        (await deps.stream.engine.lag(group, topics)).map((p) => [`${p.topic}/${p.partition}`, p.committed]),
      )
      for (const p of await definition.storage.positions(generation)) {
        const key = `${p.topic}/${p.partition}`
        reached.set(key, Math.max(reached.get(key) ?? 0, p.nextOffset))
      }
      let applied = 0
      let done = true
      for (const [key, end] of ends) {
        const next = reached.get(key) ?? 0
        applied += Math.min(next, end)
        if (next < end) done = false
      }
      options.onProgress?.({ view, generation, applied, total })
      if (done) break
      if (options.signal?.aborted) throw new Error(`rebuild of ${view} stopped`)
      // A rebuild begun later went live and retired this one, whose storage is dropped soon.
      const state = (await deps.views.registry.all(view)).find((g) => g.generation === generation)?.state
      if (state !== 'building')
        throw new Error(
          `generation ${generation} of ${view} was not made live: a rebuild begun after it already is; ${generation} is retired`,
        )
      await sleep(options.pollMs ?? 250, options.signal)
    }
  } finally {
    await subscription.stop()
  }
  await deps.views.registry.switchTo(view, generation)
  return generation
}
