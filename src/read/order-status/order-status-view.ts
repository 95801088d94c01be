// The order-status view: per order its steps (folded into the document when read), per
// customer their orders, newest first. Embedded it lives in the views store; in a
// distributed deployment in Redis, where positions are written in the same script as the steps.
import { Redis } from 'ioredis'
import { requestRole } from '../../contracts/requests.ts'
import type { Store } from '../../engines/store/port.ts'
import type { RecordPosition } from '../../engines/stream/port.ts'
import type { SqlFold } from '../sql-view.ts'
import {
  dumpText,
  type PartitionPosition,
  partitionKey,
  positionsAfter,
  unapplied,
  type ViewEvent,
  type ViewStorage,
} from '../view.ts'
import {
  customerOf,
  customerOrdersCacheKey,
  foldOrder,
  type OrderDocument,
  type OrderStep,
  type OrderSummary,
  orderCacheKey,
  orderStepOf,
  summaryOf,
} from './order-document.ts'

/** A customer's orders, newest first; `after` is the last item of the previous page. */
export interface OrderPage {
  items: OrderSummary[]
  next: { placedAt: string; orderId: string } | null
}

export interface OrderStatusReader {
  order(generation: number, orderId: string): Promise<OrderDocument | undefined>
  customerOrders(
    generation: number,
    customerId: string,
    limit: number,
    after?: { placedAt: string; orderId: string },
  ): Promise<OrderPage>
}

const steps = (g: number) => `orderstatus_g${g}_steps`
const customers = (g: number) => `orderstatus_g${g}_customers`

/**
 * The customer of each order seen lately: an order's customer never changes, so the view
 * need not read it back for every step (it is read when an order's placing came first to
 * another process, or was forgotten).
 */
class RecentCustomers {
  readonly #byOrder = new Map<string, string>()
  /** The orders remembered, oldest first from `#next` once the ring is full. */
  readonly #ring: string[] = []
  readonly #sizeMax: number
  #next = 0

  constructor(sizeMax: number) {
    this.#sizeMax = sizeMax
  }

  get(orderId: string): string | undefined {
    return this.#byOrder.get(orderId)
  }

