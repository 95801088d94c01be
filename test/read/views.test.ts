// Each view built from a scripted event history equals the expected document; a redelivered
// batch changes nothing; the same history split and interleaved differently (each
// partition's order kept) gives a byte-for-byte equal view. On SQLite, and on PostgreSQL
// with the order-status view in Redis.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { Redis } from 'ioredis'
import pg from 'pg'
import { type CloudEvent, createEvent } from '../../src/contracts/envelope.ts'
import { type Store, storeLimitDefaults } from '../../src/engines/store/port.ts'
import { PostgresStore } from '../../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import { partitionForKey } from '../../src/engines/stream/port.ts'
import { getProduct } from '../../src/read/catalog/catalog-view.ts'
import { readCustomer360 } from '../../src/read/customer-360/customer-360-view.ts'
import { foldOrder, orderStepOf } from '../../src/read/order-status/order-document.ts'
import type { ViewEvent } from '../../src/read/view.ts'
import { openViews, type Views } from '../../src/read/views.ts'
import { readWebhook, readWebhooks } from '../../src/read/webhooks/webhooks-view.ts'
import { serverUrls, skipUnlessReachable } from '../support/servers.ts'
import { tempDir, uniqueName } from '../support/wait.ts'

const partitions = 4
const t0 = Date.parse('2026-11-01T10:00:00.000Z')

