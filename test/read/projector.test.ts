import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { Projector, rebuildView } from '../../src/read/projector.ts'
import { groupOf, openViews } from '../../src/read/views.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { openCache, openEventStream, storeOpener } from '../../src/runtime/engines.ts'
import { productEvent } from '../engines/stream/conformance.ts'
import { tempDir, waitFor } from '../support/wait.ts'

describe('the projector', () => {
  it('drops a retired generation, with its consumer group, once its keep time is over', async () => {
    const dir = tempDir()
    const config = loadConfig({ MERCATO_DATA_DIR: dir.path, MERCATO_LOG_LEVEL: 'silent' })
    const log = silentLogger()
    const metrics = new Metrics()
    const stream = await openEventStream(config, log, metrics)
    const store = await storeOpener(config)('views')
    const views = await openViews({ store })
    const projector = new Projector(
      { views, stream, cache: await openCache(config), log, metrics },
      { pollIntervalMs: 20, retiredKeepMs: 0, invalidationTtlMs: 1_000, inboxRetentionMs: 60_000 },
    )
    await projector.start()
    try {
      await stream.publish([productEvent('RETIRE-1', 1)])
      const first = (await views.registry.live('catalog'))!.generation
      const group = stream.group(groupOf('catalog', first))
      const committed = async () =>
        (await stream.engine.lag(group, [stream.topic('products')])).reduce((sum, p) => sum + p.committed, 0)
      await waitFor('the live generation to fold the event', async () => (await committed()) > 0)
      const rebuilt = await rebuildView({ views, stream, metrics }, 'catalog')
      assert.equal(rebuilt, first + 1)
      await waitFor(
        'the retired generation to be dropped',
        async () => !(await views.registry.all('catalog')).some((g) => g.generation === first),
      )
      assert.equal(await committed(), 0, 'the retired generation has no consumer group left')
    } finally {
      await projector.stop()
      await stream.close()
      await store.close()
      dir.remove()
    }
  })

  it('stops a rebuild still under way once one begun after it goes live, before its storage is dropped', async () => {
    const dir = tempDir()
    const config = loadConfig({ MERCATO_DATA_DIR: dir.path, MERCATO_LOG_LEVEL: 'silent' })
    const stream = await openEventStream(config, silentLogger(), new Metrics())
    const store = await storeOpener(config)('views')
    const views = await openViews({ store })
    try {
      await stream.publish([productEvent('SLOW-1', 1)])
      // A rebuild that never gets its events (a slow one, a long history): it can only be overtaken.
      const stalled = {
        group: (name: string) => stream.group(name),
        topic: (name: string) => stream.topic(name),
        engine: stream.engine,
        subscribe: async () => ({ stop: async () => {} }),
      } as unknown as typeof stream
      let overtaking: Promise<void> | undefined
      const rebuilding = rebuildView({ views, stream: stalled, metrics: new Metrics() }, 'catalog', {
        pollMs: 50,
        onProgress: () => {
          overtaking ??= (async () => {
            const later = await views.registry.beginBuild('catalog', views.definitions.catalog.schemaVersion)
            await views.registry.switchTo('catalog', later.generation)
          })()
        },
      })
      await assert.rejects(rebuilding, /was not made live: a rebuild begun after it already is/)
      await overtaking
    } finally {
      await stream.close()
      await store.close()
      dir.remove()
    }
  })
})
