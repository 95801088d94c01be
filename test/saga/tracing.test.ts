// One trace and one correlation id follow an order from the request that placed it to its
// delivery, across every component: each hop a span of its own in the caller's trace.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { type CloudEvent, decodeEvent } from '../../src/contracts/envelope.ts'
import { type Shop, startShop } from '../support/shop.ts'
import { waitFor } from '../support/wait.ts'

describe('tracing an order across the saga', () => {
  let shop: Shop
  before(async () => {
    shop = await startShop('embedded', { MERCATO_CARRIER_STEP_MS: '100' })
    await shop.stockUp(['TRACE-1'], 100)
  })
  after(() => shop?.stop())

  async function eventsOf(orderId: string): Promise<CloudEvent[]> {
    const stream = shop.app.context.stream!
    const events: CloudEvent[] = []
    for (const name of ['orders', 'inventory', 'payments', 'shipments']) {
      const topic = stream.topic(name)
      for (let p = 0; p < (await stream.engine.partitionsOf(topic)); p++)
        for (const record of await stream.engine.read(topic, p, 0, 100_000)) {
          const event = decodeEvent(record.headers, record.value)
          if ((event.data as { orderId?: string }).orderId === orderId) events.push(event)
        }
    }
    return events
  }

  it("continues the caller's traceparent, a span per hop, with one correlation id to delivery", async () => {
    const traceId = randomUUID().replaceAll('-', '')
    const answer = await shop.post(
      '/v1/orders',
      {
        lines: [{ sku: 'TRACE-1', quantity: 1 }],
        shippingAddress: { name: 'T', line1: '1 Trace St', city: 'X', postalCode: '1', country: 'US' },
        paymentMethodToken: 'tok_visa',
      },
      { 'idempotency-key': randomUUID(), traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
    )
    assert.equal(answer.status, 202)
    const orderId = answer.body.id as string
    await waitFor(
      'the order delivered',
      async () => (await eventsOf(orderId)).some((e) => e.type === 'shipment.delivered'),
      30_000,
    )
    const events = await eventsOf(orderId)
    for (const type of [
      'order.requested',
      'order.placed',
      'payment.authorized',
      'order.confirmed',
      'shipment.delivered',
    ])
      assert.ok(
        events.some((e) => e.type === type),
        `${type} is there`,
      )
    for (const event of events) {
      assert.equal(event.traceparent?.split('-')[1], traceId, `${event.type} is in the caller's trace`)
      assert.equal(
        event.correlationid,
        events.find((e) => e.type === 'order.requested')!.correlationid,
        event.type,
      )
    }
    const spanOf = (type: string) => events.find((e) => e.type === type)!.traceparent!.split('-')[2]
    // The carrier's steps too, which its clock (a job, not a handler) takes.
    const hops = [
      'order.requested',
      'order.placed',
      'payment.authorized',
      'order.shipment-requested',
      'shipment.shipped',
      'shipment.delivered',
    ]
    assert.equal(new Set(hops.map(spanOf)).size, hops.length, 'each hop has a span of its own')
  })
})
