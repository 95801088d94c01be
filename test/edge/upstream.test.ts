import assert from 'node:assert/strict'
import { createServer, type IncomingHttpHeaders, type RequestListener } from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, it } from 'node:test'
import { Upstream, type UpstreamOptions } from '../../src/edge/upstream.ts'
import { MercatoError, OverloadedError, toProblem, UnavailableError } from '../../src/platform/errors.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { waitFor } from '../support/wait.ts'

interface Instance {
  url: string
  hits: () => number
  close: () => Promise<void>
}

async function startInstance(handler: RequestListener): Promise<Instance> {
  let hits = 0
  const server = createServer((request, response) => {
    hits++
    handler(request, response)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    hits: () => hits,
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

/** A URL where nothing listens: a port that was just freed. */
async function deadUrl(): Promise<string> {
  const instance = await startInstance(() => {})
  await instance.close()
  return instance.url
}

function upstream(urls: string[], overrides: Partial<UpstreamOptions> = {}): Upstream {
  return new Upstream({
    name: 'query-api',
    urls,
    timeoutMs: 2_000,
    concurrencyMax: 8,
    queueMax: 8,
    breaker: { consecutiveFailures: 3, halfOpenAfterMs: 300 },
    ...overrides,
  })
}

const get = (path = '/') => ({ method: 'GET', path, headers: {} })

function answerWith(text: string): RequestListener {
  return (_request, response) => response.end(text)
}

async function refusal(promise: Promise<unknown>): Promise<MercatoError> {
  const error = await promise.then(
    () => assert.fail('expected a refusal'),
    (error: unknown) => error,
  )
  assert.ok(error instanceof MercatoError, `a MercatoError, got ${error}`)
  return error
}

describe('an upstream component behind the gateway', () => {
  it('spreads requests round-robin across its instances', async () => {
    const a = await startInstance(answerWith('a'))
    const b = await startInstance(answerWith('b'))
    const client = upstream([a.url, b.url])
    try {
      const bodies: string[] = []
      for (let i = 0; i < 4; i++) bodies.push((await client.forward(get())).body.toString())
      assert.deepEqual(bodies, ['a', 'b', 'a', 'b'])
      assert.equal(a.hits(), 2)
      assert.equal(b.hits(), 2)
    } finally {
      await client.close()
      await Promise.all([a.close(), b.close()])
    }
  })

  it('skips an instance that is down while another answers', async () => {
    const up = await startInstance(answerWith('up'))
    const client = upstream([await deadUrl(), up.url], {
      breaker: { consecutiveFailures: 1, halfOpenAfterMs: 60_000 },
    })
    try {
      for (let i = 0; i < 4; i++) {
        const answer = await client.forward(get())
        assert.equal(answer.status, 200)
        assert.equal(answer.body.toString(), 'up')
      }
      assert.equal(up.hits(), 4)
      assert.equal(client.state(), 'closed', 'a failover is not a failure of the component')
    } finally {
      await client.close()
      await up.close()
    }
  })

  it('passes headers, query and body through both ways, and drops hop-by-hop headers', async () => {
    let seen: { method?: string; url?: string; headers: IncomingHttpHeaders; body: string } | undefined
    const instance = await startInstance((request, response) => {
      const chunks: Buffer[] = []
      request.on('data', (chunk: Buffer) => chunks.push(chunk))
      request.on('end', () => {
        seen = {
          method: request.method,
          url: request.url,
          headers: request.headers,
          body: Buffer.concat(chunks).toString(),
        }
        response.setHeader('set-cookie', ['a=1', 'b=2'])
        response.setHeader('x-answer', 'yes')
        response.setHeader('keep-alive', 'timeout=5')
        response.setHeader('proxy-authenticate', 'Basic')
        response.writeHead(201, { 'content-type': 'text/plain' })
        // Two writes and no content-length: the answer comes chunked.
        response.write('created ')
        response.end('order')
      })
    })
    const client = upstream([instance.url])
    try {
      const answer = await client.forward({
        method: 'POST',
        path: '/orders?limit=2&sort=desc',
        headers: {
          'Content-Type': 'application/json',
          'X-Request-Id': 'req-1',
          Connection: 'x-private',
          'X-Private': 'only for the next hop',
          'Keep-Alive': 'timeout=5',
          TE: 'trailers',
          Upgrade: 'websocket',
          'Proxy-Authorization': 'Basic c2VjcmV0',
        },
        body: '{"sku":"tea"}',
      })
      assert.ok(seen)
      assert.equal(seen.method, 'POST')
      assert.equal(seen.url, '/orders?limit=2&sort=desc')
      assert.equal(seen.body, '{"sku":"tea"}')
      assert.equal(seen.headers['content-type'], 'application/json')
      assert.equal(seen.headers['x-request-id'], 'req-1')
      for (const name of ['x-private', 'keep-alive', 'te', 'upgrade', 'proxy-authorization'])
        assert.equal(seen.headers[name], undefined, `${name} is not forwarded`)

      assert.equal(answer.status, 201)
      assert.equal(answer.body.toString(), 'created order')
      assert.equal(answer.headers['content-type'], 'text/plain')
      assert.equal(answer.headers['x-answer'], 'yes')
      assert.deepEqual(answer.headers['set-cookie'], ['a=1', 'b=2'])
      for (const name of ['connection', 'keep-alive', 'transfer-encoding', 'proxy-authenticate'])
        assert.equal(answer.headers[name], undefined, `${name} is not returned`)
    } finally {
      await client.close()
      await instance.close()
    }
  })

  it('answers 504 when an instance does not answer within the timeout, without internals', async () => {
    const silent = await startInstance(() => {})
    const client = upstream([silent.url], { timeoutMs: 200 })
    try {
      const started = Date.now()
      const error = await refusal(client.forward(get('/catalog')))
      assert.ok(Date.now() - started < 5_000)
      assert.equal(error.status, 504)
      assert.equal(error.code, 'upstream-timeout')
      assert.equal(error.message, 'query-api did not answer within 200 ms')
      // The log has the message; the caller is told neither the component nor its timeout.
      assert.doesNotMatch(JSON.stringify(toProblem(error)), /query-api|200/)
    } finally {
      await client.close()
      await silent.close()
    }
  })

  it('sends a request an instance refused while shutting down to the next one, and keeps the circuit closed', async () => {
    const draining = await startInstance((_request, response) => {
      response.statusCode = 503
      response.setHeader('mercato-problem-type', 'https://mercato.dev/problems/draining')
      response.end('{}')
    })
    const up = await startInstance(answerWith('up'))
    const client = upstream([draining.url, up.url], {
      breaker: { consecutiveFailures: 1, halfOpenAfterMs: 60_000 },
    })
    try {
      for (let i = 0; i < 4; i++) assert.equal((await client.forward(get())).body.toString(), 'up')
      assert.equal(draining.hits(), 1, 'passed over once it said so')
      assert.equal(client.state(), 'closed')
    } finally {
      await client.close()
      await draining.close()
      await up.close()
    }
  })

  it('passes over an instance that hung (timed out) while another answers, instead of every n-th request', async () => {
    const hung = await startInstance(() => {})
    const up = await startInstance(answerWith('up'))
    const client = upstream([hung.url, up.url], {
      timeoutMs: 200,
      breaker: { consecutiveFailures: 3, halfOpenAfterMs: 60_000 },
    })
    try {
      // Two timeouts in a row make it hung (one may be a request slow by its nature).
      assert.equal((await refusal(client.forward(get()))).status, 504)
      assert.equal((await client.forward(get())).status, 200)
      assert.equal((await refusal(client.forward(get()))).status, 504)
      for (let i = 0; i < 6; i++) assert.equal((await client.forward(get())).status, 200)
      assert.equal(hung.hits(), 2)
      assert.equal(up.hits(), 7)
    } finally {
      await client.close()
      await hung.close()
      await up.close()
    }
  })

  it('opens the circuit after consecutive 5xx answers, fails fast while open, and closes once healed', async () => {
    let healthy = false
    const instance = await startInstance((_request, response) => {
      response.statusCode = healthy ? 200 : 500
      response.end(healthy ? 'ok' : 'broken')
    })
    const metrics = new Metrics()
    const client = upstream([instance.url], {
      metrics,
      breaker: { consecutiveFailures: 3, halfOpenAfterMs: 300 },
    })
    try {
      for (let i = 0; i < 3; i++) {
        const answer = await client.forward(get())
        assert.equal(answer.status, 500, 'a 5xx answer is still returned as is')
        assert.equal(answer.body.toString(), 'broken')
      }
      assert.equal(client.state(), 'open')

      const error = await refusal(client.forward(get()))
      assert.ok(error instanceof UnavailableError)
      assert.equal(error.status, 503)
      assert.ok(error.retryAfterSeconds >= 1)
      assert.equal(instance.hits(), 3, 'an open circuit does not touch the upstream')
      const text = await metrics.text()
      assert.match(text, /mercato_upstream_circuit_state\{upstream="query-api"\} 2/)
      assert.match(text, /mercato_upstream_requests_total\{upstream="query-api",outcome="circuit-open"\} 1/)
      assert.match(text, /mercato_upstream_requests_total\{upstream="query-api",outcome="5xx"\} 3/)

      healthy = true
      await waitFor('the circuit to let a trial request through', async () => {
        try {
          return (await client.forward(get())).status === 200
        } catch (error) {
          if (error instanceof UnavailableError) return false
          throw error
        }
      })
      assert.equal(client.state(), 'closed')
      assert.equal(instance.hits(), 4)
      assert.match(await metrics.text(), /mercato_upstream_circuit_state\{upstream="query-api"\} 0/)
    } finally {
      await client.close()
      await instance.close()
    }
  })

  it("keeps the circuit closed on an upstream's 503 that it chose (overloaded), and opens it on one for a timeout", async () => {
    let type = 'overloaded'
    const instance = await startInstance((_request, response) => {
      response.statusCode = 503
      response.setHeader('retry-after', '1')
      response.setHeader('mercato-problem-type', `https://mercato.dev/problems/${type}`)
      response.setHeader('content-type', 'application/problem+json')
      response.end(JSON.stringify({ type: `https://mercato.dev/problems/${type}`, status: 503 }))
    })
    const client = upstream([instance.url], { breaker: { consecutiveFailures: 3, halfOpenAfterMs: 300 } })
    try {
      // HEAD answers have no body: the header says which 503 it is.
      for (let i = 0; i < 6; i++)
        assert.equal((await client.forward({ ...get(), method: i % 2 ? 'HEAD' : 'GET' })).status, 503)
      assert.equal(client.state(), 'closed')
      assert.equal(instance.hits(), 6)
      type = 'timeout'
      for (let i = 0; i < 3; i++) await client.forward(get())
      assert.equal(client.state(), 'open')
    } finally {
      await client.close()
      await instance.close()
    }
  })

  it('counts connection failures toward the circuit and refuses them with 503, without internal URLs', async () => {
    const client = upstream([await deadUrl()], {
      breaker: { consecutiveFailures: 2, halfOpenAfterMs: 5_000 },
    })
    try {
      for (let i = 0; i < 2; i++) {
        const error = await refusal(client.forward(get()))
        assert.equal(error.status, 503)
        assert.doesNotMatch(error.message, /127\.0\.0\.1|http:|ECONNREFUSED/)
      }
      assert.equal(client.state(), 'open')
      const error = await refusal(client.forward(get()))
      // Down is not busy: an upstream's own overload is another type.
      assert.ok(error instanceof UnavailableError)
      assert.ok(error.retryAfterSeconds >= 1 && error.retryAfterSeconds <= 5)
      assert.doesNotMatch(JSON.stringify(toProblem(error)), /query-api|circuit/)
    } finally {
      await client.close()
    }
  })

  it('refuses a request past concurrency and queue with 503 while slow requests hold the slots', async () => {
    const held: (() => void)[] = []
    const slow = await startInstance((_request, response) => held.push(() => response.end('done')))
    const metrics = new Metrics()
    const client = upstream([slow.url], { metrics, concurrencyMax: 1, queueMax: 1 })
    try {
      const first = client.forward(get())
      const queued = client.forward(get())
      await waitFor('the first request to reach the instance', () => held.length === 1)

      const error = await refusal(client.forward(get()))
      assert.ok(error instanceof OverloadedError)
      assert.equal(error.status, 503)
      assert.equal(slow.hits(), 1)
      assert.match(await metrics.text(), /mercato_upstream_in_flight\{upstream="query-api"\} 1/)

      held[0]()
      await waitFor('the queued request to reach the instance', () => held.length === 2)
      held[1]()
      for (const answer of await Promise.all([first, queued])) assert.equal(answer.body.toString(), 'done')
      assert.equal(client.state(), 'closed', 'a full bulkhead is not a failure of the component')
    } finally {
      for (const release of held) release()
      await client.close()
      await slow.close()
    }
  })
})
