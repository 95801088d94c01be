// The gateway's security suite, after the OWASP API Security Top 10 (2023): every case is a
// real HTTP request to a whole Mercato (all components in one process, embedded engines),
// signed in the way a client signs in, or with a token forged the way an attacker would.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { SignJWT } from 'jose'
import { createEvent, encodeEvent } from '../../src/contracts/envelope.ts'
import { type Shop, startShop } from '../support/shop.ts'
import { waitFor } from '../support/wait.ts'

const adminEmail = 'admin@security.test'
const adminPassword = 'admin-password-for-tests'
const supportEmail = 'support@security.test'
const supportPassword = 'support-password-for-tests'
const principalPerMinute = 40
const loginPerMinute = 25
const registerPerMinute = 5

const address = { name: 'S', line1: '1 Safe St', city: 'Secureville', postalCode: '1', country: 'US' }
const orderBody = (sku: string) => ({
  lines: [{ sku, quantity: 1 }],
  shippingAddress: address,
  paymentMethodToken: 'tok_visa',
})

interface Answer {
  status: number
  body: any
  headers: Headers
  text: string
}

describe('security at the gateway (OWASP API Top 10)', () => {
  let shop: Shop
  const sku = `SEC-${randomUUID().slice(0, 8)}`
  const alice = `cus_alice_${randomUUID().slice(0, 6)}`
  const bob = `cus_bob_${randomUUID().slice(0, 6)}`

  async function call(
    method: string,
    path: string,
    options: { bearer?: string; body?: unknown; headers?: Record<string, string> } = {},
  ): Promise<Answer> {
    const headers: Record<string, string> = { ...options.headers }
    if (options.bearer) headers.authorization = `Bearer ${options.bearer}`
    if (options.body !== undefined) headers['content-type'] ??= 'application/json'
    const response = await fetch(`${shop.url}${path}`, {
      method,
      headers,
      body:
        options.body === undefined
          ? undefined
          : typeof options.body === 'string'
            ? options.body
            : JSON.stringify(options.body),
    })
    const text = await response.text()
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {}
    return { status: response.status, body, headers: response.headers, text }
  }

  const tokenOf = async (role: 'admin' | 'support' | 'customer', customerId?: string) =>
    (await shop.bearer(role, customerId)).slice('Bearer '.length)

  async function signIn(username: string, password: string): Promise<Answer> {
    return call('POST', '/v1/auth/token', { body: { grant_type: 'password', username, password } })
  }

  /** A token signed with the deployment's own current key, with claims of the test's choosing. */
  async function forged(claims: { iss?: string; aud?: string; exp?: number; nbf?: number; sub?: string }) {
    const { kid, privateKey } = shop.app.context.identity!.ring.signing()
    const now = Math.floor(Date.now() / 1000)
    return new SignJWT({ role: 'customer', customer_id: alice })
      .setProtectedHeader({ alg: 'EdDSA', kid, typ: 'at+jwt' })
      .setIssuer(claims.iss ?? 'mercato')
      .setAudience(claims.aud ?? 'mercato-api')
      .setSubject(claims.sub ?? alice)
      .setIssuedAt(now - 10)
      .setNotBefore(claims.nbf ?? now - 10)
      .setExpirationTime(claims.exp ?? now + 300)
      .sign(privateKey)
  }

  async function placeOrder(customerId: string): Promise<string> {
    const answer = await call('POST', '/v1/orders', {
      bearer: await tokenOf('customer', customerId),
      body: orderBody(sku),
      headers: { 'idempotency-key': randomUUID() },
    })
    assert.equal(answer.status, 202, answer.text)
    const token = answer.body.consistencyToken as string
    const admin = await tokenOf('admin')
    await waitFor(`order ${answer.body.id} visible`, async () => {
      const seen = await call('GET', `/v1/orders/${answer.body.id}`, {
        bearer: admin,
        headers: { 'mercato-consistency-token': token },
      })
      return seen.status === 200
    })
    return answer.body.id
  }

  before(async () => {
    shop = await startShop('embedded', {
      MERCATO_ADMIN_EMAIL: adminEmail,
      MERCATO_ADMIN_PASSWORD: adminPassword,
      MERCATO_SUPPORT_EMAIL: supportEmail,
      MERCATO_SUPPORT_PASSWORD: supportPassword,
      MERCATO_RATE_LIMIT_PRINCIPAL_PER_MINUTE: String(principalPerMinute),
      MERCATO_RATE_LIMIT_LOGIN_PER_MINUTE: String(loginPerMinute),
      MERCATO_RATE_LIMIT_REGISTER_PER_MINUTE: String(registerPerMinute),
      MERCATO_HTTP_BODY_BYTES_MAX: '65536',
      MERCATO_CORS_ORIGINS: 'https://shop.example',
    })
    await shop.stockUp([sku], 1_000)
  })
  after(async () => shop?.stop())

  describe('API1 broken object level authorization', () => {
    let bobsOrder: string
    before(async () => {
      bobsOrder = await placeOrder(bob)
    })

    it("a customer cannot read another customer's order: 404, as if it did not exist", async () => {
      const answer = await call('GET', `/v1/orders/${bobsOrder}`, {
        bearer: await tokenOf('customer', alice),
      })
      assert.equal(answer.status, 404)
      const missing = await call('GET', `/v1/orders/ord_${randomUUID()}`, {
        bearer: await tokenOf('customer', alice),
      })
      assert.equal(missing.status, 404)
      assert.equal(answer.body.detail.replace(bobsOrder, 'X'), missing.body.detail.replace(/ord_\S+/, 'X'))
      // Nor do the headers tell them apart: the same freshness headers, and no cache verdict.
      const names = (headers: Headers) =>
        [...headers.keys()].filter((name) => name.startsWith('mercato-') || name === 'etag').sort()
      assert.deepEqual(names(answer.headers), names(missing.headers))
      assert.deepEqual(names(answer.headers), ['mercato-position', 'mercato-stale', 'mercato-staleness-ms'])
      const own = await call('GET', `/v1/orders/${bobsOrder}`, { bearer: await tokenOf('customer', bob) })
      assert.equal(own.status, 200)
      assert.equal(own.body.customerId, bob)
    })

    it("a customer cannot cancel another customer's order, and it stays as it was", async () => {
      const answer = await call('POST', `/v1/orders/${bobsOrder}/cancel`, {
        bearer: await tokenOf('customer', alice),
        body: {},
      })
      assert.equal(answer.status, 404)
      const order = await call('GET', `/v1/orders/${bobsOrder}`, { bearer: await tokenOf('customer', bob) })
      assert.notEqual(order.body.status, 'CANCELLED')
      assert.ok(!order.body.timeline.some((step: { type: string }) => step.type === 'order.cancel-requested'))
    })

    it("a customer cannot list another customer's orders or read their 360 view", async () => {
      const aliceToken = await tokenOf('customer', alice)
      for (const path of [`/v1/customers/${bob}/orders`, `/v1/customers/${bob}/360`]) {
        const answer = await call('GET', path, { bearer: aliceToken })
        assert.equal(answer.status, 403, path)
        assert.ok(!answer.text.includes(bobsOrder))
        assert.match(answer.body.detail, /for your own customer only/, 'the refusal is about the resource')
      }
      const route = await call('PUT', '/v1/flags/sec-denied', {
        bearer: aliceToken,
        body: { state: 'ENABLED', variants: { on: true }, defaultVariant: 'on' },
      })
      assert.equal(route.body.detail, 'your role may not call this route')
      assert.equal((await call('GET', `/v1/customers/${alice}/orders`, { bearer: aliceToken })).status, 200)
    })

    it('answers HEAD as it answers GET, without the body, under the same rules', async () => {
      const bobToken = await tokenOf('customer', bob)
      const aliceToken = await tokenOf('customer', alice)
      const cases: [string, string | undefined, number][] = [
        ['/v1/products', undefined, 200],
        [`/v1/products/${sku}`, undefined, 200],
        [`/v1/orders/${bobsOrder}`, bobToken, 200],
        [`/v1/orders/${bobsOrder}`, aliceToken, 404],
        [`/v1/orders/${bobsOrder}`, undefined, 401],
        [`/v1/customers/${bob}/orders`, bobToken, 200],
        [`/v1/customers/${bob}/360`, aliceToken, 403],
      ]
      for (const [path, bearer, status] of cases) {
        const head = await call('HEAD', path, { bearer })
        assert.equal(head.status, status, `HEAD ${path}`)
        assert.equal(head.text, '', `HEAD ${path} has no body`)
        const get = await call('GET', path, { bearer })
        assert.equal(get.status, status, `GET ${path}`)
        if (status === 200) assert.equal(head.headers.get('etag'), get.headers.get('etag'), path)
      }
    })

    it('support reads any order and customer, but cancels nothing', async () => {
      const support = await tokenOf('support')
      assert.equal((await call('GET', `/v1/orders/${bobsOrder}`, { bearer: support })).status, 200)
      assert.equal((await call('GET', `/v1/customers/${bob}/orders`, { bearer: support })).status, 200)
      const cancel = await call('POST', `/v1/orders/${bobsOrder}/cancel`, { bearer: support, body: {} })
      assert.equal(cancel.status, 403)
    })
  })

  describe('API2 broken authentication', () => {
    it('signs in with a password and answers an EdDSA access token the JWKS verifies', async () => {
      const answer = await signIn(adminEmail, adminPassword)
      assert.equal(answer.status, 200, answer.text)
      assert.equal(answer.body.token_type, 'Bearer')
      assert.equal(answer.headers.get('cache-control'), 'no-store')
      const [header] = answer.body.access_token.split('.')
      const { alg, kid, typ } = JSON.parse(Buffer.from(header, 'base64url').toString())
      assert.equal(alg, 'EdDSA')
      assert.equal(typ, 'at+jwt')
      const jwks = await call('GET', '/.well-known/jwks.json')
      assert.ok(jwks.body.keys.some((key: { kid: string }) => key.kid === kid))
      // Cached past the new key's first signature, a copy would not know it: the default
      // minute's delay less the 30 s every process takes to publish it.
      assert.equal(jwks.headers.get('cache-control'), 'public, max-age=30')
      assert.ok(
        jwks.body.keys.every((key: { d?: string }) => key.d === undefined),
        'no private part published',
      )
      const flag = await call('PUT', `/v1/flags/sec-${randomUUID().slice(0, 6)}`, {
        bearer: answer.body.access_token,
        body: { state: 'ENABLED', variants: { on: true, off: false }, defaultVariant: 'on' },
      })
      assert.equal(flag.status, 202, flag.text)
    })

    it('refuses a wrong password and an unknown user alike', async () => {
      const form = await fetch(`${shop.url}/v1/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'password', username: adminEmail, password: adminPassword }),
      })
      assert.equal(form.status, 200, 'the form encoding of RFC 6749 works too')
      const wrong = await signIn(adminEmail, 'not-the-password')
      const unknown = await signIn('nobody@security.test', 'not-the-password')
      // RFC 6749 §5.2: a refused grant is a 400; 401 is for a client's own authentication.
      assert.equal(wrong.status, 400)
      assert.equal(unknown.status, 400)
      assert.equal(wrong.body.detail, unknown.body.detail)
      assert.equal(wrong.body.error, 'invalid_grant')
    })

    it('answers token requests as RFC 6749 says: error codes, unknown parameters ignored, none twice', async () => {
      const token = (body: unknown) => {
        return call('POST', '/v1/auth/token', { body })
      }
      const otherGrant = await token({ grant_type: 'client_credentials', client_id: 'x' })
      assert.equal(otherGrant.status, 400)
      assert.equal(otherGrant.body.error, 'unsupported_grant_type')
      const missing = await token({ grant_type: 'password', username: adminEmail })
      assert.equal(missing.status, 400)
      assert.equal(missing.body.error, 'invalid_request')
      assert.equal(missing.body.errors[0].field, '/password')
      // The other grant's parameters are ignored, blank or not.
      const refreshWithUsername = await token({
        grant_type: 'refresh_token',
        refresh_token: 'rt_x',
        username: '',
      })
      assert.deepEqual([refreshWithUsername.status, refreshWithUsername.body.error], [400, 'invalid_grant'])
      const withClientId = await token({
        grant_type: 'password',
        username: adminEmail,
        password: adminPassword,
        client_id: 'a-shop-app',
      })
      assert.equal(withClientId.status, 200, withClientId.text)
      const twice = await fetch(`${shop.url}/v1/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: `grant_type=password&username=${encodeURIComponent(adminEmail)}&password=a&password=${encodeURIComponent(adminPassword)}`,
      })
      assert.equal(twice.status, 400)
      assert.equal(((await twice.json()) as { error: string }).error, 'invalid_request')
      const notUtf8 = await fetch(`${shop.url}/v1/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: Buffer.concat([
          Buffer.from('grant_type=password&username=a&password='),
          Buffer.from([0xff, 0xfe]),
        ]),
      })
      assert.equal(notUtf8.status, 400)
      assert.equal(((await notUtf8.json()) as { error: string }).error, 'invalid_request')
      const escapedNotUtf8 = await fetch(`${shop.url}/v1/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'grant_type=password&username=a&password=%FF%FE',
      })
      assert.equal(escapedNotUtf8.status, 400)
      assert.equal(((await escapedNotUtf8.json()) as { error: string }).error, 'invalid_request')
      // Refused before the route's own checks: not JSON, too large, another content type.
      for (const path of ['/v1/auth/token', '/v1/auth/refresh']) {
        for (const [contentType, body] of [
          ['application/json', '{"grant_type":'],
          ['application/json', JSON.stringify({ grant_type: 'password', password: 'x'.repeat(100_000) })],
          ['text/plain', 'grant_type=password'],
          // A form in another charset would be read wrong as UTF-8 (é is one byte in Latin-1).
          ['application/x-www-form-urlencoded; charset=latin1', 'grant_type=password&password=caf%E9'],
        ]) {
          // (Refused before the sign-in's own limit counts it: no password is hashed.)
          const refused = await fetch(`${shop.url}${path}`, {
            method: 'POST',
            headers: { 'content-type': contentType },
            body,
          })
          assert.ok([400, 413, 415].includes(refused.status), `${path} ${contentType}: ${refused.status}`)
          const problem = (await refused.json()) as { error: string; status: number }
          assert.equal(problem.error, 'invalid_request', `${path} ${contentType} ${body.slice(0, 20)}`)
          assert.equal(problem.status, refused.status)
          if (contentType === 'text/plain')
            assert.equal(
              (problem as unknown as { detail: string }).detail,
              'send the body as application/json or application/x-www-form-urlencoded',
            )
        }
      }
    })

    it('refuses expired, not yet valid, wrong issuer and wrong audience tokens', async () => {
      const now = Math.floor(Date.now() / 1000)
      const cases = {
        expired: await forged({ exp: now - 60 }),
        'not yet valid': await forged({ nbf: now + 3600 }),
        'wrong issuer': await forged({ iss: 'https://evil.example' }),
        'wrong audience': await forged({ aud: 'another-api' }),
      }
      const path = `/v1/customers/${alice}/orders`
      assert.equal((await call('GET', path, { bearer: await forged({}) })).status, 200, 'the control passes')
      for (const [name, token] of Object.entries(cases)) {
        const answer = await call('GET', path, { bearer: token })
        assert.equal(answer.status, 401, name)
        assert.match(answer.headers.get('www-authenticate') ?? '', /^Bearer .*error="invalid_token"/)
        assert.equal(answer.headers.get('content-type'), 'application/problem+json; charset=utf-8')
        assert.ok(answer.headers.get('ratelimit-remaining'), `${name}: the address's quota is shown`)
      }
    })

    it('refuses alg none, HS256 signed with the public key, and a tampered payload', async () => {
      const good = await forged({})
      const [header, payload, signature] = good.split('.')
      const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString())
      const none = `${encode({ alg: 'none', typ: 'at+jwt' })}.${payload}.`
      const jwks = await call('GET', '/.well-known/jwks.json')
      const publicKey = jwks.body.keys[0]
      const hs256 = await new SignJWT(claims)
        .setProtectedHeader({ alg: 'HS256', kid: publicKey.kid, typ: 'at+jwt' })
        .sign(new TextEncoder().encode(JSON.stringify(publicKey)))
      const hs256Raw = await new SignJWT(claims)
        .setProtectedHeader({ alg: 'HS256', kid: publicKey.kid, typ: 'at+jwt' })
        .sign(Buffer.from(publicKey.x, 'base64url'))
      const tampered = `${header}.${encode({ ...claims, role: 'admin' })}.${signature}`
      const otherCustomer = `${header}.${encode({ ...claims, customer_id: bob, sub: bob })}.${signature}`
      for (const [name, token] of Object.entries({ none, hs256, hs256Raw, tampered, otherCustomer })) {
        const answer = await call('GET', `/v1/customers/${bob}/orders`, { bearer: token })
        assert.equal(answer.status, 401, name)
      }
      const garbage = await call('GET', `/v1/customers/${alice}/orders`, {
        headers: { authorization: 'Basic YTpi' },
      })
      assert.equal(garbage.status, 401)
    })

    it('rotates refresh tokens, and a reused one revokes its whole family', async () => {
      const signedIn = await signIn(supportEmail, supportPassword)
      assert.equal(signedIn.status, 200, signedIn.text)
      const first = signedIn.body.refresh_token
      // With the access token it renews sent along, expired or not: the grant is what counts.
      const second = await call('POST', '/v1/auth/refresh', {
        body: { grant_type: 'refresh_token', refresh_token: first },
        bearer: 'an.expired.token',
      })
      assert.equal(second.status, 200, second.text)
      assert.notEqual(second.body.refresh_token, first)
      assert.equal(
        (await call('GET', `/v1/customers/${alice}/360`, { bearer: second.body.access_token })).status !==
          401,
        true,
      )
      const reused = await call('POST', '/v1/auth/refresh', { body: { refresh_token: first } })
      assert.equal(reused.status, 400)
      assert.equal(reused.body.error, 'invalid_grant')
      const revoked = await call('POST', '/v1/auth/refresh', {
        body: { refresh_token: second.body.refresh_token },
      })
      assert.equal(revoked.status, 400, 'the newest token of the family is revoked too')
      const unknown = await call('POST', '/v1/auth/refresh', { body: { refresh_token: 'rt_forged' } })
      assert.equal(unknown.status, 400)
      // RFC 6749 §6: the token endpoint renews too, under the same rules.
      const again = await signIn(supportEmail, supportPassword)
      const renewed = await call('POST', '/v1/auth/token', {
        body: { grant_type: 'refresh_token', refresh_token: again.body.refresh_token },
      })
      assert.equal(renewed.status, 200, renewed.text)
      assert.notEqual(renewed.body.refresh_token, again.body.refresh_token)
      const without = await call('POST', '/v1/auth/token', { body: { grant_type: 'refresh_token' } })
      assert.deepEqual([without.status, without.body.error], [400, 'invalid_request'])
      assert.deepEqual(
        without.body.errors.map((e: { field: string }) => e.field),
        ['/refresh_token'],
      )
    })

    it('keeps verifying tokens of a rotated-out key while it may still have live tokens', async () => {
      const before = await tokenOf('customer', alice)
      const ring = shop.app.context.identity!.ring
      const kid = await ring.rotate()
      const jwks = await call('GET', '/.well-known/jwks.json')
      assert.ok(
        jwks.body.keys.some((key: { kid: string }) => key.kid === kid),
        'the new key is published first',
      )
      assert.equal((await call('GET', `/v1/customers/${alice}/orders`, { bearer: before })).status, 200)
    })
  })

  describe('API3 broken object property level authorization', () => {
    it('refuses a client-set price, status or total: 400, nothing accepted', async () => {
      const token = await tokenOf('customer', alice)
      for (const extra of [
        { status: 'CONFIRMED' },
        { totalMinor: 1 },
        { lines: [{ sku, quantity: 1, priceMinor: 1 }] },
      ]) {
        const answer = await call('POST', '/v1/orders', {
          bearer: token,
          body: { ...orderBody(sku), ...extra },
          headers: { 'idempotency-key': randomUUID() },
        })
        assert.equal(answer.status, 400, JSON.stringify(extra))
        assert.ok(Array.isArray(answer.body.errors))
      }
    })

    it("refuses an order for another customer's id, never placing it for them", async () => {
      const answer = await call('POST', '/v1/orders', {
        bearer: await tokenOf('customer', alice),
        body: { ...orderBody(sku), customerId: bob },
        headers: { 'idempotency-key': randomUUID() },
      })
      assert.equal(answer.status, 403)
      assert.equal(answer.body.errors[0].field, '/customerId')
      const placed = await call('POST', '/v1/orders', {
        bearer: await tokenOf('customer', alice),
        body: { ...orderBody(sku), customerId: alice },
        headers: { 'idempotency-key': randomUUID() },
      })
      assert.equal(placed.status, 202, 'naming oneself is allowed')
    })
  })

  describe('API4 unrestricted resource consumption', () => {
    it('limits one user: 429 with Retry-After past the limit', async () => {
      const customer = `cus_busy_${randomUUID().slice(0, 6)}`
      const token = await tokenOf('customer', customer)
      let refused: Answer | undefined
      for (let i = 0; i < principalPerMinute + 5 && !refused; i++) {
        const answer = await call('GET', `/v1/customers/${customer}/orders`, { bearer: token })
        if (answer.status === 429) refused = answer
        else assert.equal(answer.status, 200)
      }
      assert.ok(refused, 'refused past the limit')
      assert.ok(Number(refused.headers.get('retry-after')) >= 1)
      assert.equal(refused.body.status, 429)
      assert.equal(refused.headers.get('ratelimit-remaining'), '0')
      assert.ok(Number(refused.headers.get('ratelimit-reset')) >= 1)
      assert.ok(Number(refused.headers.get('ratelimit-reset')) <= 60)
      assert.equal(refused.headers.get('ratelimit-policy'), `${principalPerMinute};w=60`)
      const other = await call('GET', `/v1/customers/${alice}/orders`, {
        bearer: await tokenOf('customer', alice),
      })
      assert.equal(other.status, 200, 'another user is not limited by it')
    })

    it('refuses a body over the limit with 400, naming the body', async () => {
      const answer = await call('POST', '/v1/orders', {
        bearer: await tokenOf('customer', alice),
        body: { ...orderBody(sku), padding: 'x'.repeat(100_000) },
        headers: { 'idempotency-key': randomUUID() },
      })
      assert.equal(answer.status, 400)
      assert.equal(answer.body.errors[0].in, 'body')
    })

    it('caps page sizes', async () => {
      for (const path of ['/v1/products?limit=101', `/v1/customers/${alice}/orders?limit=1000`]) {
        const answer = await call('GET', path, { bearer: await tokenOf('customer', alice) })
        assert.equal(answer.status, 400, path)
      }
    })
  })

  describe('API5 broken function level authorization', () => {
    it('refuses the back office to customers and support, and every non-public route to anonymous callers', async () => {
      const product = { name: 'X', description: '', category: 'test', priceMinor: 1, currency: 'USD' }
      const backOffice: [string, string, unknown][] = [
        ['PUT', `/v1/products/${sku}`, product],
        ['POST', `/v1/inventory/${sku}/adjustments`, { delta: 5, reason: 'restock' }],
        ['PUT', '/v1/flags/sec-flag', { state: 'ENABLED', variants: { on: true }, defaultVariant: 'on' }],
        ['POST', '/v1/webhooks', { url: 'https://example.com/hook', events: ['order.confirmed'] }],
        ['DELETE', '/v1/webhooks/whe_someone', undefined],
        ['GET', '/v1/webhooks', undefined],
        ['GET', '/v1/webhooks/whe_someone', undefined],
      ]
      // Support reads the flags; a customer does not.
      const flagRead = await call('GET', '/v1/flags/capture-on', { bearer: await tokenOf('support', alice) })
      assert.equal(flagRead.status, 200, flagRead.text)
      assert.equal(flagRead.body.state, 'ENABLED')
      for (const path of ['/v1/flags', '/v1/flags/capture-on']) {
        const refused = await call('GET', path, { bearer: await tokenOf('customer', alice) })
        assert.equal(refused.status, 403, path)
      }
      for (const role of ['customer', 'support'] as const) {
        const bearer = await tokenOf(role, alice)
        for (const [method, path, body] of backOffice) {
          const answer = await call(method, path, {
            bearer,
            body,
            headers: { 'idempotency-key': randomUUID() },
          })
          assert.equal(answer.status, 403, `${role} ${method} ${path}`)
        }
      }
      for (const [method, path, body] of [
        ...backOffice,
        ['POST', '/v1/orders', orderBody(sku)] as [string, string, unknown],
        ['GET', `/v1/customers/${alice}/orders`, undefined] as [string, string, unknown],
      ]) {
        const answer = await call(method, path, { body, headers: { 'idempotency-key': randomUUID() } })
        assert.equal(answer.status, 401, `anonymous ${method} ${path}`)
        assert.match(answer.headers.get('www-authenticate') ?? '', /^Bearer/)
      }
      const [stock] = await (await shop.store('inventory')).query<{ on_hand: number }>(
        'SELECT on_hand FROM stock WHERE sku = $1',
        [sku],
      )
      assert.equal(Number(stock.on_hand) <= 1_000, true, 'no refused restock was applied')
    })

    it('refuses internal routes without a service token, or with a wrong one', async () => {
      const path = '/internal/v1/credentials/verify'
      const body = { username: adminEmail, password: adminPassword }
      const tokens = shop.app.context.identity!.tokens
      const cases: Record<string, Record<string, string>> = {
        'no token': {},
        'a user token': { 'mercato-service-token': await tokenOf('admin') },
        'another audience': { 'mercato-service-token': await tokens.issueService('gateway', 'query-api') },
        'a caller the policy does not allow': {
          'mercato-service-token': await tokens.issueService('order', 'user'),
        },
        garbage: { 'mercato-service-token': 'x.y.z' },
      }
      for (const [name, headers] of Object.entries(cases)) {
        const answer = await call('POST', path, { body, headers })
        assert.ok([401, 403].includes(answer.status), `${name}: ${answer.status}`)
        assert.ok(!answer.text.includes('stf_admin'), name)
      }
      const allowed = await call('POST', path, {
        body,
        headers: { 'mercato-service-token': await tokens.issueService('gateway', 'user') },
      })
      assert.equal(allowed.status, 200, 'the control: the gateway may ask')
    })
  })

  describe('API7 server-side request forgery', () => {
    it('refuses webhook endpoints on other schemes, loopback, link-local and private hosts', async () => {
      const admin = await tokenOf('admin')
      for (const url of [
        'file:///etc/passwd',
        'gopher://example.com/',
        'http://127.0.0.1:8080/hook',
        'http://localhost/hook',
        'http://169.254.169.254/latest/meta-data/',
        'http://10.0.0.1/hook',
        'http://[::1]/hook',
        'http://[::ffff:127.0.0.1]/hook',
        'http://[::127.0.0.1]/hook', // IPv4-compatible
        'http://[::ffff:0:7f00:1]/hook', // IPv4-translated
        'http://[2002:7f00:1::1]/hook', // 6to4
        'http://localhost./hook',
        'http://localhost../hook',
        'http://locaLHost%2e/hook',
        'http://ip6-localhost/hook',
        'http://intranet-box/hook', // one label: no public name
        'https://user:pass@example.com/hook',
      ]) {
        const answer = await call('POST', '/v1/webhooks', {
          bearer: admin,
          body: { url, events: ['order.confirmed'] },
          headers: { 'idempotency-key': randomUUID() },
        })
        assert.equal(answer.status, 400, url)
      }
      const allowed = await call('POST', '/v1/webhooks', {
        bearer: admin,
        body: { url: 'https://example.com/hook', events: ['order.confirmed'] },
        headers: { 'idempotency-key': randomUUID() },
      })
      assert.equal(allowed.status, 202, allowed.text)
      // An admin removes it: the notification service disables it, and no delivery goes out.
      const notification = await shop.store('notification')
      const enabled = async () =>
        (
          await notification.query<{ enabled: number }>(
            'SELECT enabled FROM notification_webhook_endpoints WHERE endpoint_id = $1',
            [allowed.body.id],
          )
        )[0]?.enabled
      await waitFor('the endpoint registered', async () => Number(await enabled()) === 1)
      const removed = await call('DELETE', `/v1/webhooks/${allowed.body.id}`, { bearer: admin })
      assert.equal(removed.status, 202, removed.text)
      assert.equal(removed.body.id, allowed.body.id)
      await waitFor('the endpoint disabled', async () => Number(await enabled()) === 0)
    })
  })

  describe('API8 security misconfiguration', () => {
    it('answers errors as problem details without stack traces or internal names, with security headers', async () => {
      const bearer = await tokenOf('customer', alice)
      const answers = [
        await call('POST', '/v1/orders', {
          bearer,
          body: '{"lines": [',
          headers: { 'idempotency-key': randomUUID() },
        }),
        await call('GET', '/v1/nothing-here'),
        await call('GET', `/v1/orders/${'x'.repeat(5000)}`, { bearer }),
        await call('POST', '/v1/auth/token', { body: { grant_type: 'client_credentials' } }),
      ]
      for (const answer of answers) {
        assert.ok(answer.status >= 400 && answer.status < 500, `${answer.status} ${answer.text}`)
        assert.match(answer.headers.get('content-type') ?? '', /^application\/problem\+json/, answer.text)
        for (const leak of [
          'stack',
          'node_modules',
          '/src/',
          '.ts:',
          'SqliteError',
          'postgres',
          'at async',
        ]) {
          assert.ok(!answer.text.includes(leak), `${leak} in ${answer.text}`)
        }
        assert.equal(answer.headers.get('x-powered-by'), null)
        assert.equal(answer.headers.get('x-content-type-options'), 'nosniff')
      }
      const ok = await call('GET', '/v1/products')
      assert.equal(ok.status, 200)
      for (const [name, value] of Object.entries({
        'x-content-type-options': 'nosniff',
        'x-frame-options': 'SAMEORIGIN',
        'strict-transport-security': 'max-age=31536000; includeSubDomains',
        'referrer-policy': 'no-referrer',
        'cross-origin-resource-policy': 'same-origin',
      }))
        assert.equal(ok.headers.get(name), value, name)
    })
  })

  describe('request ids and CORS', () => {
    it('gives every answer a request id, keeping a well-formed one the caller sent', async () => {
      const fresh = await call('GET', '/v1/products')
      assert.match(fresh.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/)
      const given = await call('GET', '/v1/products', { headers: { 'x-request-id': 'client-req-42' } })
      assert.equal(given.headers.get('x-request-id'), 'client-req-42')
      const hostile = await call('GET', '/v1/products', { headers: { 'x-request-id': 'a b<script>' } })
      assert.match(hostile.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/)
    })

    it('answers preflights for the configured origins only', async () => {
      const preflight = (origin: string) =>
        fetch(`${shop.url}/v1/orders`, {
          method: 'OPTIONS',
          headers: {
            origin,
            'access-control-request-method': 'POST',
            'access-control-request-headers': 'authorization,content-type,idempotency-key',
          },
        })
      const allowed = await preflight('https://shop.example')
      assert.equal(allowed.headers.get('access-control-allow-origin'), 'https://shop.example')
      assert.match(allowed.headers.get('access-control-allow-headers') ?? '', /authorization/)
      const other = await preflight('https://evil.example')
      assert.equal(other.headers.get('access-control-allow-origin'), null)
    })

    it('with CORS on, still answers 404 for a path that does not exist and 405 naming the methods of one that does', async () => {
      const missing = await call('GET', '/v1/nonexistent')
      assert.equal(missing.status, 404, missing.text)
      const wrongMethod = await call('DELETE', '/v1/products')
      assert.equal(wrongMethod.status, 405, wrongMethod.text)
      assert.equal(wrongMethod.headers.get('allow'), 'GET, HEAD, OPTIONS')
    })
  })

  describe('API9 improper inventory management', () => {
    it('documents every route of the API in the OpenAPI document, and nothing that is not served', async () => {
      const doc = await call('GET', '/v1/openapi.json')
      assert.equal(doc.status, 200)
      const documented = new Set<string>()
      for (const [path, operations] of Object.entries(doc.body.paths as Record<string, object>))
        for (const method of Object.keys(operations)) documented.add(`${method.toUpperCase()} ${path}`)
      const served = new Set(
        shop.routes
          .filter(
            (r) =>
              /^\/(v1|internal|\.well-known)\//.test(r.url) && r.method !== 'HEAD' && r.method !== 'OPTIONS',
          )
          .map((r) => `${r.method} ${r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')}`),
      )
      assert.deepEqual(
        [...served].filter((r) => !documented.has(r)),
        [],
        'served but not documented',
      )
      assert.deepEqual(
        [...documented].filter((r) => !served.has(r)),
        [],
        'documented but not served',
      )
      assert.ok(doc.body.components.securitySchemes.bearerAuth)
      // Client generators name their methods by operationId, and every route can fail.
      const operations = Object.entries(
        doc.body.paths as Record<string, Record<string, { operationId?: string; responses: object }>>,
      ).flatMap(([path, byMethod]) =>
        Object.entries(byMethod).map(([method, op]) => ({ route: `${method} ${path}`, op })),
      )
      const ids = operations.map(({ op }) => op.operationId)
      assert.deepEqual(
        operations.filter(({ op }) => !op.operationId).map(({ route }) => route),
        [],
        'operations without an operationId',
      )
      assert.equal(new Set(ids).size, ids.length, 'operationIds are unique')
      assert.deepEqual(
        operations
          .filter(
            ({ route, op }) =>
              route.startsWith('post') && !Object.keys(op.responses).some((s) => s.startsWith('4')),
          )
          .map(({ route }) => route),
        [],
        'operations taking a body without a documented 4xx',
      )
      const docs = await fetch(`${shop.url}/docs`, { redirect: 'follow' })
      assert.equal(docs.status, 200)
      // Served over plain HTTP, the page must not ask a browser for its scripts over https.
      const policy = docs.headers.get('content-security-policy') ?? ''
      assert.match(policy, /script-src 'self'/)
      assert.doesNotMatch(policy, /upgrade-insecure-requests/)
    })
  })

  describe('zero trust on the stream', () => {
    it('dead-letters an event whose producer may not emit its type, and no service acts on it', async () => {
      const stream = shop.app.context.stream!
      const orderId = `ord_${randomUUID()}`
      const forgedEvent = createEvent({
        type: 'payment.captured',
        source: 'mercato/order',
        subject: orderId,
        data: { orderId, paymentId: `pay_${randomUUID()}`, amountMinor: 100, currency: 'USD' },
      })
      const record = encodeEvent(forgedEvent, { eventBytesMax: 65_536 })
      await stream.engine.publish([{ ...record, topic: stream.topic(record.topic) }])
      await waitFor('the forged event in the dead-letter topic', async () => {
        const letters = await stream.deadLetters(record.topic, 1_000)
        return letters.some(
          (letter) =>
            letter.record.headers.ce_id === forgedEvent.id &&
            /order may not emit payment.captured/.test(letter.error),
        )
      })
    })
  })

  describe('API4 sign-in attempts', () => {
    it('limits password grants from one address: 429 with Retry-After', async () => {
      let refused: Answer | undefined
      // (From no count: some refusals counted above were refused before the limit saw them.)
      for (let i = 0; i < loginPerMinute + 3 && !refused; i++) {
        const answer = await signIn('nobody@security.test', 'wrong-password')
        if (answer.status === 429) refused = answer
        else assert.equal(answer.status, 400)
      }
      assert.ok(refused, 'refused past the limit')
      assert.ok(Number(refused.headers.get('retry-after')) >= 1)
    })

    it('counts a request refused by one limit against none of the others', async () => {
      const anonymousRegistration = () =>
        call('POST', '/v1/customers', {
          body: { email: `quota-${randomUUID().slice(0, 8)}@security.test`, givenName: 'Q', familyName: 'T' },
          headers: { 'idempotency-key': randomUUID() },
        })
      // Refused for want of a password, it still counts against the registration quota, shown.
      const before = Number((await anonymousRegistration()).headers.get('ratelimit-remaining'))
      const busy = await tokenOf('customer', `cus_busy_${randomUUID().slice(0, 6)}`)
      for (let i = 0; i < principalPerMinute; i++) await call('GET', '/v1/products', { bearer: busy })
      for (let i = 0; i < 3; i++) {
        const refused = await call('POST', '/v1/customers', {
          bearer: busy,
          body: {
            email: `busy-${i}@security.test`,
            givenName: 'B',
            familyName: 'U',
            password: 'busy-password-1',
          },
          headers: { 'idempotency-key': randomUUID() },
        })
        assert.equal(refused.status, 429, refused.text)
        assert.match(refused.body.detail, /for one user/)
      }
      const after = Number((await anonymousRegistration()).headers.get('ratelimit-remaining'))
      assert.equal(after, before - 1, 'only the second anonymous registration counted')
    })

    it('limits registrations without a token from one address, each a password to hash: 429 with Retry-After', async () => {
      const register = (i: number) =>
        call('POST', '/v1/customers', {
          body: {
            email: `flood-${i}-${randomUUID().slice(0, 8)}@security.test`,
            givenName: 'Flood',
            familyName: 'Test',
            password: `flood-password-${i}`,
          },
          headers: { 'idempotency-key': randomUUID() },
        })
      // Earlier tests may have spent some of the quota: the first answer says what is left.
      const first = await register(0)
      assert.equal(first.status, 202, first.text)
      const left = Number(first.headers.get('ratelimit-remaining'))
      assert.ok(left < registerPerMinute)
      const statuses: number[] = []
      for (let i = 1; i <= left; i++) statuses.push((await register(i)).status)
      assert.deepEqual(statuses, Array(left).fill(202))
      const refused = await register(left + 1)
      assert.equal(refused.status, 429, refused.text)
      assert.match(refused.headers.get('content-type') ?? '', /^application\/problem\+json/)
      assert.ok(Number(refused.headers.get('retry-after')) >= 1)
      assert.equal(refused.headers.get('ratelimit-limit'), String(registerPerMinute))
      // A signed-in customer is held to it too; only staff are not.
      const body = {
        email: `flood-c-${randomUUID().slice(0, 8)}@security.test`,
        givenName: 'F',
        familyName: 'T',
        password: 'flood-password-c',
      }
      const asCustomer = await call('POST', '/v1/customers', {
        bearer: await tokenOf('customer', alice),
        body,
        headers: { 'idempotency-key': randomUUID() },
      })
      assert.equal(asCustomer.status, 429, asCustomer.text)
      const asAdmin = await call('POST', '/v1/customers', {
        bearer: await tokenOf('admin'),
        body,
        headers: { 'idempotency-key': randomUUID() },
      })
      assert.equal(asAdmin.status, 202, asAdmin.text)
    })
  })
})
