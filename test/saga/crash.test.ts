// A crash mid-saga: the services run in a process of their own, which is killed with
// SIGKILL while orders are in flight and started again. Every order still ends, and
// nothing happens twice: the provider's own record shows one capture per confirmed order.
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { describe, it } from 'node:test'
import { storeLimitDefaults } from '../../src/engines/store/port.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import { processesOnOneDataDir, send, stockProduct, watchAndSignIn } from '../support/processes.ts'
import { waitFor } from '../support/wait.ts'

const { dir, start } = processesOnOneDataDir({ MERCATO_CARRIER_STEP_MS: '60000' })

describe('a services process killed with SIGKILL mid-saga', () => {
  it('finishes every order after it starts again, with no duplicate effect', async () => {
    const front = await start('gateway,user,command-api,payment-provider', {})
    const servicesEnv = { MERCATO_PAYMENT_PROVIDER_URL: front.url }
    let services = await start('order,inventory,payment,shipping', servicesEnv)
    const { watcher, admin, customer, close } = await watchAndSignIn(dir, 'cus_crash')
    try {
      await stockProduct(front.url, admin, 'CRASH-1', 700, 1_000)
      const order = {
        customerId: 'cus_crash',
        lines: [{ sku: 'CRASH-1', quantity: 1 }],
        shippingAddress: { name: 'C', line1: '1 Crash Rd', city: 'X', postalCode: '1', country: 'US' },
        paymentMethodToken: 'tok_visa',
      }
      // The first order proves prices and stock have arrived.
      const first = await send(front.url, 'POST', '/v1/orders', order, customer)
      assert.equal((await watcher.waitFor(first.id, 30_000))?.state, 'CONFIRMED')

      const ids: string[] = []
      for (let i = 0; i < 60; i++) {
        ids.push((await send(front.url, 'POST', '/v1/orders', order, customer)).id)
        if (i === 20) {
          services.child.kill('SIGKILL')
          await once(services.child, 'exit')
        }
      }
      services = await start('order,inventory,payment,shipping', servicesEnv)
      for (const id of ids) {
        assert.equal((await watcher.waitFor(id, 60_000))?.state, 'CONFIRMED', `${id} confirmed`)
      }
      for (const id of [first.id, ...ids]) {
        await waitFor(`${id} captured once`, async () => {
          const answer = await fetch(`${front.url}/provider/v1/charges?reference=${id}`)
          const { charges } = (await answer.json()) as {
            charges: { operations: { kind: string }[]; capturedMinor: number }[]
          }
          assert.equal(charges.length, 1, `${id}: one authorization`)
          const captures = charges[0].operations.filter((o) => o.kind === 'capture').length
          assert.ok(captures <= 1, `${id}: never captured twice`)
          return captures === 1
        })
      }
      const inventory = new SqliteStore(`${dir}/stores`, 'inventory', storeLimitDefaults)
      try {
        const [stock] = await inventory.query<{ on_hand: number; available: number; reserved: number }>(
          "SELECT on_hand, available, reserved FROM stock WHERE sku = 'CRASH-1'",
        )
        assert.deepEqual(
          {
            onHand: Number(stock.on_hand),
            available: Number(stock.available),
            reserved: Number(stock.reserved),
          },
          { onHand: 1_000 - 61, available: 1_000 - 61, reserved: 0 },
        )
      } finally {
        await inventory.close()
      }
    } finally {
      await close()
    }
  })
})
