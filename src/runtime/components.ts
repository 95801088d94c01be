// The one table of components: what each is, what it needs, how it starts. A process runs
// the components its targets name, plus everything they depend on, in dependency order,
// and stops them in reverse. `all` names every component.
import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { startGateway } from '../edge/gateway.ts'
import { RateLimiter } from '../edge/rate-limit.ts'
import type { Cache } from '../engines/cache/port.ts'
import type { EventStream } from '../engines/stream/event-stream.ts'
import { ConfigError } from '../platform/errors.ts'
import type { FlagReader } from '../platform/flags.ts'
import type { Identity } from '../platform/identity/guard.ts'
import { jwksMaxAgeSeconds, openIdentity } from '../platform/identity/identity.ts'
import type { KeyRing } from '../platform/identity/key-ring.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'
import type { PolicyEngine } from '../platform/policy.ts'
import { Service } from '../platform/service.ts'
import { startPaymentProvider } from '../provider/payment-provider.ts'
import { Freshness } from '../read/freshness.ts'
import { Projector } from '../read/projector.ts'
import { startQueryApi } from '../read/query-api.ts'
import { QueryCache } from '../read/query-cache.ts'
import { viewNames } from '../read/view.ts'
import { openViews, type Views } from '../read/views.ts'
import { startFlags } from '../services/flags/flags.ts'
import { startInventoryService } from '../services/inventory/inventory-service.ts'
import { startNotificationService } from '../services/notification/notification-service.ts'
import { startOrderService } from '../services/order/order-service.ts'
import { startPaymentService } from '../services/payment/payment-service.ts'
import { startShippingService } from '../services/shipping/shipping-service.ts'
import { startUserService } from '../services/user/user-service.ts'
import { startCommandApi } from '../write/command-api.ts'
import type { Config } from './config.ts'
import { seedDemoData } from './demo-data.ts'
import {
  loadPolicy,
  type OpenStore,
  openCache,
  openEventStream,
  storeOpener,
  viewsRedisOf,
} from './engines.ts'

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
  /** Set by the `views` component. */
  views?: Views
  /** Set by the `projector` component. */
  projector?: Projector
  /** Set by the `policy` component. */
  policy?: PolicyEngine
  /** Set by the `identity` component: tokens and the policy. */
  identity?: Identity & { ring: KeyRing }
  /** This process's own base URL, once it listens (for in-process defaults such as the provider URL). */
  selfUrl: () => Promise<string>
  /** The components this process runs. */
  running: string[]
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
  policy: {
    description: 'the Cedar policies (MERCATO_POLICY_DIR): routes, data, and which producer emits what',
    dependsOn: [],
    async start(context) {
      context.policy = await loadPolicy(context.config)
      return {}
    },
  },
  stream: {
    description: 'the event stream: the embedded log or Kafka, with every topic of the contracts',
    dependsOn: ['policy'],
    async start(context) {
      const stream = await openEventStream(
        context.config,
        context.log.child({ component: 'stream' }),
        context.metrics,
        need(context.policy, 'policy'),
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
  identity: {
    description: 'signing keys (shared by every process), tokens, and the Cedar policies',
    dependsOn: ['stores', 'policy'],
    async start(context) {
      const identity = await openIdentity(
        await need(context.openStore, 'stores')('identity'),
        context.config,
        need(context.policy, 'policy'),
      )
      context.identity = identity
      return { stop: async () => identity.ring.close() }
    },
  },
}

/** Throws when a component runs without what it depends on (a bug in the table). */
function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`${what} is not started`)
  return value
}

/** A service: its own store, a consumer group named after it, and its outbox relay. */
async function serviceFor(context: Context, name: string): Promise<Service> {
  const store = await need(context.openStore, 'stores')(name)
  return new Service({
    name,
    store,
    stream: need(context.stream, 'stream'),
    log: context.log.child({ component: name }),
    metrics: context.metrics,
    inboxRetentionMs: context.config.inboxRetentionMs,
  })
}

/** The payment provider's URL: configured, or this process when it runs the stand-in. */
function providerUrl(context: Context): () => string | Promise<string> {
  const configured = context.config.paymentProviderUrl
  if (configured) return () => configured
  if (!context.running.includes('payment-provider')) {
    throw new ConfigError(
      'MERCATO_PAYMENT_PROVIDER_URL',
      'is required when the payment-provider component does not run in this process',
    )
  }
  return () => context.selfUrl()
}

