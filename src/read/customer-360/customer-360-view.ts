// Customer 360: one document per customer, denormalized from the customers, orders,
// payments and notifications topics. Every change is a single-row upsert or an addition,
// so events of different topics may arrive in any order and the figures come out the same;
// the document is assembled from those rows when read.
import type { Store, Tx } from '../../engines/store/port.ts'
import type { SqlFold } from '../sql-view.ts'

export const customer360Topics = ['customers', 'orders', 'payments', 'notifications']

export interface Money {
  currency: string
  amountMinor: number
}

export interface Customer360 {
  customerId: string
  profile: { email: string; givenName: string; familyName: string; registeredAt: string } | null
  addresses: { addressId: string; address: Record<string, unknown> }[]
  orders: {
    count: number
    open: number
    cancelled: number
    delivered: number
    last: { orderId: string; placedAt: string } | null
  }
  /** Captured minus refunded, per currency. */
  lifetimeSpend: Money[]
  /** The mean total of orders not cancelled, per currency. */
  averageBasket: Money[]
  notifications: { sent: number; lastSentAt: string | null }
  /** Filled by the feature store once the analytics lake exists; null until then. */
  features: null
}

export function customer360CacheKey(customerId: string): string {
  return `customer-360:${customerId}`
}

const profiles = (g: number) => `c360_g${g}_profiles`
const addresses = (g: number) => `c360_g${g}_addresses`
const orders = (g: number) => `c360_g${g}_orders`
const notifications = (g: number) => `c360_g${g}_notifications`
/** Registrations the user service refused (an e-mail already registered): no document, but a reason. */
const rejections = (g: number) => `c360_g${g}_rejections`

