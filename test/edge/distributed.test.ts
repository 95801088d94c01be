// The gateway in a process of its own, in front of the command and query APIs in another,
// as a distributed deployment runs them: requests are forwarded over pooled HTTP with a
// service token, the API document is merged, the components refuse anyone who skips the
// gateway, and the circuit opens when the upstream dies and closes once it is back.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { before, describe, it } from 'node:test'
import { storeLimitDefaults } from '../../src/engines/store/port.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import { testIdentity } from '../support/identity.ts'
import { processesOnOneDataDir, type Started } from '../support/processes.ts'
import { waitFor } from '../support/wait.ts'

const adminEmail = 'admin@distributed.test'
const adminPassword = 'admin-password-distributed'
const { dir, start } = processesOnOneDataDir({
  MERCATO_ADMIN_EMAIL: adminEmail,
  MERCATO_ADMIN_PASSWORD: adminPassword,
})

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject()))
    })
  })
}

async function call(
  url: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: unknown,
) {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await response.text()
  let parsed: any
  try {
    parsed = JSON.parse(text)
  } catch {}
  return { status: response.status, body: parsed, headers: response.headers, text }
}

describe('the gateway in its own process, in front of the APIs in another', () => {
  const upstreamTargets = 'command-api,query-api,user,projector'
  let upstreamPort: number
  let upstream: Started
  let gateway: Started
  let admin: string

  before(async () => {
    upstreamPort = await freePort()
    upstream = await start(upstreamTargets, { MERCATO_PORT: String(upstreamPort) })
    gateway = await start('gateway', {
      MERCATO_COMMAND_API_URLS: upstream.url,
      MERCATO_QUERY_API_URLS: upstream.url,
      MERCATO_USER_URL: upstream.url,
      MERCATO_BREAKER_FAILURES: '2',
      MERCATO_BREAKER_HALF_OPEN_MS: '1000',
    })
  })

  it('signs in through the gateway, which asks the user service over HTTP with its service token', async () => {
    const answer = await call(
      gateway.url,
      'POST',
      '/v1/auth/token',
      {},
      {
        grant_type: 'password',
        username: adminEmail,
        password: adminPassword,
      },
    )
    assert.equal(answer.status, 200, answer.text)
    admin = answer.body.access_token
  })

  it('forwards commands and queries, with the policy checked at the edge and again upstream', async () => {
    const sku = `DIST-${randomUUID().slice(0, 6)}`
    const product = {
      name: 'Distributed',
      description: 'far away',
      category: 'test',
      priceMinor: 990,
      currency: 'USD',
    }
    const put = await call(
      gateway.url,
      'PUT',
      `/v1/products/${sku}`,
      { authorization: `Bearer ${admin}` },
      product,
    )
    assert.equal(put.status, 202, put.text)
    const read = await call(gateway.url, 'GET', `/v1/products/${sku}`, {
      'mercato-consistency-token': put.body.consistencyToken,
    })
    assert.equal(read.status, 200, read.text)
    assert.equal(read.body.priceMinor, 990)
    assert.equal(read.headers.get('mercato-stale'), 'false')
    const customer = await call(gateway.url, 'PUT', `/v1/products/${sku}`, {}, product)
    assert.equal(customer.status, 401, 'refused at the edge')
  })

  it('serves one merged API document', async () => {
    const doc = await call(gateway.url, 'GET', '/v1/openapi.json')
    assert.equal(doc.status, 200)
    for (const path of ['/v1/auth/token', '/v1/orders', '/v1/orders/{id}', '/v1/products/{sku}'])
      assert.ok(doc.body.paths[path], path)
    // The interactive docs load the same document.
    const docs = await call(gateway.url, 'GET', '/docs/json')
    assert.deepEqual(Object.keys(docs.body.paths).sort(), Object.keys(doc.body.paths).sort())
    // Only what the gateway serves: the upstream's internal routes are not the API.
    assert.deepEqual(
      Object.keys(doc.body.paths).filter((path) => path.startsWith('/internal/')),
      [],
    )
    assert.ok(doc.body.components.schemas.Problem, 'the problem schema the upstreams refer to')
    assert.equal(
      doc.body.paths['/v1/orders/{id}'].get.responses['404'].content['application/problem+json'].schema.$ref,
      '#/components/schemas/Problem',
    )
  })

  it('the components refuse calls that skip the gateway, or carry a wrong service token', async () => {
    const store = new SqliteStore(`${dir}/stores`, 'identity', storeLimitDefaults)
    const { tokens, ring } = await testIdentity(store)
    try {
      const user = { authorization: `Bearer ${admin}` }
      const cases: [string, Record<string, string>][] = [
        ['no service token', user],
        [
          'a token for another component',
          { ...user, 'mercato-service-token': await tokens.issueService('gateway', 'user') },
        ],
        ['a user token as service token', { ...user, 'mercato-service-token': admin }],
      ]
      for (const [name, headers] of cases) {
        const answer = await call(upstream.url, 'GET', '/v1/products', headers)
        assert.equal(answer.status, 401, name)
      }
      const control = await call(upstream.url, 'GET', '/v1/products', {
        ...user,
        'mercato-service-token': await tokens.issueService('gateway', 'query-api'),
      })
      assert.equal(control.status, 200, control.text)
    } finally {
      ring.close()
      await store.close()
    }
  })

  it('opens the circuit when the upstream dies, answers 503 fast while open, and closes once it is back', async () => {
    upstream.child.kill('SIGKILL')
    await once(upstream.child, 'exit')
    const statuses: number[] = []
    for (let i = 0; i < 4; i++) statuses.push((await call(gateway.url, 'GET', '/v1/products')).status)
    assert.deepEqual(statuses, [503, 503, 503, 503])
    const open = await call(gateway.url, 'GET', '/v1/products')
    assert.equal(open.status, 503)
    assert.ok(Number(open.headers.get('retry-after')) >= 1)
    // An upstream down is not load shed: its own type, which names no component or limit.
    assert.equal(open.body.type, 'https://mercato.dev/problems/unavailable')
    assert.ok(!open.text.includes(String(upstreamPort)), 'no internal address in the answer')
    assert.ok(!/query-api|circuit|\d+ ms/.test(open.text), open.text)
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text()
    assert.match(metrics, /mercato_upstream_circuit_state\{upstream="query-api"\} 2/)

    upstream = await start(upstreamTargets, { MERCATO_PORT: String(upstreamPort) })
    await waitFor(
      'the circuit closes',
      async () => (await call(gateway.url, 'GET', '/v1/products')).status === 200,
    )
    const healed = await (await fetch(`${gateway.url}/metrics`)).text()
    assert.match(healed, /mercato_upstream_circuit_state\{upstream="query-api"\} 0/)
  })
})
