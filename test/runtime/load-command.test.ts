// `mercato load` as an operator runs it: how it ends when it cannot reach the shop, or
// cannot follow the orders it placed.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { after, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { openEventStream } from '../../src/runtime/engines.ts'
import { processesOnOneDataDir } from '../support/processes.ts'
import { tempDir } from '../support/wait.ts'

const { dir: shopDir, start } = processesOnOneDataDir({
  MERCATO_SEED: 'true',
  MERCATO_RATE_LIMIT_PRINCIPAL_PER_MINUTE: '1000000',
  MERCATO_RATE_LIMIT_ADDRESS_PER_MINUTE: '1000000',
})
const otherDir = tempDir()
after(() => otherDir.remove())

/** Makes the embedded stream of a Mercato that is not running, as another shop's would be. */
async function anotherShopsStream(): Promise<string> {
  const stream = await openEventStream(
    loadConfig({ MERCATO_DATA_DIR: otherDir.path, MERCATO_LOG_LEVEL: 'silent' }),
    silentLogger(),
    new Metrics(),
  )
  await stream.ensureTopics()
  await stream.close()
  return otherDir.path
}

/** Runs `mercato load args…` to its end; its exit code and output. */
async function load(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['src/main.ts', 'load', ...args], {
      timeout: 120_000,
    })
    return { status: 0, stdout, stderr }
  } catch (error) {
    const { code, stdout, stderr } = error as { code: number; stdout: string; stderr: string }
    return { status: code, stdout, stderr }
  }
}

describe('mercato load', () => {
  it('names the URL and the cause, exit 2, when nothing listens there', async () => {
    const server = createServer().listen(0, '127.0.0.1')
    await once(server, 'listening')
    const { port } = server.address() as { port: number }
    server.close()
    const url = `http://127.0.0.1:${port}`
    const result = await load(['--url', url, '--orders', '1', '--data-dir', await anotherShopsStream()])
    assert.equal(result.status, 2, result.stderr)
    assert.equal(result.stderr.trim(), `mercato: cannot reach ${url}: connect ECONNREFUSED 127.0.0.1:${port}`)
  })

  it("exits 1, saying why, when the orders it placed never end on the stream it follows (another shop's)", async () => {
    const shop = await start('all')
    const args = ['--url', shop.url, '--orders', '2', '--retry-share', '0']

    // A rate may be a fraction of an order per second.
    const followed = await load([...args, '--rate', '2.5', '--data-dir', shopDir, '--settle-timeout', '60'])
    assert.equal(followed.status, 0, followed.stderr)
    assert.match(followed.stdout, /accepted 2 .* unfinished 0/)
    // The consumer group it followed the orders with is its own: it goes with it.
    const streamDb = new DatabaseSync(join(shopDir, 'stream.db'), { readOnly: true })
    try {
      const groups = streamDb.prepare("SELECT DISTINCT grp FROM group_offsets WHERE grp LIKE 'watch-%'").all()
      assert.deepEqual(groups, [])
    } finally {
      streamDb.close()
    }

    const lost = await load([
      ...args,
      '--rate',
      '0',
      '--data-dir',
      await anotherShopsStream(),
      '--settle-timeout',
      '1',
    ])
    assert.equal(lost.status, 1, lost.stderr)
    assert.match(lost.stdout, /accepted 2 .* unfinished 2/)
    assert.match(
      lost.stderr,
      /^mercato: 2 of 2 accepted order\(s\) did not end within 1 s .*: none was seen to end, so give the --data-dir \(or --stream\) of the shop at http/m,
    )
  })
})
