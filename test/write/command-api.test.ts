import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { after, before, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import fc from 'fast-check'
import { decodeConsistencyToken } from '../../src/contracts/consistency.ts'
import type { Store } from '../../src/engines/store/port.ts'
import { storeLimitDefaults } from '../../src/engines/store/port.ts'
import { PostgresStore } from '../../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import type { EventStream } from '../../src/engines/stream/event-stream.ts'
import type { PartitionLag } from '../../src/engines/stream/port.ts'
import type { OverloadedError } from '../../src/platform/errors.ts'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { fingerprintOf, IdempotencyKeys, idempotencyMigrations } from '../../src/write/idempotency.ts'
import { SagaBacklog } from '../../src/write/saga-backlog.ts'
import { storeKinds } from '../services/notification/harness.ts'
import { dropPostgresSchemas, serverUrls } from '../support/servers.ts'
import { type Shop, startShop, testCustomerId } from '../support/shop.ts'
import { tempDir, uniqueName, waitFor } from '../support/wait.ts'

const address = { name: 'A', line1: '1 St', city: 'C', postalCode: '1', country: 'US' }
const order = (lines: unknown = [{ sku: 'CMD-1', quantity: 1 }]) => ({
  lines,
  shippingAddress: address,
  paymentMethodToken: 'tok_visa',
})

/** Events the command API appended (services write to the same topics): what a refused request must not change. */
async function appended(shop: Shop): Promise<number> {
  const stream = shop.app.context.stream!
  let count = 0
  for (const name of ['orders', 'customers', 'products', 'inventory', 'flags', 'webhooks']) {
    const topic = stream.topic(name)
    for (let p = 0; p < (await stream.engine.partitionsOf(topic)); p++) {
      const records = await stream.engine.read(topic, p, 0, 100_000)
      count += records.filter((r) => r.headers.ce_source === 'mercato/command-api').length
    }
  }
  return count
}

describe('the command API', () => {
  let shop: Shop
  before(async () => {
    shop = await startShop('embedded')
  })
  after(() => shop?.stop())

  it('accepts an order with 202, the id, a Location and a consistency token naming the stream position', async () => {
    const answer = await shop.post('/v1/orders', order(), { 'idempotency-key': randomUUID() })
    assert.equal(answer.status, 202)
    assert.match(answer.body.id, /^ord_/)
    assert.equal(answer.headers.get('location'), `/v1/orders/${answer.body.id}`)
    const position = decodeConsistencyToken(answer.body.consistencyToken)
    assert.equal(position?.topic, shop.app.context.stream!.topic('orders'))
    const [record] = await shop.app.context.stream!.engine.read(
      position!.topic,
      position!.partition,
      position!.offset,
      1,
    )
    assert.equal(record.headers.ce_type, 'order.requested')
    assert.equal(record.key, answer.body.id)

    // A command on an existing resource answers with that resource's id, as its Location names it.
    // A cancel's reason reaches the customer's e-mail and webhooks: text a person types only.
    for (const reason of ['line1\r\nX-Injected: yes', 'nul\u0000', 'spoof\u202Eevil']) {
      const refused = await shop.post(`/v1/orders/${answer.body.id}/cancel`, { reason }, {})
      assert.equal(refused.status, 400, JSON.stringify(reason))
      assert.deepEqual(
        refused.body.errors.map((e: { field: string }) => e.field),
        ['/reason'],
      )
    }
    const cancel = await shop.post(`/v1/orders/${answer.body.id}/cancel`, {}, {})
    assert.equal(cancel.status, 202)
    assert.equal(cancel.body.id, answer.body.id)
    assert.equal(cancel.headers.get('location'), `/v1/orders/${answer.body.id}`)
    const upsert = await shop.put('/v1/products/ID-1', {
      name: 'Lamp',
      description: '',
      category: 'home',
      priceMinor: 100,
      currency: 'USD',
    })
    assert.equal(upsert.status, 202)
    assert.equal(upsert.body.id, 'ID-1')
  })

  it('refuses bad bodies with 400 problem details naming each bad field, and publishes nothing', async () => {
    const cases: [unknown, string[]][] = [
      [{ ...order(), coupon: 'FREE' }, ['/coupon']],
      [{ ...order(), customerId: 42 }, ['/customerId']],
      [order([]), ['/lines']],
      [order(Array.from({ length: 101 }, (_, i) => ({ sku: `S${i}`, quantity: 1 }))), ['/lines']],
      [order([{ sku: 'X', quantity: 0 }]), ['/lines/0/quantity']],
      [
        order([
          { sku: 'X', quantity: -2 },
          { sku: 'Y', quantity: 1.5 },
        ]),
        ['/lines/0/quantity', '/lines/1/quantity'],
      ],
      [
        order([
          { sku: 'X', quantity: 1 },
          { sku: 'X', quantity: 2 },
        ]),
        ['/lines/1/sku'],
      ],
      // A rule beyond the schema (no SKU twice) is named beside what the schema refuses.
      [
        {
          ...order([
            { sku: 'X', quantity: 1 },
            { sku: 'X', quantity: 0 },
          ]),
          coupon: 'FREE',
        },
        ['/lines/1/quantity', '/lines/1/sku', '/coupon'],
      ],
      [{ lines: [{ sku: 'X', quantity: 1 }] }, ['/shippingAddress', '/paymentMethodToken']],
      // 150 emoji: 150 characters, 300 UTF-16 code units, which is what the event's bound counts.
      [{ ...order(), shippingAddress: { ...address, name: '😀'.repeat(150) } }, ['/shippingAddress/name']],
      // Blank, control characters, a bidi override, a lone surrogate, a country that is none.
      [
        {
          ...order(),
          shippingAddress: {
            name: '   ',
            line1: 'a\u0000b',
            city: 'x\u202Ey',
            postalCode: '\ud800',
            country: 'XX',
          },
        },
        [
          '/shippingAddress/name',
          '/shippingAddress/line1',
          '/shippingAddress/city',
          '/shippingAddress/postalCode',
          '/shippingAddress/country',
        ],
      ],
      // Names ICU still knows that are not ISO 3166-1 codes: an alias of GB, a withdrawn code.
      [{ ...order(), shippingAddress: { ...address, country: 'UK' } }, ['/shippingAddress/country']],
      [{ ...order(), shippingAddress: { ...address, country: 'DY' } }, ['/shippingAddress/country']],
    ]
    const before = await appended(shop)
    for (const [body, fields] of cases) {
      const answer = await shop.post('/v1/orders', body, { 'idempotency-key': randomUUID() })
      assert.equal(answer.status, 400, JSON.stringify(body).slice(0, 80))
      assert.match(answer.headers.get('content-type') ?? '', /application\/problem\+json/)
      const named = answer.body.errors.map((e: { field: string }) => e.field)
      for (const field of fields)
        assert.ok(named.includes(field), `${field} named in ${JSON.stringify(named)}`)
    }
    // A query parameter no command takes, and a body of null, are named like any bad field.
    const query = await shop.post('/v1/orders?coupon=FREE', order(), { 'idempotency-key': randomUUID() })
    assert.equal(query.status, 400)
    assert.deepEqual(
      query.body.errors.map((e: { in: string; field: string }) => `${e.in} ${e.field}`),
      ['querystring /coupon'],
    )
    // With a bad body too, both at once: the client fixes everything in one go.
    const both = await shop.post(
      '/v1/orders?coupon=FREE',
      { ...order(), lines: [] },
      { 'idempotency-key': randomUUID() },
    )
    assert.deepEqual(
      both.body.errors.map((e: { in: string; field: string }) => `${e.in} ${e.field}`).sort(),
      ['body /lines', 'querystring /coupon'],
    )
    const nothing = await shop.post('/v1/orders', null, { 'idempotency-key': randomUUID() })
    assert.equal(nothing.status, 400)
    assert.deepEqual(
      nothing.body.errors.map((e: { field: string; message: string }) => `${e.field} ${e.message}`),
      ['/ must be object'],
    )
    const adjustment = await shop.post(
      '/v1/inventory/P1/adjustments',
      { delta: -5, reason: 'restock', note: 'x' },
      { 'idempotency-key': randomUUID() },
    )
    assert.equal(adjustment.status, 400)
    assert.deepEqual(adjustment.body.errors.map((e: { field: string }) => e.field).sort(), [
      '/delta',
      '/note',
    ])
    const product = await shop.put('/v1/products/P1', {
      name: 'x',
      description: '',
      category: 'c',
      priceMinor: 100,
      currency: 'XYZ',
    })
    assert.equal(product.status, 400)
    assert.deepEqual(
      product.body.errors.map((e: { field: string }) => e.field),
      ['/currency'],
    )
    // Shown to every shopper: no control characters or bidi overrides, and no blank name.
    const badText = await shop.put('/v1/products/P1', {
      name: 'lamp\u0000',
      description: 'bright\u202e',
      category: '  ',
      priceMinor: 100,
      currency: 'USD',
    })
    assert.equal(badText.status, 400)
    assert.deepEqual(badText.body.errors.map((e: { field: string }) => e.field).sort(), [
      '/category',
      '/description',
      '/name',
    ])
    // Each says what is wrong in words, not as the pattern it failed.
    assert.deepEqual(
      Object.fromEntries(
        badText.body.errors.map((e: { field: string; message: string }) => [e.field, e.message]),
      ),
      {
        '/category':
          'must not be blank, nor hold control characters, lone surrogates or bidirectional overrides',
        '/description':
          'must not hold control characters but line breaks and tabs, lone surrogates or bidirectional overrides',
        '/name': 'must not be blank, nor hold control characters, lone surrogates or bidirectional overrides',
      },
    )
    // A SKU must begin with a letter or a digit: none is `..`, which a client reads as a path segment.
    for (const sku of ['...', '.hidden']) {
      const dotted = await shop.put(`/v1/products/${sku}`, {
        name: 'x',
        description: '',
        category: 'c',
        priceMinor: 100,
        currency: 'USD',
      })
      assert.equal(dotted.status, 400, sku)
      assert.deepEqual(
        dotted.body.errors.map((e: { in: string; field: string }) => `${e.in} ${e.field}`),
        ['params /sku'],
      )
    }
    const tooBig = await shop.post(
      '/v1/orders',
      { ...order(), pad: 'x'.repeat(70_000) },
      { 'idempotency-key': randomUUID() },
    )
    assert.equal(tooBig.status, 400)
    assert.equal(tooBig.body.status, 400)
    assert.deepEqual(
      tooBig.body.errors.map((e: { in: string; field: string }) => `${e.in} ${e.field}`),
      ['body /'],
    )
    assert.equal(await appended(shop), before)
  })

  it('refuses a flag definition the flags service would not apply, with the reason, and publishes nothing', async () => {
    const before = await appended(shop)
    const cases: [unknown, string, RegExp][] = [
      [
        { state: 'ENABLED', variants: { a: 1 }, defaultVariant: 'a', targeting: { nonsense_op: [1] } },
        '/targeting',
        /not a valid flagd definition: \/targeting/,
      ],
      [{ state: 'ENABLED', variants: { a: 1, b: 'x' }, defaultVariant: 'a' }, '/variants', /same type/],
      [
        { state: 'ENABLED', variants: { a: 1 }, defaultVariant: 'b' },
        '/defaultVariant',
        /not one of the variants/,
      ],
      [
        // flagd reads the 5 as the variant "5", which there is not.
        {
          state: 'ENABLED',
          variants: { a: 1 },
          defaultVariant: 'a',
          targeting: { if: [{ '==': [1, 1] }, 5, 'a'] },
        },
        '/targeting',
        /returns "5", which is not one of the variants/,
      ],
      [
        // JSON Logic's `?:` (`if` by another name) is outside flagd's schema: refused, so a
        // variant it returns need not be checked.
        {
          state: 'ENABLED',
          variants: { a: 1 },
          defaultVariant: 'a',
          targeting: { '?:': [{ '==': [1, 1] }, 'z', 'a'] },
        },
        '/targeting',
        /not a valid flagd definition: \/targeting/,
      ],
    ]
    // Flags the code reads take only values it can use.
    const known: [string, unknown, string, RegExp][] = [
      ['max-lines-per-order', -5, '/variants/few', /whole number, 1 or more/],
      ['max-lines-per-order', 0.5, '/variants/few', /whole number, 1 or more/],
      ['capture-on', 'later', '/variants/few', /"confirmation" or "shipment"/],
    ]
    for (const [key, value, field, reason] of known) {
      const answer = await shop.put(`/v1/flags/${key}`, {
        state: 'ENABLED',
        variants: { few: value },
        defaultVariant: 'few',
      })
      assert.equal(answer.status, 400, JSON.stringify(answer.body))
      assert.match(answer.body.detail, reason)
      assert.equal(answer.body.errors[0].field, field)
    }
    for (const [definition, field, reason] of cases) {
      const answer = await shop.put('/v1/flags/cmd-invalid', definition)
      assert.equal(answer.status, 400, JSON.stringify(answer.body))
      assert.match(answer.body.detail, reason)
      assert.equal(answer.body.errors[0].field, field)
    }
    assert.equal(await appended(shop), before)
    const valid = { state: 'ENABLED', variants: { a: 1, b: 2 }, defaultVariant: 'a' }
    assert.equal((await shop.put('/v1/flags/cmd-valid', valid)).status, 202)
  })

  it('refuses webhook subscriptions to event types that do not exist or are never delivered, naming each bad entry', async () => {
    const before = await appended(shop)
    const register = (events: string[]) =>
      shop.post(
        '/v1/webhooks',
        { url: 'https://example.com/hook', events },
        { 'idempotency-key': randomUUID() },
      )
    const refused = await register([
      'nope.event',
      'order.*',
      'nope.*',
      'order.confirmed',
      'order*',
      // Real types no webhook receives: another topic's, the webhooks' own, one with a password hash.
      'inventory.reserved',
      'webhook.*',
      'customer.registration-requested',
      'customer.*',
    ])
    assert.equal(refused.status, 400)
    assert.deepEqual(
      refused.body.errors.map((e: { field: string }) => e.field),
      ['/events/0', '/events/2', '/events/4', '/events/5', '/events/6', '/events/7'],
    )
    assert.match(
      refused.body.detail,
      /"nope.event" names no event type a webhook receives \(order\.\*, payment\.\*, shipment\.\*, customer\.\*, \* or one of their types/,
    )
    assert.equal(refused.body.secret, undefined)
    // Many bad entries: the first 50 are listed, and how many there were in all.
    const crowded = await register(Array.from({ length: 60 }, (_, i) => `nope.event-${i}`))
    assert.equal(crowded.status, 400)
    assert.equal(crowded.body.errors.length, 50)
    assert.equal(crowded.body.errorCount, 60)
    assert.match(crowded.body.detail, /; and 50 more$/)
    assert.equal(await appended(shop), before)
    const accepted = await register(['order.*', '*', 'payment.captured'])
    assert.equal(accepted.status, 202, JSON.stringify(accepted.body))
  })

  it('says plainly what is wrong with a poisoned, zero, non-JSON or private-address request', async () => {
    const before = await appended(shop)
    const poisoned = await shop.post('/v1/orders', `{"__proto__": {"admin": true}, "lines": []}`, {
      'idempotency-key': randomUUID(),
    })
    assert.equal(poisoned.status, 400)
    assert.equal(poisoned.body.type, 'https://mercato.dev/problems/invalid-request')
    assert.match(
      poisoned.body.detail,
      /a "__proto__" key, or a "constructor" key holding a "prototype", which is not allowed/,
    )
    const constructed = await shop.post('/v1/orders', `{"constructor": {"prototype": {}}}`, {
      'idempotency-key': randomUUID(),
    })
    assert.equal(constructed.body.type, 'https://mercato.dev/problems/invalid-request')
    const broken = await shop.post('/v1/orders', '{"lines": [', { 'idempotency-key': randomUUID() })
    assert.equal(broken.status, 400)
    assert.match(broken.body.detail, /not valid JSON/, 'JSON that does not parse is still told so')
    assert.equal(broken.body.type, 'https://mercato.dev/problems/invalid-request')
    assert.deepEqual(broken.body.errors, [{ in: 'body', field: '/', message: 'is not valid JSON' }])
    // Deep nesting would overflow the stack of whatever walks it (the idempotency fingerprint did: a 500).
    const nested = `{"state":"ENABLED","variants":{"a":${'['.repeat(5_000)}1${']'.repeat(5_000)}},"defaultVariant":"a"}`
    const deep = await shop.put('/v1/flags/deep-flag', nested, { 'idempotency-key': randomUUID() })
    assert.equal(deep.status, 400)
    assert.deepEqual(deep.body.errors, [
      { in: 'body', field: '/', message: 'nests arrays and objects deeper than 32 levels' },
    ])

    const zero = await shop.post(
      '/v1/inventory/CMD-1/adjustments',
      { delta: 0, reason: 'restock' },
      { 'idempotency-key': randomUUID() },
    )
    assert.equal(zero.status, 400)
    assert.deepEqual(zero.body.errors, [{ in: 'body', field: '/delta', message: 'must not be zero' }])

    // Lengths count UTF-16 code units, as the events' schemas do, and the message says so.
    const emoji = await shop.put('/v1/products/EMOJI-1', {
      name: 'Smile',
      description: '',
      category: '🙂'.repeat(51),
      priceMinor: 100,
      currency: 'USD',
    })
    assert.equal(emoji.status, 400)
    assert.deepEqual(emoji.body.errors, [
      {
        in: 'body',
        field: '/category',
        message: 'must NOT be longer than 100 UTF-16 code units (an emoji counts 2)',
      },
    ])

    const loopback = await shop.post(
      '/v1/webhooks',
      { url: 'http://127.0.0.1:9/x', events: ['order.confirmed'] },
      { 'idempotency-key': randomUUID() },
    )
    assert.equal(loopback.status, 400)
    assert.equal(
      loopback.body.detail,
      'body /url: must not name a loopback, link-local or private address (127.0.0.1 is one)',
    )

    for (const contentType of ['text/plain', 'application/x-www-form-urlencoded']) {
      const text = await fetch(`${shop.url}/v1/orders`, {
        method: 'POST',
        headers: {
          'content-type': contentType,
          'idempotency-key': randomUUID(),
          authorization: await shop.bearer('customer'),
        },
        body: JSON.stringify(order()),
      })
      assert.equal(text.status, 415, contentType)
      assert.match(text.headers.get('content-type') ?? '', /application\/problem\+json/)
      const problem = (await text.json()) as { type: string; title: string; detail: string }
      // The type a refused charset has too: one 415, one type.
      assert.equal(problem.type, 'https://mercato.dev/problems/unsupported-media-type')
      assert.equal(problem.title, 'Unsupported media type')
      assert.equal(problem.detail, 'send the body as application/json')
    }
    // A compressed body is refused, whether it would fail to parse (gzip) or parse as it is.
    const plain = JSON.stringify(order())
    for (const [coding, body] of [
      ['gzip', gzipSync(plain)],
      ['br', plain],
    ] as const) {
      const compressed = await fetch(`${shop.url}/v1/orders`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'content-encoding': coding,
          'idempotency-key': randomUUID(),
          authorization: await shop.bearer('customer'),
        },
        body,
      })
      assert.equal(compressed.status, 415, coding)
      assert.equal(compressed.headers.get('accept-encoding'), 'identity')
      const problem = (await compressed.json()) as { type: string; detail: string }
      assert.equal(problem.type, 'https://mercato.dev/problems/unsupported-content-encoding')
      assert.match(problem.detail, new RegExp(`Content-Encoding ${coding} is not accepted`))
    }
    // The header alone, on a request without a body, is no compressed body.
    const bodiless = await fetch(`${shop.url}/v1/products/CMD-1`, { headers: { 'content-encoding': 'gzip' } })
    assert.notEqual(bodiless.status, 415)
    assert.equal(await appended(shop), before)
  })

  it('requires an Idempotency-Key on creating POSTs', async () => {
    for (const path of ['/v1/orders', '/v1/customers']) {
      const body =
        path === '/v1/orders' ? order() : { email: 'k@example.com', givenName: 'K', familyName: 'K' }
      const answer = await shop.post(path, body)
      assert.equal(answer.status, 400)
      assert.equal(answer.body.type, 'https://mercato.dev/problems/idempotency-key-required')
      assert.deepEqual(answer.body.errors, [
        { in: 'header', field: 'Idempotency-Key', message: 'is required' },
      ])
    }
    // With a bad body too, every bad field is named at once, the header among them.
    const both = await shop.post('/v1/orders', { ...order(), lines: [] })
    assert.equal(both.status, 400)
    assert.deepEqual(
      both.body.errors.map((e: { in: string; field: string }) => `${e.in} ${e.field}`),
      ['body /lines', 'header Idempotency-Key'],
    )
    const badKey = await shop.post('/v1/orders', { ...order(), lines: [] }, { 'idempotency-key': 'a b' })
    assert.deepEqual(badKey.body.errors.at(-1), {
      in: 'header',
      field: 'Idempotency-Key',
      message: 'is invalid',
    })
  })

  it('refuses a registration without a password unless staff send it', async () => {
    const before = await appended(shop)
    const body = () => ({
      email: `nopass-${randomUUID().slice(0, 8)}@example.com`,
      givenName: 'No',
      familyName: 'Pass',
    })
    const response = await fetch(`${shop.url}/v1/customers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': randomUUID() },
      body: JSON.stringify(body()),
    })
    const anonymous = { status: response.status, body: (await response.json()) as { errors: unknown } }
    assert.equal(anonymous.status, 400, JSON.stringify(anonymous.body))
    assert.deepEqual(anonymous.body.errors, [
      { in: 'body', field: '/password', message: 'is required unless staff register the customer' },
    ])
    const byCustomer = await shop.post('/v1/customers', body(), {
      'idempotency-key': randomUUID(),
      authorization: await shop.bearer('customer', 'cus_someone'),
    })
    assert.equal(byCustomer.status, 400, JSON.stringify(byCustomer.body))
    assert.equal(await appended(shop), before)
    const byStaff = await shop.post('/v1/customers', body(), { 'idempotency-key': randomUUID() })
    assert.equal(byStaff.status, 202, JSON.stringify(byStaff.body))
  })

  it('registers a customer who can then sign in and read their 360 at the Location; a staff address is refused', async () => {
    const email = `reg-${randomUUID().slice(0, 8)}@example.com`
    const registration = { email, givenName: 'Reg', familyName: 'Istered', password: 'register-password-1' }
    const answer = await shop.post('/v1/customers', registration, { 'idempotency-key': randomUUID() })
    assert.equal(answer.status, 202)
    assert.equal(answer.headers.get('location'), `/v1/customers/${answer.body.id}/360`)
    const signIn = (username: string, password: string) =>
      fetch(`${shop.url}/v1/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ grant_type: 'password', username, password }),
      })
    let token = ''
    await waitFor('the new customer signs in', async () => {
      const response = await signIn(email, registration.password)
      if (response.status === 200) token = ((await response.json()) as { access_token: string }).access_token
      return token !== ''
    })
    await waitFor('the 360 at the Location', async () => {
      const read = await fetch(`${shop.url}${answer.headers.get('location')}`, {
        headers: { authorization: `Bearer ${token}` },
      })
      return read.status === 200
    })

    const staff = { ...registration, email: 'ADMIN@mercato.local', password: 'squatter-password-1' }
    const squatter = await shop.post('/v1/customers', staff, { 'idempotency-key': randomUUID() })
    assert.equal(squatter.status, 202)
    const rejected = async () => {
      const stream = shop.app.context.stream!
      const topic = stream.topic('customers')
      for (let p = 0; p < (await stream.engine.partitionsOf(topic)); p++)
        for (const record of await stream.engine.read(topic, p, 0, 100_000))
          if (record.headers.ce_type === 'customer.registration-rejected' && record.key === squatter.body.id)
            return true
      return false
    }
    await waitFor('the staff address rejected', rejected)
    assert.equal((await signIn('admin@mercato.local', staff.password)).status, 400)
    // Its Location says the registration was refused, and why.
    const location = squatter.headers.get('location')!
    const refusal = 'https://mercato.dev/problems/registration-rejected'
    await waitFor('the refusal at its Location', async () => (await shop.get(location)).body.type === refusal)
    const refused = await shop.get(location)
    assert.equal(refused.status, 404)
    assert.match(refused.body.detail, new RegExp(`registration of ${squatter.body.id} was refused: .+`))
  })

  it('replays the stored answer for the same key and body; 422 for another body; 409 while in flight', async () => {
    const key = randomUUID()
    const first = await shop.post('/v1/orders', order(), { 'idempotency-key': key })
    const before = await appended(shop)
    const again = await shop.post('/v1/orders', order(), { 'idempotency-key': key })
    assert.equal(again.status, 202)
    assert.deepEqual(again.body, first.body)
    assert.equal(again.headers.get('idempotent-replayed'), 'true')
    assert.equal(again.headers.get('location'), first.headers.get('location'))
    // The draft's form of the key, a structured-field string in quotes, is the same key.
    const quoted = await shop.post('/v1/orders', order(), { 'idempotency-key': `"${key}"` })
    assert.equal(quoted.headers.get('idempotent-replayed'), 'true')
    assert.deepEqual(quoted.body, first.body)
    // Two keys are not one: sent twice, or joined by a comma as a proxy joins them.
    const joined = await shop.post('/v1/orders', order(), { 'idempotency-key': 'k1,k2' })
    assert.equal(joined.status, 400)
    assert.match(joined.body.errors[0].message, /holds a comma/)
    const bearer = await shop.bearer('customer')
    const twice = await new Promise<{ status: number; body: { errors: { message: string }[] } }>(
      (resolve, reject) => {
        // (Given as raw pairs, the headers are all there is: no Host is added.)
        const headers = [
          ['host', new URL(shop.url).host],
          ['content-type', 'application/json'],
          ['authorization', bearer],
          ['idempotency-key', 'k1'],
          ['idempotency-key', 'k2'],
        ].flat()
        httpRequest(`${shop.url}/v1/orders`, { method: 'POST', headers }, (response) => {
          let text = ''
          response.on('data', (chunk) => {
            text += chunk
          })
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }))
        })
          .on('error', reject)
          .end(JSON.stringify(order()))
      },
    )
    assert.deepEqual([twice.status, twice.body.errors[0].message], [400, 'is sent more than once'])
    assert.equal(await appended(shop), before)
    const other = await shop.post('/v1/orders', order([{ sku: 'CMD-2', quantity: 1 }]), {
      'idempotency-key': key,
    })
    assert.equal(other.status, 422)
    assert.equal(await appended(shop), before)

    const inFlightKey = randomUUID()
    const keys = new IdempotencyKeys(await shop.store('commands'), { ttlMs: 60_000, lockMs: 60_000 })
    await keys.claim(
      testCustomerId,
      inFlightKey,
      fingerprintOf('POST', '/v1/orders', order()),
      () => 'ord_elsewhere',
    )
    const busy = await shop.post('/v1/orders', order(), { 'idempotency-key': inFlightKey })
    assert.equal(busy.status, 409)
    assert.equal(await appended(shop), before)

    // Keys are scoped to the caller: another customer's same key is another request.
    const elsewhere = await shop.post('/v1/orders', order(), {
      'idempotency-key': key,
      authorization: await shop.bearer('customer', 'cus_other'),
    })
    assert.equal(elsewhere.status, 202)
    assert.notEqual(elsewhere.body.id, first.body.id)

    // A caller without a token (a registration) has the keys of its address: another
    // address's same key is another request, and gets nothing of the first one's answer.
    const register = (localAddress: string, email: string) =>
      new Promise<{ status: number; body: { id: string } }>((resolve, reject) => {
        const body = JSON.stringify({
          email,
          givenName: 'An',
          familyName: 'On',
          password: 'anonymous-password-1',
        })
        const headers = { 'content-type': 'application/json', 'idempotency-key': key }
        httpRequest(`${shop.url}/v1/customers`, { method: 'POST', headers, localAddress }, (response) => {
          let text = ''
          response.on('data', (chunk) => {
            text += chunk
          })
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }))
        })
          .on('error', reject)
          .end(body)
      })
    const here = await register('127.0.0.1', `here-${key.slice(0, 8)}@example.com`)
    const there = await register('127.0.0.2', `there-${key.slice(0, 8)}@example.com`)
    assert.deepEqual([here.status, there.status], [202, 202])
    assert.notEqual(there.body.id, here.body.id)
    assert.equal((await register('127.0.0.1', `other-${key.slice(0, 8)}@example.com`)).status, 422)
  })

  it("a flag's targeting tells customers apart: the signed-in customer is the targeting key", async () => {
    const limited = 'cus_one_line'
    const flag = (targeting?: unknown) => ({
      state: 'ENABLED',
      variants: { default: 100, one: 1 },
      defaultVariant: 'default',
      ...(targeting ? { targeting } : {}),
    })
    const twoLines = order([
      { sku: 'CMD-1', quantity: 1 },
      { sku: 'CMD-2', quantity: 1 },
    ])
    const place = async (customerId: string, key = randomUUID()) =>
      shop.post(
        '/v1/orders',
        { ...twoLines, customerId },
        { 'idempotency-key': key, authorization: await shop.bearer('customer', customerId) },
      )
    // Taken before the limit came: its retry still gets the stored answer after.
    const earlier = randomUUID()
    assert.equal((await place(limited, earlier)).status, 202)
    const targeting = { if: [{ '==': [{ var: 'customerId' }, limited] }, 'one', 'default'] }
    const set = await shop.put('/v1/flags/max-lines-per-order', flag(targeting))
    assert.equal(set.status, 202)
    // Where the flag is read back, as PUT took it (the list holds it too).
    assert.equal(set.headers.get('location'), '/v1/flags/max-lines-per-order')
    await waitFor('the flag read back', async () => {
      const read = await shop.get('/v1/flags/max-lines-per-order')
      return read.status === 200 && JSON.stringify(read.body.targeting) === JSON.stringify(targeting)
    })
    const all = await shop.get('/v1/flags')
    assert.deepEqual(all.body.flags['max-lines-per-order'].targeting, targeting)
    assert.equal(all.body.flags['capture-on'].defaultVariant, 'confirmation')
    assert.equal((await shop.get('/v1/flags/no-such-flag')).status, 404)
    assert.equal((await shop.get('/v1/flags/constructor')).status, 404, "not the object's own property")
    try {
      await waitFor('the targeted limit applied', async () => (await place(limited)).status === 400)
      const refused = await place(limited)
      assert.deepEqual(
        refused.body.errors.map((e: { field: string }) => e.field),
        ['/lines'],
      )
      assert.equal((await place('cus_any_lines')).status, 202)
      const retried = await place(limited, earlier)
      assert.equal(retried.status, 202)
      assert.equal(retried.headers.get('idempotent-replayed'), 'true')
    } finally {
      assert.equal((await shop.put('/v1/flags/max-lines-per-order', flag())).status, 202)
    }
  })

  it('serves an OpenAPI 3.1 document with every command route', async () => {
    const answer = await shop.get('/v1/openapi.json')
    assert.equal(answer.status, 200)
    assert.equal(answer.body.openapi, '3.1.0')
    for (const path of [
      '/v1/orders',
      '/v1/orders/{id}/cancel',
      '/v1/customers',
      '/v1/products/{sku}',
      '/v1/inventory/{sku}/adjustments',
      '/v1/flags/{key}',
    ]) {
      assert.ok(answer.body.paths[path], `${path} documented`)
    }
    assert.equal(answer.body.paths['/healthz'], undefined)

    const keyParameter = (path: string, method: string) =>
      answer.body.paths[path][method].parameters.find((p: { name: string }) => p.name === 'idempotency-key')
    for (const path of ['/v1/orders', '/v1/customers', '/v1/inventory/{sku}/adjustments', '/v1/webhooks'])
      assert.equal(keyParameter(path, 'post').required, true, `${path} requires an Idempotency-Key`)
    assert.equal(keyParameter('/v1/orders/{id}/cancel', 'post').required, false)
    assert.equal(keyParameter('/v1/flags/{key}', 'put').required, false)

    assert.equal(answer.body.components.schemas.Problem.properties.status.type, 'integer')
    const problemStatuses = (path: string, method: string) =>
      Object.entries(answer.body.paths[path][method].responses)
        .filter(
          ([, response]) =>
            (response as { content?: Record<string, unknown> }).content?.['application/problem+json'],
        )
        .map(([status]) => Number(status))
    const commandProblems = [400, 401, 403, 409, 415, 422, 429, 503]
    assert.deepEqual(problemStatuses('/v1/orders', 'post'), commandProblems)
    // A route with a path parameter may also answer 414 (a parameter longer than the router takes).
    const byNumber = (a: number, b: number) => a - b
    assert.deepEqual(
      problemStatuses('/v1/orders/{id}/cancel', 'post'),
      [...commandProblems, 404, 414].sort(byNumber),
    )
    assert.deepEqual(problemStatuses('/v1/orders/{id}', 'get'), [400, 401, 403, 404, 414, 429, 503])
    assert.deepEqual(problemStatuses('/v1/products', 'get'), [400, 401, 404, 429, 503])
    // What a 202 carries, and when to come back after a 409 or a 503.
    const placed = answer.body.paths['/v1/orders'].post.responses
    for (const header of ['location', 'mercato-consistency-token', 'idempotent-replayed'])
      assert.ok(placed['202'].headers[header], `202 ${header}`)
    for (const status of ['409', '429', '503']) assert.ok(placed[status].headers['retry-after'], status)
    // A cancel's body (reason, all optional) may be left out; an order's may not.
    assert.equal(answer.body.paths['/v1/orders/{id}/cancel'].post.requestBody.required, false)
    assert.equal(answer.body.paths['/v1/orders'].post.requestBody.required, true)
    assert.doesNotMatch(JSON.stringify(answer.body), /x-mercato/)
    // Each operation says whether it needs a token, as the gateway's policy decides.
    assert.deepEqual(answer.body.paths['/v1/orders'].post.security, [{ bearerAuth: [] }])
    assert.deepEqual(answer.body.paths['/v1/products'].get.security, [{ bearerAuth: [] }, {}])
    assert.deepEqual(answer.body.paths['/v1/customers'].post.security, [{ bearerAuth: [] }, {}])
    // The read answers: their body and the freshness headers every answer carries.
    for (const [path, field] of [
      ['/v1/products', 'facets'],
      ['/v1/products/{sku}', 'listedAt'],
      ['/v1/orders/{id}', 'timeline'],
      ['/v1/customers/{id}/orders', 'nextCursor'],
      ['/v1/customers/{id}/360', 'lifetimeSpend'],
    ]) {
      const { responses } = answer.body.paths[path].get
      assert.ok(responses['200'].content['application/json'].schema.properties[field], `${path} ${field}`)
      for (const status of ['200', '304'])
        for (const header of ['Mercato-Position', 'Mercato-Staleness-Ms', 'ETag'])
          assert.ok(responses[status].headers[header], `${path} ${status} ${header}`)
      // A 404 from a view says how fresh it is too (marked stale: come back later).
      if (path !== '/v1/products') {
        assert.deepEqual(Object.keys(responses['404'].headers), [
          'Mercato-Position',
          'Mercato-Staleness-Ms',
          'Mercato-Stale',
        ])
        assert.ok(responses['404'].content['application/problem+json'], `${path} 404 problem`)
      }
    }
    assert.deepEqual(answer.body.paths['/v1/orders'].post.responses['400'].content, {
      'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } },
    })
  })

  it('never answers fuzzed bodies and headers with a 5xx, and never publishes them (property)', async () => {
    const before = await appended(shop)
    let accepted = 0
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(
          '/v1/orders',
          '/v1/customers',
          '/v1/inventory/SKU-1/adjustments',
          '/v1/orders/x/cancel',
        ),
        fc.oneof(
          fc.jsonValue(),
          fc.record({ customerId: fc.jsonValue(), lines: fc.jsonValue(), shippingAddress: fc.jsonValue() }),
          fc.string(),
        ),
        fc.option(fc.string({ maxLength: 300 }), { nil: undefined }),
        async (path, body, key) => {
          const headers: Record<string, string> = {}
          if (key !== undefined && /^[\x20-\x7e]*$/.test(key)) headers['idempotency-key'] = key
          const answer = await shop.post(path, typeof body === 'string' ? body : body, headers)
          assert.ok(answer.status < 500, `${answer.status} for ${JSON.stringify(body).slice(0, 100)}`)
          if (answer.status === 202) {
            assert.equal(path, '/v1/orders/x/cancel', 'only a cancel may take a fuzzed body')
            accepted++
          }
        },
      ),
      { numRuns: 200 },
    )
    assert.equal(await appended(shop), before + accepted, 'only accepted requests appended an event')
  })
})

