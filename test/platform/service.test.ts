// The service kit on each store: a batch of events is handled in one transaction, and
// again one event at a time when a handler's transaction failed in it; either way the
// effects must be those of handling the events one by one, exactly once, redelivery included.
import assert from 'node:assert/strict'
import { after, describe, it } from 'node:test'
import { createEvent } from '../../src/contracts/envelope.ts'
import { silentLogger } from '../../src/platform/logger.ts'
import { type Handler, Service } from '../../src/platform/service.ts'
import { type Harness, openHarness, storeKinds } from '../services/notification/harness.ts'
import { waitFor } from '../support/wait.ts'

class Refused extends Error {}

for (const { kind, skip } of await storeKinds('the service kit')) {
  describe(`the service kit on ${kind}`, { skip }, () => {
    const harnesses: Harness[] = []
    after(() => Promise.all(harnesses.map((h) => h.close())))

    it('handles a batch as one by one: a failed transact is undone whole, and a redelivery changes nothing', async () => {
      const harness = await openHarness(kind)
      harnesses.push(harness)
      // One key, so the three events sit in one partition and come as one batch.
      const events = ['A', 'B', 'C'].map((name) =>
        createEvent({
          type: 'product.upserted',
          subject: 'SVC-1',
          source: 'mercato/command-api',
          data: { sku: 'SVC-1', name, description: '', category: 'c', priceMinor: 100, currency: 'USD' },
        }),
      )
      await harness.stream.publish(events)
      const service = harness.service('kit')
      await service.start([
        {
          id: 'kit-0001',
          sql: 'CREATE TABLE IF NOT EXISTS seen (name TEXT NOT NULL, emitted INTEGER NOT NULL)',
        },
      ])
      const sent: string[] = []
      const handlers: Record<string, Handler> = {
        'product.upserted': async (event, tools) => {
          const name = String(event.data.name)
          const record = (label: string) =>
            tools.transact(async (tx, emit) => {
              await tx.execute('INSERT INTO seen (name, emitted) VALUES ($1, 1)', [label])
              tx.afterCommit(() => sent.push(label))
              emit({
                type: 'notification.sent',
                subject: 'cus_kit',
                data: {
                  notificationId: `${event.id}:${label}`,
                  customerId: 'cus_kit',
                  channel: 'email',
                  template: label,
                },
              })
              if (label === 'B') throw new Refused('B is refused after its writes')
            })
          try {
            await record(name)
          } catch (error) {
            if (!(error instanceof Refused)) throw error
            await record(`${name}-recovered`)
          }
        },
      }
      await service.consume(['products'], handlers)
      const names = async () =>
        (await service.store.query<{ name: string }>('SELECT name FROM seen ORDER BY name')).map(
          (r) => r.name,
        )
      await waitFor('three events handled', async () => (await names()).length === 3)
      assert.deepEqual(await names(), ['A', 'B-recovered', 'C'], "B's own writes were undone")
      assert.deepEqual(sent.sort(), ['A', 'B-recovered', 'C'], "B's after-commit callback never ran")
      const outbox = await service.store.query<{ event: string }>('SELECT event FROM mercato_outbox')
      assert.deepEqual(
        outbox.map((row) => JSON.parse(row.event).data.template).sort(),
        ['A', 'B-recovered', 'C'],
        "B's emitted event was dropped with its writes",
      )

      // Every event delivered again: the inbox passes over all three.
      await service.stop()
      await harness.stream.engine.seek(
        harness.stream.group('kit'),
        harness.stream.topic('products'),
        'earliest',
      )
      const again = new Service({
        name: 'kit',
        store: service.store,
        stream: harness.stream,
        log: silentLogger(),
        metrics: harness.metrics,
      })
      await again.consume(['products'], handlers)
      await waitFor('the redelivery handled', async () => {
        const lag = await harness.stream.engine.lag(harness.stream.group('kit'), [
          harness.stream.topic('products'),
        ])
        return lag.every((partition) => partition.lag === 0)
      })
      assert.deepEqual(await names(), ['A', 'B-recovered', 'C'])
      await again.stop()
    })
  })
}
