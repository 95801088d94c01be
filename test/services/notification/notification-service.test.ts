import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import { type AddressInfo, createServer as createNetServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterEach, describe, it } from 'node:test'
import nodemailer from 'nodemailer'
import { pino } from 'pino'
import type { Store } from '../../../src/engines/store/port.ts'
import { sleep } from '../../../src/platform/limits.ts'
import type { Logger } from '../../../src/platform/logger.ts'
import { privateAddressReason } from '../../../src/platform/outbound-url.ts'
import { parseMessage, startMailSink } from '../../../src/services/notification/mail-sink.ts'
import {
  type NotificationOptions,
  notificationId,
  startNotificationService,
  verifyWebhookSignature,
} from '../../../src/services/notification/notification-service.ts'
import { renderEmail } from '../../../src/services/notification/templates.ts'
import { signWebhook } from '../../../src/services/notification/webhooks.ts'
import { tempDir, waitFor } from '../../support/wait.ts'
import { type Harness, openHarness, storeKinds } from './harness.ts'

const secret = 'whsec_0123456789abcdef'

const baseOptions: NotificationOptions = {
  from: 'Mercato <shop@mercato.test>',
  webhookTimeoutMs: 2_000,
  webhookAttemptsMax: 3,
  allowPrivateWebhookHosts: true,
  pollIntervalMs: 20,
  backoffBaseMs: 5,
  backoffMaxMs: 20,
}

interface Received {
  headers: IncomingHttpHeaders
  body: string
}