  set(orderId: string, customerId: string): void {
    if (this.#byOrder.has(orderId)) return
    if (this.#ring.length < this.#sizeMax) this.#ring.push(orderId)
    else {
      this.#byOrder.delete(this.#ring[this.#next])
      this.#ring[this.#next] = orderId
      this.#next = (this.#next + 1) % this.#sizeMax
    }
    this.#byOrder.set(orderId, customerId)
  }
}

/** A cancel's outcome (cancelled, or refused) changes the order's document. */
const awaits = ['order.cancel-requested']

/** The order-status fold for one views store, with its own memory of orders' customers. */
export function orderStatusSqlFold(): SqlFold {
  const knownCustomers = new RecentCustomers(50_000)
  return {
    awaits,
    createSql: (_kind, g) => [
      `CREATE TABLE IF NOT EXISTS ${steps(g)} (order_id TEXT NOT NULL, step_id TEXT NOT NULL, step TEXT NOT NULL,
        PRIMARY KEY (order_id, step_id))`,
      `CREATE TABLE IF NOT EXISTS ${customers(g)} (customer_id TEXT NOT NULL, order_id TEXT NOT NULL,
        placed_at TEXT NOT NULL, PRIMARY KEY (customer_id, order_id))`,
      `CREATE INDEX IF NOT EXISTS ${customers(g)}_newest ON ${customers(g)} (customer_id, placed_at, order_id)`,
      `CREATE INDEX IF NOT EXISTS ${customers(g)}_order ON ${customers(g)} (order_id)`,
    ],
    tables: (g) => [steps(g), customers(g)],
    async apply(tx, _kind, g, { event }, changed) {
      const found = orderStepOf(event)
      if (!found) return
      const { orderId, step } = found
      await tx.execute(
        `INSERT INTO ${steps(g)} (order_id, step_id, step) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
        [orderId, step.id, JSON.stringify(step)],
      )
      changed.add(orderCacheKey(orderId))
      const customerId = customerOf(step)
      if (customerId) {
        await tx.execute(
          `INSERT INTO ${customers(g)} (customer_id, order_id, placed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
          [customerId, orderId, step.time],
        )
        knownCustomers.set(orderId, customerId)
      }
      const known = customerId ?? knownCustomers.get(orderId)
      if (known) {
        changed.add(customerOrdersCacheKey(known))
        return
      }
      for (const row of await tx.query<{ customer_id: string }>(
        `SELECT customer_id FROM ${customers(g)} WHERE order_id = $1`,
        [orderId],
      )) {
        knownCustomers.set(orderId, row.customer_id)
        changed.add(customerOrdersCacheKey(row.customer_id))
      }
    },
    async dump(store, g) {
      const rows = await store.query<{ order_id: string; step: string }>(
        `SELECT order_id, step FROM ${steps(g)} ORDER BY order_id, step_id`,
      )
      return documentsOf(rows.map((r) => [r.order_id, JSON.parse(r.step) as OrderStep]))
    },
  }
}

/** Reads the SQL order-status view. */
export class SqlOrderStatusReader implements OrderStatusReader {
  readonly #store: Store

  constructor(store: Store) {
    this.#store = store
  }

  async order(g: number, orderId: string): Promise<OrderDocument | undefined> {
    const rows = await this.#store.query<{ step: string }>(
      `SELECT step FROM ${steps(g)} WHERE order_id = $1`,
      [orderId],
    )
    if (rows.length === 0) return undefined
    return foldOrder(
      orderId,
      rows.map((r) => JSON.parse(r.step)),
    )
  }

  async customerOrders(
    g: number,
    customerId: string,
    limit: number,
    after?: { placedAt: string; orderId: string },
  ): Promise<OrderPage> {
    const rows = await this.#store.query<{ order_id: string; placed_at: string }>(
      after
        ? `SELECT order_id, placed_at FROM ${customers(g)} WHERE customer_id = $1
             AND (placed_at < $2 OR (placed_at = $2 AND order_id < $3))
           ORDER BY placed_at DESC, order_id DESC LIMIT $4`
        : `SELECT order_id, placed_at FROM ${customers(g)} WHERE customer_id = $1
           ORDER BY placed_at DESC, order_id DESC LIMIT $2`,
      after ? [customerId, after.placedAt, after.orderId, limit + 1] : [customerId, limit + 1],
    )
    const page = rows.slice(0, limit)
    const items: OrderSummary[] = []
    for (const row of page) {
      const doc = await this.order(g, row.order_id)
      if (doc) items.push(summaryOf(doc))
    }
    const last = page.at(-1)
    return {
      items,
      next: rows.length > limit && last ? { placedAt: last.placed_at, orderId: last.order_id } : null,
    }
  }
}

/**
 * The view in Redis. Keys, under `<prefix>view:order-status:g<N>:`: `order:<id>` a hash of
 * step id → step, `customer:<id>` a sorted set of "<placedAt>|<orderId>" (read newest first),
 * `order-customer:<id>` the order's customer, `positions` a hash of partition → "next|lastEventMs",
 * `requests` a hash of the pending requests' positions → their ids, and `request-positions` the other way.
 */
export class RedisOrderStatusView implements ViewStorage, OrderStatusReader {
  readonly #redis: Redis
  readonly #prefix: string
  readonly #awaits = new Set(awaits)

