// `npm run bench -- write`: POST /v1/orders on command-api (validation, idempotency key
// in the store, append to the stream) beside a bare fastify server that only validates
// the same body, under the same autocannon settings, in turns in the same run.
import { tempDir } from '../test/support/wait.ts'
import { alternate, drive, withBearer } from './drive.ts'
import { cpuPerRequest, type Started, startProcess } from './mercato-process.ts'
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
    // In turns, rounds of two seconds or so: the machine's speed drifts during a run, and then
    // it drifts for both alike.
    const rounds = Math.max(1, Math.round(options.seconds / 2))
    const seconds = options.seconds / rounds
    const run =
      (process: Started, bearer = '') =>
      async () => {
        const { result, cpuUs } = await cpuPerRequest(
          process,
          () => drive(process.url, seconds, options.connections, post(bearer)),
          (driven) => driven.perSecond * seconds,
        )
        return { ...result, cpuUs }
      }
    const { baseline, subject } = await alternate(run(bare), run(mercato, bearer), rounds)
    console.error({ baseline, subject })
    const scenario = `POST /v1/orders, ${options.connections} connections`
    return [
      row(scenario, 'embedded', 'throughput', subject.perSecond, 'accepted/s', baseline.perSecond),
      row(scenario, 'embedded', 'p50', subject.p50, 'ms', baseline.p50),
      row(scenario, 'embedded', 'p99', subject.p99, 'ms', baseline.p99),
      row(scenario, 'embedded', 'cpu', subject.cpuUs, 'µs CPU/request', baseline.cpuUs),
    ]
  } finally {
    await tokens.close()
    await mercato.stop()
    await bare.stop()
    dir.remove()
  }
}