/** A history as the stream would hold it: each event on its topic and key's partition, offsets in order. */
function history(): ViewEvent[] {
  const offsets = new Map<string, number>()
  let clock = 0
  const at = (type: string, subject: string, data: Record<string, unknown>): ViewEvent => {
    const topic = {
      order: 'orders',
      inventory: 'inventory',
      payment: 'payments',
      shipment: 'shipments',
      notification: 'notifications',
      customer: 'customers',
      product: 'products',
      webhook: 'webhooks',
    }[type.split('.')[0]] as string
    const partition = partitionForKey(subject, partitions)
    const key = `${topic}/${partition}`
    const offset = offsets.get(key) ?? 0
    offsets.set(key, offset + 1)
    clock += 1000
    const event: CloudEvent = createEvent({
      id: `evt_${String(clock).padStart(6, '0')}`,
      type,
      subject,
      source: 'mercato/test',
      data,
      time: new Date(t0 + clock),
    })
    return { event, position: { topic, partition, offset }, timestampMs: t0 + clock }
  }
  const address = {
    name: 'Ada Lovelace',
    line1: '1 Analytical St',
    city: 'London',
    postalCode: 'N1',
    country: 'GB',
  }
  const lines = [{ sku: 'LAMP-1', quantity: 2 }]
  return [
    at('customer.registered', 'cus_1', {
      customerId: 'cus_1',
      email: 'ada@example.com',
      givenName: 'Ada',
      familyName: 'Lovelace',
    }),
    at('customer.address-added', 'cus_1', { customerId: 'cus_1', addressId: 'adr_1', address }),
    at('product.upserted', 'LAMP-1', {
      sku: 'LAMP-1',
      name: 'Desk lamp',
      description: 'A warm desk lamp',
      category: 'home',
      priceMinor: 2500,
      currency: 'EUR',
    }),
    at('inventory.adjusted', 'LAMP-1', {
      sku: 'LAMP-1',
      delta: 10,
      reason: 'restock',
      onHand: 10,
      available: 10,
    }),
    // Order 1: delivered.
    at('order.requested', 'ord_1', {
      orderId: 'ord_1',
      customerId: 'cus_1',
      lines,
      shippingAddress: address,
      paymentMethodToken: 'tok_visa',
    }),
    at('order.placed', 'ord_1', {
      orderId: 'ord_1',
      customerId: 'cus_1',
      lines: [{ sku: 'LAMP-1', quantity: 2, unitPriceMinor: 2500 }],
      totalMinor: 5000,
      currency: 'EUR',
    }),
    at('inventory.reserved', 'ord_1', {
      orderId: 'ord_1',
      reservationId: 'res_ord_1',
      lines,
      expiresAt: '2026-11-01T11:00:00.000Z',
    }),
    at('order.payment-requested', 'ord_1', {
      orderId: 'ord_1',
      customerId: 'cus_1',
      paymentMethodToken: 'tok_visa',
      amountMinor: 5000,
      currency: 'EUR',
    }),
    at('payment.authorized', 'ord_1', {
      orderId: 'ord_1',
      paymentId: 'pay_1',
      amountMinor: 5000,
      currency: 'EUR',
    }),
    at('order.shipment-requested', 'ord_1', {
      orderId: 'ord_1',
      customerId: 'cus_1',
      shippingAddress: address,
      lines,
      express: false,
    }),
    at('shipment.scheduled', 'ord_1', {
      orderId: 'ord_1',
      shipmentId: 'shp_1',
      carrier: 'DHL',
      trackingNumber: 'TRK1',
    }),
    at('order.confirmed', 'ord_1', { orderId: 'ord_1' }),
    at('payment.captured', 'ord_1', {
      orderId: 'ord_1',
      paymentId: 'pay_1',
      amountMinor: 5000,
      currency: 'EUR',
    }),
    at('inventory.committed', 'ord_1', { orderId: 'ord_1', reservationId: 'res_ord_1' }),
    at('shipment.shipped', 'ord_1', { orderId: 'ord_1', shipmentId: 'shp_1' }),
    at('order.shipped', 'ord_1', { orderId: 'ord_1', shipmentId: 'shp_1' }),
    at('notification.sent', 'cus_1', {
      notificationId: 'ntf_1',
      customerId: 'cus_1',
      channel: 'email',
      template: 'order-shipped',
      orderId: 'ord_1',
    }),
    at('shipment.delivered', 'ord_1', { orderId: 'ord_1', shipmentId: 'shp_1' }),
    at('order.delivered', 'ord_1', { orderId: 'ord_1', shipmentId: 'shp_1' }),
    // Order 2: reserved, then declined and released.
    at('order.requested', 'ord_2', {
      orderId: 'ord_2',
      customerId: 'cus_1',
      lines: [{ sku: 'LAMP-1', quantity: 3 }],
      shippingAddress: address,
      paymentMethodToken: 'tok_declined',
    }),
    at('order.placed', 'ord_2', {
      orderId: 'ord_2',
      customerId: 'cus_1',
      lines: [{ sku: 'LAMP-1', quantity: 3, unitPriceMinor: 2500 }],
      totalMinor: 7500,
      currency: 'EUR',
    }),
    at('inventory.reserved', 'ord_2', {
      orderId: 'ord_2',
      reservationId: 'res_ord_2',
      lines: [{ sku: 'LAMP-1', quantity: 3 }],
      expiresAt: '2026-11-01T11:00:00.000Z',
    }),
    at('payment.declined', 'ord_2', { orderId: 'ord_2', reason: 'card declined' }),
    at('order.cancelled', 'ord_2', { orderId: 'ord_2', reason: 'payment-declined', detail: 'card declined' }),
    at('inventory.released', 'ord_2', {
      orderId: 'ord_2',
      reservationId: 'res_ord_2',
      reason: 'compensation',
    }),
    at('notification.sent', 'cus_1', {
      notificationId: 'ntf_2',
      customerId: 'cus_1',
      channel: 'email',
      template: 'order-cancelled',
      orderId: 'ord_2',
    }),
    // A webhook delivery about the customer's order went to the shop's endpoint, not to them.
    at('notification.sent', 'cus_1', {
      notificationId: 'ntf_3',
      customerId: 'cus_1',
      channel: 'webhook',
      template: 'order.cancelled',
      orderId: 'ord_2',
    }),
    // Two webhook endpoints, one removed later; a removal of an id never registered.
    ...['whe_1', 'whe_2'].map((endpointId, i) =>
      at('webhook.endpoint-set', endpointId, {
        endpointId,
        url: `https://hooks${i + 1}.example/in`,
        secret: `whsec_secret_of_${endpointId}`,
        events: i === 0 ? ['order.*'] : ['*'],
        enabled: true,
      }),
    ),
    at('webhook.endpoint-removed', 'whe_2', { endpointId: 'whe_2' }),
    at('webhook.endpoint-removed', 'whe_never', { endpointId: 'whe_never' }),
  ]
}

