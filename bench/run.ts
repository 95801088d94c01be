// npm run bench -- <name> [options]: runs one benchmark, prints a table, writes bench/results/<name>.json.
import { mkdirSync, writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { benchGateway } from './gateway.ts'
import { benchQuery } from './query.ts'
import type { Row } from './rows.ts'
import { benchSaga } from './saga.ts'
import { benchStream } from './stream.ts'
import { benchWrite } from './write.ts'

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    engines: { type: 'string', default: 'embedded,kafka' },
    events: { type: 'string', default: '100000' },
    kafka: { type: 'string', default: process.env.MERCATO_TEST_KAFKA ?? '127.0.0.1:9092' },
    postgres: {
      type: 'string',
      default: process.env.MERCATO_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    },
    redis: { type: 'string', default: process.env.MERCATO_TEST_REDIS ?? 'redis://127.0.0.1:6379' },
    seconds: { type: 'string', default: '10' },
    connections: { type: 'string', default: '64' },
    parts: { type: 'string', default: 'cached,search,lag' },
  },
})

const benchmarks: Record<string, () => Promise<Row[]>> = {
  stream: () =>
    benchStream({ engines: values.engines.split(','), events: Number(values.events), kafka: values.kafka }),
  gateway: () => benchGateway({ seconds: Number(values.seconds), connections: Number(values.connections) }),
  write: () => benchWrite({ seconds: Number(values.seconds), connections: Number(values.connections) }),
  saga: () =>
    benchSaga({
      engines: values.engines.split(','),
      seconds: Number(values.seconds),
      kafka: values.kafka,
      postgres: values.postgres,
    }),
  query: () =>
    benchQuery({
      engines: values.engines.split(','),
      seconds: Number(values.seconds),
      connections: Number(values.connections),
      kafka: values.kafka,
      postgres: values.postgres,
      redis: values.redis,
      parts: values.parts.split(','),
    }),
}

const name = positionals[0]
if (!name || !benchmarks[name]) {
  console.error(
    `usage: npm run bench -- <${Object.keys(benchmarks).join('|')}> [--engines embedded,kafka] [--events N]`,
  )
  process.exit(2)
}
const rows = await benchmarks[name]()
console.table(rows)
mkdirSync(new URL('./results/', import.meta.url), { recursive: true })
writeFileSync(new URL(`./results/${name}.json`, import.meta.url), `${JSON.stringify(rows, null, 2)}\n`)
process.exit(0)
