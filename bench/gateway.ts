// `npm run bench -- gateway`: POST /v1/orders and cached GET /v1/orders/{id} through the
// gateway (token verified, route policy checked, rate limit counted) beside the same
// requests sent straight to command-api and query-api, under the same settings, in the
// same run. Two deployments of the gateway are measured:
//  - in process: the all-in-one mode, the gateway's hook in front of the component's
//    routes on the same server;
//  - own process: the distributed mode, forwarding over pooled HTTP (undici) with a
//    service token.
// "Direct" is a process running the component without the gateway, called with the
// user's token and a service token, as the gateway calls it. All processes share one data
// directory (one stream, one key ring, one set of views).
//
// Throughput is measured at --connections; latency with one connection, one request after
// another, timed to the microsecond. Direct runs go before and after each gateway run
// (A, B, A) and the baseline is their mean, since the machine's load drifts during a run.
import { randomUUID } from 'node:crypto'
import { Pool } from 'undici'
import { resolveTargets } from '../src/runtime/components.ts'
import { demoProducts } from '../src/runtime/demo-data.ts'
import { tempDir } from '../test/support/wait.ts'
import { alternate, type Driven, drive } from './drive.ts'
import { type Started, startProcess } from './mercato-process.ts'
import { percentile, type Row, row } from './rows.ts'
import { benchLimits, benchTokens } from './tokens.ts'

const address = { name: 'Bench', line1: '1 Bench St', city: 'Benchville', postalCode: '1', country: 'US' }

/**
 * One connection, one request after another, timed here to the microsecond: what a
 * request costs with nothing queued (autocannon's latencies are whole milliseconds).
 */
async function driveOneByOne(
  url: string,
  seconds: number,
  request: { method: 'GET' | 'POST'; headers: Record<string, string>; paths?: string[]; body?: string },
): Promise<Driven> {
  const pool = new Pool(url, { connections: 1 })
  const latencies: number[] = []
  const statuses: Record<number, number> = {}
  let non2xx = 0
  const until = performance.now() + seconds * 1000
  try {
    for (let i = 0; performance.now() < until; i++) {
      const started = performance.now()
      const answer = await pool.request({
        method: request.method,
        path: request.paths ? request.paths[i % request.paths.length] : '/v1/orders',
        headers:
          request.method === 'POST'
            ? { ...request.headers, 'idempotency-key': randomUUID() }
            : request.headers,
        body: request.body,
      })
      await answer.body.arrayBuffer()
      latencies.push(performance.now() - started)
      if (answer.statusCode >= 300) {
        non2xx++
        statuses[answer.statusCode] = (statuses[answer.statusCode] ?? 0) + 1
      }
    }
  } finally {
    await pool.close()
  }
  if (non2xx > 0)
    console.error(`  ${request.method} ${url} one by one: answers by status ${JSON.stringify(statuses)}`)
  return {
    perSecond: latencies.length / seconds,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    non2xx,
  }
}

interface Request {
  method: 'GET' | 'POST'
  headers: Record<string, string>
  paths?: string[]
  body?: string
}

/** Measures `request` through `gateway` beside `direct`: throughput under load, latency one by one. */
async function measure(
  scenario: string,
  options: { seconds: number; connections: number },
  direct: { url: string; request: Request },
  gateway: { url: string; request: Request },
): Promise<Row[]> {
  const { seconds, connections } = options
  const loaded = (target: typeof direct) => () => drive(target.url, seconds, connections, target.request)
  const oneByOne = (target: typeof direct) => () => driveOneByOne(target.url, seconds, target.request)
  await loaded(direct)() // warm-up
  await loaded(gateway)()
  // A, B, A: direct, through the gateway, direct again.
  const load = await alternate(loaded(direct), loaded(gateway), 1)
  const light = await alternate(oneByOne(direct), oneByOne(gateway), 1)
  const nonOk = load.subject.non2xx + light.subject.non2xx + load.baseline.non2xx + light.baseline.non2xx
  console.error(
    `${scenario}: ${(load.subject.perSecond / load.baseline.perSecond).toFixed(2)}× direct at ${connections} connections; ` +
      `p50 one by one ${light.subject.p50.toFixed(3)} ms against ${light.baseline.p50.toFixed(3)} ms ` +
      `(+${(light.subject.p50 - light.baseline.p50).toFixed(3)} ms); non-2xx answers ${nonOk}`,
  )
  return [
    row(
      `${scenario}, ${connections} connections`,
      'embedded',
      'throughput',
      load.subject.perSecond,
      'req/s',
      load.baseline.perSecond,
    ),
    row(
      `${scenario}, ${connections} connections`,
      'embedded',
      'p50',
      load.subject.p50,
      'ms',
      load.baseline.p50,
    ),
    row(`${scenario}, one by one`, 'embedded', 'p50', light.subject.p50, 'ms', light.baseline.p50),
    row(`${scenario}, one by one`, 'embedded', 'p99', light.subject.p99, 'ms', light.baseline.p99),
  ]
}

