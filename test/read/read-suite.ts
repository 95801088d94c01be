// The read path end to end over HTTP, on one engine set: read-your-writes with the
// consistency token, freshness headers, cache hits, invalidation and ETags, bad
// parameters, and a rebuild that equals the live view while queries keep being answered.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { Value } from '@sinclair/typebox/value'
import { answerSchemas } from '../../src/read/answer-docs.ts'
import { rebuildView } from '../../src/read/projector.ts'
import { viewNames } from '../../src/read/view.ts'
import { groupOf } from '../../src/read/views.ts'
import { type EngineSet, type Shop, startShop } from '../support/shop.ts'
import { waitFor } from '../support/wait.ts'

const address = { name: 'R', line1: '1 Read St', city: 'Readville', postalCode: '1', country: 'US' }

interface Answer {
  status: number
  body: any
  headers: Headers
}

async function get(shop: Shop, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  const response = await fetch(`${shop.url}${path}`, {
    headers: { authorization: await shop.bearer('admin'), ...headers },
  })
  const text = await response.text()
  return { status: response.status, body: text ? JSON.parse(text) : undefined, headers: response.headers }
}

async function order(shop: Shop, customerId: string, sku: string): Promise<{ id: string; token: string }> {
  const answer = await shop.post(
    '/v1/orders',
    { customerId, lines: [{ sku, quantity: 1 }], shippingAddress: address, paymentMethodToken: 'tok_visa' },
    { 'idempotency-key': randomUUID(), authorization: await shop.bearer('customer', customerId) },
  )
  assert.equal(answer.status, 202, JSON.stringify(answer.body))
  assert.equal(answer.headers.get('mercato-consistency-token'), answer.body.consistencyToken)
  return { id: answer.body.id, token: answer.body.consistencyToken }
}

