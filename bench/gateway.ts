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

interface Compared {
  through: Driven
  direct: Driven
}

/** A, B, A: direct, through the gateway, direct again; the baseline is the mean of the two direct runs. */
async function compare(direct: () => Promise<Driven>, through: () => Promise<Driven>): Promise<Compared> {
  const a = await direct()
  const b = await through()
  const c = await direct()
  return { through: b, direct: mean(a, c) }
}

function rowsOf(scenario: string, load: Compared, light: Compared, connections: number): Row[] {
  console.error(
    `${scenario}: ${(load.through.perSecond / load.direct.perSecond).toFixed(2)}× direct at ${connections} connections; ` +
      `p50 at 1 connection +${(light.through.p50 - light.direct.p50).toFixed(2)} ms; ` +
      `non-2xx through ${load.through.non2xx + light.through.non2xx}, direct ${load.direct.non2xx + light.direct.non2xx}`,
  )
  return [
    row(
      `${scenario}, ${connections} connections`,
      'embedded',
      'throughput',
      load.through.perSecond,
      'req/s',
      load.direct.perSecond,
    ),
    row(
      `${scenario}, ${connections} connections`,
      'embedded',
      'p50',
      load.through.p50,
      'ms',
      load.direct.p50,
    ),
    row(`${scenario}, 1 connection`, 'embedded', 'p50', light.through.p50, 'ms', light.direct.p50),
    row(`${scenario}, 1 connection`, 'embedded', 'p99', light.through.p99, 'ms', light.direct.p99),
  ]
}

async function startGateway(env: Record<string, string>, upstreamUrl: string) {
  return startProcess(
    ['src/main.ts', 'start', '--target', 'gateway'],
    {
      ...env,
      MERCATO_COMMAND_API_URLS: upstreamUrl,
      MERCATO_QUERY_API_URLS: upstreamUrl,
      MERCATO_USER_URL: upstreamUrl,
    },
    /mercato is up/,
  )
}

export async function benchGateway(options: { seconds: number; connections: number }): Promise<Row[]> {
  const { seconds, connections } = options
  const dir = tempDir('mercato-bench-gateway-')
  const env = {
    MERCATO_PORT: '0',
    MERCATO_DATA_DIR: dir.path,
    MERCATO_CARRIER_STEP_MS: '100',
    MERCATO_HTTP_IN_FLIGHT_MAX: '4096',
    ...benchLimits,
  }
  const started: { stop(): Promise<void> }[] = []
  const tokens = { current: undefined as Awaited<ReturnType<typeof benchTokens>> | undefined }
  try {
    // Queries: every component but the gateway upstream, so orders run their sagas to the end.
    const upstreamTargets = resolveTargets(['all']).filter((name) => name !== 'gateway')
    const upstream = await startProcess(
      ['src/main.ts', 'start', '--target', upstreamTargets.join(',')],
      env,
      /mercato is up/,
    )
    started.push(upstream)
    const gateway = await startGateway(env, upstream.url)
    started.push(gateway)
    tokens.current = await benchTokens(env)
    const bearer = `Bearer ${await tokens.current.customer('cus_demo_1')}`
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
    // What the gateway sends upstream: the user's token and its own service token.
    const serviceHeaders = async (audience: string) => ({
      authorization: bearer,
      'mercato-service-token': await tokens.current!.service(audience),
    })
    const paths = ids.map((id) => `/v1/orders/${id}`)
    const getDirect = await serviceHeaders('query-api')
    const get = (url: string, headers: Record<string, string>, c: number) => () =>
      drive(url, seconds, c, { method: 'GET', headers, paths })
    await get(upstream.url, getDirect, connections)() // warm-up
    await get(gateway.url, { authorization: bearer }, connections)()
    const rows = rowsOf(
      'cached GET /v1/orders/{id} through the gateway',
      await compare(
        get(upstream.url, getDirect, connections),
        get(gateway.url, { authorization: bearer }, connections),
      ),
      await compare(get(upstream.url, getDirect, 1), get(gateway.url, { authorization: bearer }, 1)),
      connections,
    )
    for (const process of started.splice(0).reverse()) await process.stop()

    // Commands: command-api alone upstream, so the sagas of the orders placed do not share its thread.
    const commands = await startProcess(
      ['src/main.ts', 'start', '--target', 'command-api'],
      env,
      /mercato is up/,
    )
    started.push(commands)
    const commandGateway = await startGateway(env, commands.url)
    started.push(commandGateway)
    const body = JSON.stringify({
      lines: [{ sku: skus[0], quantity: 1 }],
      shippingAddress: address,
      paymentMethodToken: 'tok_visa',
    })
    const postDirect = await serviceHeaders('command-api')
    const post = (url: string, headers: Record<string, string>, c: number) => () =>
      drive(url, seconds, c, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body,
      })
    await post(commands.url, postDirect, connections)() // warm-up
    await post(commandGateway.url, { authorization: bearer }, connections)()
    rows.push(
      ...rowsOf(
        'POST /v1/orders through the gateway',
        await compare(
          post(commands.url, postDirect, connections),
          post(commandGateway.url, { authorization: bearer }, connections),
        ),
        await compare(
          post(commands.url, postDirect, 1),
          post(commandGateway.url, { authorization: bearer }, 1),
        ),
        connections,
      ),
    )
    return rows
  } finally {
    await tokens.current?.close()
    for (const process of started.reverse()) await process.stop()
    dir.remove()
  }
}
