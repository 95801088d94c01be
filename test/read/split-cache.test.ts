// A query API in a process without the projector, on the embedded engines: the projector's
// invalidations reach its own process's cache only, so this one must not keep serving an
// entry the view has moved past.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { silentLogger } from '../../src/platform/logger.ts'
import { App } from '../../src/runtime/app.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { type Shop, startShop } from '../support/shop.ts'
import { waitFor } from '../support/wait.ts'

describe('a query API apart from the projector, with the in-process cache', () => {
  let shop: Shop
  let reader: App
  let readerUrl: string

  before(async () => {
    shop = await startShop('embedded')
    reader = new App(
      loadConfig({
        MERCATO_PORT: '0',
        MERCATO_DATA_DIR: shop.app.context.config.dataDir,
        MERCATO_TARGET: 'gateway,query-api',
        MERCATO_USER_URL: shop.url,
        MERCATO_SEED: 'false',
        MERCATO_LOG_LEVEL: 'silent',
      }),
      silentLogger(),
    )
    readerUrl = await reader.start()
  })
  after(async () => {
    await reader?.stop()
    await shop?.stop()
  })

  it('does not serve a cached answer the view has moved past', async () => {
    const price = async (url: string) => {
      const response = await fetch(`${url}/v1/products/SPLIT-1`)
      if (response.status !== 200) return { status: response.status }
      const body = (await response.json()) as { priceMinor: number }
      return { status: 200, priceMinor: body.priceMinor, cache: response.headers.get('mercato-cache') }
    }
    const product = { name: 'Split', description: '', category: 'test', currency: 'USD' }
    assert.equal((await shop.put('/v1/products/SPLIT-1', { ...product, priceMinor: 1000 })).status, 202)
    await waitFor('the reader to see the product', async () => (await price(readerUrl)).priceMinor === 1000)
    assert.deepEqual(await price(readerUrl), { status: 200, priceMinor: 1000, cache: 'hit' })

    assert.equal((await shop.put('/v1/products/SPLIT-1', { ...product, priceMinor: 2000 })).status, 202)
    await waitFor(
      'the projector to apply the change',
      async () => (await price(shop.url)).priceMinor === 2000,
    )
    // Within a few of its freshness samples (100 ms each), not the cache's 60 s lifetime.
    await waitFor(
      'the reader to see the change',
      async () => (await price(readerUrl)).priceMinor === 2000,
      2_000,
    )
  })

  it('after waiting for a token, does not serve an older cached answer without one', async () => {
    const product = { name: 'Split', description: '', category: 'split-wait', currency: 'USD' }
    const read = async (path: string, token?: string) =>
      (await (
        await fetch(`${readerUrl}${path}`, {
          headers: token ? { 'mercato-consistency-token': token } : {},
        })
      ).json()) as { priceMinor?: number; items?: { priceMinor: number }[] }
    assert.equal((await shop.put('/v1/products/SPLIT-2', { ...product, priceMinor: 1000 })).status, 202)
    await waitFor(
      'the reader to cache the product',
      async () => (await read('/v1/products/SPLIT-2')).priceMinor === 1000,
    )
    for (let round = 1; round <= 5; round++) {
      const priceMinor = 1000 + round
      const written = await shop.put('/v1/products/SPLIT-2', { ...product, priceMinor })
      const token = written.body.consistencyToken as string
      // Another route of the same view waits for the write, in this very process.
      const page = await read('/v1/products?category=split-wait', token)
      assert.equal(page.items?.[0].priceMinor, priceMinor)
      // It has seen the view past the cached answer: that answer is not served again.
      assert.equal((await read('/v1/products/SPLIT-2')).priceMinor, priceMinor, `round ${round}`)
    }
  })
})