/** A local HTTP server that records every request and answers `status`. */
async function webhookReceiver(
  status: number,
): Promise<{ url: string; received: Received[]; close(): Promise<void> }> {
  const received: Received[] = []
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      received.push({ headers: request.headers, body: Buffer.concat(chunks).toString('utf8') })
      response.writeHead(status, { 'content-type': 'text/plain' }).end(status < 300 ? 'ok' : 'broken')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/hooks/mercato`,
    received,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
}

for (const { kind, skip } of await storeKinds('notification service')) {
  describe(`notification service (${kind} store)`, { concurrency: false, skip }, () => {
    const cleanups: (() => Promise<void>)[] = []
    afterEach(async () => {
      while (cleanups.length > 0) await cleanups.pop()!()
    })

    async function start(options: Partial<NotificationOptions> = {}, log?: Logger) {
      const harness: Harness = await openHarness(kind, log)
      const service = harness.service('notification')
      const running = await startNotificationService(service, { ...baseOptions, ...options })
      cleanups.push(async () => {
        await running.stop()
        await harness.close()
      })
      await running.ready()
      return { harness, store: service.store, running }
    }

    const deliveries = (store: Store) =>
      store.query<{
        status: string
        attempts: number
        last_error: string | null
        last_status_code: number | null
      }>('SELECT status, attempts, last_error, last_status_code FROM notification_webhook_deliveries')

    async function setEndpoint(
      harness: Harness,
      store: Store,
      url: string,
      events: string[],
      endpointId = 'ep-1',
    ) {
      await harness.publish('webhook.endpoint-set', endpointId, {
        endpointId,
        url,
        secret,
        events,
        enabled: true,
      })
      await waitFor('endpoint registered', async () => {
        const rows = await store.query(
          'SELECT 1 FROM notification_webhook_endpoints WHERE endpoint_id = $1',
          [endpointId],
        )
        return rows.length === 1
      })
    }

    it('e-mails a known customer over real SMTP when an order is placed, once', async () => {
      const { harness, store, running } = await start()
      assert.ok(running.sink, 'a local sink without an SMTP URL')
      await harness.publish('customer.registered', 'c-1', {
        customerId: 'c-1',
        email: 'ada@example.com',
        givenName: 'Ada',
        familyName: 'Lovelace',
      })
      await waitFor('welcome mail', () => running.sink!.messages().some((m) => /Welcome/.test(m.subject)))
      // The e-mail names a product it knows; one it does not know, by its SKU.
      await harness.publish('product.upserted', 'TEA-1', {
        sku: 'TEA-1',
        name: 'Green Tea',
        description: '',
        category: 'tea',
        priceMinor: 1250,
        currency: 'EUR',
      })
      // Another topic than the order's: nothing orders the two, so wait for the product.
      await waitFor(
        'the product known',
        async () =>
          (await store.query("SELECT 1 FROM notification_products WHERE sku = 'TEA-1'")).length === 1,
      )
      const placed = await harness.publish('order.placed', 'o-1', {
        orderId: 'o-1',
        customerId: 'c-1',
        lines: [
          { sku: 'TEA-1', quantity: 2, unitPriceMinor: 1250 },
          { sku: 'TEA-2', quantity: 1, unitPriceMinor: 0 },
        ],
        totalMinor: 2500,
        currency: 'EUR',
      })
      await waitFor('order mail', () => running.sink!.messages().some((m) => m.subject.includes('o-1')))
      const received = running.sink!.messages().find((m) => m.subject.includes('o-1'))!
      assert.equal(received.to, 'ada@example.com')
      assert.equal(received.subject, 'We have received your order o-1')
      assert.match(received.text, /Hello Ada,/)
      assert.match(received.text, /2 × Green Tea \(TEA-1\) at €12\.50\n {2}1 × TEA-2 at €0\.00/)
      assert.match(received.text, /Total: €25\.00/)
      assert.ok(received.receivedAt)

      // The same event again, then a later step of the same order (same partition) as a sentinel.
      await harness.stream.publish([placed])
      await harness.publish('order.cancelled', 'o-1', { orderId: 'o-1', reason: 'payment-declined' })
      await waitFor('cancellation mail', () =>
        running.sink!.messages().some((m) => /cancelled/.test(m.subject)),
      )
      const forOrder = running.sink!.messages().filter((m) => m.subject.includes('o-1'))
      assert.deepEqual(
        forOrder.map((m) => m.subject),
        ['We have received your order o-1', 'Your order o-1 has been cancelled'],
      )
      assert.match(forOrder[1].text, /because the payment was declined/)

      const emails = () =>
        store.query<{ id: string; status: string }>(
          "SELECT id, status FROM notification_emails WHERE order_id = 'o-1' ORDER BY created_at",
        )
      // The sink has the message a moment before the sender marks it sent.
      await waitFor('both marked sent', async () => (await emails()).every((row) => row.status === 'sent'))
      const sent = await emails()
      assert.equal(sent.length, 2)
      assert.equal(sent[0].id, notificationId(placed.id, 'email', 'order-received'))
      await waitFor('notification.sent in the outbox', async () => {
        const rows = await store.query<{ event: string }>('SELECT event FROM mercato_outbox')
        const events = rows.map((row) => JSON.parse(row.event))
        return events.filter((e) => e.type === 'notification.sent' && e.data.orderId === 'o-1').length === 2
      })
      await waitFor('three e-mails counted', async () =>
        /mercato_notifications_total\{channel="email",outcome="sent"\} 3\n/.test(
          await harness.metrics.text(),
        ),
      )
    })

    it('says in the log, once, that the SMTP server cannot be reached, while its e-mails wait', async () => {
      const lines: { msg: string; level: number }[] = []
      const log = pino(
        { level: 'info' },
        new Writable({
          write(chunk, _encoding, done) {
            lines.push(JSON.parse(String(chunk)))
            done()
          },
        }),
      )
      // A port just freed: nothing listens there.
      const probe = createNetServer()
      await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
      const closed = (probe.address() as AddressInfo).port
      await new Promise((resolve) => probe.close(resolve))
      // One attempt each at most: a server away spends none, so none is marked dead.
      const { harness, store } = await start(
        { smtpUrl: `smtp://127.0.0.1:${closed}`, emailAttemptsMax: 1 },
        log,
      )
      for (const id of ['c-m1', 'c-m2'])
        await harness.publish('customer.registered', id, {
          customerId: id,
          email: `${id}@example.com`,
          givenName: 'M',
          familyName: '',
        })
      await waitFor(
        'both e-mails tried',
        async () =>
          (await store.query('SELECT 1 FROM notification_emails WHERE last_error IS NOT NULL')).length === 2,
      )
      const said = lines.filter((l) => /SMTP server cannot be reached/.test(l.msg))
      assert.equal(said.length, 1)
      assert.equal(said[0].level, 40)
      // Tried again and again, past the one attempt each has, and never marked dead.
      await waitFor(
        'three attempts each',
        async () => (await store.query('SELECT 1 FROM notification_emails WHERE attempts >= 3')).length === 2,
      )
      assert.deepEqual(await store.query("SELECT 1 FROM notification_emails WHERE status = 'dead'"), [])
    })

    it('writes a refused registration to the address it asked for, which has an account already', async () => {
      const { harness, store, running } = await start()
      await harness.publish('customer.registration-requested', 'c-again', {
        customerId: 'c-again',
        email: 'grace@example.com',
        givenName: 'Grace',
        familyName: 'Hopper',
      })
      await harness.publish('customer.registration-rejected', 'c-again', {
        customerId: 'c-again',
        reason: 'the e-mail address is already registered',
      })
      await waitFor('the refusal mail', () =>
        running.sink!.messages().some((m) => m.subject === 'Your Mercato registration'),
      )
      const mail = running.sink!.messages().find((m) => m.subject === 'Your Mercato registration')!
      assert.equal(mail.to, 'grace@example.com')
      assert.match(mail.text, /already exists/)
      assert.deepEqual(
        await store.query('SELECT * FROM notification_registrations'),
        [],
        'forgotten once written',
      )
      // Under no customer: the refused id's 360 must not come to life with a notification.
      const [refusal] = await store.query<{ customer_id: string | null }>(
        "SELECT customer_id FROM notification_emails WHERE template = 'registration-refused'",
      )
      assert.equal(refusal.customer_id, null)
      // Registering with the same address again the same day writes no second e-mail.
      await harness.publish('customer.registration-requested', 'c-again-2', {
        customerId: 'c-again-2',
        email: 'Grace@Example.com',
        givenName: 'G',
        familyName: '',
      })
      const second = await harness.publish('customer.registration-rejected', 'c-again-2', {
        customerId: 'c-again-2',
        reason: 'the e-mail address is already registered',
      })
      await waitFor(
        'the second refusal handled',
        async () =>
          (await store.query('SELECT 1 FROM mercato_inbox WHERE event_id = $1', [second.id])).length > 0,
      )
      assert.deepEqual(await store.query('SELECT * FROM notification_registrations'), [])
      const refusals = await store.query(
        "SELECT 1 FROM notification_emails WHERE template = 'registration-refused'",
      )
      assert.equal(refusals.length, 1)
    })

    it('tells the customer of an order cancelled before it was placed (an unknown SKU), by the customerId the cancel carries', async () => {
      const { harness, running } = await start()
      await harness.publish('customer.registered', 'c-early', {
        customerId: 'c-early',
        email: 'early@example.com',
        givenName: 'Early',
        familyName: 'Bird',
      })
      await harness.publish('order.cancelled', 'o-never-placed', {
        orderId: 'o-never-placed',
        customerId: 'c-early',
        reason: 'invalid-order',
        detail: 'unknown SKU NOPE-1',
      })
      await waitFor('cancellation mail', () =>
        running.sink!.messages().some((m) => m.subject === 'Your order o-never-placed has been cancelled'),
      )
      const mail = running.sink!.messages().find((m) => m.subject.includes('o-never-placed'))!
      assert.equal(mail.to, 'early@example.com')
    })

    it('records no-recipient for an order whose customer is not known, and sends once the customer is, in the order of its steps', async () => {
      const { harness, store, running } = await start()
      await harness.publish('order.placed', 'o-2', {
        orderId: 'o-2',
        customerId: 'c-late',
        lines: [{ sku: 'TEA-1', quantity: 1, unitPriceMinor: 100 }],
        totalMinor: 100,
        currency: 'USD',
      })
      await harness.publish('order.confirmed', 'o-2', { orderId: 'o-2' })
      await harness.publish('shipment.scheduled', 'o-2', {
        orderId: 'o-2',
        shipmentId: 's-2',
        carrier: 'DHL',
        trackingNumber: 'TRK-2',
      })
      await harness.publish('order.shipped', 'o-2', { orderId: 'o-2', shipmentId: 's-2' })
      await harness.publish('order.delivered', 'o-2', { orderId: 'o-2', shipmentId: 's-2' })
      await harness.publish('order.shipped', 'o-unknown', { orderId: 'o-unknown', shipmentId: 's-1' })
      await waitFor('five no-recipient records', async () => {
        const rows = await store.query("SELECT 1 FROM notification_emails WHERE status = 'no-recipient'")
        return rows.length === 5
      })
      await waitFor('the shipment known', async () => {
        const rows = await store.query("SELECT 1 FROM notification_shipments WHERE order_id = 'o-2'")
        return rows.length === 1
      })
      // Released together, the four e-mails of o-2 still reach the customer one after another.
      await harness.publish('customer.registered', 'c-late', {
        customerId: 'c-late',
        email: 'late@example.com',
        givenName: 'Late',
        familyName: '',
      })
      const ofOrder = () => running.sink!.messages().filter((m) => m.subject.includes('o-2'))
      await waitFor('the waiting mails', () => ofOrder().length === 4)
      assert.deepEqual(
        ofOrder().map((m) => m.subject),
        [
          'We have received your order o-2',
          'Your order o-2 is confirmed',
          'Your order o-2 is on its way',
          'Your order o-2 has been delivered',
        ],
      )
      assert.match(ofOrder()[2].text, /shipped with DHL; its tracking number is TRK-2\./)
      assert.deepEqual(new Set(running.sink!.messages().map((m) => m.to)), new Set(['late@example.com']))
      const left = await store.query<{ order_id: string }>(
        "SELECT order_id FROM notification_emails WHERE status = 'no-recipient'",
      )
      assert.deepEqual(
        left.map((row) => row.order_id),
        ['o-unknown'],
      )
    })

    it('POSTs a signed CloudEvent to a matching webhook endpoint', async () => {
      const receiver = await webhookReceiver(204)
      cleanups.push(receiver.close)
      const { harness, store } = await start()
      await setEndpoint(harness, store, receiver.url, ['order.confirmed'])
      await harness.publish('order.placed', 'o-3', {
        orderId: 'o-3',
        customerId: 'c-3',
        lines: [{ sku: 'TEA-1', quantity: 1, unitPriceMinor: 100 }],
        totalMinor: 100,
        currency: 'USD',
      })
      const confirmed = await harness.publish('order.confirmed', 'o-3', { orderId: 'o-3' })
      await waitFor('webhook delivered', async () => (await deliveries(store))[0]?.status === 'sent')
      assert.equal(receiver.received.length, 1, 'only the subscribed type')
      const [request] = receiver.received
      assert.equal(request.headers['content-type'], 'application/json')
      const signature = String(request.headers['mercato-signature'])
      assert.match(signature, /^t=\d+,v1=[0-9a-f]{64}$/)
      assert.equal(verifyWebhookSignature(secret, signature, request.body, 300), true)
      assert.equal(verifyWebhookSignature('another-secret-xxxxx', signature, request.body, 300), false)
      assert.equal(verifyWebhookSignature(secret, signature, `${request.body} `, 300), false)
      const body = JSON.parse(request.body)
      assert.equal(body.specversion, '1.0')
      assert.equal(body.id, confirmed.id)
      assert.equal(body.type, 'order.confirmed')
      assert.deepEqual(body.data, { orderId: 'o-3' })
      assert.equal((await deliveries(store))[0].last_status_code, 204)
    })

    it('leaves the payment method token out of what a webhook receives', async () => {
      const receiver = await webhookReceiver(204)
      cleanups.push(receiver.close)
      const { harness, store } = await start()
      await setEndpoint(harness, store, receiver.url, ['order.*'])
      await harness.publish('order.payment-requested', 'o-tok', {
        orderId: 'o-tok',
        customerId: 'c-tok',
        paymentMethodToken: 'tok_secret_card',
        amountMinor: 100,
        currency: 'USD',
      })
      await waitFor('webhook delivered', async () => (await deliveries(store))[0]?.status === 'sent')
      const [request] = receiver.received
      assert.doesNotMatch(request.body, /tok_secret_card/)
      assert.deepEqual(JSON.parse(request.body).data, {
        orderId: 'o-tok',
        customerId: 'c-tok',
        amountMinor: 100,
        currency: 'USD',
      })
    })

    it('stops delivering to a removed endpoint, its retries included', async () => {
      const receiver = await webhookReceiver(500)
      cleanups.push(receiver.close)
      const { harness, store } = await start({ webhookAttemptsMax: 1_000 })
      await setEndpoint(harness, store, receiver.url, ['*'])
      await harness.publish('order.confirmed', 'o-rm', { orderId: 'o-rm' })
      await waitFor('a failed attempt', () => receiver.received.length >= 2)
      await harness.publish('webhook.endpoint-removed', 'ep-1', { endpointId: 'ep-1' })
      await waitFor(
        'the retried delivery cancelled',
        async () => (await deliveries(store))[0]?.status === 'cancelled',
      )
      const calls = receiver.received.length
      await harness.publish('order.confirmed', 'o-rm-2', { orderId: 'o-rm-2' })
      await harness.publish('order.cancelled', 'o-rm-2', { orderId: 'o-rm-2', reason: 'deadline-passed' })
      await waitFor('the later events handled', async () => {
        const rows = await store.query("SELECT 1 FROM notification_emails WHERE order_id = 'o-rm-2'")
        return rows.length === 2
      })
      await sleep(100)
      assert.equal((await deliveries(store)).length, 1, 'nothing new for a removed endpoint')
      assert.equal(receiver.received.length, calls)
    })

    it('retries a failing endpoint with backoff, then marks the delivery dead with the last error', async () => {
      const receiver = await webhookReceiver(500)
      cleanups.push(receiver.close)
      const { harness, store } = await start({ webhookAttemptsMax: 3 })
      await setEndpoint(harness, store, receiver.url, ['*'])
      await harness.publish('order.confirmed', 'o-4', { orderId: 'o-4' })
      await waitFor('delivery dead', async () => (await deliveries(store))[0]?.status === 'dead')
      const [delivery] = await deliveries(store)
      assert.equal(Number(delivery.attempts), 3)
      assert.equal(Number(delivery.last_status_code), 500)
      assert.match(String(delivery.last_error), /answered 500/)
      assert.equal(receiver.received.length, 3)
      await waitFor('the dead delivery counted', async () =>
        /mercato_notifications_total\{channel="webhook",outcome="dead"\} 1\n/.test(
          await harness.metrics.text(),
        ),
      )
      assert.match(
        await harness.metrics.text(),
        /mercato_notifications_total\{channel="webhook",outcome="retry"\} 2\n/,
      )
    })

    it('keeps delivering to a healthy endpoint while another never answers, and a stop cuts the silent calls off', async () => {
      const receiver = await webhookReceiver(204)
      cleanups.push(receiver.close)
      // Takes connections and never answers.
      const sockets = new Set<Socket>()
      const silent = createNetServer((socket) => {
        sockets.add(socket)
        socket.on('error', () => {})
      })
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
      cleanups.push(async () => {
        for (const socket of sockets) socket.destroy()
        await new Promise((resolve) => silent.close(resolve))
      })
      const { port } = silent.address() as AddressInfo
      // Longer than the test: the silent endpoint's calls are all still waiting at its end.
      const { harness, store, running } = await start({ webhookTimeoutMs: 60_000 })
      await setEndpoint(harness, store, `http://127.0.0.1:${port}/hooks`, ['*'], 'ep-silent')
      await setEndpoint(harness, store, receiver.url, ['*'], 'ep-healthy')
      // More deliveries than the loop has slots, the silent endpoint's as old as the healthy one's.
      for (let i = 0; i < 20; i++) await harness.publish('order.confirmed', `o-h${i}`, { orderId: `o-h${i}` })
      await waitFor('every delivery to the healthy endpoint', () => receiver.received.length === 20)
      await waitFor('the silent endpoint called', () => sockets.size > 0)
      // Come due while only the silent endpoint's calls run: delivered without waiting for them.
      await harness.publish('order.confirmed', 'o-late', { orderId: 'o-late' })
      await waitFor('the later delivery to the healthy endpoint', () => receiver.received.length === 21)
      await running.stop()
      const silentDeliveries = await store.query<{ status: string; attempts: number }>(
        "SELECT status, attempts FROM notification_webhook_deliveries WHERE endpoint_id = 'ep-silent'",
      )
      assert.equal(silentDeliveries.length, 21)
      // The calls cut off stay claimed, to be tried again when their lease ends; none is failed.
      assert.deepEqual(
        new Set(silentDeliveries.map((d) => `${d.status} ${d.attempts}`)),
        new Set(['sending 1', 'pending 0']),
      )
    })

    it('refuses a loopback URL when private hosts are not allowed, without calling it', async () => {
      const receiver = await webhookReceiver(204)
      cleanups.push(receiver.close)
      const { harness, store } = await start({ allowPrivateWebhookHosts: false })
      await setEndpoint(harness, store, receiver.url, ['order.confirmed'])
      await harness.publish('order.confirmed', 'o-5', { orderId: 'o-5' })
      await waitFor('delivery refused', async () => (await deliveries(store))[0]?.status === 'failed')
      const [delivery] = await deliveries(store)
      assert.match(String(delivery.last_error), /refused: 127\.0\.0\.1 is a loopback/)
      assert.equal(receiver.received.length, 0)

      const localhost = receiver.url.replace('127.0.0.1', 'localhost')
      await harness.publish('webhook.endpoint-set', 'ep-1', {
        endpointId: 'ep-1',
        url: localhost,
        secret,
        events: ['order.confirmed'],
        enabled: true,
      })
      await waitFor('endpoint updated', async () => {
        const rows = await store.query<{ url: string }>('SELECT url FROM notification_webhook_endpoints')
        return rows[0]?.url === localhost
      })
      await harness.publish('order.confirmed', 'o-6', { orderId: 'o-6' })
      await waitFor(
        'second refusal',
        async () => (await deliveries(store)).filter((d) => d.status === 'failed').length === 2,
      )
      const refused = (await deliveries(store)).map((d) => String(d.last_error))
      assert.ok(
        refused.some((reason) => /localhost resolves to/.test(reason)),
        refused.join('; '),
      )
      assert.equal(receiver.received.length, 0)
    })
  })
}

