// The order saga, end to end through the HTTP API, on one engine set. Every case checks
// what a shop owner would: how the order ended, the stock, the provider's own record of
// the money, and the ledger.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import { type EngineSet, type Shop, startShop } from '../support/shop.ts'
import { waitFor } from '../support/wait.ts'

export interface Charge {
  status: string
  amountMinor: number
  capturedMinor: number
  refundedMinor: number
  operations: { kind: string }[]
}

export async function chargesOf(shop: Shop, orderId: string): Promise<Charge[]> {
  const answer = await shop.get(`/provider/v1/charges?reference=${encodeURIComponent(orderId)}`)
  assert.equal(answer.status, 200)
  return answer.body.charges
}

export async function orderState(shop: Shop, orderId: string): Promise<string | undefined> {
  const [row] = await (await shop.store('order')).query<{ state: string }>(
    'SELECT state FROM orders WHERE order_id = $1',
    [orderId],
  )
  return row?.state
}

export async function waitForState(shop: Shop, orderId: string, state: string, timeoutMs = 20_000) {
  await waitFor(
    `order ${orderId} to be ${state}`,
    async () => (await orderState(shop, orderId)) === state,
    timeoutMs,
  )
}

export async function stockOf(shop: Shop, sku: string) {
  const [row] = await (await shop.store('inventory')).query<{
    on_hand: number
    available: number
    reserved: number
  }>('SELECT on_hand, available, reserved FROM stock WHERE sku = $1', [sku])
  return { onHand: Number(row.on_hand), available: Number(row.available), reserved: Number(row.reserved) }
}

export async function ledgerSum(shop: Shop): Promise<number> {
  const [row] = await (await shop.store('payment')).query<{ total: number | null }>(
    'SELECT SUM(amount_minor) AS total FROM ledger_lines',
  )
  return Number(row.total ?? 0)
}

async function dials(shop: Shop, value: Record<string, unknown>) {
  const answer = await shop.put('/provider/v1/dials', {
    latencyMs: 0,
    errorRate: 0,
    timeoutRate: 0,
    declineTokens: [],
    ...value,
  })
  assert.equal(answer.status, 200, JSON.stringify(answer.body))
}

/** Every accepted order ended, and the books agree with the provider. */
export async function assertInvariants(shop: Shop, orderIds: string[], skus: string[]) {
  for (const sku of skus) {
    const stock = await stockOf(shop, sku)
    assert.ok(stock.available >= 0 && stock.reserved >= 0, `${sku} stock is never negative`)
    assert.equal(stock.onHand, stock.available + stock.reserved, `${sku}: on-hand = available + reserved`)
  }
  const inventory = await shop.store('inventory')
  for (const orderId of orderIds) {
    const state = await orderState(shop, orderId)
    assert.ok(
      ['CONFIRMED', 'SHIPPED', 'DELIVERED', 'CANCELLED'].includes(state ?? ''),
      `${orderId} ended: ${state}`,
    )
    const charges = await chargesOf(shop, orderId)
    assert.ok(charges.length <= 1, `${orderId} was authorized at most once`)
    const captures = charges.flatMap((c) => c.operations.filter((o) => o.kind === 'capture'))
    const [reservation] = await inventory.query<{ status: string }>(
      'SELECT status FROM reservations WHERE order_id = $1',
      [orderId],
    )
    if (state === 'CANCELLED') {
      assert.ok(!reservation || reservation.status === 'released', `${orderId} cancelled holds no stock`)
      for (const charge of charges) {
        if (['voided', 'refunded', 'declined'].includes(charge.status)) continue
        const [pay] = await (await shop.store('payment')).query(
          'SELECT * FROM payments WHERE order_id = $1',
          [orderId],
        )
        assert.fail(
          `${orderId} cancelled: charge ${charge.status}; charges ${JSON.stringify(charges)}; payment ${JSON.stringify(pay)}; its events: ${await storyOf(shop, orderId)}`,
        )
      }
    } else {
      assert.equal(captures.length, 1, `${orderId} confirmed was captured exactly once`)
      assert.equal(reservation?.status, 'committed', `${orderId} confirmed took its stock`)
    }
  }
  assert.equal(await ledgerSum(shop), 0, 'the ledger sums to zero')
}