for (const { kind, skip } of await storeKinds('idempotency keys')) {
  describe(`idempotency keys on ${kind}`, { skip }, () => {
    async function withKeys(
      options: { ttlMs: number; lockMs: number },
      test: (keys: IdempotencyKeys, store: Store) => Promise<void>,
    ): Promise<void> {
      const dir = tempDir()
      const service = uniqueName('commands').toLowerCase()
      const store =
        kind === 'sqlite'
          ? new SqliteStore(dir.path, service, storeLimitDefaults)
          : new PostgresStore(serverUrls.postgres, service, storeLimitDefaults)
      try {
        await store.migrate(idempotencyMigrations)
        await test(new IdempotencyKeys(store, options), store)
      } finally {
        await store.close()
        if (kind === 'postgres') await dropPostgresSchemas(service)
        dir.remove()
      }
    }

    it('expire after their time, so the key can be used afresh', () =>
      withKeys({ ttlMs: 20, lockMs: 10 }, async (keys) => {
        assert.deepEqual(await keys.claim('a', 'k', 'f1', () => 'r1'), { kind: 'owned', resourceId: 'r1' })
        await keys.complete('a', 'k', 202, { id: 'r1' }, {})
        assert.equal((await keys.claim('a', 'k', 'f1', () => 'r2')).kind, 'replay')
        assert.equal(
          (await keys.claim('b', 'k', 'f2', () => 'r3')).kind,
          'owned',
          'keys are scoped to the caller',
        )
        await new Promise((resolve) => setTimeout(resolve, 30))
        assert.deepEqual(await keys.claim('a', 'k', 'f2', () => 'r4'), { kind: 'owned', resourceId: 'r4' })
        assert.ok((await keys.prune()) >= 1)
      }))

    it('are held while in flight, refused to another request, and taken over with the same id once the lock lapses', () =>
      withKeys({ ttlMs: 60_000, lockMs: 50 }, async (keys) => {
        let claimedIn = ''
        const first = await keys.claim(
          'a',
          'k',
          'f1',
          () => 'r1',
          async (_tx, id) => {
            claimedIn = id
          },
        )
        assert.deepEqual(first, { kind: 'owned', resourceId: 'r1' })
        assert.equal(claimedIn, 'r1', 'onOwned ran in the claim')
        assert.deepEqual(await keys.claim('a', 'k', 'f1', () => 'r2'), { kind: 'in-flight' })
        assert.deepEqual(await keys.claim('a', 'k', 'f2', () => 'r3'), { kind: 'other-request' })
        assert.deepEqual(await keys.peek('a', 'k', 'f1'), { kind: 'in-flight' })
        await new Promise((resolve) => setTimeout(resolve, 80))
        assert.equal(await keys.peek('a', 'k', 'f1'), undefined, 'a lapsed lock may be taken over')
        assert.deepEqual(
          await keys.claim('a', 'k', 'f1', () => 'r4'),
          { kind: 'owned', resourceId: 'r1' },
          'a retry after the lock lapsed names the same resource',
        )
        await keys.complete('a', 'k', 202, { id: 'r1' }, { location: '/r1' })
        assert.deepEqual(await keys.claim('a', 'k', 'f1', () => 'r5'), {
          kind: 'replay',
          status: 202,
          body: { id: 'r1' },
          headers: { location: '/r1' },
        })
        await keys.release('a', 'k')
        assert.equal((await keys.claim('a', 'k', 'f1', () => 'r6')).kind, 'replay', 'a completed key is kept')
      }))

    it('keep a key that expires while a request holds it for that request', () =>
      withKeys({ ttlMs: 300, lockMs: 200 }, async (keys) => {
        await keys.claim('a', 'k', 'f', () => 'first')
        await new Promise((resolve) => setTimeout(resolve, 220))
        assert.deepEqual(
          await keys.claim('a', 'k', 'f', () => 'retry'),
          { kind: 'owned', resourceId: 'first' },
          'a retry takes the lapsed lock over',
        )
        // The key expires (at 300 ms) while the retry still holds it (until about 420 ms).
        await new Promise((resolve) => setTimeout(resolve, 100))
        assert.deepEqual(await keys.claim('a', 'k', 'f', () => 'late'), { kind: 'in-flight' })
        assert.deepEqual(await keys.peek('a', 'k', 'f'), { kind: 'in-flight' })
        assert.equal(await keys.prune(), 0, 'the pruning keeps a key a request holds')
        assert.deepEqual(await keys.claim('a', 'k', 'f', () => 'later'), { kind: 'in-flight' })
      }))

    it('give one owner to claims that race for an expired key or a lapsed lock', () =>
      // A lock long enough that the three claims start within it even on a loaded machine
      // (with 100 ms, a claim delayed past the winner's lock once rightly owned the key too).
      withKeys({ ttlMs: 2_000, lockMs: 1_000 }, async (keys, store) => {
        // Three connections open before the race: one opened during it can start its claim
        // after the winner's lock has lapsed, and then rightly own the key too.
        await Promise.all([1, 2, 3].map(() => store.query('SELECT 1')))
        for (let round = 0; round < 2; round++) {
          const key = `k${round}`
          await keys.claim('a', key, 'f', () => 'first')
          // The lock lapses first (a retry of the same request takes the key over), then the key expires.
          for (const waitMs of [1_250, 1_250]) {
            await new Promise((resolve) => setTimeout(resolve, waitMs))
            const claims = await Promise.all(
              ['r1', 'r2', 'r3'].map((id) => keys.claim('a', key, 'f', () => `${id}-${waitMs}`)),
            )
            const owners = claims.filter((claim) => claim.kind === 'owned')
            assert.equal(owners.length, 1, `one owner among ${JSON.stringify(claims)}`)
          }
        }
      }))
  })
}