/** The same history, interleaved another way: each partition's own order kept. */
function interleavedOtherwise(events: ViewEvent[]): ViewEvent[][] {
  const byPartition = new Map<string, ViewEvent[]>()
  for (const e of events) {
    const key = `${e.position.topic}/${e.position.partition}`
    byPartition.set(key, [...(byPartition.get(key) ?? []), e])
  }
  // One batch per partition, partitions in reverse order of first appearance.
  return [...byPartition.values()].reverse()
}

async function applyAll(views: Views, generation: number, batches: ViewEvent[][]) {
  for (const batch of batches) {
    for (const definition of Object.values(views.definitions)) {
      const topics = new Set(definition.topics)
      const mine = batch.filter((e) => topics.has(e.position.topic))
      if (mine.length > 0) await definition.storage.apply(generation, mine)
    }
  }
}

async function dumps(views: Views, generation: number): Promise<string[]> {
  return Promise.all(Object.values(views.definitions).map((d) => d.storage.dump(generation)))
}

function defineViewTests(
  name: string,
  skip: string | undefined,
  open: () => Promise<{ views: Views; store: Store; cleanup: () => Promise<void> }>,
) {
  describe(`views from a scripted history: ${name}`, { skip }, () => {
    let views: Views
    let store: Store
    let cleanup: () => Promise<void>
    const events = history()

    before(async () => {
      ;({ views, store, cleanup } = await open())
      for (const g of [1, 2]) for (const d of Object.values(views.definitions)) await d.storage.create(g)
      await applyAll(views, 1, [events.slice(0, 9), events.slice(9)])
    })
    after(async () => cleanup?.())

    test('order status: the delivered order, with its timeline, payment and shipment', async () => {
      const order = await views.orderStatus.order(1, 'ord_1')
      assert.ok(order)
      assert.equal(order.status, 'DELIVERED')
      assert.equal(order.customerId, 'cus_1')
      assert.deepEqual(order.lines, [{ sku: 'LAMP-1', quantity: 2, unitPriceMinor: 2500 }])
      assert.equal(order.totalMinor, 5000)
      assert.equal(order.currency, 'EUR')
      assert.deepEqual(order.payment, {
        state: 'captured',
        paymentId: 'pay_1',
        amountMinor: 5000,
        currency: 'EUR',
        reason: null,
      })
      assert.deepEqual(order.shipment, {
        state: 'delivered',
        shipmentId: 'shp_1',
        carrier: 'DHL',
        trackingNumber: 'TRK1',
      })
      assert.equal(order.placedAt, '2026-11-01T10:00:05.000Z')
      assert.deepEqual(
        order.timeline.map((step) => [step.event, step.status]),
        [
          ['order.requested', 'PENDING'],
          ['order.placed', 'PENDING'],
          ['inventory.reserved', 'STOCK_RESERVED'],
          ['order.payment-requested', null],
          ['payment.authorized', 'PAYMENT_AUTHORIZED'],
          ['order.shipment-requested', null],
          ['shipment.scheduled', 'SHIPMENT_SCHEDULED'],
          ['order.confirmed', 'CONFIRMED'],
          ['payment.captured', null],
          ['inventory.committed', null],
          ['shipment.shipped', null],
          ['order.shipped', 'SHIPPED'],
          ['shipment.delivered', null],
          ['order.delivered', 'DELIVERED'],
        ],
      )
      assert.equal(JSON.stringify(order).includes('tok_visa'), false, 'the payment token is not shown')
    })

    test('a request stays pending in the views its outcome changes until the outcome, caused by it, is applied', async () => {
      const g = 3
      for (const d of Object.values(views.definitions)) await d.storage.create(g)
      const at = (event: CloudEvent, topic: string, offset: number): ViewEvent => ({
        event,
        position: { topic, partition: partitionForKey(event.subject, partitions), offset },
        timestampMs: t0,
      })
      const source = 'mercato/test'
      const cancel = at(
        createEvent({
          type: 'order.cancel-requested',
          subject: 'ord_9',
          source,
          data: { orderId: 'ord_9', requestedBy: 'cus_9' },
        }),
        'orders',
        0,
      )
      const restock = at(
        createEvent({
          type: 'inventory.adjustment-requested',
          subject: 'LAMP-9',
          source,
          data: { sku: 'LAMP-9', delta: 1, reason: 'restock' },
        }),
        'inventory',
        0,
      )
      const { catalog } = views.definitions
      const orderStatus = views.definitions['order-status']
      const customer360 = views.definitions['customer-360']
      await applyAll(views, g, [[cancel, restock]])
      assert.equal(await orderStatus.storage.pending(g, cancel.position), true)
      assert.equal(await customer360.storage.pending(g, cancel.position), true)
      assert.equal(await catalog.storage.pending(g, restock.position), true)
      // Another order's cancellation settles nothing: only the request's own outcome does.
      const other = createEvent({
        type: 'order.cancelled',
        subject: 'ord_8',
        source,
        data: { orderId: 'ord_8', reason: 'deadline-passed' },
      })
      // The same request appended again (a retried command) is not another request.
      const copy = at(cancel.event, 'orders', 1)
      await applyAll(views, g, [[at(other, 'orders', 2), copy]])
      assert.equal(await orderStatus.storage.pending(g, cancel.position), true)
      assert.equal(await orderStatus.storage.pending(g, copy.position), false)
      const refused = createEvent({
        type: 'order.cancel-refused',
        subject: 'ord_9',
        source,
        data: { orderId: 'ord_9', state: 'DELIVERED' },
        cause: cancel.event,
      })
      await applyAll(views, g, [[at(refused, 'orders', 3)]])
      assert.equal(await orderStatus.storage.pending(g, cancel.position), false)
      assert.equal(await customer360.storage.pending(g, cancel.position), false)
      // A copy after its outcome is settled already: a read with its token waits for nothing.
      const late = at(cancel.event, 'orders', 4)
      await applyAll(views, g, [[late]])
      assert.equal(await orderStatus.storage.pending(g, late.position), false)
      assert.equal(await customer360.storage.pending(g, late.position), false)
      assert.equal(await catalog.storage.pending(g, restock.position), true)
      for (const d of Object.values(views.definitions)) await d.storage.drop(g)
      assert.equal(await catalog.storage.pending(g, restock.position), false)
    })

    test('order status: the declined order, cancelled with its reason', async () => {
      const order = await views.orderStatus.order(1, 'ord_2')
      assert.equal(order?.status, 'CANCELLED')
      assert.deepEqual(order?.cancellation, { reason: 'payment-declined', detail: 'card declined' })
      assert.equal(order?.payment?.state, 'declined')
      assert.equal(order?.shipment, null)
    })

    test("the customer's orders, newest first, paged", async () => {
      const first = await views.orderStatus.customerOrders(1, 'cus_1', 1)
      assert.deepEqual(
        first.items.map((o) => [o.orderId, o.status]),
        [['ord_2', 'CANCELLED']],
      )
      assert.ok(first.next)
      const second = await views.orderStatus.customerOrders(1, 'cus_1', 1, first.next)
      assert.deepEqual(
        second.items.map((o) => [o.orderId, o.status]),
        [['ord_1', 'DELIVERED']],
      )
      assert.equal(second.next, null)
      assert.deepEqual((await views.orderStatus.customerOrders(1, 'cus_nobody', 20)).items, [])
    })

    test('customer 360: profile, addresses, orders, spend, basket, notifications', async () => {
      assert.deepEqual(await readCustomer360(store, 1, 'cus_1'), {
        customerId: 'cus_1',
        profile: {
          email: 'ada@example.com',
          givenName: 'Ada',
          familyName: 'Lovelace',
          registeredAt: '2026-11-01T10:00:01.000Z',
        },
        addresses: [
          {
            addressId: 'adr_1',
            address: {
              name: 'Ada Lovelace',
              line1: '1 Analytical St',
              city: 'London',
              postalCode: 'N1',
              country: 'GB',
            },
          },
        ],
        orders: {
          count: 2,
          open: 0,
          cancelled: 1,
          delivered: 1,
          last: { orderId: 'ord_2', placedAt: '2026-11-01T10:00:20.000Z' },
        },
        lifetimeSpend: [{ currency: 'EUR', amountMinor: 5000 }],
        averageBasket: [{ currency: 'EUR', amountMinor: 5000 }],
        notifications: { sent: 2, lastSentAt: '2026-11-01T10:00:26.000Z' },
        features: null,
      })
      assert.equal(await readCustomer360(store, 1, 'cus_nobody'), undefined)
    })

    test('webhooks: the endpoints in use, a removed one marked, and never a secret', async () => {
      const inUse = await readWebhooks(store, 1)
      assert.deepEqual(inUse, [
        {
          endpointId: 'whe_1',
          url: 'https://hooks1.example/in',
          events: ['order.*'],
          enabled: true,
          registeredAt: inUse[0]?.registeredAt,
          removedAt: null,
        },
      ])
      const removed = await readWebhook(store, 1, 'whe_2')
      assert.equal(removed?.enabled, false)
      assert.ok(removed?.removedAt && removed.removedAt > removed.registeredAt)
      assert.equal(await readWebhook(store, 1, 'whe_never'), undefined)
      assert.doesNotMatch(JSON.stringify(await readWebhooks(store, 1, { removedToo: true })), /whsec/)
    })

    test('catalog: the product with its stock (10 restocked, 2 shipped, 3 reserved and released)', async () => {
      const product = await getProduct(store, 1, 'LAMP-1')
      assert.equal(product?.name, 'Desk lamp')
      assert.equal(product?.onHand, 8)
      assert.equal(product?.available, 8)
      assert.equal(product?.inStock, true)
    })

    test('a redelivered history changes nothing', async () => {
      const before = await dumps(views, 1)
      await applyAll(views, 1, [events])
      await applyAll(views, 1, interleavedOtherwise(events))
      assert.deepEqual(await dumps(views, 1), before)
    })

    test('a copy of every event further on (an outbox that published again, a replayed dead letter) changes nothing', async () => {
      const before = await dumps(views, 1)
      const copies = events.map((e) => ({
        ...e,
        position: { ...e.position, offset: e.position.offset + 100_000 },
      }))
      await applyAll(views, 1, [copies])
      assert.deepEqual(await dumps(views, 1), before)
    })

    test('of two rebuilds at once, the one begun later stays live, whichever ends last', async () => {
      const registry = views.registry
      await registry.ensureLive('customer-360', 1)
      const older = await registry.beginBuild('customer-360', 1)
      const newer = await registry.beginBuild('customer-360', 1)
      await registry.switchTo('customer-360', newer.generation)
      await assert.rejects(registry.switchTo('customer-360', older.generation), /was not made live/)
      assert.equal((await registry.live('customer-360'))?.generation, newer.generation)
      const states = new Map((await registry.all('customer-360')).map((g) => [g.generation, g.state]))
      assert.equal(states.get(older.generation), 'retired')
    })

    test('a rebuild whose process died is retired, to be dropped, once a later one goes live', async () => {
      const registry = views.registry
      const abandoned = await registry.beginBuild('catalog', 1)
      const later = await registry.beginBuild('catalog', 1)
      await registry.switchTo('catalog', later.generation)
      const states = new Map((await registry.all('catalog')).map((g) => [g.generation, g.state]))
      assert.equal(states.get(abandoned.generation), 'retired')
      assert.equal(states.get(later.generation), 'live')
    })

    test('the same history interleaved otherwise builds a byte-for-byte equal view', async () => {
      await applyAll(views, 2, interleavedOtherwise(events))
      const [one, two] = [await dumps(views, 1), await dumps(views, 2)]
      for (let i = 0; i < one.length; i++) assert.equal(two[i], one[i])
      assert.ok(one.every((text) => text.length > 0))
    })
  })
}

