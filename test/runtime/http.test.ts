import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect } from 'node:net'
import { describe, it } from 'node:test'
import { MercatoError } from '../../src/platform/errors.ts'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { createHttpServer, drainHttp } from '../../src/runtime/http.ts'
import { waitFor } from '../support/wait.ts'

describe('the HTTP base', () => {
  it('sheds load past its in-flight bound with 503 and Retry-After, while health and metrics still answer', async () => {
    const app = createHttpServer(
      loadConfig({ MERCATO_HTTP_IN_FLIGHT_MAX: '2' }),
      silentLogger(),
      new Metrics(),
      () => [],
    )
    let release: () => void = () => {}
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    app.get('/slow', async () => {
      await gate
      return { ok: true }
    })
    const address = await app.listen({ port: 0, host: '127.0.0.1' })
    const inFlight = async () =>
      /^mercato_http_in_flight (\d+)$/m.exec(await (await fetch(`${address}/metrics`)).text())?.[1]
    try {
      const abort = new AbortController()
      const abandoned = fetch(`${address}/slow`, { signal: abort.signal }).catch(() => undefined)
      const slow = [fetch(`${address}/slow`)]
      await waitFor('both slow requests in flight', async () => (await inFlight()) === '2')
      let shed: Response | undefined
      for (let i = 0; i < 100 && !shed; i++) {
        const response = await fetch(`${address}/slow`, { signal: AbortSignal.timeout(200) }).catch(
          () => undefined,
        )
        if (response?.status === 503) shed = response
      }
      assert.ok(shed, 'a request past the bound was answered 503')
      assert.equal(shed.headers.get('retry-after'), '1')
      assert.equal(shed.headers.get('mercato-problem-type'), 'https://mercato.dev/problems/overloaded')
      assert.match(shed.headers.get('content-type') ?? '', /^application\/problem\+json/)
      assert.equal(((await shed.json()) as { status: number }).status, 503)
      assert.equal((await fetch(`${address}/healthz`)).status, 200)
      // A client that gives up frees its slot as surely as an answer does.
      abort.abort()
      await abandoned
      await waitFor('the abandoned request’s slot freed', async () => (await inFlight()) === '1')
      release()
      for (const response of await Promise.all(slow)) assert.equal(response.status, 200)
      assert.equal((await fetch(`${address}/slow`)).status, 200)
      await waitFor('no request in flight', async () => (await inFlight()) === '0')
    } finally {
      release()
      await app.close()
    }
  })

  it('answers errors as RFC 9457 problem details, without internals', async () => {
    const app = createHttpServer(
      loadConfig({ MERCATO_HTTP_BODY_BYTES_MAX: '1024' }),
      silentLogger(),
      new Metrics(),
      () => [],
    )
    app.get('/boom', async () => {
      throw new Error('secret table mercato_internal exploded')
    })
    app.get('/known', async () => {
      throw new MercatoError('out-of-stock', 409, 'sku A is out of stock')
    })
    app.post('/echo', async (request) => request.body)
    app.post(
      '/strict',
      {
        schema: {
          body: { type: 'object', properties: { a: { type: 'string' } }, additionalProperties: false },
        },
      },
      async () => ({}),
    )
    app.get('/cache-down', async () => {
      throw new Error("Stream isn't writeable and enableOfflineQueue options is false")
    })
    app.get(
      '/search',
      {
        schema: {
          querystring: {
            type: 'object',
            properties: {
              q: { type: 'string' },
              sort: { enum: ['name', 'price'] },
              limit: { type: 'string', pattern: '^[0-9]+$' },
            },
            additionalProperties: false,
          },
        },
      },
      async () => ({}),
    )
    app.get('/not-yet', async () => {
      throw new MercatoError('view-unavailable', 503, 'the catalog view has not been built yet')
    })
    try {
      // A parameter given twice is said to be, not a wrong type or a value not allowed.
      const twice = await app.inject({ url: '/search?q=a&q=b&sort=name&sort=price&limit=x' })
      assert.equal(twice.statusCode, 400)
      assert.deepEqual(
        twice
          .json()
          .errors.map((e: { field: string; message: string }) => `${e.field} ${e.message}`)
          .sort(),
        [
          '/limit must match pattern "^[0-9]+$"',
          '/q is given more than once',
          '/sort is given more than once',
        ],
      )
      // Every 503 says when to come back.
      const notYet = await app.inject({ url: '/not-yet' })
      assert.equal(notYet.headers['retry-after'], '1')
      // A gateway in front reads which 503 it is from a header, a HEAD having no body.
      assert.equal(notYet.headers['mercato-problem-type'], 'https://mercato.dev/problems/view-unavailable')
      const down = await app.inject({ url: '/cache-down' })
      assert.equal(down.statusCode, 503, 'a dependency down is a 503, not a 500')
      assert.equal(down.headers['retry-after'], '1')
      assert.doesNotMatch(down.body, /enableOfflineQueue/)
      const boom = await app.inject({ url: '/boom' })
      assert.equal(boom.statusCode, 500)
      assert.match(String(boom.headers['content-type']), /^application\/problem\+json/)
      assert.doesNotMatch(boom.body, /secret|mercato_internal|at /)
      const known = await app.inject({ url: '/known' })
      assert.deepEqual(known.json(), {
        type: 'https://mercato.dev/problems/out-of-stock',
        title: 'Out of stock',
        status: 409,
        detail: 'sku A is out of stock',
        instance: '/known',
      })
      const big = await app.inject({ method: 'POST', url: '/echo', payload: { x: 'y'.repeat(2_000) } })
      assert.equal(big.statusCode, 400)
      assert.deepEqual(big.json().errors, [{ in: 'body', field: '/', message: big.json().errors[0].message }])
      assert.match(big.json().errors[0].message, /is larger than the limit of \d+ bytes/)
      const broken = await app.inject({
        method: 'POST',
        url: '/echo',
        payload: '{"x":',
        headers: { 'content-type': 'application/json' },
      })
      assert.equal(broken.statusCode, 400)
      const notUtf8 = await app.inject({
        method: 'POST',
        url: '/echo',
        payload: Buffer.from([0x7b, 0x22, 0x78, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), // {"x":"\xff\xfe"}
        headers: { 'content-type': 'application/json' },
      })
      assert.equal(notUtf8.statusCode, 400)
      assert.match(notUtf8.json().detail, /not valid UTF-8/)
      const latin1 = await app.inject({
        method: 'POST',
        url: '/echo',
        payload: '{"x":"y"}',
        headers: { 'content-type': 'application/json; charset=latin1' },
      })
      assert.equal(latin1.statusCode, 415)
      assert.match(latin1.json().detail, /UTF-8, not latin1/)
      const utf8 = await app.inject({
        method: 'POST',
        url: '/echo',
        payload: '{"x":"é"}',
        headers: { 'content-type': 'application/json; charset=UTF-8' },
      })
      assert.deepEqual(utf8.json(), { x: 'é' })
      assert.equal((await app.inject({ url: '/nothing-here' })).json().status, 404)
      // Many bad fields: the first are named, and the answer stays small.
      const many = Object.fromEntries(Array.from({ length: 80 }, (_, i) => [`f${i}`, 1]))
      const crowded = await app.inject({ method: 'POST', url: '/strict', payload: many })
      assert.equal(crowded.statusCode, 400)
      assert.equal(crowded.json().errors.length, 50)
      assert.equal(crowded.json().errorCount, 80)
      assert.match(crowded.json().detail, /body \/f9: is not a known field; and 70 more$/)
    } finally {
      await app.close()
    }
  })

  it('answers 405 with Allow for a path served under other methods, and OPTIONS with Allow', async () => {
    const app = createHttpServer(loadConfig({}), silentLogger(), new Metrics(), () => [])
    app.get('/things/:id', async () => ({ ok: true }))
    app.put('/things/:id', async () => ({ ok: true }))
    try {
      const wrong = await app.inject({ method: 'POST', url: '/things/7?x=1' })
      assert.equal(wrong.statusCode, 405)
      assert.equal(wrong.headers.allow, 'GET, HEAD, PUT, OPTIONS')
      assert.match(String(wrong.headers['content-type']), /^application\/problem\+json/)
      assert.equal(wrong.json().detail, '/things/7 answers GET, HEAD, PUT, OPTIONS, not POST')
      const options = await app.inject({ method: 'OPTIONS', url: '/things/7' })
      assert.equal(options.statusCode, 204)
      assert.equal(options.headers.allow, 'GET, HEAD, PUT, OPTIONS')
      assert.equal((await app.inject({ method: 'POST', url: '/things/7/more' })).statusCode, 404)
      const missing = await app.inject({ method: 'DELETE', url: '/nothing?access_token=secret' })
      assert.equal(missing.statusCode, 404)
      assert.equal(missing.json().instance, '/nothing', 'the query is not echoed')
      assert.doesNotMatch(missing.body, /secret/)
    } finally {
      await app.close()
    }
  })

  it('cuts off a client that goes quiet mid-request, and frees its in-flight slot', async () => {
    const app = createHttpServer(
      loadConfig({ MERCATO_HTTP_IN_FLIGHT_MAX: '1', MERCATO_HTTP_REQUEST_TIMEOUT_MS: '300' }),
      silentLogger(),
      new Metrics(),
      () => [],
    )
    app.post('/echo', async (request) => request.body)
    app.get('/hello', async () => ({ ok: true }))
    const address = await app.listen({ port: 0, host: '127.0.0.1' })
    const { port } = new URL(address)
    try {
      const quiet = connect(Number(port), '127.0.0.1')
      quiet.on('error', () => {})
      const closed = once(quiet, 'close')
      quiet.write(
        'POST /echo HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"a":',
      )
      await closed
      await waitFor('the slot to be free again', async () => (await fetch(`${address}/hello`)).status === 200)
    } finally {
      await app.close()
    }
  })

  it('drains: refuses new requests from outside with 503 and Connection: close, serves calls to itself, and waits for those in flight', async () => {
    const app = createHttpServer(loadConfig({}), silentLogger(), new Metrics(), () => [])
    let release: () => void = () => {}
    let arrived = false
    app.get('/slow', async () => {
      arrived = true
      await new Promise<void>((resolve) => {
        release = resolve
      })
      return { done: true }
    })
    app.get('/fast', async () => ({ ok: true }))
    app.get('/provider/v1/ping', async () => ({ ok: true }))
    const address = await app.listen({ port: 0, host: '127.0.0.1' })
    try {
      const slow = fetch(`${address}/slow`)
      await waitFor('the slow request in flight', async () => arrived)
      let drained = false
      const draining = drainHttp(app, 30_000).then(() => {
        drained = true
      })
      const refused = await fetch(`${address}/fast`)
      assert.equal(refused.status, 503)
      assert.equal(refused.headers.get('connection'), 'close')
      assert.equal(refused.headers.get('mercato-problem-type'), 'https://mercato.dev/problems/draining')
      assert.equal((await fetch(`${address}/readyz`)).status, 503)
      assert.equal((await fetch(`${address}/provider/v1/ping`)).status, 200, 'a call to itself is served')
      assert.equal(drained, false, 'the slow request is still in flight')
      release()
      assert.equal((await slow).status, 200)
      await draining
    } finally {
      await app.close()
    }
  })

  it('refuses a body under two Content-Type headers, rather than reading it as the first says', async () => {
    const app = createHttpServer(loadConfig({}), silentLogger(), new Metrics(), () => [])
    let handled = 0
    app.post('/echo', async (request) => {
      handled++
      return request.body
    })
    const address = await app.listen({ port: 0, host: '127.0.0.1' })
    const send = async (headers: string) => {
      const socket = connect(Number(new URL(address).port), '127.0.0.1')
      socket.write(
        `POST /echo HTTP/1.1\r\nHost: x\r\n${headers}Content-Length: 9\r\nConnection: close\r\n\r\n{"x":"y"}`,
      )
      let raw = ''
      socket.on('data', (chunk) => {
        raw += chunk
      })
      await once(socket, 'close')
      return { status: Number(raw.split(' ')[1]), body: JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) }
    }
    try {
      const twice = await send('Content-Type: application/json\r\ncontent-type: text/plain\r\n')
      assert.equal(twice.status, 400)
      assert.deepEqual(twice.body.errors, [
        { in: 'header', field: 'Content-Type', message: 'is given more than once' },
      ])
      assert.equal(handled, 0)
      const single = await send('Content-Type: application/json\r\n')
      assert.deepEqual([single.status, single.body], [200, { x: 'y' }])
    } finally {
      await app.close()
    }
  })

  it('answers headers too large with 431 problem details', async () => {
    const app = createHttpServer(loadConfig({}), silentLogger(), new Metrics(), () => [])
    app.get('/hello', async () => ({ ok: true }))
    const address = await app.listen({ port: 0, host: '127.0.0.1' })
    try {
      const answer = await fetch(`${address}/hello`, { headers: { 'x-big': 'y'.repeat(40_000) } })
      assert.equal(answer.status, 431)
      assert.match(answer.headers.get('content-type') ?? '', /^application\/problem\+json/)
      assert.equal(((await answer.json()) as { status: number }).status, 431)
      // Written before a request exists, it carries the security headers and an id all the same.
      assert.equal(answer.headers.get('x-content-type-options'), 'nosniff')
      assert.equal(answer.headers.get('x-frame-options'), 'SAMEORIGIN')
      assert.match(answer.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/)
      const tooLong = await fetch(`${address}/hello/${'x'.repeat(200)}%zz`)
      assert.equal(tooLong.status, 400)
      assert.equal(tooLong.headers.get('x-frame-options'), 'SAMEORIGIN')
      assert.match(tooLong.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/)
      // An Expect no server can meet: 417, as problem details too.
      const { port } = new URL(address)
      const socket = connect(Number(port), '127.0.0.1')
      socket.write('GET /hello HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\nConnection: close\r\n\r\n')
      let raw = ''
      socket.on('data', (chunk) => {
        raw += chunk
      })
      await once(socket, 'close')
      assert.match(raw, /^HTTP\/1\.1 417 /)
      assert.match(raw, /content-type: application\/problem\+json/i)
      assert.match(raw, /x-frame-options: SAMEORIGIN/i)
      assert.equal(JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)).status, 417)
    } finally {
      await app.close()
    }
  })
})