export function defineSagaSuite(engines: EngineSet, skip: string | undefined) {
  describe(`the order saga on ${engines} engines`, { skip }, () => {
    let shop: Shop
    const skus = ['SAGA-A', 'SAGA-B', 'SAGA-SCARCE']

    before(async () => {
      shop = await startShop(engines)
      await shop.stockUp(['SAGA-A', 'SAGA-B'], 10_000)
      await shop.stockUp(['SAGA-SCARCE'], 3)
    })
    after(() => shop?.stop())

    it('takes an order from 202 to DELIVERED: stock taken, captured once, ledger balanced', async () => {
      const before = await stockOf(shop, 'SAGA-A')
      const orderId = await shop.placeOrder([
        { sku: 'SAGA-A', quantity: 2 },
        { sku: 'SAGA-B', quantity: 1 },
      ])
      assert.equal((await shop.watcher.waitFor(orderId, 20_000))?.state, 'CONFIRMED')
      await waitForState(shop, orderId, 'DELIVERED')
      const [charge] = await chargesOf(shop, orderId)
      assert.equal(charge.amountMinor, 3_000)
      await waitFor('capture', async () => (await chargesOf(shop, orderId))[0].capturedMinor === 3_000)
      assert.equal((await stockOf(shop, 'SAGA-A')).onHand, before.onHand - 2)
      await assertInvariants(shop, [orderId], skus)
    })

    it('refuses a cancel that comes after delivery, and says so in the order status', async () => {
      const orderId = await shop.placeOrder([{ sku: 'SAGA-A', quantity: 1 }])
      await waitForState(shop, orderId, 'DELIVERED')
      assert.equal((await shop.post(`/v1/orders/${orderId}/cancel`, {})).status, 202)
      await waitFor('the refusal in the order status', async () => {
        const { body } = await shop.get(`/v1/orders/${orderId}`)
        return body.timeline?.some(
          (step: { event: string; detail: string | null }) =>
            step.event === 'order.cancel-refused' &&
            step.detail === 'too late to cancel: the order is DELIVERED',
        )
      })
      assert.equal((await shop.get(`/v1/orders/${orderId}`)).body.status, 'DELIVERED')
      assert.equal(await orderState(shop, orderId), 'DELIVERED')
      await assertInvariants(shop, [orderId], skus)
    })

    it('cancels an order it cannot fill, out-of-stock, and charges nothing', async () => {
      const orderId = await shop.placeOrder([
        { sku: 'SAGA-A', quantity: 1 },
        { sku: 'SAGA-SCARCE', quantity: 50 },
      ])
      const outcome = await shop.watcher.waitFor(orderId, 20_000)
      assert.deepEqual([outcome?.state, outcome?.reason], ['CANCELLED', 'out-of-stock'])
      assert.deepEqual(await chargesOf(shop, orderId), [])
      await assertInvariants(shop, [orderId], skus)
    })

    it('cancels an order whose total is past the most an amount may be, and charges nothing', async () => {
      // 9,999 units at just under 10^12 minor units each: past 2^53, so not even exact.
      await shop.stockUp(['SAGA-PRICEY'], 10_000, 999_999_999_999)
      const orderId = await shop.placeOrder([{ sku: 'SAGA-PRICEY', quantity: 9_999 }])
      const outcome = await shop.watcher.waitFor(orderId, 20_000)
      assert.deepEqual([outcome?.state, outcome?.reason], ['CANCELLED', 'invalid-order'])
      assert.deepEqual(await chargesOf(shop, orderId), [])
      assert.deepEqual(await stockOf(shop, 'SAGA-PRICEY'), { onHand: 10_000, available: 10_000, reserved: 0 })
      await assertInvariants(shop, [orderId], [...skus, 'SAGA-PRICEY'])
    })

    it('releases the stock of a declined payment', async () => {
      const before = await stockOf(shop, 'SAGA-B')
      const orderId = await shop.placeOrder([{ sku: 'SAGA-B', quantity: 3 }], 'tok_decline')
      const outcome = await shop.watcher.waitFor(orderId, 20_000)
      assert.deepEqual([outcome?.state, outcome?.reason], ['CANCELLED', 'payment-declined'])
      await waitFor(
        'stock released',
        async () => (await stockOf(shop, 'SAGA-B')).available === before.available,
      )
      await assertInvariants(shop, [orderId], skus)
    })

    it('retries provider errors and timeouts, then pays; compensates when the provider stays down', async () => {
      await dials(shop, { errorRate: 0.4, timeoutRate: 0.2 })
      const flaky = await Promise.all(
        [1, 2, 3, 4].map(() => shop.placeOrder([{ sku: 'SAGA-A', quantity: 1 }])),
      )
      for (const orderId of flaky) {
        const outcome = await shop.watcher.waitFor(orderId, 30_000)
        assert.ok(outcome, `${orderId} ended`)
      }
      await dials(shop, {})
      await waitForQuiet(shop, flaky)
      await dials(shop, { errorRate: 1 })
      const down = await shop.placeOrder([{ sku: 'SAGA-A', quantity: 1 }])
      const outcome = await shop.watcher.waitFor(down, 30_000)
      assert.deepEqual([outcome?.state, outcome?.reason], ['CANCELLED', 'payment-failed'])
      // The customer's view says the payment failed, never what the provider answered.
      await waitFor('the failure in the order status', async () => {
        return (await shop.get(`/v1/orders/${down}`)).body?.payment?.state === 'failed'
      })
      const { body } = await shop.get(`/v1/orders/${down}`)
      assert.equal(body.payment.reason, 'the payment could not be processed')
      assert.doesNotMatch(JSON.stringify(body), /provider|dialled/)
      await dials(shop, {})
      await waitForQuiet(shop, [...flaky, down])
      await assertInvariants(shop, [...flaky, down], skus)
    })

    it('a customer cancel compensates: stock back, payment voided or refunded', async () => {
      const before = await stockOf(shop, 'SAGA-B')
      const orderId = await shop.placeOrder([{ sku: 'SAGA-B', quantity: 4 }])
      const cancel = await shop.post(`/v1/orders/${orderId}/cancel`, {})
      assert.equal(cancel.status, 202)
      const outcome = await shop.watcher.waitFor(orderId, 20_000)
      if (outcome?.state === 'CONFIRMED') await waitForState(shop, orderId, 'CANCELLED')
      await waitForQuiet(shop, [orderId])
      assert.equal((await stockOf(shop, 'SAGA-B')).onHand, before.onHand)
      await assertInvariants(shop, [orderId], skus)
    })

    it("a staff cancel is the operator's, with the reason given; a customer's cancel needs no body", async () => {
      const byStaff = await shop.placeOrder([{ sku: 'SAGA-B', quantity: 1 }])
      const staffCancel = await fetch(`${shop.url}/v1/orders/${byStaff}/cancel`, {
        method: 'POST',
        headers: { authorization: await shop.bearer('admin'), 'content-type': 'application/json' },
        body: JSON.stringify({ reason: ' suspected fraud ' }),
      })
      assert.equal(staffCancel.status, 202)
      const byCustomer = await shop.placeOrder([{ sku: 'SAGA-B', quantity: 1 }])
      const customerCancel = await fetch(`${shop.url}/v1/orders/${byCustomer}/cancel`, {
        method: 'POST',
        headers: { authorization: await shop.bearer('customer') },
      })
      assert.equal(customerCancel.status, 202, await customerCancel.text())
      for (const [orderId, cancellation] of [
        [byStaff, { reason: 'operator-cancelled', detail: 'suspected fraud' }],
        [byCustomer, { reason: 'customer-cancelled', detail: null }],
      ] as const) {
        await waitForState(shop, orderId, 'CANCELLED')
        await waitFor(`${orderId} cancelled in its status`, async () => {
          const answer = await shop.get(`/v1/orders/${orderId}`)
          return answer.body?.status === 'CANCELLED'
        })
        assert.deepEqual((await shop.get(`/v1/orders/${orderId}`)).body.cancellation, cancellation)
      }
      await waitForQuiet(shop, [byStaff, byCustomer])
    })

    it('random orders over scarce stock with provider faults: every invariant holds (property)', async () => {
      let round = 0
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({
              lines: fc.uniqueArray(
                fc.record({
                  sku: fc.constantFrom('SAGA-A', 'SAGA-SCARCE', 'SAGA-B'),
                  quantity: fc.integer({ min: 1, max: 3 }),
                }),
                { minLength: 1, maxLength: 3, selector: (line) => line.sku },
              ),
              token: fc.constantFrom('tok_visa', 'tok_visa', 'tok_visa', 'tok_decline'),
              cancel: fc.boolean(),
            }),
            { minLength: 1, maxLength: 8 },
          ),
          fc.record({ errorRate: fc.constantFrom(0, 0.2, 0.5), timeoutRate: fc.constantFrom(0, 0.1) }),
          async (orders, faults) => {
            round++
            await dials(shop, faults)
            const restock = await shop.post(
              '/v1/inventory/SAGA-SCARCE/adjustments',
              { delta: 2, reason: 'restock' },
              { 'idempotency-key': `property-restock-${round}-${Date.now()}` },
            )
            assert.equal(restock.status, 202)
            const ids = await Promise.all(
              orders.map(async (order) => {
                const id = await shop.placeOrder(order.lines, order.token)
                if (order.cancel) await shop.post(`/v1/orders/${id}/cancel`, {})
                return id
              }),
            )
            for (const id of ids) assert.ok(await shop.watcher.waitFor(id, 40_000), `${id} ended`)
            await dials(shop, {})
            await waitForQuiet(shop, ids)
            await assertInvariants(shop, ids, skus)
          },
        ),
        { numRuns: 4 },
      )
    })

    it('every event delivered twice changes nothing', async () => {
      const orders = await shop.store('order')
      const ids = (await orders.query<{ order_id: string }>('SELECT order_id FROM orders')).map(
        (r) => r.order_id,
      )
      const snapshot = async () => ({
        // The carrier clock may still move a confirmed order on meanwhile: that is not an effect of redelivery.
        orders: (
          await orders.query<{ order_id: string; state: string; reason: string | null }>(
            'SELECT order_id, state, reason FROM orders ORDER BY order_id',
          )
        ).map((o) => ({
          ...o,
          state: ['CONFIRMED', 'SHIPPED', 'DELIVERED'].includes(o.state) ? 'CONFIRMED or later' : o.state,
        })),
        stock: await (await shop.store('inventory')).query('SELECT * FROM stock ORDER BY sku'),
        ledger: await (await shop.store('payment')).query(
          'SELECT COUNT(*) AS n, SUM(amount_minor) AS total FROM ledger_lines',
        ),
        charges: await Promise.all(ids.map((id) => chargesOf(shop, id))),
      })
      await waitForQuiet(shop, ids)
      const before = await snapshot()
      // Append every record of every topic again, ids and all: each consumer sees each event twice.
      const stream = shop.app.context.stream!
      let copies = 0
      for (const name of ['orders', 'inventory', 'payments', 'shipments', 'products', 'customers']) {
        const topic = stream.topic(name)
        for (let p = 0; p < (await stream.engine.partitionsOf(topic)); p++) {
          const records = await stream.engine.read(topic, p, 0, 100_000)
          await stream.engine.publish(
            records.map(({ topic, key, value, headers }) => ({ topic, key, value, headers })),
          )
          copies += records.length
        }
      }
      assert.ok(copies > 50)
      const marker = await shop.placeOrder([{ sku: 'SAGA-A', quantity: 1 }])
      assert.ok(await shop.watcher.waitFor(marker, 30_000))
      await waitForQuiet(shop, [...ids, marker], 60_000)
      const afterwards = await snapshot()
      afterwards.orders = afterwards.orders.filter((o) => o.order_id !== marker)
      assert.deepEqual(afterwards.orders, before.orders)
      const expectedStock = (before.stock as { sku: string; on_hand: number; available: number }[]).map(
        (row) =>
          row.sku === 'SAGA-A'
            ? { ...row, on_hand: Number(row.on_hand) - 1, available: Number(row.available) - 1 }
            : row,
      )
      assert.deepEqual(
        JSON.parse(JSON.stringify(afterwards.stock, (_k, v) => (typeof v === 'bigint' ? Number(v) : v))),
        JSON.parse(JSON.stringify(expectedStock)),
        'stock moved only by the one new order',
      )
      await assertInvariants(shop, [...ids, marker], skus)
      assert.deepEqual(afterwards.charges, before.charges, 'the provider saw no second operation')
    })
  })

  describe(`saga deadlines on ${engines} engines`, { skip }, () => {
    let shop: Shop
    before(async () => {
      shop = await startShop(engines, {
        MERCATO_SAGA_STEP_TIMEOUT_MS: '400',
        MERCATO_PAYMENT_PROVIDER_TIMEOUT_MS: '5000',
      })
      await shop.stockUp(['LATE-A'], 100)
    })
    after(() => shop?.stop())

    it('cancels an order whose step passes its deadline, and compensates the late answer', async () => {
      await dials(shop, { latencyMs: 1_500 })
      const before = await stockOf(shop, 'LATE-A')
      const orderId = await shop.placeOrder([{ sku: 'LATE-A', quantity: 2 }])
      const outcome = await shop.watcher.waitFor(orderId, 20_000)
      assert.deepEqual([outcome?.state, outcome?.reason], ['CANCELLED', 'deadline-passed'])
      await waitForQuiet(shop, [orderId])
      await dials(shop, { latencyMs: 0 })
      assert.deepEqual(await stockOf(shop, 'LATE-A'), before)
      await assertInvariants(shop, [orderId], ['LATE-A'])
    })
  })
}