describe('webhook guard and signature', () => {
  it('tells private, loopback and link-local addresses from public ones', () => {
    for (const address of [
      '127.0.0.1',
      '10.1.2.3',
      '172.16.0.1',
      '192.168.1.1',
      '169.254.169.254',
      '100.64.0.1',
      '0.0.0.0',
      '::1',
      '::',
      'fe80::1',
      'fd12:3456::1',
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '::7f00:1', // IPv4-compatible
      '::ffff:0:7f00:1', // IPv4-translated
      '2002:7f00:1::1', // 6to4
    ])
      assert.equal(typeof privateAddressReason(address), 'string', address)
    for (const address of ['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111', '::ffff:8.8.8.8'])
      assert.equal(privateAddressReason(address), undefined, address)
  })

  it('verifies a signature within the tolerance only', () => {
    const body = '{"hello":"world"}'
    const now = 1_800_000_000
    const header = signWebhook(secret, body, now)
    assert.equal(verifyWebhookSignature(secret, header, body, 300, now + 299), true)
    assert.equal(verifyWebhookSignature(secret, header, body, 300, now + 301), false)
    assert.equal(verifyWebhookSignature(secret, header, Buffer.from(body), 300, now), true)
    assert.equal(verifyWebhookSignature(secret, `${header},v1=${'0'.repeat(64)}`, body, 300, now), true)
    assert.equal(verifyWebhookSignature(secret, 't=abc,v1=zz', body, 300, now), false)
    assert.equal(verifyWebhookSignature(secret, undefined, body, 300, now), false)
  })
})

