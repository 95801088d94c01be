import assert from 'node:assert/strict'
import { type AddressInfo, connect } from 'node:net'
import { after, before, beforeEach, describe, it } from 'node:test'
import pg from 'pg'
import { type Store, storeLimitDefaults } from '../../src/engines/store/port.ts'
import { PostgresStore } from '../../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import type { ChargeView } from '../../src/provider/charges.ts'
import { startPaymentProvider } from '../../src/provider/payment-provider.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { createHttpServer } from '../../src/runtime/http.ts'
import { serverUrls, skipUnlessReachable } from '../support/servers.ts'
import { tempDir, uniqueName, waitFor } from '../support/wait.ts'

interface Engine {
  name: string
  open(): Promise<Store>
  drop(store: Store): Promise<void>
}

const dir = tempDir()
process.on('exit', () => dir.remove())

const sqlite: Engine = {
  name: 'SQLite',
  open: async () => new SqliteStore(dir.path, uniqueName('provider'), storeLimitDefaults),
  drop: (store) => store.close(),
}

const postgres: Engine = {
  name: 'PostgreSQL',
  open: async () => new PostgresStore(serverUrls.postgres, uniqueName('provider'), storeLimitDefaults),
  async drop(store) {
    await store.close()
    const client = new pg.Client(serverUrls.postgres)
    await client.connect()
    await client.query(`DROP SCHEMA IF EXISTS ${store.service} CASCADE`)
    await client.end()
  },
}