Object.assign(components, {
  flags: {
    description: 'feature flags (flagd definitions in the key-value port), evaluated through OpenFeature',
    dependsOn: ['stream', 'cache'],
    async start(context) {
      const flags = await startFlags({
        stream: need(context.stream, 'stream'),
        cache: need(context.cache, 'cache'),
        log: context.log.child({ component: 'flags' }),
        group: `flags-${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`,
      })
      context.flags = flags.flags
      return { ready: flags.ready, stop: flags.stop }
    },
  },
  gateway: {
    description:
      'the edge: tokens, sign-in, policy, rate limits; forwards to command-api and query-api elsewhere',
    dependsOn: ['stores', 'cache', 'identity'],
    async start(context) {
      const { config } = context
      const identity = need(context.identity, 'identity')
      const userUrl = config.gateway.userUrl
      if (!userUrl && !context.running.includes('user')) {
        throw new ConfigError(
          'MERCATO_USER_URL',
          'is required when the user component does not run in this process',
        )
      }
      return startGateway({
        http: context.http,
        identity,
        store: await need(context.openStore, 'stores')('gateway'),
        cache: need(context.cache, 'cache'),
        limiter: new RateLimiter(need(context.cache, 'cache'), 'gateway:'),
        log: context.log.child({ component: 'gateway' }),
        metrics: context.metrics,
        config: config.gateway,
        running: context.running,
        userUrl: () => userUrl ?? context.selfUrl(),
        limits: {
          principalPerMinute: config.rateLimitPrincipalPerMinute,
          addressPerMinute: config.rateLimitAddressPerMinute,
          loginPerMinute: config.rateLimitLoginPerMinute,
          registerPerMinute: config.rateLimitRegisterPerMinute,
          refreshTokenTtlSeconds: config.refreshTokenTtlSeconds,
          upstreamTimeoutMs: config.upstreamTimeoutMs,
          upstreamConcurrencyMax: config.upstreamConcurrencyMax,
          breakerFailures: config.breakerFailures,
          breakerHalfOpenMs: config.breakerHalfOpenMs,
          jwksMaxAgeSeconds: jwksMaxAgeSeconds(config.keyActivationDelayMs),
        },
      })
    },
  },
  'command-api': {
    description: 'the write path: validation, idempotency keys, append to the stream, 202 Accepted',
    dependsOn: ['stream', 'stores', 'flags', 'identity'],
    async start(context) {
      const store = await need(context.openStore, 'stores')('commands')
      const api = await startCommandApi({
        http: context.http,
        stream: need(context.stream, 'stream'),
        store,
        flags: need(context.flags, 'flags'),
        log: context.log.child({ component: 'command-api' }),
        metrics: context.metrics,
        idempotencyKeyTtlMs: context.config.idempotencyKeyTtlMs,
        idempotencyLockMs: context.config.idempotencyLockMs,
        orderLinesMax: context.config.orderLinesMax,
        orderBacklogMax: context.config.orderBacklogMax,
        orderWaitMaxMs: context.config.orderWaitMaxMs,
        identity: need(context.identity, 'identity'),
        webhookAllowPrivateHosts: context.config.webhookAllowPrivateHosts,
      })
      return { ready: () => store.ping(), stop: api.stop }
    },
  },
  'payment-provider': {
    description: 'the stand-in for the external payment provider, with dials for latency and failures',
    dependsOn: ['stores'],
    async start(context) {
      return startPaymentProvider({
        http: context.http,
        store: await need(context.openStore, 'stores')('provider'),
        log: context.log.child({ component: 'payment-provider' }),
        metrics: context.metrics,
        apiKey: context.config.paymentProviderApiKey,
      })
    },
  },
  order: {
    description: 'orders and the saga: deadlines and compensation',
    dependsOn: ['stream', 'stores', 'flags'],
    async start(context) {
      return startOrderService(
        await serviceFor(context, 'order'),
        { stepTimeoutMs: context.config.sagaStepTimeoutMs, linesMax: context.config.orderLinesMax },
        need(context.flags, 'flags'),
      )
    },
  },
  inventory: {
    description: 'stock and reservations: all lines or none, expiry, restocks and write-offs',
    dependsOn: ['stream', 'stores'],
    async start(context) {
      return startInventoryService(await serviceFor(context, 'inventory'), {
        reservationTtlMs: context.config.reservationTtlMs,
      })
    },
  },
  payment: {
    description: 'payments through the provider, and the double-entry ledger',
    dependsOn: ['stream', 'stores', 'flags'],
    async start(context) {
      return startPaymentService(
        await serviceFor(context, 'payment'),
        {
          providerUrl: providerUrl(context),
          apiKey: context.config.paymentProviderApiKey,
          timeoutMs: context.config.paymentProviderTimeoutMs,
          attemptsMax: context.config.paymentProviderAttemptsMax,
          inFlightPatienceMs: context.config.paymentProviderInFlightWaitMs,
          concurrencyMax: context.config.paymentProviderConcurrencyMax,
          backoffBaseMs: context.config.handlerBackoffBaseMs,
        },
        need(context.flags, 'flags'),
      )
    },
  },
  shipping: {
    description: 'shipments with a carrier, on a simulated carrier clock',
    dependsOn: ['stream', 'stores'],
    async start(context) {
      return startShippingService(await serviceFor(context, 'shipping'), {
        carrierStepMs: context.config.carrierStepMs,
      })
    },
  },
  notification: {
    description: 'e-mail over SMTP and signed webhooks at every customer-facing step',
    dependsOn: ['stream', 'stores'],
    async start(context) {
      const notification = await startNotificationService(await serviceFor(context, 'notification'), {
        smtpUrl: context.config.smtpUrl,
        sinkDirectory: join(context.config.dataDir, 'mail'),
        from: 'Mercato <shop@mercato.local>',
        webhookTimeoutMs: 5_000,
        webhookAttemptsMax: 8,
        allowPrivateWebhookHosts: context.config.webhookAllowPrivateHosts,
      })
      return { ready: notification.ready, stop: notification.stop }
    },
  },
  user: {
    description: 'customer profiles, address books and credentials',
    dependsOn: ['stream', 'stores', 'identity'],
    async start(context) {
      return startUserService(await serviceFor(context, 'user'), {
        http: context.http,
        identity: need(context.identity, 'identity'),
        log: context.log.child({ component: 'user' }),
        staff: context.config.auth.staff,
      })
    },
  },
  views: {
    description: 'the read models: catalog, order status and customer 360, in the views store (and Redis)',
    dependsOn: ['stores'],
    async start(context) {
      const { config } = context
      const store = await need(context.openStore, 'stores')('views')
      const views = await openViews({
        store,
        redis: viewsRedisOf(config),
      })
      context.views = views
      return { ready: () => store.ping(), stop: () => views.close() }
    },
  },
  projector: {
    description: 'folds the stream into the views; follows rebuilds',
    dependsOn: ['stream', 'cache', 'views'],
    async start(context) {
      const projector = new Projector(
        {
          views: need(context.views, 'views'),
          stream: need(context.stream, 'stream'),
          cache: need(context.cache, 'cache'),
          log: context.log.child({ component: 'projector' }),
          metrics: context.metrics,
        },
        {
          pollIntervalMs: 1_000,
          retiredKeepMs: 60_000,
          invalidationTtlMs: 30_000,
          inboxRetentionMs: context.config.inboxRetentionMs,
        },
      )
      await projector.start()
      context.projector = projector
      return { stop: () => projector.stop() }
    },
  },
  'query-api': {
    description: 'the read path: views through a cache, with freshness and read-your-writes',
    // flags: it keeps this process's key-value port's flag document current, which GET /v1/flags reads.
    dependsOn: ['stream', 'cache', 'views', 'identity', 'flags'],
    async start(context) {
      const views = need(context.views, 'views')
      const freshness = new Freshness(
        {
          views,
          stream: need(context.stream, 'stream'),
          log: context.log.child({ component: 'query-api' }),
          metrics: context.metrics,
        },
        context.config.viewSampleMs,
      )
      await freshness.start()
      const unhook = context.projector?.onApplied((view) => freshness.applied(view))
      await startQueryApi({
        identity: need(context.identity, 'identity'),
        http: context.http,
        views,
        freshness,
        queryCache: new QueryCache(need(context.cache, 'cache'), context.config.queryCacheTtlMs),
        keyValue: need(context.cache, 'cache'),
        metrics: context.metrics,
        readWaitMs: context.config.readWaitMs,
        // Redis is every process's cache: any projector's invalidations reach it. The
        // in-process cache hears only this process's projector.
        invalidatedHere: (view, generation) =>
          context.config.cache.kind === 'redis' || (context.projector?.appliesAll(view, generation) ?? false),
      })
      return {
        // Not before every view has been built (by a projector here or elsewhere): until
        // then its reads answer 503 view-unavailable.
        ready: async () => {
          for (const view of viewNames) freshness.generation(view)
        },
        stop: async () => {
          unhook?.()
          await freshness.stop()
        },
      }
    },
  },
  'demo-data': {
    description: 'seeds a catalog, stock and customers on an empty data directory (MERCATO_SEED)',
    dependsOn: ['stream', 'stores'],
    async start(context) {
      if (!context.config.seedDemoData) return {}
      const seeded = await seedDemoData(
        need(context.stream, 'stream'),
        await need(context.openStore, 'stores')('seed'),
      )
      if (seeded) context.log.info('demo data seeded: catalog, stock and customers')
      return {}
    },
  },
} satisfies Record<string, Component>)

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
