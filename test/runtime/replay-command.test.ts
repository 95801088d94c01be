// `mercato replay --view` as an operator runs it beside a busy shop on the embedded engines.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { after, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { createEvent } from '../../src/contracts/envelope.ts'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { openEventStream } from '../../src/runtime/engines.ts'
import { tempDir } from '../support/wait.ts'

const dir = tempDir()
after(() => dir.remove())

describe('mercato replay --group', () => {
  it('refuses a topic that does not exist, and a group that has read nothing of the topic, changing nothing', async () => {
    const shop = tempDir()
    try {
      const config = loadConfig({ MERCATO_DATA_DIR: shop.path, MERCATO_LOG_LEVEL: 'silent' })
      const stream = await openEventStream(config, silentLogger(), new Metrics())
      await stream.ensureTopics()
      await stream.publish([
        createEvent({
          type: 'inventory.adjustment-requested',
          source: 'mercato/test',
          subject: 'REPLAY-1',
          data: { sku: 'REPLAY-1', delta: 1, reason: 'restock' },
        }),
      ])
      const replay = (...args: string[]) =>
        promisify(execFile)(process.execPath, ['src/main.ts', 'replay', ...args, '--data-dir', shop.path], {
          timeout: 60_000,
        }).then(
          () => ({ code: 0, stderr: '' }),
          (error: { code: number; stderr: string }) => error,
        )
      const noTopic = await replay('--group', 'inventory', '--topic', 'nosuch', '--earliest')
      assert.equal(noTopic.code, 2)
      assert.match(noTopic.stderr, /no topic "nosuch"/)
      const noGroup = await replay('--group', 'inventroy', '--topic', 'inventory', '--earliest')
      assert.equal(noGroup.code, 2)
      assert.match(noGroup.stderr, /"inventroy" has read nothing of inventory/)
      const lag = await stream.engine.lag(stream.group('inventroy'), [stream.topic('inventory')])
      assert.ok(
        lag.every((p) => !p.hasCommitted),
        'no position made for the mistyped group',
      )
      assert.equal(
        (await replay('--group', 'inventroy', '--topic', 'inventory', '--earliest', '--new-group')).code,
        0,
      )
      // Moved to the start, the group has a position there: moving it again is no mistake.
      assert.equal((await replay('--group', 'inventroy', '--topic', 'inventory', '--offset', '0')).code, 0)
      // A view's rebuild takes no group's flags: mixed in, they are refused, not dropped.
      const mixed = await replay('--view', 'catalog', '--group', 'x', '--offset', '0')
      assert.equal(mixed.code, 2)
      assert.match(mixed.stderr, /takes none of --group, --offset/)
      await stream.close()
    } finally {
      shop.remove()
    }
  })
})

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
