import assert from 'node:assert/strict'
import type { AddressInfo } from 'node:net'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { CloudEvent } from '../../../src/contracts/envelope.ts'
import { storeLimitDefaults } from '../../../src/engines/store/port.ts'
import { SqliteStore } from '../../../src/engines/store/sqlite/sqlite-store.ts'
import type { FlagReader } from '../../../src/platform/flags.ts'
import { sleep } from '../../../src/platform/limits.ts'
import { silentLogger } from '../../../src/platform/logger.ts'
import { Metrics } from '../../../src/platform/metrics.ts'
import type { Service } from '../../../src/platform/service.ts'
import type { ChargeView } from '../../../src/provider/charges.ts'
import { startPaymentProvider } from '../../../src/provider/payment-provider.ts'
import { loadConfig } from '../../../src/runtime/config.ts'
import { createHttpServer } from '../../../src/runtime/http.ts'
import { trialBalance, unbalancedEntries } from '../../../src/services/payment/ledger.ts'
import { startPaymentService } from '../../../src/services/payment/payment-service.ts'
import { loadPayment } from '../../../src/services/payment/payments.ts'
import { ProviderClient, ProviderError } from '../../../src/services/payment/provider-client.ts'
import {
  type Mismatch,
  Reconciliation,
  reconcile,
  reconciliationClient,
} from '../../../src/services/payment/reconcile.ts'
import { tempDir, uniqueName, waitFor } from '../../support/wait.ts'
import { type Harness, openHarness } from '../notification/harness.ts'