/** The saga's consumer groups and the topics each consumes. */
const sagaConsumers: Record<string, string[]> = {
  order: ['orders', 'inventory', 'payments', 'shipments', 'products'],
  inventory: ['orders', 'inventory'],
  payment: ['orders'],
  shipping: ['orders'],
}

/** Waits until the follow-up work of these orders (capture, void, refund, release) is done. */
export async function waitForQuiet(shop: Shop, orderIds: string[], timeoutMs = 30_000) {
  const payment = await shop.store('payment')
  const inventory = await shop.store('inventory')
  let waitingOn = ''
  const settled = async (): Promise<boolean> => {
    for (const orderId of orderIds) {
      const state = await orderState(shop, orderId)
      waitingOn = `${orderId} in state ${state}`
      if (!state || ['PENDING', 'STOCK_RESERVED', 'PAYMENT_AUTHORIZED', 'SHIPMENT_SCHEDULED'].includes(state))
        return false
      const [reservation] = await inventory.query<{ status: string }>(
        'SELECT status FROM reservations WHERE order_id = $1',
        [orderId],
      )
      const [pay] = await payment.query<{ status: string }>(
        'SELECT status FROM payments WHERE order_id = $1',
        [orderId],
      )
      const charges = await chargesOf(shop, orderId)
      waitingOn += `, reservation ${reservation?.status}, payment ${pay?.status}, charges ${charges.map((c) => c.status).join('/')}`
      if (state === 'CANCELLED') {
        if (reservation && reservation.status !== 'released') return false
        if (pay && !['voided', 'refunded', 'declined', 'failed'].includes(pay.status)) return false
        if (charges.some((c) => !['voided', 'refunded', 'declined'].includes(c.status))) return false
      } else {
        if (reservation?.status !== 'committed') return false
        if (pay?.status !== 'captured' || charges[0]?.capturedMinor === 0) return false
      }
    }
    waitingOn = 'the payment outbox'
    const outbox = await payment.query('SELECT 1 FROM mercato_outbox WHERE sent_at IS NULL LIMIT 1')
    if (outbox.length > 0) return false
    // Every service has handled every event so far: an order can look settled while a
    // service has yet to act on it (payment authorizing an order already cancelled).
    const stream = shop.app.context.stream!
    for (const [group, topics] of Object.entries(sagaConsumers)) {
      waitingOn = `the ${group} service to catch up`
      const lags = await stream.engine.lag(
        stream.group(group),
        topics.map((topic) => stream.topic(topic)),
      )
      if (lags.some((partition) => partition.lag > 0)) return false
    }
    return true
  }
  try {
    await waitFor('compensation and capture to settle', settled, timeoutMs)
  } catch (error) {
    const stream = shop.app.context.stream!
    const dead = (
      await Promise.all(['orders', 'inventory', 'payments', 'shipments'].map((t) => stream.deadLetters(t, 5)))
    )
      .flat()
      .map((letter) => `${letter.record.headers.ce_type} (${letter.original.group}): ${letter.error}`)
    const story = await storyOf(shop, waitingOn.split(' ')[0])
    throw new Error(
      `${(error as Error).message}; still waiting on ${waitingOn}; dead letters: ${dead.join('; ') || 'none'}; its events: ${story}`,
    )
  }
}

/** An order's events on the saga's topics, in order of appending: what a failure needs to be understood. */
async function storyOf(shop: Shop, orderId: string): Promise<string> {
  const stream = shop.app.context.stream!
  const story: string[] = []
  for (const topic of ['orders', 'inventory', 'payments', 'shipments']) {
    const name = stream.topic(topic)
    for (let p = 0; p < (await stream.engine.partitionsOf(name)); p++) {
      for (const record of await stream.engine.read(name, p, 0, 100_000)) {
        if (record.key !== orderId && !record.value.toString().includes(orderId)) continue
        story.push(
          `${record.timestampMs} ${topic}@${record.offset} ${record.headers.ce_type} ${record.value.toString().slice(0, 200)}`,
        )
      }
    }
  }
  return story.sort().join(' | ')
}
