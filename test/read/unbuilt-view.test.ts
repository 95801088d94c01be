// A query with a consistency token, against a view no projector has built yet: it waits its
// bound for the view to appear, as it waits for a view to reach the token.
import assert from 'node:assert/strict'
import { after, describe, it } from 'node:test'
import { processesOnOneDataDir, watchAndSignIn } from '../support/processes.ts'
import { waitFor } from '../support/wait.ts'

describe('a view not built yet', () => {
  const processes = processesOnOneDataDir({ MERCATO_READ_WAIT_MS: '20000' })

  it('answers a token once a projector starting meanwhile has built it, and 503 when none comes', async () => {
    const shop = await processes.start('gateway,user,command-api,query-api', { MERCATO_READ_WAIT_MS: '1000' })
    const clients = await watchAndSignIn(processes.dir, 'cus_unbuilt')
    after(() => clients.close())
    const sku = 'UNBUILT-1'
    const product = { name: 'Unbuilt', description: '', category: 'test', priceMinor: 100, currency: 'USD' }
    const written = await fetch(`${shop.url}/v1/products/${sku}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${clients.admin}` },
      body: JSON.stringify(product),
    })
    assert.equal(written.status, 202)
    const token = ((await written.json()) as { consistencyToken: string }).consistencyToken
    const read = (url: string) =>
      fetch(`${url}/v1/products/${sku}`, {
        headers: { authorization: `Bearer ${clients.admin}`, 'mercato-consistency-token': token },
      })
    // No projector anywhere: past its bound, nothing to answer from.
    const none = await read(shop.url)
    assert.equal(none.status, 503)
    assert.equal(none.headers.get('mercato-problem-type'), 'https://mercato.dev/problems/view-unavailable')
    // Nor is it ready, and it says why.
    const unready = await fetch(`${shop.url}/readyz`)
    assert.equal(unready.status, 503)
    assert.match(await unready.text(), /the catalog view has not been built yet/)
    // A query API waiting while a projector starts: the view is built within its bound.
    const patient = await processes.start('gateway,user,query-api', { MERCATO_COMMAND_API_URLS: shop.url })
    const waiting = read(patient.url)
    await processes.start('projector')
    const answer = await waiting
    assert.equal(answer.status, 200, await answer.clone().text())
    assert.equal(answer.headers.get('mercato-stale'), 'false')
    assert.equal(((await answer.json()) as { sku: string }).sku, sku)
    // Ready once it has sampled every view, the others than this read's too.
    await waitFor('the query API ready', async () => (await fetch(`${patient.url}/readyz`)).status === 200)
  })
})
