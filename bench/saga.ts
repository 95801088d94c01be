// `npm run bench -- saga`: orders from 202 to CONFIRMED, through every component in one
// `mercato start` process, driven over HTTP by `runLoad` (the code behind `mercato load`):
// at a fixed offered rate (latency) and at saturation (throughput), on the embedded engines
// and on Kafka + PostgreSQL. A first phase offers a rate the machine carries, so its latency
// is the saga's own and not the wait in a queue. There is no external baseline for a whole
// saga: the row's baseline is the target, so the ratio says how far off we are.
import { randomUUID } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { silentLogger } from '../src/platform/logger.ts'
import { Metrics } from '../src/platform/metrics.ts'
import { loadConfig } from '../src/runtime/config.ts'
import { openEventStream } from '../src/runtime/engines.ts'
import { type LoadSummary, OrderWatcher, runLoad } from '../src/runtime/load.ts'
import { deleteKafkaTopics, dropPostgresSchemas } from '../test/support/servers.ts'
import { tempDir } from '../test/support/wait.ts'
import { cpuPerRequest, startProcess } from './mercato-process.ts'
import { type Row, row } from './rows.ts'
import { benchLimits, benchTokens } from './tokens.ts'

const skus = Array.from({ length: 20 }, (_, i) => `BENCH-${i + 1}`)

interface Targets {
  rate: number
  p99Ms: number
  completedPerSecond: number
  /** A rate this machine carries today, far below the target's: latency without a queue. */
  carriedRate: number
}

const targets: Record<string, Targets> = {
  embedded: { rate: 500, p99Ms: 250, completedPerSecond: 1_000, carriedRate: 40 },
  kafka: { rate: 150, p99Ms: 1_000, completedPerSecond: 300, carriedRate: 5 },
}

async function call(url: string, bearer: string, method: string, path: string, body: unknown, key?: string) {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${bearer}`,
      ...(key ? { 'idempotency-key': key } : {}),
    },
    body: JSON.stringify(body),
  })
  if (response.status !== 202)
    throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`)
}

