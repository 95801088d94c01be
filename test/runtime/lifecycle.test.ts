import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { after, describe, it } from 'node:test'
import { SqliteLog, sqliteLogDefaults } from '../../src/engines/stream/embedded/sqlite-log.ts'
import { tempDir } from '../support/wait.ts'

const dir = tempDir()
after(() => dir.remove())

/** Starts `node src/main.ts args…` and resolves with the first log line matching `pattern`. */
async function startAndWaitFor(args: string[], env: Record<string, string>, pattern: RegExp) {
  const child = spawn(process.execPath, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines: string[] = []
  const matched = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      lines.push(line)
      if (pattern.test(line)) resolve(line)
    })
    child.once('exit', (code) => reject(new Error(`exited ${code}: ${lines.join('\n')}`)))
  })
  return { child, line: await matched, lines }
}

describe('the mercato program', () => {
  it('starts every component on one port, serves health, readiness and metrics, and drains on SIGTERM with exit 0', async () => {
    const { child, line, lines } = await startAndWaitFor(
      ['src/main.ts', 'start'],
      { MERCATO_PORT: '0', MERCATO_DATA_DIR: `${dir.path}/all`, MERCATO_LOG_LEVEL: 'info' },
      /mercato is up/,
    )
    // A failed assertion must not leave the process running (and the test file waiting on it).
    after(() => {
      if (child.exitCode === null) child.kill('SIGKILL')
    })
    const address = JSON.parse(line).address
    const started: string[] = JSON.parse(line).components
    for (const name of [
      'stream',
      'stores',
      'command-api',
      'order',
      'inventory',
      'payment',
      'shipping',
      'notification',
      'user',
      'payment-provider',
      'demo-data',
    ]) {
      assert.ok(started.includes(name), `${name} runs`)
    }
    assert.deepEqual(await (await fetch(`${address}/healthz`)).json(), { status: 'ok' })
    const ready = await fetch(`${address}/readyz`)
    assert.equal(ready.status, 200)
    await fetch(`${address}/v1/orders/ord_nobody`)
    const metrics = await (await fetch(`${address}/metrics`)).text()
    assert.match(metrics, /# TYPE mercato_http_in_flight gauge/)
    // Requests are counted by route template and status, never by raw path.
    assert.match(metrics, /mercato_http_requests_total\{method="GET",route="\/healthz",status="200"\} 1/)
    assert.match(
      metrics,
      /mercato_http_requests_total\{method="GET",route="\/v1\/orders\/:id",status="401"\} 1/,
    )
    assert.match(
      metrics,
      /mercato_http_request_duration_seconds_count\{method="GET",route="\/readyz",status_class="2xx"\} 1/,
    )
    assert.doesNotMatch(metrics, /ord_nobody/)
    assert.match(metrics, /mercato_process_cpu_seconds_total/)
    assert.deepEqual(lintProblems(metrics), [], 'the exposition passes what promtool check metrics lints')
    child.kill('SIGTERM')
    const [code] = (await once(child, 'exit')) as [number]
    assert.equal(code, 0)
    assert.ok(lines.some((l) => /"msg":"stopped"/.test(l)))
  })

  it('an acknowledged publish to the embedded log survives kill -9', async () => {
    const path = `${dir.path}/durable/stream.db`
    const script = `
      import { SqliteLog, sqliteLogDefaults } from './src/engines/stream/embedded/sqlite-log.ts'
      const log = new SqliteLog({ ...sqliteLogDefaults, path: ${JSON.stringify(path)} })
      await log.ensureTopics(['t'], 2)
      for (let i = 0; ; i++) {
        const [p] = await log.publish([{ topic: 't', key: 'k' + (i % 7), value: Buffer.from(String(i)), headers: {} }])
        console.log(JSON.stringify({ i, ...p }))
      }`
    const child: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const acked: { i: number; partition: number; offset: number }[] = []
    await new Promise<void>((resolve) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        acked.push(JSON.parse(line))
        if (acked.length === 200) {
          child.kill('SIGKILL')
          resolve()
        }
      })
    })
    await once(child, 'exit')
    const log = new SqliteLog({ ...sqliteLogDefaults, path })
    try {
      for (const ack of acked) {
        const [record] = await log.read('t', ack.partition, ack.offset, 1)
        assert.equal(record?.value.toString(), String(ack.i), `acknowledged record ${ack.i} is there`)
      }
    } finally {
      await log.close()
    }
  })
})

/**
 * The rules of promtool's `check metrics` (client_golang's promlint) that a name can break:
 * help text, the `_total` suffix on counters and only there, no histogram suffix on other
 * kinds, snake_case, and base units.
 */
function lintProblems(exposition: string): string[] {
  const problems: string[] = []
  const helped = new Set([...exposition.matchAll(/^# HELP (\S+) \S/gm)].map((m) => m[1]))
  for (const [, name, type] of exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    if (!helped.has(name)) problems.push(`${name}: no help text`)
    if (type === 'counter' && !name.endsWith('_total')) problems.push(`${name}: a counter without _total`)
    if (type !== 'counter' && name.endsWith('_total')) problems.push(`${name}: a ${type} named _total`)
    if ((type === 'counter' || type === 'gauge') && /_(sum|count|bucket)$/.test(name))
      problems.push(`${name}: a ${type} with a histogram's suffix`)
    if (/[A-Z]/.test(name)) problems.push(`${name}: not snake_case`)
    if (
      /_(milliseconds|microseconds|nanoseconds|ms|us|ns|minutes|hours|days|kilobytes|megabytes)(_|$)/.test(
        name,
      )
    )
      problems.push(`${name}: not in base units`)
  }
  return problems
}
