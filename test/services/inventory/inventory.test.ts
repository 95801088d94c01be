// The inventory service on each store, for what the saga suites cannot time: a confirmation
// that arrives after its reservation expired and its stock went to another order.
import assert from 'node:assert/strict'
import { after, describe, it } from 'node:test'
import { startInventoryService } from '../../../src/services/inventory/inventory-service.ts'
import { waitFor } from '../../support/wait.ts'
import { type Harness, openHarness, storeKinds } from '../notification/harness.ts'

interface StockRow {
  sku: string
  on_hand: number
  available: number
  reserved: number
}

for (const { kind, skip } of await storeKinds('the inventory service')) {
  describe(`the inventory service on ${kind}`, { skip }, () => {
    const harnesses: Harness[] = []
    after(() => Promise.all(harnesses.map((h) => h.close())))

    it('sells nothing of a confirmed order whose expired reservation cannot be taken again whole', async () => {
      const harness = await openHarness(kind)
      harnesses.push(harness)
      const service = harness.service('inventory')
      await startInventoryService(service, { reservationTtlMs: 150 })
      const stock = async () =>
        Object.fromEntries(
          (await service.store.query<StockRow>('SELECT * FROM stock ORDER BY sku')).map((row) => [
            row.sku,
            {
              onHand: Number(row.on_hand),
              available: Number(row.available),
              reserved: Number(row.reserved),
            },
          ]),
        )
      const handled = async (eventId: string) =>
        (await service.store.query('SELECT 1 FROM mercato_inbox WHERE event_id = $1', [eventId])).length > 0
      const place = (orderId: string, lines: { sku: string; quantity: number }[]) =>
        harness.publish('order.placed', orderId, {
          orderId,
          customerId: 'cus_inv',
          lines: lines.map((line) => ({ ...line, unitPriceMinor: 100 })),
          totalMinor: 100 * lines.reduce((sum, line) => sum + line.quantity, 0),
          currency: 'USD',
        })

      for (const [sku, delta] of [
        ['INV-A', 5],
        ['INV-B', 1],
      ] as const) {
        const restock = await harness.publish('inventory.adjustment-requested', sku, {
          sku,
          delta,
          reason: 'restock',
        })
        await waitFor(`${sku} restocked`, () => handled(restock.id))
      }
      await place('ord_inv_1', [
        { sku: 'INV-A', quantity: 2 },
        { sku: 'INV-B', quantity: 1 },
      ])
      // The saga never answers: the reservation expires and gives its stock back.
      await waitFor('the reservation expired', async () => {
        const rows = await service.store.query<{ status: string }>(
          "SELECT status FROM reservations WHERE order_id = 'ord_inv_1'",
        )
        return rows[0]?.status === 'released'
      })
      // Another order takes the only INV-B, then the first order's confirmation comes late.
      await place('ord_inv_2', [{ sku: 'INV-B', quantity: 1 }])
      await waitFor('the second order reserved', async () => (await stock())['INV-B']?.reserved === 1)
      const confirmed = await harness.publish('order.confirmed', 'ord_inv_1', { orderId: 'ord_inv_1' })
      await waitFor('the late confirmation handled', () => handled(confirmed.id))

      assert.deepEqual(await stock(), {
        'INV-A': { onHand: 5, available: 5, reserved: 0 },
        'INV-B': { onHand: 1, available: 0, reserved: 1 },
      })
      const [reservation] = await service.store.query<{ status: string }>(
        "SELECT status FROM reservations WHERE order_id = 'ord_inv_1'",
      )
      assert.equal(reservation.status, 'released')
      await service.stop()
    })
  })
}
