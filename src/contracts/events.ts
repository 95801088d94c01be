// The data schemas of every event of the order saga, by type and version. A published
// (type, version) never changes incompatibly: test/contracts checks this file against
// published-schemas.json. A breaking change is a new version plus an upcaster.
import { Type as T, type TSchema } from '@sinclair/typebox'

export const Id = T.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._:-]+$' })
export const Sku = T.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._-]+$' })
export const Currency = T.String({ pattern: '^[A-Z]{3}$' })
/** The most any amount may be, in minor units. */
export const amountMinorMax = 1_000_000_000_000
export const AmountMinor = T.Integer({ minimum: 0, maximum: amountMinorMax })
export const Quantity = T.Integer({ minimum: 1, maximum: 10_000 })
const Timestamp = T.String({ format: 'date-time' })
export const Email = T.String({ format: 'email', maxLength: 254 })
const Text = (maxLength: number) => T.String({ maxLength })

export const Address = T.Object(
  {
    name: T.String({ minLength: 1, maxLength: 200 }),
    line1: T.String({ minLength: 1, maxLength: 200 }),
    line2: T.Optional(Text(200)),
    city: T.String({ minLength: 1, maxLength: 100 }),
    postalCode: T.String({ minLength: 1, maxLength: 20 }),
    country: T.String({ pattern: '^[A-Z]{2}$' }),
  },
  { additionalProperties: false },
)

export const Line = T.Object({ sku: Sku, quantity: Quantity }, { additionalProperties: false })
const PricedLine = T.Object(
  { sku: Sku, quantity: Quantity, unitPriceMinor: AmountMinor },
  { additionalProperties: false },
)
const Lines = T.Array(Line, { minItems: 1, maxItems: 100 })
const Money = { amountMinor: AmountMinor, currency: Currency }

const obj = (properties: Record<string, TSchema>) => T.Object(properties, { additionalProperties: false })

export const CancelReason = T.Union([
  T.Literal('out-of-stock'),
  T.Literal('payment-declined'),
  T.Literal('payment-failed'),
  T.Literal('deadline-passed'),
  T.Literal('customer-cancelled'),
  T.Literal('invalid-order'),
  // Cancelled by staff on the customer's behalf or for the shop's reasons (the detail says which).
  T.Literal('operator-cancelled'),
])

/**
 * Cancellations whose `detail` is meant for the customer (what was wrong with the order, why the
 * card was declined, what was said when it was cancelled); the others' (a payment failure, a deadline) is for operators.
 */
export const cancelDetailsForCustomers: ReadonlySet<string> = new Set([
  'invalid-order',
  'out-of-stock',
  'payment-declined',
  'customer-cancelled',
  'operator-cancelled',
])

/** An order's states, in the order the saga moves through them, then the one it may end in instead. */
export const orderStates = [
  'PENDING',
  'STOCK_RESERVED',
  'PAYMENT_AUTHORIZED',
  'SHIPMENT_SCHEDULED',
  'CONFIRMED',
  'SHIPPED',
  'DELIVERED',
  'CANCELLED',
] as const
export type OrderState = (typeof orderStates)[number]
const OrderState = T.Union(orderStates.map((state) => T.Literal(state)))