export const customer360Fold: SqlFold = {
  // A registration makes the document (or is refused); a cancel changes the customer's orders.
  awaits: ['customer.registration-requested', 'order.cancel-requested'],
  createSql: (_kind, g) => [
    `CREATE TABLE IF NOT EXISTS ${profiles(g)} (customer_id TEXT PRIMARY KEY, email TEXT NOT NULL,
      given_name TEXT NOT NULL, family_name TEXT NOT NULL, registered_at TEXT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS ${addresses(g)} (customer_id TEXT NOT NULL, address_id TEXT NOT NULL,
      address TEXT NOT NULL, PRIMARY KEY (customer_id, address_id))`,
    `CREATE TABLE IF NOT EXISTS ${orders(g)} (order_id TEXT PRIMARY KEY, customer_id TEXT, placed_at TEXT,
      total_minor BIGINT, currency TEXT, cancelled INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
      captured_minor BIGINT NOT NULL DEFAULT 0, refunded_minor BIGINT NOT NULL DEFAULT 0, payment_currency TEXT)`,
    `CREATE INDEX IF NOT EXISTS ${orders(g)}_customer ON ${orders(g)} (customer_id, placed_at)`,
    `CREATE TABLE IF NOT EXISTS ${notifications(g)} (customer_id TEXT PRIMARY KEY, sent BIGINT NOT NULL,
      last_sent_at TEXT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS ${rejections(g)} (customer_id TEXT PRIMARY KEY, reason TEXT NOT NULL)`,
  ],
  tables: (g) => [profiles(g), addresses(g), orders(g), notifications(g), rejections(g)],
  async apply(tx, _kind, g, { event }, changed) {
    const d = event.data as Record<string, any>
    let customerId: string | undefined = d.customerId
    switch (event.type) {
      case 'customer.registered':
        await tx.execute(
          `INSERT INTO ${profiles(g)} (customer_id, email, given_name, family_name, registered_at)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id) DO UPDATE SET email = excluded.email,
           given_name = excluded.given_name, family_name = excluded.family_name`,
          [d.customerId, d.email, d.givenName, d.familyName, event.time],
        )
        break
      case 'customer.registration-rejected':
        await tx.execute(
          `INSERT INTO ${rejections(g)} (customer_id, reason) VALUES ($1, $2) ON CONFLICT (customer_id) DO NOTHING`,
          [d.customerId, d.reason],
        )
        break
      case 'customer.address-added':
        await tx.execute(
          `INSERT INTO ${addresses(g)} (customer_id, address_id, address) VALUES ($1, $2, $3)
           ON CONFLICT (customer_id, address_id) DO UPDATE SET address = excluded.address`,
          [d.customerId, d.addressId, JSON.stringify(d.address)],
        )
        break
      case 'order.requested':
        await upsertOrder(tx, g, d.orderId, { customer_id: d.customerId, placed_at: event.time })
        break
      case 'order.placed':
        await upsertOrder(tx, g, d.orderId, {
          customer_id: d.customerId,
          total_minor: d.totalMinor,
          currency: d.currency,
        })
        break
      case 'order.cancelled':
        customerId = await upsertOrder(tx, g, d.orderId, { cancelled: 1 })
        break
      case 'order.delivered':
        customerId = await upsertOrder(tx, g, d.orderId, { delivered: 1 })
        break
      case 'payment.captured':
      case 'payment.refunded': {
        const column = event.type === 'payment.captured' ? 'captured_minor' : 'refunded_minor'
        await tx.execute(
          `INSERT INTO ${orders(g)} (order_id, ${column}, payment_currency) VALUES ($1, $2, $3)
           ON CONFLICT (order_id) DO UPDATE SET ${column} = ${orders(g)}.${column} + excluded.${column},
           payment_currency = excluded.payment_currency`,
          [d.orderId, d.amountMinor, d.currency],
        )
        customerId = await customerOfOrder(tx, g, d.orderId)
        break
      }
      case 'notification.sent':
        // Messages to the customer: a webhook delivery about their order went to an endpoint of the shop's.
        if (d.channel !== 'email') return
        await tx.execute(
          `INSERT INTO ${notifications(g)} (customer_id, sent, last_sent_at) VALUES ($1, 1, $2)
           ON CONFLICT (customer_id) DO UPDATE SET sent = ${notifications(g)}.sent + 1,
           last_sent_at = CASE WHEN excluded.last_sent_at > ${notifications(g)}.last_sent_at
             THEN excluded.last_sent_at ELSE ${notifications(g)}.last_sent_at END`,
          [d.customerId, event.time],
        )
        break
      default:
        return
    }
    if (customerId) changed.add(customer360CacheKey(customerId))
  },
  async dump(store, g) {
    const ids = await store.query<{ customer_id: string }>(
      `SELECT customer_id FROM ${profiles(g)} UNION SELECT customer_id FROM ${orders(g)} WHERE customer_id IS NOT NULL
       UNION SELECT customer_id FROM ${notifications(g)} ORDER BY customer_id`,
    )
    const documents: Customer360[] = []
    for (const { customer_id } of ids) {
      const doc = await readCustomer360(store, g, customer_id)
      if (doc) documents.push(doc)
    }
    return documents
  },
}

type OrderColumns = Partial<{
  customer_id: string
  placed_at: string
  total_minor: number
  currency: string
  cancelled: 1
  delivered: 1
}>

/** Sets columns of an order's row (a column already set keeps a customer and time first written); resolves with its customer. */
async function upsertOrder(
  tx: Tx,
  g: number,
  orderId: string,
  columns: OrderColumns,
): Promise<string | undefined> {
  const names = Object.keys(columns)
  const values = Object.values(columns) as (string | number)[]
  const keepFirst = new Set(['customer_id', 'placed_at'])
  await tx.execute(
    `INSERT INTO ${orders(g)} (order_id, ${names.join(', ')}) VALUES ($1, ${names.map((_, i) => `$${i + 2}`).join(', ')})
     ON CONFLICT (order_id) DO UPDATE SET ${names
       .map((n) =>
         keepFirst.has(n) ? `${n} = COALESCE(${orders(g)}.${n}, excluded.${n})` : `${n} = excluded.${n}`,
       )
       .join(', ')}`,
    [orderId, ...values],
  )
  return columns.customer_id ?? customerOfOrder(tx, g, orderId)
}

