// The one table of components: what each is, what it needs, how it starts. A process runs
// the components its targets name, plus everything they depend on, in dependency order,
// and stops them in reverse. `all` names every component.
import type { FastifyInstance } from 'fastify'
import type { Cache } from '../engines/cache/port.ts'
import type { EventStream } from '../engines/stream/event-stream.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'
import type { Config } from './config.ts'
import { type OpenStore, openCache, openEventStream, storeOpener } from './engines.ts'

export interface Context {
  config: Config
  log: Logger
  metrics: Metrics
  http: FastifyInstance
  /** Set by the `stream` component. */
  stream?: EventStream
  /** Set by the `cache` component. */
  cache?: Cache
  /** Set by the `stores` component: opens (and pings) a service's own store. */
  openStore?: OpenStore
  /** Set by the `flags` component. */
  flags?: FlagReader
  /** This process's own base URL, known once it listens (for in-process defaults such as the provider URL). */
  selfUrl: () => string
}

export interface Running {
  /** Throws (with the reason) while the component cannot take work. */
  ready?: () => Promise<void>
  /** Stops taking work, finishes what is in flight, releases what it holds. */
  stop?: () => Promise<void>
}

export interface Component {
  description: string
  dependsOn: string[]
  start: (context: Context) => Promise<Running>
}

export const components: Record<string, Component> = {
  stream: {
    description: 'the event stream: the embedded log or Kafka, with every topic of the contracts',
    dependsOn: [],
    async start(context) {
      const stream = await openEventStream(
        context.config,
        context.log.child({ component: 'stream' }),
        context.metrics,
      )
      context.stream = stream
      return { ready: () => stream.engine.ping(), stop: () => stream.close() }
    },
  },
  cache: {
    description: 'the cache and key-value store: in-process LRU or Redis',
    dependsOn: [],
    async start(context) {
      const cache = await openCache(context.config)
      context.cache = cache
      return { ready: () => cache.ping(), stop: () => cache.close() }
    },
  },
  stores: {
    description: 'service stores: a SQLite file or a PostgreSQL schema per service',
    dependsOn: [],
    async start(context) {
      const open = storeOpener(context.config)
      const opened: { close(): Promise<void>; ping(): Promise<void> }[] = []
      context.openStore = async (service) => {
        const store = await open(service)
        opened.push(store)
        return store
      }
      return {
        ready: async () => {
          await Promise.all(opened.map((store) => store.ping()))
        },
        stop: async () => {
          await Promise.all(opened.map((store) => store.close()))
        },
      }
    },
  },
}

/** The components to run for `targets`, dependencies first. */
export function resolveTargets(targets: string[], table: Record<string, Component> = components): string[] {
  const unknown = targets.filter((t) => t !== 'all' && !table[t])
  if (unknown.length > 0) {
    throw new Error(
      `unknown target${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}; known: all, ${Object.keys(table).join(', ')}`,
    )
  }
  const wanted = targets.includes('all') ? Object.keys(table) : targets
  const ordered: string[] = []
  const visiting = new Set<string>()
  const visit = (name: string) => {
    if (ordered.includes(name)) return
    if (visiting.has(name)) throw new Error(`components depend on each other in a cycle through ${name}`)
    visiting.add(name)
    for (const dependency of table[name].dependsOn) visit(dependency)
    visiting.delete(name)
    ordered.push(name)
  }
  for (const name of wanted) visit(name)
  return ordered
}
