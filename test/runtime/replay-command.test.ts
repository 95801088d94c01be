// `mercato replay --view` as an operator runs it beside a busy shop on the embedded engines.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { after, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { openEventStream } from '../../src/runtime/engines.ts'
import { tempDir } from '../support/wait.ts'

const dir = tempDir()
after(() => dir.remove())

describe('mercato replay --view', () => {
  it('waits for the views store while another process holds its write lock past a request’s bound', async () => {
    const stream = await openEventStream(
      loadConfig({ MERCATO_DATA_DIR: dir.path, MERCATO_LOG_LEVEL: 'silent' }),
      silentLogger(),
      new Metrics(),
    )
    await stream.ensureTopics()
    await stream.close()
    // A busy shop commits one transaction after another; here, one held for 8 s (a
    // request waits 2 s at most).
    mkdirSync(join(dir.path, 'stores'))
    const shop = new DatabaseSync(join(dir.path, 'stores', 'views.db'))
    shop.exec('PRAGMA journal_mode = WAL')
    shop.exec('BEGIN IMMEDIATE')
    const released = setTimeout(() => {
      shop.exec('COMMIT')
      shop.close()
    }, 8_000)
    try {
      const { stdout } = await promisify(execFile)(
        process.execPath,
        ['src/main.ts', 'replay', '--view', 'catalog', '--data-dir', dir.path],
        { timeout: 60_000 },
      )
      assert.match(stdout, /catalog: generation \d+ rebuilt in .* and now live/)
    } finally {
      clearTimeout(released)
      if (shop.isOpen) shop.close()
    }
  })
})