async function customerOfOrder(tx: Tx, g: number, orderId: string): Promise<string | undefined> {
  const [row] = await tx.query<{ customer_id: string | null }>(
    `SELECT customer_id FROM ${orders(g)} WHERE order_id = $1`,
    [orderId],
  )
  return row?.customer_id ?? undefined
}

/** Why the registration of `customerId` was refused, when it was. */
export async function registrationRejection(
  store: Store,
  g: number,
  customerId: string,
): Promise<string | undefined> {
  const [row] = await store.query<{ reason: string }>(
    `SELECT reason FROM ${rejections(g)} WHERE customer_id = $1`,
    [customerId],
  )
  return row?.reason
}

/** Assembles a customer's document; undefined when the view knows nothing of them. */
export async function readCustomer360(
  store: Store,
  g: number,
  customerId: string,
): Promise<Customer360 | undefined> {
  const [profile] = await store.query<{
    email: string
    given_name: string
    family_name: string
    registered_at: string
  }>(`SELECT email, given_name, family_name, registered_at FROM ${profiles(g)} WHERE customer_id = $1`, [
    customerId,
  ])
  const orderRows = await store.query<{
    order_id: string
    placed_at: string | null
    total_minor: number | null
    currency: string | null
    cancelled: number
    delivered: number
    captured_minor: number
    refunded_minor: number
    payment_currency: string | null
  }>(
    `SELECT order_id, placed_at, total_minor, currency, cancelled, delivered, captured_minor, refunded_minor,
       payment_currency FROM ${orders(g)} WHERE customer_id = $1 ORDER BY placed_at, order_id`,
    [customerId],
  )
  const [sent] = await store.query<{ sent: number; last_sent_at: string }>(
    `SELECT sent, last_sent_at FROM ${notifications(g)} WHERE customer_id = $1`,
    [customerId],
  )
  if (!profile && orderRows.length === 0 && !sent) return undefined
  const addressRows = await store.query<{ address_id: string; address: string }>(
    `SELECT address_id, address FROM ${addresses(g)} WHERE customer_id = $1 ORDER BY address_id`,
    [customerId],
  )
  const spend = new Map<string, number>()
  const baskets = new Map<string, { sum: number; count: number }>()
  let last: Customer360['orders']['last'] = null
  for (const o of orderRows) {
    const net = Number(o.captured_minor) - Number(o.refunded_minor)
    if (o.payment_currency && net !== 0)
      spend.set(o.payment_currency, (spend.get(o.payment_currency) ?? 0) + net)
    if (!o.cancelled && o.currency && o.total_minor !== null) {
      const basket = baskets.get(o.currency) ?? { sum: 0, count: 0 }
      baskets.set(o.currency, { sum: basket.sum + Number(o.total_minor), count: basket.count + 1 })
    }
    if (
      o.placed_at &&
      (!last || o.placed_at > last.placedAt || (o.placed_at === last.placedAt && o.order_id > last.orderId))
    )
      last = { orderId: o.order_id, placedAt: o.placed_at }
  }
  const byCurrency = (entries: [string, number][]) =>
    entries.sort(([a], [b]) => (a < b ? -1 : 1)).map(([currency, amountMinor]) => ({ currency, amountMinor }))
  return {
    customerId,
    profile: profile
      ? {
          email: profile.email,
          givenName: profile.given_name,
          familyName: profile.family_name,
          registeredAt: profile.registered_at,
        }
      : null,
    addresses: addressRows.map((a) => ({ addressId: a.address_id, address: JSON.parse(a.address) })),
    orders: {
      count: orderRows.length,
      open: orderRows.filter((o) => !o.cancelled && !o.delivered).length,
      cancelled: orderRows.filter((o) => o.cancelled).length,
      delivered: orderRows.filter((o) => o.delivered).length,
      last,
    },
    lifetimeSpend: byCurrency([...spend]),
    averageBasket: byCurrency([...baskets].map(([c, b]) => [c, Math.round(b.sum / b.count)])),
    notifications: { sent: sent ? Number(sent.sent) : 0, lastSentAt: sent?.last_sent_at ?? null },
    features: null,
  }
}