describe('admission of new orders', () => {
  it('refuses new orders with 503, Retry-After and problem details while the saga is behind, and publishes nothing', async () => {
    // No saga service runs here (user only signs in), so every order placed stays in the saga's backlog.
    const shop = await startShop('embedded', {
      MERCATO_TARGET: 'gateway,command-api,user',
      MERCATO_ORDER_BACKLOG_MAX: '3',
    })
    try {
      const firstKey = randomUUID()
      const first = await shop.post('/v1/orders', order(), { 'idempotency-key': firstKey })
      assert.equal(first.status, 202)
      let refused: Awaited<ReturnType<Shop['post']>> | undefined
      await waitFor('an order refused for the backlog', async () => {
        const before = await appended(shop)
        const answer = await shop.post('/v1/orders', order(), { 'idempotency-key': randomUUID() })
        if (answer.status === 202) return false
        assert.equal(await appended(shop), before, 'a refused order appends nothing')
        refused = answer
        return true
      })
      assert.equal(refused!.status, 503)
      assert.equal(refused!.headers.get('content-type'), 'application/problem+json; charset=utf-8')
      assert.ok(Number(refused!.headers.get('retry-after')) >= 1)
      assert.equal(refused!.body.type, 'https://mercato.dev/problems/overloaded')
      assert.match(refused!.body.detail, /too busy/)
      const replay = await shop.post('/v1/orders', order(), { 'idempotency-key': firstKey })
      assert.equal(replay.status, 202, 'an order already taken is still answered')
      assert.equal(replay.headers.get('idempotent-replayed'), 'true')
      assert.equal(replay.body.id, first.body.id)
      const product = { name: 'P', description: 'd', category: 'c', priceMinor: 100, currency: 'USD' }
      assert.equal(
        (await shop.put('/v1/products/ADMIT-1', product)).status,
        202,
        'other commands are still taken',
      )
    } finally {
      await shop.stop()
    }
  })

  /** A backlog watcher over a stream whose lag is scripted: the order group always has `waiting` events waiting. */
  async function watchBacklog(waiting: number, script: { handledPerLook: number }): Promise<SagaBacklog> {
    let handled = 0
    const lag = async (group: string): Promise<PartitionLag[]> => {
      if (group !== 'order') return []
      handled += script.handledPerLook
      return [
        {
          topic: 'orders',
          partition: 0,
          committed: handled,
          end: handled + waiting,
          lag: waiting,
          hasCommitted: true,
        },
      ]
    }
    const stream = {
      engine: { lag },
      group: (g: string) => g,
      topic: (t: string) => t,
    } as unknown as EventStream
    const backlog = new SagaBacklog(
      stream,
      { eventsMax: 1_000, waitMaxMs: 500, intervalMs: 10 },
      silentLogger(),
      new Metrics(),
    )
    backlog.start()
    return backlog
  }

  it('refuses new orders while a saga group works its backlog off too slowly, under the event bound', async () => {
    // 500 waiting, one handled a look (10 ms apart, or more): 5 s or more of wait, past 500 ms.
    const backlog = await watchBacklog(500, { handledPerLook: 1 })
    try {
      await waitFor('the stalled group to refuse orders', () => {
        try {
          backlog.admit()
          return false
        } catch (error) {
          assert.match(String(error), /behind \(500 events wait\)/)
          // Seconds behind, 0.5 s allowed: told to come back in seconds (not the 1 s of a
          // momentary refusal), never past 30 s.
          const retryAfter = (error as OverloadedError).retryAfterSeconds
          assert.ok(retryAfter >= 2 && retryAfter <= 30, `Retry-After ${retryAfter}`)
          return true
        }
      })
    } finally {
      backlog.stop()
    }
  })

  it('takes a burst of orders while only a few events wait, however slowly they were handled', async () => {
    // 50 waiting, one handled a look: a rate that would refuse, but a backlog too small to measure it.
    const backlog = await watchBacklog(50, { handledPerLook: 1 })
    try {
      for (let look = 0; look < 20; look++) {
        await new Promise((resolve) => setTimeout(resolve, 10))
        backlog.admit()
      }
    } finally {
      backlog.stop()
    }
  })

  it('takes new orders while the saga groups work their backlog off fast enough, or while one is down for a moment', async () => {
    // 200 waiting, 100,000 handled a look: far under the 500 ms bound at any interval.
    const script = { handledPerLook: 100_000 }
    const backlog = await watchBacklog(200, script)
    try {
      for (let look = 0; look < 40; look++) {
        // Then the group stops (its process restarts): 200 events are not an outage to refuse for.
        if (look === 20) script.handledPerLook = 0
        await new Promise((resolve) => setTimeout(resolve, 10))
        backlog.admit()
      }
    } finally {
      backlog.stop()
    }
  })
})