// Asked before any suite runs: a suite's synchronous SQLite work would starve the check.
const skipPostgres = await skipUnlessReachable('views on PostgreSQL', 'postgres')
const skipRedis = skipPostgres ?? (await skipUnlessReachable('order-status view on Redis', 'redis'))

defineViewTests('SQLite', undefined, async () => {
  const dir = tempDir()
  const store = new SqliteStore(dir.path, 'views', storeLimitDefaults)
  const views = await openViews({ store })
  return {
    views,
    store,
    cleanup: async () => {
      await views.close()
      await store.close()
      dir.remove()
    },
  }
})

defineViewTests('PostgreSQL, order status in Redis', skipRedis, async () => {
  const schema = uniqueName('views').toLowerCase()
  const prefix = `mercato-test:${schema}:`
  const store = new PostgresStore(serverUrls.postgres, 'views', storeLimitDefaults, schema)
  const views = await openViews({
    store,
    redis: { url: serverUrls.redis, keyPrefix: prefix, commandTimeoutMs: 1_000 },
  })
  return {
    views,
    store,
    cleanup: async () => {
      for (const g of [1, 2]) await views.definitions['order-status'].storage.drop(g)
      await views.close()
      await store.close()
      const client = new pg.Client(serverUrls.postgres)
      await client.connect()
      await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
      await client.end()
      const redis = new Redis(serverUrls.redis)
      assert.deepEqual(await redis.keys(`${prefix}*`), [], 'dropping a generation removes its keys')
      redis.disconnect()
    },
  }
})