  constructor(url: string, prefix: string, commandTimeoutMs: number) {
    this.#prefix = `${prefix}view:order-status:`
    this.#redis = new Redis(url, {
      lazyConnect: true,
      // Commands issued in the same turn of the event loop go out in one write.
      enableAutoPipelining: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: commandTimeoutMs * 5,
      commandTimeout: commandTimeoutMs * 5,
    })
    this.#redis.on('error', () => {})
  }

  async connect(): Promise<void> {
    await this.#redis.connect()
  }

  #key(g: number, rest: string): string {
    return `${this.#prefix}g${g}:${rest}`
  }

  async create(): Promise<void> {}

  /**
   * Applies a batch in one script that first checks the batch's partitions are where they
   * were read: a consumer still applying after it lost a partition (a rebalance's overlap)
   * finds them moved and reads again, so it cannot move a position back, nor leave pending
   * a request the partition's new owner has settled.
   */
  async apply(g: number, events: ViewEvent[]): Promise<string[]> {
    for (let attempt = 1; ; attempt++) {
      const changed = await this.#applyIfUnmoved(g, events)
      if (changed) return changed
      if (attempt === applyAttemptsMax)
        throw new Error(`order-status view: another writer kept moving its positions (${attempt} tries)`)
    }
  }

  /** The cache keys the batch changed; undefined when a partition moved since it was read. */
  async #applyIfUnmoved(g: number, events: ViewEvent[]): Promise<string[] | undefined> {
    const positionsKey = this.#key(g, 'positions')
    const stored = await this.#redis.hgetall(positionsKey)
    const fresh = unapplied(
      events,
      new Map(Object.entries(stored).map(([key, value]) => [key, Number(value.split('|')[0])])),
    )
    if (fresh.length === 0) return []
    const found = fresh.flatMap(({ event }) => orderStepOf(event) ?? [])
    const orderIds = [...new Set(found.map((f) => f.orderId))]
    const knownCustomers =
      orderIds.length === 0
        ? []
        : await this.#redis.mget(orderIds.map((id) => this.#key(g, `order-customer:${id}`)))
    const customerOfOrder = new Map<string, string>()
    orderIds.forEach((id, i) => {
      if (knownCustomers[i]) customerOfOrder.set(id, knownCustomers[i] as string)
    })
    // Requests pending from this batch on, and those this batch settles.
    const requests = new Map<string, string>()
    const settled: string[] = []
    for (const { event, position } of fresh) {
      const role = requestRole(this.#awaits, event)
      if (role?.kind === 'request' && !requests.has(event.id))
        requests.set(event.id, requestPosition(position))
      else if (role?.kind === 'outcome' && !requests.delete(role.requestId)) settled.push(role.requestId)
    }
    // One read for both: a request already pending keeps its first position (a copy appended
    // again is not another request, as in the SQL views), and a settled one's goes with it.
    // A request and its outcome share a partition, so the write's check covers this read too.
    const ids = [...requests.keys(), ...settled]
    const positions =
      ids.length === 0 ? [] : await this.#redis.hmget(this.#key(g, 'request-positions'), ...ids)
    const pendingAt = new Map(ids.map((id, i) => [id, positions[i]]))
    // A copy of a request whose step its order holds already was applied before: pending
    // then, or settled since (whose copy must not be pending for ever).
    const seenBefore = await this.#stepsHeld(g, fresh, requests)
    const writes: string[][] = []
    for (const [id, at] of requests) {
      if (pendingAt.get(id) || seenBefore.has(id)) continue
      writes.push(['HSET', this.#key(g, 'requests'), at, id])
      writes.push(['HSET', this.#key(g, 'request-positions'), id, at])
    }
    for (const id of settled) {
      const at = pendingAt.get(id)
      if (at) writes.push(['HDEL', this.#key(g, 'requests'), at])
      writes.push(['HDEL', this.#key(g, 'request-positions'), id])
    }
    for (const { orderId, step } of found) {
      writes.push(['HSETNX', this.#key(g, `order:${orderId}`), step.id, JSON.stringify(step)])
      const customerId = customerOf(step)
      if (customerId && !customerOfOrder.has(orderId)) {
        customerOfOrder.set(orderId, customerId)
        writes.push(['SET', this.#key(g, `order-customer:${orderId}`), customerId])
        writes.push(['ZADD', this.#key(g, `customer:${customerId}`), '0', `${step.time}|${orderId}`])
      }
    }
    const expected = new Map<string, string>()
    for (const p of positionsAfter(fresh)) {
      const field = partitionKey(p.topic, p.partition)
      expected.set(field, stored[field] ?? '')
      writes.push(['HSET', positionsKey, field, `${p.nextOffset}|${p.lastEventMs}`])
    }
    if (!(await writeIfAt(this.#redis, positionsKey, expected, writes))) return undefined
    const changed = new Set<string>()
    for (const id of orderIds) {
      changed.add(orderCacheKey(id))
      const customerId = customerOfOrder.get(id)
      if (customerId) changed.add(customerOrdersCacheKey(customerId))
    }
    return [...changed]
  }

  /** Of the `requests` (event ids) in `events`, those whose step their order holds already. */
  async #stepsHeld(g: number, events: ViewEvent[], requests: Map<string, string>): Promise<Set<string>> {
    const asked = events.flatMap(({ event }) => {
      const step = requests.has(event.id) ? orderStepOf(event) : undefined
      return step ? [{ id: event.id, orderId: step.orderId }] : []
    })
    const held = await Promise.all(
      asked.map(({ id, orderId }) => this.#redis.hexists(this.#key(g, `order:${orderId}`), id)),
    )
    return new Set(asked.filter((_, i) => held[i] === 1).map(({ id }) => id))
  }

  async pending(g: number, position: RecordPosition): Promise<boolean> {
    return (await this.#redis.hexists(this.#key(g, 'requests'), requestPosition(position))) === 1
  }

  async positions(g: number): Promise<PartitionPosition[]> {
    const all = await this.#redis.hgetall(this.#key(g, 'positions'))
    return Object.entries(all).map(([key, value]) => {
      const slash = key.lastIndexOf('/')
      const [next, last] = value.split('|')
      return {
        topic: key.slice(0, slash),
        partition: Number(key.slice(slash + 1)),
        nextOffset: Number(next),
        lastEventMs: Number(last),
      }
    })
  }

  async order(g: number, orderId: string): Promise<OrderDocument | undefined> {
    const all = await this.#redis.hgetall(this.#key(g, `order:${orderId}`))
    const found = Object.values(all)
    if (found.length === 0) return undefined
    return foldOrder(
      orderId,
      found.map((s) => JSON.parse(s)),
    )
  }

  async customerOrders(
    g: number,
    customerId: string,
    limit: number,
    after?: { placedAt: string; orderId: string },
  ): Promise<OrderPage> {
    const members = await this.#redis.zrevrangebylex(
      this.#key(g, `customer:${customerId}`),
      after ? `(${after.placedAt}|${after.orderId}` : '+',
      '-',
      'LIMIT',
      0,
      limit + 1,
    )
    const page = members.slice(0, limit).map((member) => {
      const bar = member.lastIndexOf('|')
      return { placedAt: member.slice(0, bar), orderId: member.slice(bar + 1) }
    })
    const items: OrderSummary[] = []
    for (const { orderId } of page) {
      const doc = await this.order(g, orderId)
      if (doc) items.push(summaryOf(doc))
    }
    return { items, next: members.length > limit ? (page.at(-1) ?? null) : null }
  }

  async dump(g: number): Promise<string> {
    const rows: [string, OrderStep][] = []
    for (const key of await this.#keys(this.#key(g, 'order:*'))) {
      const orderId = key.slice(this.#key(g, 'order:').length)
      for (const step of Object.values(await this.#redis.hgetall(key))) rows.push([orderId, JSON.parse(step)])
    }
    return dumpText(documentsOf(rows))
  }

  async drop(g: number): Promise<void> {
    const keys = await this.#keys(this.#key(g, '*'))
    for (let i = 0; i < keys.length; i += 500) await this.#redis.unlink(...keys.slice(i, i + 500))
  }

  async #keys(pattern: string): Promise<string[]> {
    const keys: string[] = []
    let cursor = '0'
    do {
      const [next, found] = await this.#redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      cursor = next
      keys.push(...found)
    } while (cursor !== '0')
    return keys
  }

  async ping(): Promise<void> {
    await this.#redis.ping()
  }

  async close(): Promise<void> {
    this.#redis.disconnect()
  }
}

function documentsOf(rows: [string, OrderStep][]): OrderDocument[] {
  const byOrder = new Map<string, OrderStep[]>()
  for (const [orderId, step] of rows) byOrder.set(orderId, [...(byOrder.get(orderId) ?? []), step])
  return [...byOrder.keys()].sort().map((orderId) => foldOrder(orderId, byOrder.get(orderId) ?? []))
}

function requestPosition({ topic, partition, offset }: RecordPosition): string {
  return `${partitionKey(topic, partition)}@${offset}`
}

/** Tries of a batch whose partitions another writer moved between its read and its write. */
const applyAttemptsMax = 5

/**
 * Runs `writes` (each a command and its arguments) in one script, only if every field of
 * `expected` in the hash at `key` still holds its value ('' for a field that was absent).
 * Resolves with whether it ran them.
 */
export async function writeIfAt(
  redis: Redis,
  key: string,
  expected: Map<string, string>,
  writes: string[][],
): Promise<boolean> {
  const args = [String(expected.size), ...[...expected].flat()]
  for (const write of writes) args.push(String(write.length), ...write)
  return (await redis.eval(writeIfAtScript, 1, key, ...args)) === 1
}

// ARGV: the count n of expected fields, n pairs of field and value, then each write as its
// argument count followed by its arguments.
const writeIfAtScript = `
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[2 + 2 * i]) or '') ~= ARGV[3 + 2 * i] then return 0 end
end
local i = 2 + 2 * n
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
return 1
`
