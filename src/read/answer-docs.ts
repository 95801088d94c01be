// The OpenAPI description of the query API's answers: their bodies, and the headers every
// answer carries (freshness, ETag, cache). Documentation only: the handlers send bodies
// they serialized once and cached.
import { Type as T, type TSchema } from '@sinclair/typebox'

const Nullable = <S extends TSchema>(schema: S) => T.Union([schema, T.Null()])
const Time = T.String({ format: 'date-time' })
const Money = T.Object({ currency: T.String(), amountMinor: T.Integer() })
const Free = T.Record(T.String(), T.Unknown())

const Product = T.Object({
  sku: T.String(),
  name: T.String(),
  description: T.String(),
  category: T.String(),
  priceMinor: T.Integer(),
  currency: T.String(),
  onHand: T.Integer(),
  available: T.Integer(),
  inStock: T.Boolean(),
  updatedAt: T.String({ description: 'time of the last event that changed the product' }),
  listedAt: T.String({ description: 'time of its first listing: what sort=newest orders by' }),
})

const CatalogPage = T.Object({
  items: T.Array(Product),
  total: T.Integer({ description: 'matches in all pages' }),
  facets: T.Object({
    category: T.Array(T.Object({ value: T.String(), count: T.Integer() }), {
      description: 'matches per category, not narrowed by the category filter',
    }),
  }),
  nextCursor: Nullable(T.String({ description: 'send as cursor for the next page' })),
})

const orderStatus = T.String({ description: 'PENDING … CONFIRMED, SHIPPED, DELIVERED or CANCELLED' })

const Order = T.Object({
  orderId: T.String(),
  customerId: Nullable(T.String()),
  status: orderStatus,
  cancellation: Nullable(T.Object({ reason: T.String(), detail: Nullable(T.String()) })),
  lines: T.Array(T.Object({ sku: T.String(), quantity: T.Integer(), unitPriceMinor: Nullable(T.Integer()) })),
  totalMinor: Nullable(T.Integer()),
  currency: Nullable(T.String()),
  shippingAddress: Nullable(Free),
  express: T.Boolean(),
  payment: Nullable(
    T.Object({
      state: T.String({ description: 'authorized, declined, failed, captured, voided or refunded' }),
      paymentId: Nullable(T.String()),
      amountMinor: Nullable(T.Integer()),
      currency: Nullable(T.String()),
      reason: Nullable(T.String()),
    }),
  ),
  shipment: Nullable(
    T.Object({
      state: T.String({ description: 'scheduled, cancelled, shipped or delivered' }),
      shipmentId: T.String(),
      carrier: Nullable(T.String()),
      trackingNumber: Nullable(T.String()),
    }),
  ),
  placedAt: Nullable(T.String()),
  updatedAt: T.String(),
  timeline: T.Array(
    T.Object({ at: Time, event: T.String(), status: Nullable(orderStatus), detail: Nullable(T.String()) }),
  ),
})

const CustomerOrders = T.Object({
  customerId: T.String(),
  items: T.Array(
    T.Object({
      orderId: T.String(),
      status: orderStatus,
      totalMinor: Nullable(T.Integer()),
      currency: Nullable(T.String()),
      placedAt: Nullable(T.String()),
      updatedAt: T.String(),
    }),
  ),
  nextCursor: Nullable(T.String({ description: 'send as cursor for the next page' })),
})

const Customer360 = T.Object({
  customerId: T.String(),
  profile: Nullable(
    T.Object({ email: T.String(), givenName: T.String(), familyName: T.String(), registeredAt: T.String() }),
  ),
  addresses: T.Array(T.Object({ addressId: T.String(), address: Free })),
  orders: T.Object({
    count: T.Integer(),
    open: T.Integer(),
    cancelled: T.Integer(),
    delivered: T.Integer(),
    last: Nullable(T.Object({ orderId: T.String(), placedAt: T.String() })),
  }),
  lifetimeSpend: T.Array(Money, { description: 'captured minus refunded, per currency' }),
  averageBasket: T.Array(Money, { description: 'mean total of the orders not cancelled, per currency' }),
  notifications: T.Object(
    { sent: T.Integer(), lastSentAt: Nullable(T.String()) },
    { description: 'e-mails sent to the customer (webhook deliveries about their orders go to the shop)' },
  ),
  features: T.Null({ description: 'filled by the feature store once the analytics lake exists' }),
})

const WebhookEndpoint = T.Object({
  endpointId: T.String(),
  url: T.String(),
  events: T.Array(T.String(), { description: 'event types, prefix.* or *' }),
  enabled: T.Boolean(),
  registeredAt: T.String(),
  removedAt: Nullable(T.String({ description: 'when an admin removed it' })),
})

const WebhookList = T.Object({ endpoints: T.Array(WebhookEndpoint) })

const Adjustment = T.Object({
  adjustmentId: T.String(),
  sku: T.String(),
  delta: T.Integer(),
  reason: T.String({ description: 'restock or write-off' }),
  outcome: T.Union([T.Literal('pending'), T.Literal('applied'), T.Literal('refused')]),
  detail: Nullable(T.String({ description: 'why it was refused' })),
  requestedAt: T.String(),
  decidedAt: Nullable(T.String()),
})

export const answerSchemas = {
  CatalogPage,
  Product,
  Order,
  CustomerOrders,
  Customer360,
  WebhookEndpoint,
  WebhookList,
  Adjustment,
}

const text = (description: string) => ({ type: 'string', description })

/** Headers of every answer read from a view, a 404 included: how fresh it is. */
const freshnessHeaders = {
  'Mercato-Position': text(
    'the view position the answer reflects: topic/partition=next offset, comma-separated',
  ),
  'Mercato-Staleness-Ms': text('how far the view is behind the stream, in milliseconds (0: caught up)'),
  'Mercato-Stale': text(
    'true when a consistency token was sent and the view had not reached it within the wait (a 404 so marked: come back later)',
  ),
}

/** Headers of every 200 and 304 of the query API. */
const answerHeaders = {
  ...freshnessHeaders,
  ETag: text('the answer’s entity tag: send it in If-None-Match to get a 304 while it is unchanged'),
  'Mercato-Cache': text('hit, miss, or none (an answer that is not cached)'),
}

/** The 200 and 304 answers of a read route whose body is `schema`. */
export function readAnswers(schema: TSchema, description: string): Record<number, object> {
  return {
    200: { ...schema, description, headers: answerHeaders },
    304: {
      type: 'null',
      description: 'Not modified: If-None-Match holds the current ETag',
      headers: answerHeaders,
    },
    404: { headers: freshnessHeaders },
  }
}
