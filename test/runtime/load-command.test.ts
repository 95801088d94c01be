// `mercato load` as an operator runs it: how it ends when it cannot reach the shop.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { after, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { openEventStream } from '../../src/runtime/engines.ts'
import { tempDir } from '../support/wait.ts'

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
})
