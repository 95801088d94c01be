// `npm run bench -- write`: POST /v1/orders on command-api (validation, idempotency key
// in the store, append to the stream) beside a bare fastify server that only validates
// the same body, under the same autocannon settings, in the same run.
import { tempDir } from '../test/support/wait.ts'
import { type Driven, drive, withBearer } from './drive.ts'
import { cpuPerRequest, startProcess } from './mercato-process.ts'
import { type Row, row } from './rows.ts'
import { benchLimits, benchTokens } from './tokens.ts'

const body = JSON.stringify({
  lines: [
    { sku: 'BENCH-1', quantity: 1 },
    { sku: 'BENCH-2', quantity: 2 },
  ],
  shippingAddress: { name: 'Bench', line1: '1 Bench St', city: 'Benchville', postalCode: '1', country: 'US' },
  paymentMethodToken: 'tok_visa',
})

const post = (bearer = '') => ({
  method: 'POST' as const,
  headers: withBearer({ 'content-type': 'application/json' }, bearer),
  body,
})

export async function benchWrite(options: { seconds: number; connections: number }): Promise<Row[]> {
  const dir = tempDir('mercato-bench-write-')
  const bare = await startProcess(['bench/bare-order-server.ts'], {}, /bare server is up/)
  // The command API behind the in-process gateway, which verifies the customer's token. No
  // saga runs, so its admission control is off: this measures what the write path takes in.
  const env = {
    MERCATO_PORT: '0',
    MERCATO_DATA_DIR: dir.path,
    MERCATO_SEED: 'false',
    MERCATO_ORDER_BACKLOG_MAX: '0',
    ...benchLimits,
  }
  const mercato = await startProcess(
    ['src/main.ts', 'start', '--target', 'gateway,user,command-api'],
    env,
    /mercato is up/,
  ).catch(async (error) => {
    await bare.stop()
    throw error
  })
  const tokens = await benchTokens(env)
  const bearer = await tokens.customer('cus_bench')
  try {
    await drive(bare.url, 2, options.connections, post()) // warm-up
    await drive(mercato.url, 2, options.connections, post(bearer))
    const accepted = (driven: Driven) => driven.perSecond * options.seconds
    const { result: baseline, cpuUs: baselineCpuUs } = await cpuPerRequest(
      bare,
      () => drive(bare.url, options.seconds, options.connections, post()),
      accepted,
    )
    const { result: subject, cpuUs } = await cpuPerRequest(
      mercato,
      () => drive(mercato.url, options.seconds, options.connections, post(bearer)),
      accepted,
    )
    console.error({ baseline, subject, cpuUs, baselineCpuUs })
    const scenario = `POST /v1/orders, ${options.connections} connections`
    return [
      row(scenario, 'embedded', 'throughput', subject.perSecond, 'accepted/s', baseline.perSecond),
      row(scenario, 'embedded', 'p50', subject.p50, 'ms', baseline.p50),
      row(scenario, 'embedded', 'p99', subject.p99, 'ms', baseline.p99),
      row(scenario, 'embedded', 'cpu', cpuUs, 'µs CPU/request', baselineCpuUs),
    ]
  } finally {
    await tokens.close()
    await mercato.stop()
    await bare.stop()
    dir.remove()
  }
}
