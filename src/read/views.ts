// The three views, their storage on the configured engines, and the registry of their
// generations: what the projector writes and the query API reads.
import type { Store } from '../engines/store/port.ts'
import { catalogFold } from './catalog/catalog-view.ts'
import { customer360Fold, customer360Topics } from './customer-360/customer-360-view.ts'
import { GenerationRegistry } from './generations.ts'
import { orderStatusTopics } from './order-status/order-document.ts'
import {
  type OrderStatusReader,
  orderStatusSqlFold,
  RedisOrderStatusView,
  SqlOrderStatusReader,
} from './order-status/order-status-view.ts'
import { SqlViewStorage, viewStoreMigrations } from './sql-view.ts'
import type { ViewName, ViewStorage } from './view.ts'
import { webhooksFold, webhooksTopics } from './webhooks/webhooks-view.ts'

export interface ViewDefinition {
  name: ViewName
  /** Bumped when the fold changes what a document holds: a new version rebuilds the view. */
  schemaVersion: number
  /** Contracts topics the view folds. */
  topics: string[]
  storage: ViewStorage
}

export const viewSchemaVersions: Record<ViewName, number> = {
  // 4: each stock adjustment with its outcome, at the request's Location.
  // 5: an event applied once by its id (a copy further on the stream doubled stock), and
  //    the currency in the facet and look-up indexes.
  catalog: 5,
  // 2: a failed payment's reason is the customer's sentence, not the provider's error.
  'order-status': 2,
  // 2: refused registrations are kept, so their id answers why.
  // 3: notifications sent count e-mails to the customer, not webhook deliveries about their orders.
  // 4: an event applied once by its id (a copy further on the stream doubled spend).
  'customer-360': 4,
  webhooks: 1,
}

export interface Views {
  /** The views store (SQLite file or PostgreSQL schema): the registry and the SQL views. */
  store: Store
  registry: GenerationRegistry
  definitions: Record<ViewName, ViewDefinition>
  orderStatus: OrderStatusReader
  close(): Promise<void>
}

export interface ViewsOptions {
  store: Store
  /** Where the order-status view lives in a distributed deployment; the views store when unset. */
  redis?: { url: string; keyPrefix: string; commandTimeoutMs: number }
  schemaVersions?: Partial<Record<ViewName, number>>
}

export async function openViews(options: ViewsOptions): Promise<Views> {
  const { store } = options
  await store.migrate(viewStoreMigrations)
  const versions = { ...viewSchemaVersions, ...options.schemaVersions }
  let orderStatusStorage: ViewStorage
  let orderStatus: OrderStatusReader
  let redis: RedisOrderStatusView | undefined
  if (options.redis) {
    redis = new RedisOrderStatusView(
      options.redis.url,
      options.redis.keyPrefix,
      options.redis.commandTimeoutMs,
    )
    await redis.connect()
    orderStatusStorage = redis
    orderStatus = redis
  } else {
    orderStatusStorage = new SqlViewStorage('order-status', store, orderStatusSqlFold())
    orderStatus = new SqlOrderStatusReader(store)
  }
  return {
    store,
    registry: new GenerationRegistry(store),
    orderStatus,
    definitions: {
      catalog: {
        name: 'catalog',
        schemaVersion: versions.catalog,
        topics: ['products', 'inventory'],
        storage: new SqlViewStorage('catalog', store, catalogFold),
      },
      'order-status': {
        name: 'order-status',
        schemaVersion: versions['order-status'],
        topics: orderStatusTopics,
        storage: orderStatusStorage,
      },
      'customer-360': {
        name: 'customer-360',
        schemaVersion: versions['customer-360'],
        topics: customer360Topics,
        storage: new SqlViewStorage('customer-360', store, customer360Fold),
      },
      webhooks: {
        name: 'webhooks',
        schemaVersion: versions.webhooks,
        topics: webhooksTopics,
        storage: new SqlViewStorage('webhooks', store, webhooksFold),
      },
    },
    close: async () => {
      await redis?.close()
    },
  }
}

/** The consumer group that fills a generation of a view. */
export function groupOf(view: ViewName, generation: number): string {
  return `projector.${view}.g${generation}`
}