/** type → version → schema of `data`. */
export const eventSchemas: Record<string, Record<number, TSchema>> = {
  'order.requested': {
    1: obj({
      orderId: Id,
      customerId: Id,
      lines: Lines,
      shippingAddress: Address,
      paymentMethodToken: Id,
      express: T.Optional(T.Boolean()),
    }),
  },
  'order.placed': {
    1: obj({
      orderId: Id,
      customerId: Id,
      lines: T.Array(PricedLine, { minItems: 1, maxItems: 100 }),
      totalMinor: AmountMinor,
      currency: Currency,
      // Whether it ships express: asked for, and allowed by the express-shipping flag.
      express: T.Optional(T.Boolean()),
    }),
  },
  // requestedBy: the subject of who asked (the customer, or a staff account); reason: theirs, if given.
  'order.cancel-requested': { 1: obj({ orderId: Id, requestedBy: Id, reason: T.Optional(Text(500)) }) },
  // A customer's cancel that came too late (the order shipped, or ended already).
  'order.cancel-refused': { 1: obj({ orderId: Id, state: OrderState }) },
  // Saga steps the order service asks of payment and shipping, on the orders topic (key: the
  // order id), so each consumer sees an order's steps in the order they were taken.
  'order.payment-requested': {
    1: obj({ orderId: Id, customerId: Id, paymentMethodToken: Id, ...Money }),
  },
  'order.shipment-requested': {
    1: obj({ orderId: Id, customerId: Id, shippingAddress: Address, lines: Lines, express: T.Boolean() }),
  },
  'order.confirmed': { 1: obj({ orderId: Id }) },
  // customerId: whose order it was, so one cancelled before order.placed can be told too.
  'order.cancelled': {
    1: obj({ orderId: Id, reason: CancelReason, detail: T.Optional(Text(500)), customerId: T.Optional(Id) }),
  },
  'order.shipped': { 1: obj({ orderId: Id, shipmentId: Id }) },
  'order.delivered': { 1: obj({ orderId: Id, shipmentId: Id }) },
  'inventory.reserved': { 1: obj({ orderId: Id, reservationId: Id, lines: Lines, expiresAt: Timestamp }) },
  'inventory.rejected': {
    1: obj({
      orderId: Id,
      shortages: T.Array(obj({ sku: Sku, requested: Quantity, available: T.Integer({ minimum: 0 }) }), {
        maxItems: 100,
      }),
    }),
  },
  'inventory.committed': { 1: obj({ orderId: Id, reservationId: Id }) },
  'inventory.released': {
    1: obj({
      orderId: Id,
      reservationId: Id,
      reason: T.Union([T.Literal('compensation'), T.Literal('expired')]),
    }),
  },
  'inventory.adjusted': {
    1: obj({
      sku: Sku,
      delta: T.Integer({ minimum: -1_000_000, maximum: 1_000_000 }),
      reason: T.Union([T.Literal('restock'), T.Literal('write-off')]),
      onHand: T.Integer({ minimum: 0 }),
      available: T.Integer({ minimum: 0 }),
    }),
  },
  'inventory.adjustment-requested': {
    1: obj({
      sku: Sku,
      delta: T.Integer({ minimum: -1_000_000, maximum: 1_000_000 }),
      reason: T.Union([T.Literal('restock'), T.Literal('write-off')]),
    }),
  },
  'inventory.adjustment-rejected': {
    1: obj({ sku: Sku, delta: T.Integer({ minimum: -1_000_000, maximum: 1_000_000 }), reason: Text(200) }),
  },
  'payment.authorized': { 1: obj({ orderId: Id, paymentId: Id, ...Money }) },
  'payment.declined': { 1: obj({ orderId: Id, reason: Text(200) }) },
  'payment.failed': { 1: obj({ orderId: Id, reason: Text(200) }) },
  'payment.captured': { 1: obj({ orderId: Id, paymentId: Id, ...Money }) },
  'payment.voided': { 1: obj({ orderId: Id, paymentId: Id, ...Money }) },
  'payment.refunded': { 1: obj({ orderId: Id, paymentId: Id, ...Money }) },
  'shipment.scheduled': {
    1: obj({
      orderId: Id,
      shipmentId: Id,
      carrier: T.String({ minLength: 1, maxLength: 50 }),
      trackingNumber: Id,
    }),
  },
  'shipment.cancelled': { 1: obj({ orderId: Id, shipmentId: Id }) },
  'shipment.shipped': { 1: obj({ orderId: Id, shipmentId: Id }) },
  'shipment.delivered': { 1: obj({ orderId: Id, shipmentId: Id }) },
  'notification.sent': {
    1: obj({
      notificationId: Id,
      customerId: Id,
      channel: T.Union([T.Literal('email'), T.Literal('webhook')]),
      template: T.String({ minLength: 1, maxLength: 64 }),
      orderId: T.Optional(Id),
    }),
  },
  'customer.registered': {
    1: obj({ customerId: Id, email: Email, name: T.String({ minLength: 1, maxLength: 200 }) }),
    2: obj({
      customerId: Id,
      email: Email,
      givenName: T.String({ minLength: 1, maxLength: 100 }),
      familyName: T.String({ maxLength: 100 }),
    }),
  },
  'customer.registration-requested': {
    1: obj({
      customerId: Id,
      email: Email,
      givenName: T.String({ minLength: 1, maxLength: 100 }),
      familyName: T.String({ maxLength: 100 }),
      /** scrypt hash ("scrypt$N$r$p$salt$hash"), never the password. */
      passwordHash: T.Optional(T.String({ maxLength: 512 })),
      addresses: T.Optional(T.Array(Address, { maxItems: 20 })),
    }),
  },
  'customer.registration-rejected': { 1: obj({ customerId: Id, reason: Text(200) }) },
  'customer.address-added': { 1: obj({ customerId: Id, addressId: Id, address: Address }) },
  'product.upserted': {
    1: obj({
      sku: Sku,
      name: T.String({ minLength: 1, maxLength: 200 }),
      description: Text(5000),
      category: T.String({ minLength: 1, maxLength: 100 }),
      priceMinor: AmountMinor,
      currency: Currency,
    }),
  },
  'webhook.endpoint-set': {
    1: obj({
      endpointId: Id,
      url: T.String({ minLength: 1, maxLength: 2048 }),
      secret: T.String({ minLength: 16, maxLength: 128 }),
      events: T.Array(T.String({ minLength: 1, maxLength: 128 }), { minItems: 1, maxItems: 100 }),
      enabled: T.Boolean(),
    }),
  },
  'webhook.endpoint-removed': { 1: obj({ endpointId: Id }) },
  'flag.changed': {
    1: obj({
      key: T.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' }),
      definition: T.Record(T.String(), T.Unknown()),
    }),
  },
}