describe('the payment service', () => {
  const dir = tempDir()
  const providerStore = new SqliteStore(join(dir.path, 'provider'), 'provider', storeLimitDefaults)
  const httpMetrics = new Metrics()
  const http = createHttpServer(loadConfig({}), silentLogger(), httpMetrics, () => [])
  let providerUrl = ''
  let provider: Awaited<ReturnType<typeof startPaymentProvider>>
  let harness: Harness
  let service: Service
  let payments: Awaited<ReturnType<typeof startPaymentService>>
  let collected: Awaited<ReturnType<Harness['collect']>>
  let captureOn = 'confirmation'
  /** A targeting rule's outcome: capture-on for one customer, read with the customer as context. */
  let captureOnFor: { customerId: string; value: string } | undefined
  const flags: FlagReader = {
    boolean: async (_key, fallback) => fallback,
    number: async (_key, fallback) => fallback,
    string: async (key, fallback, context) => {
      if (key !== 'capture-on') return fallback
      return captureOnFor && context?.customerId === captureOnFor.customerId ? captureOnFor.value : captureOn
    },
  }

  before(async () => {
    provider = await startPaymentProvider({
      http,
      store: providerStore,
      log: silentLogger(),
      metrics: new Metrics(),
    })
    providerUrl = await http.listen({ port: 0, host: '127.0.0.1' })
    harness = await openHarness()
    service = harness.service('payment')
    payments = await startPaymentService(
      service,
      {
        providerUrl: () => providerUrl,
        timeoutMs: 250,
        attemptsMax: 3,
        concurrencyMax: 8,
        backoffBaseMs: 10,
        circuitHalfOpenAfterMs: 1_500,
        // These tests make the service give a slow authorization up (a stray one follows).
        inFlightPatienceMs: 0,
      },
      flags,
    )
    collected = await harness.collect(['payments'])
  })

  after(async () => {
    await payments.stop()
    await collected.stop()
    await harness.close()
    await provider.stop()
    await http.close()
    await providerStore.close()
    dir.remove()
  })

  const newOrder = () => uniqueName('order')

  async function dials(change: Record<string, unknown>) {
    const response = await fetch(`${providerUrl}/provider/v1/dials`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(change),
    })
    assert.equal(response.status, 200)
  }

  async function chargesOf(orderId: string): Promise<ChargeView[]> {
    const response = await fetch(`${providerUrl}/provider/v1/charges?reference=${orderId}`)
    return ((await response.json()) as { charges: ChargeView[] }).charges
  }

  function requestPayment(orderId: string, token = 'tok_visa', amountMinor = 4_200, customerId = 'cust-1') {
    return harness.publish('order.payment-requested', orderId, {
      orderId,
      customerId,
      paymentMethodToken: token,
      amountMinor,
      currency: 'EUR',
    })
  }

  const eventsOf = (orderId: string) => collected.events.filter((e) => e.subject === orderId)

  async function answer(orderId: string, type: string): Promise<CloudEvent> {
    await waitFor(`${type} for ${orderId}`, () => eventsOf(orderId).some((e) => e.type === type))
    return eventsOf(orderId).find((e) => e.type === type)!
  }

  async function paymentStatus(orderId: string): Promise<string | undefined> {
    const [row] = await service.store.query<{ status: string }>(
      'SELECT status FROM payments WHERE order_id = $1',
      [orderId],
    )
    return row?.status
  }

  it('authorizes, then captures exactly once on confirmation, however often it is told', async () => {
    const orderId = newOrder()
    await requestPayment(orderId)
    const authorized = await answer(orderId, 'payment.authorized')
    assert.equal(authorized.data.amountMinor, 4_200)
    assert.equal(authorized.partitionkey, orderId)
    const confirmed = await harness.publish('order.confirmed', orderId, { orderId })
    await harness.stream.publish([confirmed]) // the same event, delivered twice
    await harness.publish('order.confirmed', orderId, { orderId }) // and asked once more
    const captured = await answer(orderId, 'payment.captured')
    assert.equal(captured.data.paymentId, authorized.data.paymentId)
    await harness.publish('order.shipped', orderId, { orderId, shipmentId: 'ship-1' })
    await waitFor('every event handled', async () =>
      (
        await harness.stream.engine.lag(harness.stream.group(service.name), [harness.stream.topic('orders')])
      ).every((l) => l.lag === 0),
    )
    const [charge] = await chargesOf(orderId)
    assert.equal(charge.status, 'captured')
    assert.equal(charge.operations.filter((op) => op.kind === 'capture').length, 1)
    assert.equal(eventsOf(orderId).filter((e) => e.type === 'payment.captured').length, 1)
  })

  it('answers a decline with payment.declined, and books nothing', async () => {
    const orderId = newOrder()
    await requestPayment(orderId, 'tok_decline')
    const declined = await answer(orderId, 'payment.declined')
    assert.equal(declined.data.reason, 'card_declined')
    assert.equal(await paymentStatus(orderId), 'declined')
  })

  it('gets the stored answer after a lost one, and authorizes once', async () => {
    await dials({ timeoutRate: 1 })
    const orderId = newOrder()
    try {
      await requestPayment(orderId)
      await answer(orderId, 'payment.authorized')
    } finally {
      await dials({ timeoutRate: 0 })
    }
    assert.equal((await chargesOf(orderId)).length, 1)
  })

  /** A client whose attempts time out fast, waiting `patienceMs` for a key the provider holds. */
  const impatientClient = (patienceMs: number) =>
    new ProviderClient({
      providerUrl: () => providerUrl,
      timeoutMs: 250,
      attemptsMax: 3,
      concurrencyMax: 4,
      backoffBaseMs: 10,
      inFlightPatienceMs: patienceMs,
      log: silentLogger(),
      metrics: new Metrics(),
    })

  it('waits for a key the provider still holds from a cut-short attempt, and authorizes once', async () => {
    // Every attempt times out while the first is still at work; the retries find its key
    // held (409) until it ends, and then get its answer.
    const client = impatientClient(10_000)
    const orderId = newOrder()
    await dials({ latencyMs: 1_500 })
    try {
      const authorization = await client.authorize(
        { amountMinor: 1_000, currency: 'EUR', paymentMethodToken: 'tok_visa', reference: orderId },
        `${orderId}:authorize`,
      )
      assert.equal(authorization.outcome, 'authorized')
    } finally {
      await dials({ latencyMs: 0 })
    }
    assert.equal((await chargesOf(orderId)).length, 1)
  })

  it('gives a held key up after its patience, asking once a second, not once per attempt', async () => {
    const client = impatientClient(1_500)
    const held = async () => {
      const text = await httpMetrics.text()
      const line = text
        .split('\n')
        .find((l) =>
          l.startsWith(
            'mercato_http_requests_total{method="POST",route="/provider/v1/authorizations",status="409"}',
          ),
        )
      return Number(line?.split(' ').at(-1) ?? 0)
    }
    const before = await held()
    const orderId = newOrder()
    await dials({ latencyMs: 4_000 })
    try {
      await assert.rejects(
        client.authorize(
          { amountMinor: 1_000, currency: 'EUR', paymentMethodToken: 'tok_visa', reference: orderId },
          `${orderId}:authorize`,
        ),
        (error) => error instanceof ProviderError && error.status === 409,
      )
    } finally {
      await dials({ latencyMs: 0 })
    }
    // The first attempt timed out; then one question a second for 1.5 s: two or three 409s.
    const asked = (await held()) - before
    assert.ok(asked >= 1 && asked <= 3, `${asked} answers of 409`)
  })

  it('answers payment.failed when the provider keeps failing', async () => {
    await dials({ errorRate: 1 })
    const orderId = newOrder()
    try {
      await requestPayment(orderId)
      await answer(orderId, 'payment.failed')
    } finally {
      await dials({ errorRate: 0 })
    }
    assert.deepEqual(await chargesOf(orderId), [])
  })

  it('captures on shipment when the flag says so', async () => {
    captureOn = 'shipment'
    const orderId = newOrder()
    try {
      await requestPayment(orderId)
      await answer(orderId, 'payment.authorized')
      await harness.publish('order.confirmed', orderId, { orderId })
      await harness.publish('order.shipped', orderId, { orderId, shipmentId: 'ship-2' })
      await answer(orderId, 'payment.captured')
    } finally {
      captureOn = 'confirmation'
    }
    const [charge] = await chargesOf(orderId)
    assert.equal(charge.operations.filter((op) => op.kind === 'capture').length, 1)
  })

  it("reads the flag for the order's customer, so a targeting rule can tell customers apart", async () => {
    captureOnFor = { customerId: 'cust-later', value: 'shipment' }
    const later = newOrder()
    const sooner = newOrder()
    try {
      await requestPayment(later, 'tok_visa', 4_200, 'cust-later')
      await requestPayment(sooner)
      await answer(later, 'payment.authorized')
      await answer(sooner, 'payment.authorized')
      const confirmed = await harness.publish('order.confirmed', later, { orderId: later })
      await harness.publish('order.confirmed', sooner, { orderId: sooner })
      await answer(sooner, 'payment.captured')
      await waitFor('the confirmation handled', async () => {
        const rows = await service.store.query('SELECT 1 FROM mercato_inbox WHERE event_id = $1', [
          confirmed.id,
        ])
        return rows.length === 1
      })
      assert.equal(await paymentStatus(later), 'authorized', 'captured on shipment for this customer')
      await harness.publish('order.shipped', later, { orderId: later, shipmentId: 'ship-3' })
      await answer(later, 'payment.captured')
    } finally {
      captureOnFor = undefined
    }
  })

  it('voids an authorized payment and refunds a captured one when the order is cancelled', async () => {
    const authorizedOnly = newOrder()
    await requestPayment(authorizedOnly)
    await answer(authorizedOnly, 'payment.authorized')
    await harness.publish('order.cancelled', authorizedOnly, {
      orderId: authorizedOnly,
      reason: 'deadline-passed',
    })
    const voided = await answer(authorizedOnly, 'payment.voided')
    assert.equal(voided.data.amountMinor, 4_200)
    assert.equal((await chargesOf(authorizedOnly))[0].status, 'voided')

    const captured = newOrder()
    await requestPayment(captured, 'tok_visa', 1_999)
    await answer(captured, 'payment.authorized')
    await harness.publish('order.confirmed', captured, { orderId: captured })
    await answer(captured, 'payment.captured')
    await harness.publish('order.cancelled', captured, { orderId: captured, reason: 'customer-cancelled' })
    const refunded = await answer(captured, 'payment.refunded')
    assert.equal(refunded.data.amountMinor, 1_999)
    const [charge] = await chargesOf(captured)
    assert.deepEqual([charge.status, charge.refundedMinor], ['refunded', 1_999])
  })

  /** A payment answered payment.failed whose authorization the provider made all the same. */
  async function leaveStrayAuthorization(): Promise<string> {
    // Slower than every attempt together: each retry finds the first request in flight.
    await dials({ latencyMs: 3_000 })
    const orderId = newOrder()
    try {
      await requestPayment(orderId)
      await answer(orderId, 'payment.failed')
    } finally {
      await dials({ latencyMs: 0 })
    }
    await waitFor(
      'the provider to finish the authorization',
      async () => (await chargesOf(orderId)).length === 1,
    )
    return orderId
  }

  /** Makes the provider fail every call, and fails enough authorizations to open the circuit. */
  async function openCircuit(): Promise<void> {
    await dials({ errorRate: 1 })
    // Three attempts each: four failed authorizations are ten failures in a row and more.
    for (let i = 0; i < 4; i++) {
      const orderId = newOrder()
      await requestPayment(orderId)
      await answer(orderId, 'payment.failed')
    }
  }

  const voided = (orderId: string) =>
    waitFor(
      'the stray authorization to be voided',
      async () => (await chargesOf(orderId))[0].status === 'voided',
    )

  const everyEventHandled = () =>
    waitFor('every event handled', async () =>
      (
        await harness.stream.engine.lag(harness.stream.group(service.name), [harness.stream.topic('orders')])
      ).every((l) => l.lag === 0),
    )

  it('voids an authorization left behind by answers that never came, once the order is cancelled', async () => {
    const orderId = await leaveStrayAuthorization()
    await harness.publish('order.cancelled', orderId, { orderId, reason: 'payment-failed' })
    await voided(orderId)
  })

  it('puts no new hold on the card when it cancels a payment that never reached the provider', async () => {
    const orderId = newOrder()
    try {
      await dials({ errorRate: 1 })
      await requestPayment(orderId)
      await answer(orderId, 'payment.failed')
    } finally {
      await dials({ errorRate: 0 })
    }
    await harness.publish('order.cancelled', orderId, { orderId, reason: 'payment-failed' })
    await everyEventHandled()
    assert.deepEqual(
      await chargesOf(orderId),
      [],
      'no authorization for a cancelled order, not even one voided',
    )
  })

  it('has reconciliation void an authorization that landed after its payment gave up', async () => {
    const orderId = await leaveStrayAuthorization()
    const found = await reconcile(
      service,
      reconciliationClient(service, () => providerUrl),
    )
    assert.deepEqual(
      found.filter((m) => m.orderId === orderId),
      [],
    )
    assert.equal((await chargesOf(orderId))[0].status, 'voided')
    assert.match(String((await loadPayment(service.store, orderId))?.reason), /; stray authorization voided$/)
  })

  it('voids such an authorization when the order is cancelled while the circuit is open, instead of dead-lettering the cancel', async () => {
    const orderId = await leaveStrayAuthorization()
    try {
      await openCircuit()
    } finally {
      await dials({ errorRate: 0 })
    }
    // The circuit half-opens 1.5 s from now; the event's own retries last some 30 ms.
    await harness.publish('order.cancelled', orderId, { orderId, reason: 'payment-failed' })
    await voided(orderId)
    const dead = await harness.stream.deadLetters('orders')
    assert.equal(dead.filter((letter) => letter.record.key === orderId).length, 0)
  })

  it('fails authorizations fast while the circuit is open, and waits it out for a capture', async () => {
    const authorized = newOrder()
    await requestPayment(authorized)
    await answer(authorized, 'payment.authorized')
    try {
      await openCircuit()
      const fast = newOrder()
      await requestPayment(fast)
      const failed = await answer(fast, 'payment.failed')
      assert.match(String(failed.data.reason), /circuit is open/)
    } finally {
      await dials({ errorRate: 0 })
    }
    await harness.publish('order.confirmed', authorized, { orderId: authorized })
    await answer(authorized, 'payment.captured')
    const dead = await harness.stream.deadLetters('orders')
    assert.equal(dead.filter((letter) => letter.record.key === authorized).length, 0)
  })

  it('leaves a balanced ledger that reconciles with the provider', async () => {
    await waitFor('every event handled', async () =>
      (
        await harness.stream.engine.lag(harness.stream.group(service.name), [harness.stream.topic('orders')])
      ).every((l) => l.lag === 0),
    )
    assert.deepEqual(await unbalancedEntries(service.store), [])
    const total = (await trialBalance(service.store)).reduce((sum, a) => sum + a.balanceMinor, 0)
    assert.equal(total, 0)
    assert.deepEqual(
      await reconcile(
        service,
        reconciliationClient(service, () => providerUrl),
      ),
      [],
    )
  })

  it('reports an authorization left open for over an hour, neither captured nor voided', async () => {
    const orderId = newOrder()
    await requestPayment(orderId)
    await answer(orderId, 'payment.authorized')
    const twoHoursAgo = new Date(Date.now() - 7_200_000).toISOString()
    await service.store.execute('UPDATE payments SET updated_at = $1 WHERE order_id = $2', [
      twoHoursAgo,
      orderId,
    ])
    const found = (
      await reconcile(
        service,
        reconciliationClient(service, () => providerUrl),
      )
    ).filter((m) => m.orderId === orderId)
    assert.deepEqual(
      found.map((m) => m.kind),
      ['stale-authorization'],
    )
    assert.match(found[0].detail, /authorized 120 min ago/)
  })

  it('reconciles between full passes what changed since the run before, and looks again at what it found', async () => {
    const changed = newOrder()
    const untouched = newOrder()
    for (const orderId of [changed, untouched]) {
      await requestPayment(orderId)
      await answer(orderId, 'payment.authorized')
    }
    const t0 = Date.now()
    let clock = t0
    const minutes = (n: number) => t0 + n * 60_000
    const client = reconciliationClient(service, () => providerUrl)
    const reconciliation = new Reconciliation(service, client, { now: () => clock, pause: async () => {} })
    const kinds = (found: Mismatch[], orderId: string) =>
      found.filter((m) => m.orderId === orderId).map((m) => m.kind)
    const setPayment = (orderId: string, capturedMinor: number, updatedAt?: number) =>
      service.store.execute(
        'UPDATE payments SET captured_minor = $1, updated_at = COALESCE($2, updated_at) WHERE order_id = $3',
        [capturedMinor, updatedAt === undefined ? null : new Date(updatedAt).toISOString(), orderId],
      )
    assert.deepEqual(kinds(await reconciliation.run(), changed), []) // the first run: a full pass
    clock = minutes(10)
    assert.deepEqual(kinds(await reconciliation.run(), changed), [])
    // Both payments now claim a capture their ledger and the provider know nothing of: one
    // changed shortly before the run before began (a transaction it may not have seen),
    // the other long before.
    await setPayment(changed, 1, minutes(9.5))
    await setPayment(untouched, 1)
    clock = minutes(12)
    const between = await reconciliation.run()
    assert.deepEqual(kinds(between, changed), ['ledger-amount', 'provider-amount'])
    assert.deepEqual(kinds(between, untouched), [])
    clock = minutes(20)
    assert.deepEqual(kinds(await reconciliation.run(), changed), ['ledger-amount', 'provider-amount'])
    await setPayment(changed, 0)
    clock = minutes(21)
    assert.deepEqual(kinds(await reconciliation.run(), changed), [])
    // The next full pass sees the other, authorized a day ago by now.
    clock = t0 + 86_400_000
    assert.deepEqual(kinds(await reconciliation.run(), untouched), [
      'stale-authorization',
      'ledger-amount',
      'provider-amount',
    ])
    await setPayment(untouched, 0)
    // Between full passes, an authorization open over an hour is looked at every time.
    clock = t0 + 86_400_000 + 60_000
    assert.deepEqual(kinds(await reconciliation.run(), untouched), ['stale-authorization'])
  })

  it('reports a mismatch only if it is still there a moment after it was first seen', async () => {
    const orderId = newOrder()
    await requestPayment(orderId)
    await answer(orderId, 'payment.authorized')
    const setCaptured = (capturedMinor: number) =>
      service.store.execute('UPDATE payments SET captured_minor = $1 WHERE order_id = $2', [
        capturedMinor,
        orderId,
      ])
    const client = reconciliationClient(service, () => providerUrl)
    const ofOrder = (found: Mismatch[]) => found.filter((m) => m.orderId === orderId).map((m) => m.kind)
    await setCaptured(1)
    // Settled while the run waits its moment, as a capture between the provider and its commit does.
    const settling = new Reconciliation(service, client, { pause: () => setCaptured(0) })
    assert.deepEqual(ofOrder(await settling.run()), [])
    await setCaptured(1)
    const staying = new Reconciliation(service, client, { pause: async () => {} })
    assert.deepEqual(ofOrder(await staying.run()), ['ledger-amount', 'provider-amount'])
    await setCaptured(0)
  })

  it('waits out a provider that is down at capture time, then captures once: no dead letter', async () => {
    const orderId = newOrder()
    await requestPayment(orderId)
    await answer(orderId, 'payment.authorized')
    await dials({ errorRate: 1 })
    try {
      await harness.publish('order.confirmed', orderId, { orderId })
      // Longer than a handler's retries last (a few hundred ms in this harness): still waiting.
      await sleep(2_000)
      assert.equal(await paymentStatus(orderId), 'authorized')
    } finally {
      await dials({ errorRate: 0 })
    }
    await answer(orderId, 'payment.captured')
    assert.equal(eventsOf(orderId).filter((e) => e.type === 'payment.captured').length, 1)
    assert.equal((await chargesOf(orderId))[0].status, 'captured')
    assert.deepEqual(
      (await harness.stream.deadLetters('orders')).filter((letter) => letter.record.key === orderId),
      [],
    )
  })

  it('dead-letters a capture the provider refuses (a 4xx), without a captured event', async () => {
    const orderId = newOrder()
    await requestPayment(orderId)
    await answer(orderId, 'payment.authorized')
    // Voided at the provider behind the service's back: a capture is refused, not an outage.
    const [charge] = await chargesOf(orderId)
    const voided = await fetch(`${providerUrl}/provider/v1/charges/${charge.chargeId}/void`, {
      method: 'POST',
      headers: { 'idempotency-key': `test-void-${orderId}` },
    })
    assert.equal(voided.status, 200, await voided.text())
    await harness.publish('order.confirmed', orderId, { orderId })
    await waitFor('the confirmation to be dead-lettered', async () =>
      (await harness.stream.deadLetters('orders')).some((letter) => letter.record.key === orderId),
    )
    assert.equal(await paymentStatus(orderId), 'authorized')
    assert.equal(eventsOf(orderId).filter((e) => e.type === 'payment.captured').length, 0)
  })

  it('reports the money of a cancelled order whose refund waits for the provider, until it is refunded', async () => {
    const orderId = newOrder()
    await requestPayment(orderId)
    await answer(orderId, 'payment.authorized')
    await harness.publish('order.confirmed', orderId, { orderId })
    await answer(orderId, 'payment.captured')
    const client = reconciliationClient(service, () => providerUrl)
    const ofOrder = (found: Mismatch[]) => found.filter((m) => m.orderId === orderId)
    const later = Date.now() + 10 * 60_000
    const reconciliation = new Reconciliation(service, client, { now: () => later })
    await dials({ errorRate: 1 })
    try {
      await harness.publish('order.cancelled', orderId, { orderId, reason: 'customer-cancelled' })
      await sleep(1_000)
      // At once it is no mismatch yet: the handler may still be trying.
      assert.deepEqual(ofOrder(await new Reconciliation(service, client).run()), [])
      // Some minutes on, the money kept is reported, the provider still down.
      const kept = ofOrder(await reconciliation.run())
      assert.deepEqual(
        kept.map((m) => m.kind),
        ['kept-after-cancel'],
      )
      assert.match(kept[0].detail, /still captured: its refund did not go through/)
    } finally {
      await dials({ errorRate: 0 })
    }
    // The provider back, the refund waiting for it goes through, and nothing is reported.
    await answer(orderId, 'payment.refunded')
    assert.deepEqual(ofOrder(await reconciliation.run()), [])
    assert.deepEqual(
      (await harness.stream.deadLetters('orders')).filter((letter) => letter.record.key === orderId),
      [],
    )
  })
})

describe('the payment provider client', () => {
  it('takes a provider that refuses connections for a transient failure: retried, then a retryable error', async () => {
    // A port nothing listens on: the first free one, closed again at once.
    const probe = createServer()
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
    const { port } = probe.address() as AddressInfo
    await new Promise((resolve) => probe.close(resolve))
    const metrics = new Metrics()
    const client = new ProviderClient({
      providerUrl: () => `http://127.0.0.1:${port}`,
      timeoutMs: 1_000,
      attemptsMax: 3,
      concurrencyMax: 4,
      backoffBaseMs: 5,
      log: silentLogger(),
      metrics,
    })
    const failure = await client.chargesFor('ord_unreachable').then(
      () => assert.fail('a provider nobody answers for cannot list charges'),
      (error: unknown) => error,
    )
    assert.ok(failure instanceof ProviderError)
    assert.equal(failure.retryable, true, 'a refused connection is worth trying again')
    assert.match(
      await metrics.text(),
      /mercato_payment_provider_call_seconds_count\{operation="list",outcome="unreachable"\} 3/,
      'every attempt was made',
    )
  })
})