export async function benchGateway(options: { seconds: number; connections: number }): Promise<Row[]> {
  const dir = tempDir('mercato-bench-gateway-')
  const env = {
    MERCATO_PORT: '0',
    MERCATO_DATA_DIR: dir.path,
    MERCATO_CARRIER_STEP_MS: '100',
    MERCATO_HTTP_IN_FLIGHT_MAX: '4096',
    // The POSTs measure the gateway and the write path, not how fast the saga keeps up.
    MERCATO_ORDER_BACKLOG_MAX: '0',
    ...benchLimits,
  }
  const started: Started[] = []
  const start = async (targets: string[], extra: Record<string, string> = {}) => {
    const process = await startProcess(
      ['src/main.ts', 'start', '--target', targets.join(',')],
      { ...env, ...extra },
      /mercato is up/,
    )
    started.push(process)
    return process
  }
  const stopAll = async () => {
    for (const process of started.splice(0).reverse()) await process.stop()
  }
  const gatewayFor = (upstream: Started, targets: string[] = ['gateway']) =>
    start(targets, {
      MERCATO_COMMAND_API_URLS: upstream.url,
      MERCATO_QUERY_API_URLS: upstream.url,
      MERCATO_USER_URL: upstream.url,
    })
  let tokens: Awaited<ReturnType<typeof benchTokens>> | undefined
  try {
    // Queries: every component but the gateway in one process, so orders run to their end.
    const upstream = await start(resolveTargets(['all']).filter((name) => name !== 'gateway'))
    tokens = await benchTokens(env)
    const bearer = `Bearer ${await tokens.customer('cus_demo_1')}`
    const ids = await placeOrders(upstream.url, {
      authorization: bearer,
      'mercato-service-token': await tokens.service('command-api'),
    })
    const readHeaders = { authorization: bearer, 'mercato-service-token': await tokens.service('query-api') }
    await waitForEnds(upstream.url, ids, readHeaders)
    const paths = ids.map((id) => `/v1/orders/${id}`)
    const direct = { url: upstream.url, request: { method: 'GET' as const, headers: readHeaders, paths } }
    const viaGateway = { method: 'GET' as const, headers: { authorization: bearer }, paths }
    const inProcess = await gatewayFor(upstream, ['gateway', 'query-api'])
    const ownProcess = await gatewayFor(upstream)
    const rows = [
      ...(await measure('cached GET /v1/orders/{id}, gateway in process', options, direct, {
        url: inProcess.url,
        request: viaGateway,
      })),
      ...(await measure('cached GET /v1/orders/{id}, gateway in its own process', options, direct, {
        url: ownProcess.url,
        request: viaGateway,
      })),
    ]
    await stopAll()

    // Commands: command-api alone, so the sagas of the orders placed do not share its thread.
    const commands = await start(['command-api'])
    const body = JSON.stringify({
      lines: [{ sku: demoProducts()[0].sku, quantity: 1 }],
      shippingAddress: address,
      paymentMethodToken: 'tok_visa',
    })
    const json = { 'content-type': 'application/json' }
    const place = {
      url: commands.url,
      request: {
        method: 'POST' as const,
        headers: {
          ...json,
          authorization: bearer,
          'mercato-service-token': await tokens.service('command-api'),
        },
        body,
      },
    }
    const placeViaGateway = { method: 'POST' as const, headers: { ...json, authorization: bearer }, body }
    const commandsInProcess = await gatewayFor(commands, ['gateway', 'command-api'])
    const commandsOwnProcess = await gatewayFor(commands)
    rows.push(
      ...(await measure('POST /v1/orders, gateway in process', options, place, {
        url: commandsInProcess.url,
        request: placeViaGateway,
      })),
      ...(await measure('POST /v1/orders, gateway in its own process', options, place, {
        url: commandsOwnProcess.url,
        request: placeViaGateway,
      })),
    )
    return rows
  } finally {
    await tokens?.close()
    await stopAll()
    dir.remove()
  }
}

/** Places 100 orders of the demo catalog's products; their ids. */
export async function placeOrders(url: string, headers: Record<string, string>): Promise<string[]> {
  const skus = demoProducts().map((p) => p.sku)
  const ids: string[] = []
  for (let i = 0; i < 100; i++) {
    const response = await fetch(`${url}/v1/orders`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json', 'idempotency-key': randomUUID() },
      body: JSON.stringify({
        lines: [{ sku: skus[i % skus.length], quantity: 1 }],
        shippingAddress: address,
        paymentMethodToken: 'tok_visa',
      }),
    })
    if (response.status !== 202) throw new Error(`order refused: ${response.status} ${await response.text()}`)
    ids.push(((await response.json()) as { id: string }).id)
  }
  return ids
}

/** Waits for every saga to end, so the documents no longer change and every GET is a cache hit. */
async function waitForEnds(url: string, ids: string[], headers: Record<string, string>): Promise<void> {
  for (const id of ids) {
    for (;;) {
      const response = await fetch(`${url}/v1/orders/${id}`, { headers })
      const doc = (await response.json()) as { status?: string }
      if (doc.status === 'DELIVERED' || doc.status === 'CANCELLED') break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}