function defineProviderSuite(engine: Engine, skip: string | undefined) {
  let store: Store
  const metrics = new Metrics()
  const http = createHttpServer(loadConfig({}), silentLogger(), metrics, () => [])
  let provider: Awaited<ReturnType<typeof startPaymentProvider>>
  let base = ''
  let counter = 0

  before(async () => {
    if (skip) return
    store = await engine.open()
    provider = await startPaymentProvider({ http, store, log: silentLogger(), metrics })
    base = `${await http.listen({ port: 0, host: '127.0.0.1' })}/provider/v1`
  })

  after(async () => {
    if (skip) return
    await provider.stop()
    await http.close()
    await engine.drop(store)
  })

  beforeEach(async () => {
    if (skip) return
    await setDials({ latencyMs: 0, errorRate: 0, timeoutRate: 0, declineTokens: [] })
  })

  /** The fields these tests read from an answer. */
  interface Body {
    chargeId: string
    status: string
    reason: string
    type: string
    chargeStatus: string
    capturedMinor: number
    refundedMinor: number
    [field: string]: unknown
  }

  const unique = (prefix: string) => `${prefix}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

  async function post(path: string, key: string | undefined, body?: unknown, signal?: AbortSignal) {
    const response = await fetch(`${base}${path}`, {
      method: 'POST',
      headers: {
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        ...(key ? { 'idempotency-key': key } : {}),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    })
    return { status: response.status, headers: response.headers, body: (await response.json()) as Body }
  }

  async function setDials(dials: Record<string, unknown>) {
    const response = await fetch(`${base}/dials`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(dials),
    })
    return { status: response.status, body: (await response.json()) as Record<string, unknown> }
  }

  async function chargesOf(reference: string): Promise<ChargeView[]> {
    const response = await fetch(`${base}/charges?reference=${encodeURIComponent(reference)}`)
    assert.equal(response.status, 200)
    return ((await response.json()) as { charges: ChargeView[] }).charges
  }

  function authorization(reference: string, overrides: Record<string, unknown> = {}) {
    return { amountMinor: 1250, currency: 'EUR', paymentMethodToken: 'tok_visa', reference, ...overrides }
  }

  async function authorized(reference = unique('order')): Promise<string> {
    const answer = await post('/authorizations', unique('key'), authorization(reference))
    assert.equal(answer.status, 201)
    return answer.body.chargeId
  }

  describe(`the payment provider stand-in on ${engine.name}`, { skip }, () => {
    it('authorizes once per Idempotency-Key and replays the stored answer', async () => {
      const reference = unique('order')
      const key = unique('key')
      const first = await post('/authorizations', key, authorization(reference))
      assert.equal(first.status, 201)
      assert.equal(first.body.status, 'authorized')
      assert.match(first.body.chargeId, /^ch_/)
      const again = await post('/authorizations', key, authorization(reference))
      assert.equal(again.status, 201)
      assert.deepEqual(again.body, first.body)
      assert.equal(again.headers.get('idempotent-replayed'), 'true')
      const charges = await chargesOf(reference)
      assert.equal(charges.length, 1)
      assert.equal(charges[0].status, 'authorized')
      assert.deepEqual(
        charges[0].operations.map((op) => op.kind),
        ['authorize'],
      )
    })

    it('answers 422 for a key reused with another body, and 400 without a key', async () => {
      const reference = unique('order')
      const key = unique('key')
      assert.equal((await post('/authorizations', key, authorization(reference))).status, 201)
      const reused = await post('/authorizations', key, authorization(reference, { amountMinor: 999 }))
      assert.equal(reused.status, 422)
      assert.equal(reused.headers.get('content-type')?.split(';')[0], 'application/problem+json')
      assert.equal(reused.body.type, 'https://mercato.dev/problems/idempotency-key-reused')
      const keyless = await post('/authorizations', undefined, authorization(unique('order')))
      assert.equal(keyless.status, 400)
      assert.equal((await chargesOf(reference)).length, 1)
      const nowhere = unique('order')
      const unknownCurrency = await post(
        '/authorizations',
        unique('key'),
        authorization(nowhere, { currency: 'ZZZ' }),
      )
      assert.equal(unknownCurrency.status, 400, 'ZZZ is no ISO 4217 currency')
      assert.equal((await chargesOf(nowhere)).length, 0)
    })

    it('declines tok_decline, dialled tokens and tokens it does not know, as a 402 business answer', async () => {
      const declined = await post(
        '/authorizations',
        unique('key'),
        authorization(unique('order'), { paymentMethodToken: 'tok_decline' }),
      )
      assert.equal(declined.status, 402)
      assert.equal(declined.headers.get('content-type')?.split(';')[0], 'application/json')
      assert.equal(declined.body.status, 'declined')
      assert.equal(declined.body.reason, 'card_declined')
      const unknown = await post(
        '/authorizations',
        unique('key'),
        authorization(unique('order'), { paymentMethodToken: 'card_1' }),
      )
      assert.equal(unknown.status, 402)
      await setDials({ declineTokens: ['tok_stolen'] })
      const reference = unique('order')
      const dialled = await post(
        '/authorizations',
        unique('key'),
        authorization(reference, { paymentMethodToken: 'tok_stolen' }),
      )
      assert.equal(dialled.status, 402)
      const [charge] = await chargesOf(reference)
      assert.equal(charge.status, 'declined')
      assert.equal((await post('/authorizations', unique('key'), authorization(unique('order')))).status, 201)
    })

    it('captures an authorized charge exactly once', async () => {
      const reference = unique('order')
      const chargeId = (await post('/authorizations', unique('key'), authorization(reference))).body.chargeId
      // An amount is not for a capture to choose: more than was authorized is refused, unread.
      const more = await post(`/charges/${chargeId}/capture`, unique('capture'), { amountMinor: 2500 })
      assert.equal(more.status, 400)
      assert.equal((await chargesOf(reference))[0].status, 'authorized')
      const key = unique('capture')
      const first = await post(`/charges/${chargeId}/capture`, key)
      assert.equal(first.status, 200)
      assert.equal(first.body.status, 'captured')
      assert.equal(first.body.capturedMinor, 1250)
      const replay = await post(`/charges/${chargeId}/capture`, key)
      assert.deepEqual([replay.status, replay.body], [200, first.body])
      const second = await post(`/charges/${chargeId}/capture`, unique('capture'))
      assert.equal(second.status, 409)
      assert.equal(second.body.chargeStatus, 'captured')
      assert.equal((await post(`/charges/${chargeId}/void`, unique('void'))).status, 409)
      const [charge] = await chargesOf(reference)
      assert.equal(charge.capturedMinor, 1250)
      assert.equal(charge.operations.filter((op) => op.kind === 'capture').length, 1)
    })

    it('lets only one of several concurrent requests with one key do the work', async () => {
      const reference = unique('order')
      const key = unique('key')
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => post('/authorizations', key, authorization(reference))),
      )
      for (const answer of answers) assert.ok([201, 409].includes(answer.status), `status ${answer.status}`)
      assert.equal((await chargesOf(reference)).length, 1)
    })

    it('answers 409 to a duplicate while the first request is in flight', async () => {
      const ownStore = await engine.open()
      const ownHttp = createHttpServer(loadConfig({}), silentLogger(), new Metrics(), () => [])
      const ownProvider = await startPaymentProvider({
        http: ownHttp,
        store: ownStore,
        log: silentLogger(),
        metrics: new Metrics(),
      })
      const ownBase = `${await ownHttp.listen({ port: 0, host: '127.0.0.1' })}/provider/v1`
      const send = (key: string, body: unknown) =>
        fetch(`${ownBase}/authorizations`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': key },
          body: JSON.stringify(body),
        })
      try {
        await fetch(`${ownBase}/dials`, {
          method: 'PUT',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ latencyMs: 60_000 }),
        })
        const key = unique('key')
        const first = send(key, authorization('order-in-flight'))
        await waitFor('the key to be reserved', async () => {
          const rows = await ownStore.query(
            'SELECT 1 FROM provider_idempotency_keys WHERE idempotency_key = $1',
            [key],
          )
          return rows.length === 1
        })
        const duplicate = await send(key, authorization('order-in-flight'))
        assert.equal(duplicate.status, 409)
        assert.equal(
          ((await duplicate.json()) as { type: string }).type,
          'https://mercato.dev/problems/idempotency-key-in-flight',
        )
        await ownProvider.stop() // cuts the dialled latency short: the first request then completes
        assert.equal((await first).status, 201)
        const charges = await ownStore.query('SELECT id FROM provider_charges')
        assert.equal(charges.length, 1)
      } finally {
        await ownProvider.stop()
        await ownHttp.close()
        await engine.drop(ownStore)
      }
    })

    it('voids only an authorized charge, and refunds only a captured one', async () => {
      const voided = await authorized()
      assert.equal((await post(`/charges/${voided}/refund`, unique('refund'), {})).status, 409)
      const voidAnswer = await post(`/charges/${voided}/void`, unique('void'))
      assert.equal(voidAnswer.status, 200)
      assert.equal(voidAnswer.body.status, 'voided')
      assert.equal((await post(`/charges/${voided}/capture`, unique('capture'))).status, 409)

      const captured = await authorized()
      assert.equal((await post(`/charges/${captured}/capture`, unique('capture'))).status, 200)
      const partial = await post(`/charges/${captured}/refund`, unique('refund'), { amountMinor: 250 })
      assert.deepEqual(
        [partial.status, partial.body.status, partial.body.refundedMinor],
        [200, 'captured', 250],
      )
      assert.equal(
        (await post(`/charges/${captured}/refund`, unique('refund'), { amountMinor: 5_000 })).status,
        409,
      )
      const rest = await post(`/charges/${captured}/refund`, unique('refund'))
      assert.deepEqual([rest.status, rest.body.status, rest.body.refundedMinor], [200, 'refunded', 1250])
      assert.equal((await post(`/charges/${captured}/refund`, unique('refund'))).status, 409)

      const missing = await post('/charges/ch_missing/capture', unique('capture'))
      assert.equal(missing.status, 404)
      assert.equal((await fetch(`${base}/charges/ch_missing`)).status, 404)
      const view = (await (await fetch(`${base}/charges/${captured}`)).json()) as ChargeView
      assert.deepEqual(
        view.operations.map((op) => [op.kind, op.amountMinor]),
        [
          ['authorize', 1250],
          ['capture', 1250],
          ['refund', 250],
          ['refund', 1000],
        ],
      )
    })

    it('validates its dials', async () => {
      for (const bad of [
        { errorRate: 2 },
        { timeoutRate: -0.1 },
        { latencyMs: -1 },
        { declineTokens: 'tok_x' },
      ]) {
        const answer = await setDials(bad)
        assert.equal(answer.status, 400, JSON.stringify(bad))
      }
      const changed = await setDials({ errorRate: 0.25 })
      assert.equal(changed.status, 200)
      assert.deepEqual(changed.body, { latencyMs: 0, errorRate: 0.25, timeoutRate: 0, declineTokens: [] })
      const read = (await (await fetch(`${base}/dials`)).json()) as Record<string, unknown>
      assert.equal(read.errorRate, 0.25)
      // A PUT replaces every dial: the error rate not given is back to none.
      const replaced = await setDials({ declineTokens: ['tok_x'] })
      assert.deepEqual(replaced.body, {
        latencyMs: 0,
        errorRate: 0,
        timeoutRate: 0,
        declineTokens: ['tok_x'],
      })
      await setDials({})
    })

    it('answers 500 without doing anything at an error rate of 1', async () => {
      await setDials({ errorRate: 1 })
      const reference = unique('order')
      const key = unique('key')
      const failed = await post('/authorizations', key, authorization(reference))
      assert.equal(failed.status, 500)
      assert.deepEqual(await chargesOf(reference), [])
      await setDials({ errorRate: 0 })
      assert.equal((await post('/authorizations', key, authorization(reference))).status, 201)
    })

    it('does the work but holds the answer at a timeout rate of 1; a retry gets the stored answer', async () => {
      await setDials({ timeoutRate: 1 })
      const reference = unique('order')
      const key = unique('key')
      await assert.rejects(post('/authorizations', key, authorization(reference), AbortSignal.timeout(200)))
      const [charge] = await chargesOf(reference)
      assert.equal(charge.status, 'authorized')
      await setDials({ timeoutRate: 0 })
      const retry = await post('/authorizations', key, authorization(reference))
      assert.equal(retry.status, 201)
      assert.equal(retry.body.chargeId, charge.chargeId)
      assert.equal((await chargesOf(reference)).length, 1)
    })
  })
}

defineProviderSuite(sqlite, undefined)
defineProviderSuite(postgres, await skipUnlessReachable('payment provider: PostgreSQL', 'postgres'))

describe('who the payment provider stand-in answers', () => {
  const open = async (apiKey?: string) => {
    const http = createHttpServer(loadConfig({}), silentLogger(), new Metrics(), () => [])
    const store = await sqlite.open()
    const provider = await startPaymentProvider({
      http,
      store,
      log: silentLogger(),
      metrics: new Metrics(),
      apiKey,
    })
    return {
      http,
      close: async () => {
        await provider.stop()
        await http.close()
        await store.close()
      },
    }
  }

  it('without an API key, callers on this machine only: another address gets 403 and changes nothing', async () => {
    const { http, close } = await open()
    try {
      const remote = await http.inject({
        method: 'PUT',
        url: '/provider/v1/dials',
        payload: { errorRate: 1 },
        remoteAddress: '203.0.113.9',
      })
      assert.equal(remote.statusCode, 403)
      assert.match(remote.json().detail, /MERCATO_PAYMENT_PROVIDER_API_KEY/)
      const refund = await http.inject({
        method: 'POST',
        url: '/provider/v1/charges/ch_x/refund',
        headers: { 'idempotency-key': 'k1' },
        remoteAddress: '203.0.113.9',
      })
      assert.equal(refund.statusCode, 403)
      // A method no route takes is refused the same, not answered 405 with the methods there are.
      const other = await http.inject({
        method: 'DELETE',
        url: '/provider/v1/dials',
        remoteAddress: '203.0.113.9',
      })
      assert.equal(other.statusCode, 403)
      const local = await http.inject({ url: '/provider/v1/dials', remoteAddress: '127.0.0.1' })
      assert.equal(local.statusCode, 200)
      assert.equal(local.json().errorRate, 0)
    } finally {
      await close()
    }
  })

  it('with an API key, every caller needs it as a bearer token, wherever it calls from', async () => {
    const apiKey = 'sk_test_0123456789abcdef'
    const { http, close } = await open(apiKey)
    try {
      for (const authorization of [undefined, 'Bearer sk_test_wrong_wrong_wrong', apiKey]) {
        const answer = await http.inject({
          url: '/provider/v1/dials',
          headers: authorization ? { authorization } : {},
          remoteAddress: '127.0.0.1',
        })
        assert.equal(answer.statusCode, 401, String(authorization))
      }
      const allowed = await http.inject({
        url: '/provider/v1/dials',
        headers: { authorization: `Bearer ${apiKey}` },
        remoteAddress: '203.0.113.9',
      })
      assert.equal(allowed.statusCode, 200)
    } finally {
      await close()
    }
  })

  it('checks a request whose target is in absolute form, or escaped, like any other', async () => {
    const apiKey = 'sk_test_0123456789abcdef'
    const { http, close } = await open(apiKey)
    try {
      await http.listen({ host: '127.0.0.1', port: 0 })
      const { port } = http.server.address() as AddressInfo
      const statusOf = async (requestLine: string, body = '') => {
        const socket = connect(port, '127.0.0.1')
        socket.end(
          `${requestLine} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
            `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
        )
        let answer = ''
        for await (const chunk of socket) answer += chunk
        return Number(/^HTTP\/1\.1 (\d+)/.exec(answer)?.[1])
      }
      assert.equal(await statusOf('GET http://x/provider/v1/dials'), 401)
      assert.equal(await statusOf('PUT http://x/provider/v1/dials', '{"errorRate":1}'), 401)
      // The router decodes escapes in the path: the check goes by the route it matched.
      assert.equal(await statusOf('PUT /%70rovider/v1/dials', '{"errorRate":1}'), 401)
      const dials = await http.inject({
        url: '/provider/v1/dials',
        headers: { authorization: `Bearer ${apiKey}` },
      })
      assert.equal(dials.json().errorRate, 0)
    } finally {
      await close()
    }
  })
})