export async function benchSaga(options: {
  engines: string[]
  seconds: number
  kafka: string
  postgres: string
}) {
  const rows: Row[] = []
  for (const engine of options.engines) {
    const dir = tempDir('mercato-bench-saga-')
    const name = `bench_${Date.now().toString(36)}`
    const env: Record<string, string> = {
      MERCATO_PORT: '0',
      MERCATO_DATA_DIR: dir.path,
      MERCATO_SEED: 'false',
      MERCATO_HTTP_IN_FLIGHT_MAX: '4096',
      ...benchLimits,
      ...(engine === 'kafka'
        ? {
            MERCATO_STREAM: `kafka://${options.kafka}`,
            MERCATO_STREAM_TOPIC_PREFIX: `${name}.`,
            MERCATO_STORE: options.postgres,
            MERCATO_STORE_SCHEMA_PREFIX: `${name}_`,
          }
        : {}),
    }
    const mercato = await startProcess(['src/main.ts', 'start'], env, /mercato is up/)
    const stream = await openEventStream(
      loadConfig({ ...env, MERCATO_LOG_LEVEL: 'silent' }),
      silentLogger(),
      new Metrics(),
    )
    const watcher = new OrderWatcher()
    const tokens = await benchTokens(env)
    try {
      await watcher.start(stream)
      for (const sku of skus) {
        const product = {
          name: sku,
          description: 'bench',
          category: 'bench',
          priceMinor: 1_000,
          currency: 'USD',
        }
        await call(mercato.url, tokens.admin, 'PUT', `/v1/products/${sku}`, product)
        await call(
          mercato.url,
          tokens.admin,
          'POST',
          `/v1/inventory/${sku}/adjustments`,
          { delta: 1_000_000, reason: 'restock' },
          randomUUID(),
        )
      }
      const base = {
        url: mercato.url,
        retryShare: 0.02,
        bearers: await Promise.all(['cus_bench_1', 'cus_bench_2', 'cus_bench_3'].map(tokens.customer)),
        skus,
        requestTimeoutMs: 10_000,
        settleTimeoutMs: 60_000,
        onProgress: (p: { answered: number; ended: number; elapsedMs: number }) =>
          process.stderr.write(
            `  ${engine} ${(p.elapsedMs / 1000).toFixed(0)} s: answered ${p.answered}, ended ${p.ended}\n`,
          ),
      }
      // Warm-up, and proof that prices and stock have arrived everywhere.
      await runLoad({ ...base, orders: 50, rate: 50, concurrency: 16 }, watcher)
      const target = targets[engine]
      // Each phase also reports the CPU Mercato's process spent per confirmed order during it
      // (work left over from the phase before included): steadier than throughput on a shared machine.
      const phase = async (label: string, load: Omit<Parameters<typeof runLoad>[0], keyof typeof base>) => {
        const { result, cpuUs } = await cpuPerRequest(
          mercato,
          () => runLoad({ ...base, ...load }, watcher),
          (summary) => summary.confirmed,
        )
        report(`${engine} ${label}`, result, cpuUs)
        return { ...result, cpuMs: cpuUs / 1000 }
      }
      const carried = await phase(`fixed ${target.carriedRate}/s`, {
        orders: target.carriedRate * options.seconds,
        rate: target.carriedRate,
        concurrency: 512,
      })
      const fixed = await phase(`fixed ${target.rate}/s`, {
        orders: target.rate * options.seconds,
        rate: target.rate,
        concurrency: 512,
      })
      const saturated = await phase('saturation', {
        orders: target.completedPerSecond * options.seconds,
        rate: 0,
        concurrency: 256,
      })
      // The CPU an order may take for the target's throughput on this machine's cores.
      const cpuBudgetMs = (availableParallelism() * 1_000) / target.completedPerSecond
      const perOrder = (scenario: string, summary: { cpuMs: number }) =>
        row(scenario, engine, 'cpu', summary.cpuMs, 'ms CPU/confirmed order', cpuBudgetMs)
      const atRate = (rate: number, summary: LoadSummary & { cpuMs: number }) => {
        const scenario = `saga at ${rate} orders/s offered`
        return [
          row(scenario, engine, 'p50', summary.confirmMs.p50, 'ms 202→CONFIRMED', target.p99Ms),
          row(scenario, engine, 'p99', summary.confirmMs.p99, 'ms 202→CONFIRMED', target.p99Ms),
          row(scenario, engine, 'throughput', summary.completedPerSecond, 'confirmed/s', rate),
          perOrder(scenario, summary),
        ]
      }
      const saturation = 'saga at saturation (256 clients)'
      // Every request is answered at saturation: the answers by status (a timeout or a network
      // error would show as one; "503, then retried" counts the refusals an order was sent again
      // after), beside the orders offered.
      rows.push(
        ...atRate(target.carriedRate, carried),
        ...atRate(target.rate, fixed),
        row(
          saturation,
          engine,
          'throughput',
          saturated.completedPerSecond,
          'confirmed/s',
          target.completedPerSecond,
        ),
        row(saturation, engine, 'p99', saturated.confirmMs.p99, 'ms 202→CONFIRMED', target.p99Ms),
        perOrder(saturation, saturated),
        ...Object.entries(saturated.byStatus).map(([status, count]) =>
          row(saturation, engine, 'answers', count, `answered ${status}`, saturated.offered),
        ),
      )
    } finally {
      await tokens.close()
      await watcher.stop()
      await stream.close()
      await mercato.stop()
      dir.remove()
      if (engine === 'kafka') {
        await deleteKafkaTopics(`${name}.`)
        await dropPostgresSchemas(`${name}_`, options.postgres)
      }
    }
  }
  return rows
}

function report(label: string, summary: LoadSummary, cpuUs: number) {
  console.error(
    `${label}: answers by status ${JSON.stringify(summary.byStatus)}, accepted ${summary.accepted}, confirmed ${summary.confirmed}, ` +
      `cancelled ${JSON.stringify(summary.cancelled)}, unfinished ${summary.unfinished}, ` +
      `POST p50/p99 ${summary.requestMs.p50}/${summary.requestMs.p99} ms, 202→CONFIRMED p50/p99 ${summary.confirmMs.p50}/${summary.confirmMs.p99} ms, ` +
      `${summary.completedPerSecond.toFixed(0)} confirmed/s, ${(cpuUs / 1000).toFixed(1)} ms of Mercato's CPU per confirmed order`,
  )
}