/**
 * Upcasters lift `data` of version N to N+1, so a consumer only ever sees the latest version.
 * Keyed by type, then by the version they read.
 */
export const upcasters: Record<
  string,
  Record<number, (data: Record<string, unknown>) => Record<string, unknown>>
> = {
  'customer.registered': {
    1: ({ name, ...rest }) => {
      const full = String(name).trim()
      const space = full.indexOf(' ')
      return space < 0
        ? { ...rest, givenName: full, familyName: '' }
        : { ...rest, givenName: full.slice(0, space), familyName: full.slice(space + 1).trim() }
    },
  },
}

/**
 * The consumer groups that carry an order through its saga (one per service) and the
 * topics each reads. The command API watches their backlog (see write/saga-backlog.ts).
 */
export const sagaConsumers: Record<'order' | 'inventory' | 'payment' | 'shipping', string[]> = {
  order: ['orders', 'inventory', 'payments', 'shipments', 'products'],
  inventory: ['orders', 'inventory'],
  payment: ['orders'],
  shipping: ['orders'],
}

/** Whether a webhook subscription entry (`*`, an event type, or `prefix.*`) takes events of `type`. */
export function eventTypeMatches(pattern: string, type: string): boolean {
  return (
    pattern === '*' || pattern === type || (pattern.endsWith('.*') && type.startsWith(pattern.slice(0, -1)))
  )
}

/** The topic an event type lives on: one per aggregate, so order is kept per aggregate id. */
export const topicOf: Record<string, string> = {
  order: 'orders',
  inventory: 'inventory',
  payment: 'payments',
  shipment: 'shipments',
  notification: 'notifications',
  customer: 'customers',
  product: 'products',
  flag: 'flags',
  webhook: 'webhooks',
}

/** The topics whose events a webhook endpoint receives (the notification service delivers them). */
export const webhookDeliveryTopics = ['orders', 'payments', 'shipments', 'customers']

/**
 * The event types a webhook endpoint can subscribe to: those of `webhookDeliveryTopics`, less a
 * registration request, which carries a password hash.
 */
export const webhookEventTypes: readonly string[] = Object.keys(eventSchemas).filter(
  (type) =>
    webhookDeliveryTopics.includes(topicOf[type.split('.')[0]] ?? '') &&
    type !== 'customer.registration-requested',
)
