// A crash of a whole shop, its payment provider stand-in with it, while authorizations are
// in flight at the provider: after the restart every order is confirmed, authorized once
// and captured once. The provider frees the keys of the cut-short calls once their lease
// runs out; the payment service waits for that instead of failing the orders.
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { describe, it } from 'node:test'
import { processesOnOneDataDir, send, stockProduct, watchAndSignIn } from '../support/processes.ts'
import { waitFor } from '../support/wait.ts'

const { dir, start } = processesOnOneDataDir({
  MERCATO_CARRIER_STEP_MS: '60000',
  MERCATO_SAGA_STEP_TIMEOUT_MS: '60000',
})
const shop = 'gateway,user,command-api,payment-provider,order,inventory,payment,shipping'

describe('a whole shop killed with SIGKILL while the provider has authorizations in flight', () => {
  it('confirms every order after it starts again, each authorized and captured once', async () => {
    let running = await start(shop)
    const { watcher, admin, customer, close } = await watchAndSignIn(dir, 'cus_whole')
    try {
      await stockProduct(running.url, admin, 'WHOLE-1', 500, 100)
      const order = {
        lines: [{ sku: 'WHOLE-1', quantity: 1 }],
        shippingAddress: { name: 'W', line1: '1 Whole Rd', city: 'X', postalCode: '1', country: 'US' },
        paymentMethodToken: 'tok_visa',
      }
      const first = await send(running.url, 'POST', '/v1/orders', order, customer)
      assert.equal((await watcher.waitFor(first.id, 30_000))?.state, 'CONFIRMED')

      // Slow authorizations, so the kill finds several of them at work inside the provider.
      await send(running.url, 'PUT', '/provider/v1/dials', { latencyMs: 2_000 })
      const ids: string[] = []
      for (let i = 0; i < 8; i++)
        ids.push((await send(running.url, 'POST', '/v1/orders', order, customer)).id)
      await new Promise((resolve) => setTimeout(resolve, 1_000))
      running.child.kill('SIGKILL')
      await once(running.child, 'exit')
      running = await start(shop)

      for (const id of ids) {
        assert.equal((await watcher.waitFor(id, 90_000))?.state, 'CONFIRMED', `${id} confirmed`)
      }
      for (const id of [first.id, ...ids]) {
        await waitFor(`${id} captured once`, async () => {
          const answer = await fetch(`${running.url}/provider/v1/charges?reference=${id}`)
          const { charges } = (await answer.json()) as {
            charges: { operations: { kind: string }[] }[]
          }
          assert.equal(charges.length, 1, `${id}: one authorization`)
          const captures = charges[0].operations.filter((o) => o.kind === 'capture').length
          assert.ok(captures <= 1, `${id}: never captured twice`)
          return captures === 1
        })
      }
    } finally {
      await close()
    }
  })
})