export function defineReadSuite(
  engines: EngineSet,
  skip: string | undefined,
  env: Record<string, string> = {},
) {
  describe(`read path: ${engines}`, { skip }, () => {
    let shop: Shop
    const sku = `READ-${randomUUID().slice(0, 8)}`
    const customerId = `cus_read_${randomUUID().slice(0, 8)}`

    before(async () => {
      shop = await startShop(engines, { MERCATO_READ_WAIT_MS: '500', ...env })
      await shop.stockUp([sku], 1_000)
    })
    after(async () => shop?.stop())

    it('a write followed at once by a read with its token sees the write, every time', async () => {
      const placed = await Promise.all(Array.from({ length: 20 }, () => order(shop, customerId, sku)))
      for (const { id, token } of placed) {
        const answer = await get(shop, `/v1/orders/${id}`, { 'mercato-consistency-token': token })
        assert.equal(answer.status, 200, JSON.stringify(answer.body))
        assert.equal(answer.body.orderId, id)
        assert.equal(answer.headers.get('mercato-stale'), 'false')
      }
    })

    it('a request read at once with its token is seen with its outcome: a restock, a cancel, a registration', async () => {
      const token = (answer: { status: number; body: { consistencyToken: string } }) => {
        assert.equal(answer.status, 202, JSON.stringify(answer.body))
        return { 'mercato-consistency-token': answer.body.consistencyToken }
      }
      const restocked = `READ-R-${randomUUID().slice(0, 8)}`
      await shop.stockUp([restocked], 10)
      for (let i = 1; i <= 5; i++) {
        const adjusted = await shop.post(
          `/v1/inventory/${restocked}/adjustments`,
          { delta: 1, reason: 'restock' },
          { 'idempotency-key': randomUUID() },
        )
        const product = await get(shop, `/v1/products/${restocked}`, token(adjusted))
        assert.equal(product.body.onHand, 10 + i)
        assert.equal(product.headers.get('mercato-stale'), 'false')
      }
      // An adjustment's Location says what came of it: applied, or refused and why.
      const adjust = (delta: number, reason: string) =>
        shop.post(
          `/v1/inventory/${restocked}/adjustments`,
          { delta, reason },
          { 'idempotency-key': randomUUID() },
        )
      const restock = await adjust(2, 'restock')
      assert.equal(
        restock.headers.get('location'),
        `/v1/inventory/${restocked}/adjustments/${restock.body.id}`,
        'the answer names the adjustment it made',
      )
      const applied = await get(shop, restock.headers.get('location') ?? '', token(restock))
      assert.equal(applied.status, 200, JSON.stringify(applied.body))
      assert.deepEqual([applied.body.outcome, applied.body.delta, applied.body.detail], ['applied', 2, null])
      assert.ok(Value.Check(answerSchemas.Adjustment, applied.body))
      const writeOff = await adjust(-1_000, 'write-off')
      const refused = await get(shop, writeOff.headers.get('location') ?? '', token(writeOff))
      assert.equal(refused.body.outcome, 'refused')
      assert.match(refused.body.detail, /available/)
      assert.equal(refused.headers.get('mercato-stale'), 'false')
      assert.equal((await get(shop, `/v1/products/${restocked}`, token(writeOff))).body.onHand, 17)
      // Read (and cached) under its SKU, it is not another SKU's adjustment.
      const otherSku = (restock.headers.get('location') ?? '').replace(restocked, sku)
      assert.equal((await get(shop, otherSku)).status, 404)

      // Another customer's, so this suite's customer keeps the orders the next test counts.
      const canceller = `cus_read_${randomUUID().slice(0, 8)}`
      const { id } = await order(shop, canceller, sku)
      const cancel = await shop.post(
        `/v1/orders/${id}/cancel`,
        {},
        { authorization: await shop.bearer('customer', canceller) },
      )
      const cancelled = await get(shop, `/v1/orders/${id}`, token(cancel))
      const events = cancelled.body.timeline.map((step: { event: string }) => step.event)
      assert.ok(
        cancelled.body.status === 'CANCELLED' || events.includes('order.cancel-refused'),
        `the cancel's outcome, in ${cancelled.body.status}: ${events}`,
      )
      assert.equal(cancelled.headers.get('mercato-stale'), 'false')

      const email = `read-${randomUUID().slice(0, 8)}@example.com`
      const registered = await shop.post(
        '/v1/customers',
        { email, givenName: 'Read', familyName: 'Writes' },
        { 'idempotency-key': randomUUID() },
      )
      const document = await get(shop, registered.headers.get('location') ?? '', token(registered))
      assert.equal(document.status, 200, JSON.stringify(document.body))
      assert.equal(document.body.profile.email, email)
      assert.equal(document.headers.get('mercato-stale'), 'false')

      // A webhook endpoint at its Location (never its secret), then its removal.
      const registeredHook = await shop.post(
        '/v1/webhooks',
        { url: 'https://hooks.example/in', events: ['customer.registration-rejected'] },
        { 'idempotency-key': randomUUID() },
      )
      const location = registeredHook.headers.get('location') ?? ''
      assert.equal(location, `/v1/webhooks/${registeredHook.body.id}`)
      const hook = await get(shop, location, token(registeredHook))
      assert.equal(hook.status, 200, JSON.stringify(hook.body))
      assert.equal(hook.body.url, 'https://hooks.example/in')
      assert.equal(hook.body.removedAt, null)
      assert.equal(hook.body.secret, undefined)
      assert.ok(Value.Check(answerSchemas.WebhookEndpoint, hook.body))
      const removal = await fetch(`${shop.url}${location}`, {
        method: 'DELETE',
        headers: { authorization: await shop.bearer('admin') },
      })
      const removed = await get(
        shop,
        location,
        token({ status: removal.status, body: (await removal.json()) as { consistencyToken: string } }),
      )
      assert.equal(removed.body.enabled, false)
      assert.ok(removed.body.removedAt)
      const list = await get(shop, '/v1/webhooks', token({ status: 202, body: registeredHook.body }))
      assert.ok(
        !list.body.endpoints.some((e: { endpointId: string }) => e.endpointId === registeredHook.body.id),
      )
      // The list is cached now: an endpoint named "list" is not it.
      assert.equal((await get(shop, '/v1/webhooks/list')).status, 404)
    })

    it('every answer says what position it reflects and how stale it is', async () => {
      const { id } = await order(shop, customerId, sku)
      const answer = await get(shop, `/v1/orders/${id}`)
      assert.ok([200, 404].includes(answer.status))
      assert.match(answer.headers.get('mercato-staleness-ms') ?? '', /^\d+$/)
      assert.match(answer.headers.get('mercato-position') ?? '', /^[^=,]+\/\d+=\d+(,[^=,]+\/\d+=\d+)*$/)
    })

    it('a record the projector dead-letters is passed: not lag, and not staleness, for ever', async () => {
      const stream = shop.app.context.stream!
      // An event with no subject: every group that reads it dead-letters it.
      await stream.engine.publish([
        {
          topic: stream.topic('products'),
          key: `DEAD-${randomUUID()}`,
          value: Buffer.from('{}'),
          headers: {
            ce_specversion: '1.0',
            ce_id: randomUUID(),
            ce_source: 'mercato/command-api',
            ce_type: 'product.upserted',
            ce_time: new Date().toISOString(),
            ce_dataversion: '1',
            'content-type': 'application/json',
          },
        },
      ])
      const live = await shop.app.context.views!.registry.live('catalog')
      const group = groupOf('catalog', live!.generation)
      await waitFor('the catalog to dead-letter it', async () =>
        (await stream.deadLetters('products', 1_000)).some(
          (letter) => letter.original.group.endsWith(group) && letter.error.includes('subject'),
        ),
      )
      // A few samples of the views' positions later (MERCATO_VIEW_SAMPLE_MS, 100 ms), it is passed.
      await new Promise((resolve) => setTimeout(resolve, 500))
      await waitFor('the catalog past the dead letter, neither lagging nor stale', async () => {
        const metrics = await (await fetch(`${shop.url}/metrics`)).text()
        const answer = await get(shop, '/v1/products?limit=1')
        return (
          /^mercato_view_lag_events\{view="catalog"\} 0$/m.test(metrics) &&
          answer.headers.get('mercato-staleness-ms') === '0'
        )
      })
    })

    it('an order is followed to delivery: status, timeline, payment, shipment, lists and 360', async () => {
      const { id, token } = await order(shop, customerId, sku)
      await waitFor(
        `order ${id} delivered in the view`,
        async () =>
          (await get(shop, `/v1/orders/${id}`, { 'mercato-consistency-token': token })).body?.status ===
          'DELIVERED',
        30_000,
      )
      const { body } = await get(shop, `/v1/orders/${id}`)
      assert.equal(body.customerId, customerId)
      assert.equal(body.totalMinor, 1000)
      assert.equal(body.payment.state, 'captured')
      assert.equal(body.shipment.state, 'delivered')
      assert.ok(body.shipment.trackingNumber)
      const events = body.timeline.map((step: { event: string }) => step.event)
      for (const step of [
        'order.requested',
        'inventory.reserved',
        'payment.authorized',
        'shipment.scheduled',
        'order.confirmed',
        'order.shipped',
        'order.delivered',
      ])
        assert.ok(events.includes(step), `timeline has ${step}`)
      for (const step of body.timeline) assert.ok(!Number.isNaN(Date.parse(step.at)))

      const list = await get(shop, `/v1/customers/${customerId}/orders?limit=5`)
      assert.equal(list.status, 200)
      assert.equal(list.body.items.length, 5)
      assert.ok(list.body.nextCursor)
      const seen = new Set<string>()
      let cursor: string | null = null
      do {
        const page: Answer = await get(
          shop,
          `/v1/customers/${customerId}/orders?limit=7${cursor ? `&cursor=${cursor}` : ''}`,
        )
        for (const item of page.body.items) {
          assert.ok(!seen.has(item.orderId), 'no order twice')
          seen.add(item.orderId)
        }
        cursor = page.body.nextCursor
      } while (cursor)
      assert.equal(seen.size, 22)
      // A cursor goes on with the list it came from only.
      const elsewhere = await get(
        shop,
        `/v1/customers/cus_someone_else/orders?cursor=${list.body.nextCursor}`,
      )
      assert.equal(elsewhere.status, 400)
      assert.equal(elsewhere.body.errors[0].field, '/cursor')

      await waitFor(
        'the 360 to count the delivered order',
        async () => {
          const c360 = await get(shop, `/v1/customers/${customerId}/360`)
          return c360.status === 200 && c360.body.orders.delivered >= 1
        },
        20_000,
      )
      const c360 = await get(shop, `/v1/customers/${customerId}/360`)
      assert.equal(c360.body.orders.count, 22)
      assert.ok(c360.body.lifetimeSpend[0].amountMinor >= 1000)
      assert.equal(c360.body.lifetimeSpend[0].currency, 'USD')
      assert.deepEqual(c360.body.averageBasket, [{ currency: 'USD', amountMinor: 1000 }])

      // Each answer is what the OpenAPI document says it is.
      for (const [path, schema] of [
        [`/v1/orders/${id}`, answerSchemas.Order],
        [`/v1/customers/${customerId}/orders`, answerSchemas.CustomerOrders],
        [`/v1/customers/${customerId}/360`, answerSchemas.Customer360],
        [`/v1/products/${sku}`, answerSchemas.Product],
        ['/v1/products?q=product', answerSchemas.CatalogPage],
      ] as const) {
        const { body } = await get(shop, path)
        assert.deepEqual([...Value.Errors(schema, body)], [], path)
      }
    })

    it('answers are cached, revalidated by ETag, and invalidated by the events that change them', async () => {
      const first = await get(shop, `/v1/products/${sku}`)
      assert.equal(first.status, 200)
      const second = await get(shop, `/v1/products/${sku}`)
      assert.equal(second.headers.get('mercato-cache'), 'hit')
      assert.deepEqual(second.body, first.body)
      const etag = second.headers.get('etag') ?? ''
      const revalidated = await fetch(`${shop.url}/v1/products/${sku}`, {
        headers: { 'if-none-match': etag },
      })
      assert.equal(revalidated.status, 304)
      assert.equal(revalidated.headers.get('etag'), etag)
      assert.ok(revalidated.headers.get('mercato-position'), 'a 304 carries the freshness headers')
      const manyTags = [...Array.from({ length: 30 }, (_, i) => `"cached-elsewhere-${i}"`), etag].join(', ')
      for (const header of [`W/${etag}`, `"other", ${etag}`, '*', manyTags]) {
        const conditional = await get(shop, `/v1/products/${sku}`, { 'if-none-match': header })
        assert.equal(conditional.status, 304, header)
        assert.equal(conditional.headers.get('etag'), etag, header)
      }
      assert.equal((await get(shop, `/v1/products/${sku}`, { 'if-none-match': '"other"' })).status, 200)

      for (const priceMinor of [1500, 1700, 1900]) {
        const put = await shop.put(`/v1/products/${sku}`, {
          name: `Product ${sku}`,
          description: 'repriced',
          category: 'test',
          priceMinor,
          currency: 'USD',
        })
        assert.equal(put.status, 202)
        const after = await get(shop, `/v1/products/${sku}`, {
          'mercato-consistency-token': put.body.consistencyToken,
          'if-none-match': etag,
        })
        assert.equal(after.status, 200, 'the old ETag no longer matches')
        assert.equal(after.body.priceMinor, priceMinor, 'no stale answer once the token was waited for')
      }
    })

    it('a token the view cannot reach in time gives the current answer marked stale, not an error', async () => {
      const { id } = await order(shop, customerId, sku)
      const far = Buffer.from(`v1:${shop.app.context.stream!.topic('orders')}:0:999999999`).toString(
        'base64url',
      )
      const answer = await get(shop, `/v1/orders/${id}`, { 'mercato-consistency-token': far })
      assert.ok([200, 404].includes(answer.status))
      assert.equal(answer.headers.get('mercato-stale'), 'true')
    })

    it('a price range or sort compares prices of one currency when a currency is given', async () => {
      const category = `cur-${randomUUID().slice(0, 8)}`
      let last: { body: { consistencyToken: string } } | undefined
      for (const [suffix, priceMinor, currency] of [
        ['YEN', 500, 'JPY'],
        ['USD', 500, 'USD'],
        ['EUR', 400, 'EUR'],
      ] as const) {
        last = await shop.put(`/v1/products/CUR-${suffix}-${category}`, {
          name: `Priced in ${currency}`,
          description: '',
          category,
          priceMinor,
          currency,
        })
      }
      const wait = { 'mercato-consistency-token': last!.body.consistencyToken }
      const currencies = (answer: Answer) => answer.body.items.map((p: { currency: string }) => p.currency)
      const all = await get(shop, `/v1/products?category=${category}&minPrice=500&maxPrice=500`, wait)
      assert.deepEqual(currencies(all).sort(), ['JPY', 'USD'], 'without a currency, minor units of any')
      const yen = await get(
        shop,
        `/v1/products?category=${category}&minPrice=500&maxPrice=500&currency=JPY`,
        wait,
      )
      assert.deepEqual(currencies(yen), ['JPY'])
      assert.equal(yen.body.total, 1)
      assert.deepEqual(yen.body.facets.category, [{ value: category, count: 1 }])
      const euros = await get(shop, `/v1/products?q=priced&sort=price-asc&currency=EUR`, wait)
      assert.deepEqual(currencies(euros), ['EUR'])
      const bad = await get(shop, '/v1/products?currency=usd')
      assert.equal(bad.status, 400)
      assert.deepEqual(
        bad.body.errors.map((e: { field: string }) => e.field),
        ['/currency'],
      )
    })

    it('bad query parameters are 400 problem details naming the parameter', async () => {
      for (const path of [
        '/v1/products?foo=1',
        '/v1/products?limit=0',
        '/v1/products?limit=101',
        '/v1/products?minPrice=abc',
        '/v1/products?minPrice=10&maxPrice=5',
        '/v1/products?inStock=maybe',
        '/v1/products?sort=cheapest',
        '/v1/products?cursor=not-a-cursor',
        `/v1/customers/${customerId}/orders?cursor=nope`,
        // The shape of an order cursor, with values no page gave.
        `/v1/customers/${customerId}/orders?cursor=${Buffer.from(JSON.stringify({ placedAt: 'not a date', orderId: 'x' })).toString('base64url')}`,
        `/v1/customers/${customerId}/orders?cursor=${Buffer.from(JSON.stringify({ placedAt: '2026-01-01T00:00:00.000Z', orderId: "x' OR '1'='1" })).toString('base64url')}`,
        `/v1/customers/${customerId}/orders?limit=-1`,
        '/v1/orders/ord_x?expand=all',
        `/v1/products?q=${Array.from({ length: 17 }, (_, i) => `w${i}`).join('+')}`,
      ]) {
        const answer = await get(shop, path)
        assert.equal(answer.status, 400, path)
        assert.match(answer.headers.get('content-type') ?? '', /application\/problem\+json/)
        assert.equal(answer.body.status, 400)
      }
      const blankCategory = await get(shop, '/v1/products?category=%20%20')
      assert.equal(blankCategory.status, 400)
      assert.equal(blankCategory.body.errors[0].field, '/category')
      // A pattern's refusal says what it wants in words, not as a regular expression.
      assert.equal(blankCategory.body.errors[0].message, 'must not be blank')
      const badLimit = await get(shop, '/v1/products?limit=0')
      assert.equal(badLimit.body.errors[0].message, 'must be a whole number from 1 to 100')
      const badSort = await get(shop, '/v1/products?sort=cheapest')
      assert.deepEqual(badSort.body.errors, [
        {
          in: 'querystring',
          field: '/sort',
          message: 'must be one of "relevance", "price-asc", "price-desc", "name", "newest"',
        },
      ])
      // Repeated, it is said to be: one issue, not one per choice, nor a value not allowed.
      const repeated = await get(shop, '/v1/products?sort=name&sort=price-asc')
      assert.deepEqual(repeated.body.errors, [
        { in: 'querystring', field: '/sort', message: 'is given more than once' },
      ])
      const badToken = await get(shop, `/v1/products/${sku}`, { 'mercato-consistency-token': 'garbage' })
      assert.equal(badToken.status, 400)
      assert.equal((await get(shop, '/v1/orders/ord_does_not_exist')).status, 404)
    })

    it('a rebuilt view equals the live one, byte for byte, and queries are answered throughout', async () => {
      const { views, stream } = shop.app.context
      assert.ok(views && stream)
      const quiet = async () => {
        const lags = await Promise.all(
          viewNames.map(async (view) => {
            const live = await views.registry.live(view)
            const positions = await views.definitions[view].storage.positions(live!.generation)
            // The group's committed offsets count too: a record it dead-lettered is passed, not applied.
            const group = await stream.engine.lag(
              stream.group(groupOf(view, live!.generation)),
              views.definitions[view].topics.map((t) => stream.topic(t)),
            )
            return group.every(
              (e) =>
                Math.max(
                  e.committed,
                  positions.find((p) => p.topic === e.topic && p.partition === e.partition)?.nextOffset ?? 0,
                ) >= e.end,
            )
          }),
        )
        return lags.every(Boolean)
      }
      await waitFor(
        'every order to finish and the views to catch up',
        async () => {
          const list = await get(shop, `/v1/customers/${customerId}/orders?limit=100`)
          const open = list.body.items.some(
            (o: { status: string }) => !['DELIVERED', 'CANCELLED'].includes(o.status),
          )
          return !open && (await quiet())
        },
        60_000,
      )
      // Nothing moves now (the notification service may still be sending): wait for a quiet second.
      let settled = 0
      await waitFor(
        'a quiet stream',
        async () => {
          settled = (await quiet()) ? settled + 1 : 0
          return settled >= 10
        },
        30_000,
      )

      for (const view of viewNames) {
        const live: number = (await views.registry.live(view))!.generation
        let answered = 0
        const querying = (async () => {
          for (let i = 0; i < 20; i++) {
            const answer = await get(shop, `/v1/customers/${customerId}/360`)
            assert.equal(answer.status, 200)
            answered++
          }
        })()
        const rebuilt = await rebuildView({ views, stream, metrics: shop.app.context.metrics }, view)
        await querying
        assert.equal(answered, 20)
        assert.equal(rebuilt, live + 1)
        assert.equal((await views.registry.live(view))?.generation, rebuilt)
        const old: string = await views.definitions[view].storage.dump(live)
        const fresh: string = await views.definitions[view].storage.dump(rebuilt)
        assert.ok(old.length > 0)
        assert.equal(fresh, old, `${view}: the rebuilt generation equals the live one`)
      }

      // The projector follows the new generations: a new write is seen with its token.
      const { id, token } = await order(shop, customerId, sku)
      await waitFor(
        'the projector to follow the new generation',
        async () => {
          const answer = await get(shop, `/v1/orders/${id}`, { 'mercato-consistency-token': token })
          return answer.status === 200 && answer.headers.get('mercato-stale') === 'false'
        },
        10_000,
      )
    })
  })
}