test('an order shows express only when it ships express: asked for, and allowed at placing', () => {
  const address = { name: 'A', line1: '1 St', city: 'C', postalCode: '1', country: 'US' }
  const steps = [
    createEvent({
      type: 'order.requested',
      subject: 'ord_x',
      source: 'mercato/command-api',
      data: {
        orderId: 'ord_x',
        customerId: 'cus_x',
        lines: [{ sku: 'S', quantity: 1 }],
        shippingAddress: address,
        paymentMethodToken: 'tok_visa',
        express: true,
      },
      time: new Date(1_000),
    }),
    createEvent({
      type: 'order.placed',
      subject: 'ord_x',
      source: 'mercato/order',
      data: {
        orderId: 'ord_x',
        customerId: 'cus_x',
        lines: [{ sku: 'S', quantity: 1, unitPriceMinor: 100 }],
        totalMinor: 100,
        currency: 'USD',
        express: false,
      },
      time: new Date(2_000),
    }),
  ].map((event) => orderStepOf(event)!.step)
  assert.equal(foldOrder('ord_x', steps.slice(0, 1)).express, true, 'asked for')
  assert.equal(foldOrder('ord_x', steps).express, false, 'the express-shipping flag was off')
})

test('a cancel reads in order: the request before the cancellation it caused, and a late step after it moves nothing', () => {
  const at = new Date(5_000)
  const step = (id: string, type: string, data: Record<string, unknown>, time = at) =>
    orderStepOf(createEvent({ id, type, subject: 'ord_y', source: 'mercato/test', data, time }))!.step
  const steps = [
    // Ids that sort against the causal order, at one millisecond.
    step('evt_a', 'order.cancelled', {
      orderId: 'ord_y',
      reason: 'payment-failed',
      detail: 'payment provider authorize failed: the circuit is open',
    }),
    step('evt_b', 'order.cancel-requested', { orderId: 'ord_y', requestedBy: 'cus_y' }),
    step(
      'evt_c',
      'payment.authorized',
      { orderId: 'ord_y', paymentId: 'pay_y', amountMinor: 100, currency: 'USD' },
      new Date(6_000),
    ),
  ]
  const doc = foldOrder('ord_y', steps)
  assert.deepEqual(
    doc.timeline.map((t) => [t.event, t.status]),
    [
      ['order.cancel-requested', null],
      ['order.cancelled', 'CANCELLED'],
      ['payment.authorized', null],
    ],
  )
  assert.equal(doc.status, 'CANCELLED')
  assert.deepEqual(
    doc.cancellation,
    { reason: 'payment-failed', detail: null },
    'the provider error is not shown',
  )
})
