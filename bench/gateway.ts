// `npm run bench -- gateway`: POST /v1/orders and cached GET /v1/orders/{id} through the
// gateway (its own process: token verified, route policy checked, rate limit counted,
// forwarded over pooled HTTP with a service token) beside the same requests sent straight
// to the process that runs command-api and query-api (with a service token, as the gateway
// would send them), under the same autocannon settings, in the same run.
//
// Direct runs go before and after the gateway's (A, B, A) and the baseline is their mean:
// every accepted order starts a saga in the upstream process, which loads it more and
// more as a run goes on.
import { randomUUID } from 'node:crypto'
import autocannon from 'autocannon'
import { resolveTargets } from '../src/runtime/components.ts'
import { demoProducts } from '../src/runtime/demo-data.ts'
import { tempDir } from '../test/support/wait.ts'
import { startProcess } from './mercato-process.ts'
import { type Row, row } from './rows.ts'
import { benchLimits, benchTokens } from './tokens.ts'

interface Driven {
  perSecond: number
  p50: number
  p99: number
  non2xx: number
}

const address = { name: 'Bench', line1: '1 Bench St', city: 'Benchville', postalCode: '1', country: 'US' }

async function drive(
  url: string,
  seconds: number,
  connections: number,
  request: { method: 'GET' | 'POST'; headers: Record<string, string>; paths?: string[]; body?: string },
): Promise<Driven> {
  let next = 0
  const result = await autocannon({
    url,
    connections,
    duration: seconds,
    requests: [
      {
        method: request.method,
        headers: request.headers,
        body: request.body,
        setupRequest: (r) => ({
          ...r,
          path: request.paths ? request.paths[next++ % request.paths.length] : '/v1/orders',
          headers: request.method === 'POST' ? { ...r.headers, 'idempotency-key': randomUUID() } : r.headers,
        }),
      },
    ],
  })
  return {
    perSecond: result['2xx'] / seconds,
    p50: result.latency.p50,
    p99: result.latency.p99,
    non2xx: result.non2xx,
  }
}

function mean(a: Driven, b: Driven): Driven {
  return {
    perSecond: (a.perSecond + b.perSecond) / 2,
    p50: (a.p50 + b.p50) / 2,
    p99: (a.p99 + b.p99) / 2,
    non2xx: a.non2xx + b.non2xx,
  }
}

export async function benchGateway(options: { seconds: number; connections: number }): Promise<Row[]> {
  const dir = tempDir('mercato-bench-gateway-')
  const env = {
    MERCATO_PORT: '0',
    MERCATO_DATA_DIR: dir.path,
    MERCATO_CARRIER_STEP_MS: '100',
    MERCATO_HTTP_IN_FLIGHT_MAX: '4096',
    ...benchLimits,
  }
  const upstreamTargets = resolveTargets(['all']).filter((name) => name !== 'gateway')
  const upstream = await startProcess(
    ['src/main.ts', 'start', '--target', upstreamTargets.join(',')],
    env,
    /mercato is up/,
  )
  const gateway = await startProcess(
    ['src/main.ts', 'start', '--target', 'gateway'],
    {
      ...env,
      MERCATO_COMMAND_API_URLS: upstream.url,
      MERCATO_QUERY_API_URLS: upstream.url,
      MERCATO_USER_URL: upstream.url,
    },
    /mercato is up/,
  ).catch(async (error) => {
    await upstream.stop()
    throw error
  })
  const tokens = await benchTokens(env)
  try {
    const bearer = `Bearer ${await tokens.customer('cus_demo_1')}`
    const skus = demoProducts().map((p) => p.sku)
    const ids: string[] = []
    for (let i = 0; i < 100; i++) {
      const response = await fetch(`${gateway.url}/v1/orders`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'idempotency-key': randomUUID(),
          authorization: bearer,
        },
        body: JSON.stringify({
          lines: [{ sku: skus[i % skus.length], quantity: 1 }],
          shippingAddress: address,
          paymentMethodToken: 'tok_visa',
        }),
      })
      if (response.status !== 202)
        throw new Error(`order refused: ${response.status} ${await response.text()}`)
      ids.push(((await response.json()) as { id: string }).id)
    }
    // Every saga ends first, so the documents no longer change and every GET is a cache hit.
    for (const id of ids) {
      for (;;) {
        const response = await fetch(`${gateway.url}/v1/orders/${id}`, { headers: { authorization: bearer } })
        const doc = (await response.json()) as { status?: string }
        if (doc.status === 'DELIVERED' || doc.status === 'CANCELLED') break
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
    const paths = ids.map((id) => `/v1/orders/${id}`)
    // What the gateway sends upstream: the user's token and its own service token.
    const serviceHeaders = async (audience: string) => ({
      authorization: bearer,
      'mercato-service-token': await tokens.service(audience),
    })
    const { seconds, connections } = options
    const get = (url: string, headers: Record<string, string>) =>
      drive(url, seconds, connections, { method: 'GET', headers, paths })
    const getDirect = await serviceHeaders('query-api')
    await get(upstream.url, getDirect) // warm-up
    await get(gateway.url, { authorization: bearer })
    const getDirectA = await get(upstream.url, getDirect)
    const getThrough = await get(gateway.url, { authorization: bearer })
    const getDirectB = await get(upstream.url, getDirect)
    const getBaseline = mean(getDirectA, getDirectB)

    const body = JSON.stringify({
      lines: [{ sku: skus[0], quantity: 1 }],
      shippingAddress: address,
      paymentMethodToken: 'tok_visa',
    })
    const post = (url: string, headers: Record<string, string>) =>
      drive(url, seconds, connections, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body,
      })
    const postDirect = await serviceHeaders('command-api')
    const postDirectA = await post(upstream.url, postDirect)
    const postThrough = await post(gateway.url, { authorization: bearer })
    const postDirectB = await post(upstream.url, postDirect)
    const postBaseline = mean(postDirectA, postDirectB)

    console.error({ getDirectA, getThrough, getDirectB, postDirectA, postThrough, postDirectB })
    const rows: Row[] = []
    for (const [scenario, through, baseline] of [
      [`cached GET /v1/orders/{id} through the gateway, ${connections} connections`, getThrough, getBaseline],
      [`POST /v1/orders through the gateway, ${connections} connections`, postThrough, postBaseline],
    ] as const) {
      rows.push(
        row(scenario, 'embedded', 'throughput', through.perSecond, 'req/s', baseline.perSecond),
        row(scenario, 'embedded', 'p50', through.p50, 'ms', baseline.p50),
        row(scenario, 'embedded', 'p99', through.p99, 'ms', baseline.p99),
      )
      console.error(
        `${scenario}: ${(through.perSecond / baseline.perSecond).toFixed(2)}× direct; p50 +${(through.p50 - baseline.p50).toFixed(2)} ms; non-2xx through ${through.non2xx}, direct ${baseline.non2xx}`,
      )
    }
    return rows
  } finally {
    await tokens.close()
    await gateway.stop()
    await upstream.stop()
    dir.remove()
  }
}