describe('e-mail rendering and the sink parser', () => {
  it('renders every template', () => {
    const data = {
      orderId: 'o-9',
      customerId: 'c',
      email: 'a@b.co',
      reason: 'out-of-stock',
      shipmentId: 's',
      amountMinor: 1999,
      currency: 'JPY',
      lines: [],
      totalMinor: 0,
    }
    for (const template of [
      'welcome',
      'order-received',
      'order-confirmed',
      'order-cancelled',
      'order-shipped',
      'order-delivered',
      'payment-refunded',
    ]) {
      const { subject, text } = renderEmail(template, data, { givenName: 'Ada' })
      assert.ok(subject.length > 0 && text.startsWith('Hello Ada,'), template)
    }
    assert.match(renderEmail('payment-refunded', data, {}).subject, /¥1,999/)
    const cancelled = (reason: string, detail: string) =>
      renderEmail('order-cancelled', { ...data, reason, detail }, {}).text
    assert.match(cancelled('invalid-order', 'no product NOPE-1'), /no product NOPE-1/)
    assert.match(
      cancelled('operator-cancelled', 'suspected fraud'),
      /our team cancelled it\.\n\nsuspected fraud/,
    )
    assert.doesNotMatch(cancelled('payment-failed', 'provider answered 500: the circuit is open'), /circuit/)
    assert.doesNotMatch(
      cancelled('deadline-passed', 'no answer while STOCK_RESERVED within 30000 ms'),
      /30000/,
    )
    // A decline's detail is the provider's code, for API clients; the e-mail says it in words.
    assert.doesNotMatch(cancelled('payment-declined', 'card_declined'), /card_declined/)
    // Payment is captured on confirmation: nothing cancelled before it was charged, so no
    // refund is promised there; a customer's or operator's cancel may come after it.
    for (const reason of [
      'out-of-stock',
      'invalid-order',
      'payment-declined',
      'payment-failed',
      'deadline-passed',
    ])
      assert.match(cancelled(reason, ''), /You have not been charged for it/, reason)
    for (const reason of ['customer-cancelled', 'operator-cancelled'])
      assert.match(cancelled(reason, ''), /If you have been charged for it, we will refund you/, reason)
    // An account may have been registered without a password: the welcome promises no sign-in.
    assert.doesNotMatch(renderEmail('welcome', data, {}).text, /sign in/)
  })

  it('keeps the last messages as .eml files, across a restart of the sink', async () => {
    const dir = tempDir()
    const directory = join(dir.path, 'mail')
    const send = async (subject: string) => {
      const sink = await startMailSink({ messagesMax: 2, directory })
      const transport = nodemailer.createTransport({ host: sink.host, port: sink.port, secure: false })
      await transport.sendMail({ from: 'shop@mercato.test', to: 'ada@example.com', subject, text: 'hi' })
      transport.close()
      await sink.close()
    }
    try {
      for (const subject of ['one', 'two', 'three', 'four']) await send(subject)
      const files = readdirSync(directory).sort()
      assert.equal(files.length, 2)
      assert.deepEqual(
        files.map((file) => parseMessage(readFileSync(join(directory, file))).headers.get('subject')),
        ['three', 'four'],
      )
    } finally {
      dir.remove()
    }
  })

  it('decodes encoded headers and quoted-printable bodies', () => {
    const raw = Buffer.from(
      'Subject: =?UTF-8?Q?Ihre_Bestellung_=E2=80=94_f=C3=BCnf_?=\r\n =?UTF-8?Q?=E2=82=AC_ok?=\r\n' +
        'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n' +
        'Gr=C3=BC=C3=9Fe, soft=\r\nbreak\r\n',
    )
    const parsed = parseMessage(raw)
    assert.equal(parsed.headers.get('subject'), 'Ihre Bestellung — fünf € ok')
    assert.equal(parsed.text, 'Grüße, softbreak')
  })
})
