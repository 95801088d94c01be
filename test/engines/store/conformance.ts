// One conformance suite for the store port (with its inbox and outbox), run against every engine.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { CloudEvent } from '../../../src/contracts/envelope.ts'
import { handleOnce, pruneInbox } from '../../../src/engines/store/inbox.ts'
import { addToOutbox, OutboxRelay } from '../../../src/engines/store/outbox.ts'
import { type Store, type StoreLimits, storeLimitDefaults } from '../../../src/engines/store/port.ts'
import { SqliteLog, sqliteLogDefaults } from '../../../src/engines/stream/embedded/sqlite-log.ts'
import { EventStream } from '../../../src/engines/stream/event-stream.ts'
import { OverloadedError } from '../../../src/platform/errors.ts'
import { silentLogger } from '../../../src/platform/logger.ts'
import { Metrics } from '../../../src/platform/metrics.ts'
import { tempDir, uniqueName, waitFor } from '../../support/wait.ts'
import { productEvent } from '../stream/conformance.ts'

export type OpenStore = (service: string, limits: StoreLimits) => Promise<Store>

const migrations = [
  {
    id: '0001-stock',
    sql: 'CREATE TABLE stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL CHECK (on_hand >= 0))',
  },
  { id: '0002-stock-reserved', sql: 'ALTER TABLE stock ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0' },
]

export function defineStoreConformance(
  name: string,
  skip: string | undefined,
  open: OpenStore,
  drop: (service: string) => Promise<void>,
) {
  describe(`store port conformance: ${name}`, { skip, concurrency: false }, () => {
    const dir = tempDir()
    const opened: { store: Store; service: string }[] = []
    let stream: EventStream

    const newStore = async (limits: Partial<StoreLimits> = {}) => {
      const service = uniqueName('svc')
      const store = await open(service, { ...storeLimitDefaults, ...limits })
      opened.push({ store, service })
      await store.migrate(migrations)
      return store
    }

    before(async () => {
      stream = new EventStream(
        new SqliteLog({ ...sqliteLogDefaults, path: join(dir.path, 'stream.db') }),
        {
          topicPrefix: '',
          partitions: 2,
          eventBytesMax: 16_384,
          batchSizeMax: 100,
          retry: { attemptsMax: 3, backoffBaseMs: 1, backoffMaxMs: 5 },
          lagIntervalMs: 60_000,
        },
        silentLogger(),
        new Metrics(),
      )
      await stream.ensureTopics(['products'])
    })
    after(async () => {
      for (const { store, service } of opened) {
        await store.close().catch(() => {})
        await drop(service)
      }
      await stream.close()
      dir.remove()
    })

    it('applies each migration once, however often migrate runs', async () => {
      const store = await newStore()
      await store.migrate(migrations)
      await store.transaction((tx) =>
        tx.execute('INSERT INTO stock (sku, on_hand, reserved) VALUES ($1, $2, $3)', ['a', 5, 1]),
      )
      const rows = await store.query<{ sku: string; on_hand: number; reserved: number }>(
        'SELECT * FROM stock',
      )
      assert.deepEqual(rows, [{ sku: 'a', on_hand: 5, reserved: 1 }])
      const applied = await store.query<{ id: string }>('SELECT id FROM mercato_migrations ORDER BY id')
      assert.deepEqual(
        applied.map((r) => r.id),
        [
          '0001-stock',
          '0002-stock-reserved',
          'mercato-0001-inbox',
          'mercato-0002-outbox',
          'mercato-0003-inbox-handled-at',
        ],
      )
    })

    it('closes after the transaction in flight commits, and refuses work after', async () => {
      const store = await newStore()
      const inFlight = store.transaction(async (tx) => {
        await tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['late', 1])
        await new Promise((resolve) => setTimeout(resolve, 100))
        return 'committed'
      })
      await new Promise((resolve) => setTimeout(resolve, 20))
      await store.close()
      assert.equal(await inFlight, 'committed')
      await assert.rejects(store.query('SELECT 1'))
      await assert.rejects(store.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['after', 1]))
    })

    it('runs a statement with RETURNING on its own and gives its rows; one that fails changes nothing', async () => {
      const store = await newStore()
      await store.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2), ($3, $4)', ['r1', 5, 'r2', 7])
      const taken = await store.executeReturning<{ sku: string; on_hand: number }>(
        'UPDATE stock SET on_hand = on_hand - $1 WHERE on_hand >= $1 RETURNING sku, on_hand',
        [6],
      )
      assert.deepEqual(
        taken.map((row) => ({ sku: row.sku, on_hand: Number(row.on_hand) })),
        [{ sku: 'r2', on_hand: 1 }],
      )
      assert.deepEqual(
        await store.executeReturning('UPDATE stock SET on_hand = 0 WHERE sku = $1 RETURNING sku', ['none']),
        [],
      )
      await assert.rejects(store.executeReturning('UPDATE stock SET on_hand = on_hand - 6 RETURNING sku'))
      const rows = await store.query<{ sku: string; on_hand: number }>(
        'SELECT sku, on_hand FROM stock ORDER BY sku',
      )
      assert.deepEqual(
        rows.map((row) => [row.sku, Number(row.on_hand)]),
        [
          ['r1', 5],
          ['r2', 1],
        ],
      )
    })

    it('commits a transaction that resolves and rolls back one that throws, with its after-commit callbacks', async () => {
      const store = await newStore()
      let committed = 0
      await store.transaction(async (tx) => {
        await tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['kept', 1])
        tx.afterCommit(() => committed++)
      })
      await assert.rejects(
        store.transaction(async (tx) => {
          await tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['lost', 1])
          tx.afterCommit(() => committed++)
          await tx.execute('UPDATE stock SET on_hand = on_hand - 5 WHERE sku = $1', ['kept'])
        }),
      )
      const rows = await store.query<{ sku: string; on_hand: number }>(
        'SELECT sku, on_hand FROM stock ORDER BY sku',
      )
      assert.deepEqual(rows, [{ sku: 'kept', on_hand: 1 }])
      assert.equal(committed, 1)
    })

    it('keeps concurrent transactions apart: each that throws rolls back alone, each that resolves is committed when it resolves', async () => {
      const store = await newStore()
      const callbacks: string[] = []
      const outcomes = await Promise.allSettled(
        Array.from({ length: 60 }, (_, i) =>
          store
            .transaction(async (tx) => {
              await tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', [`c${i}`, i])
              tx.afterCommit(() => callbacks.push(`c${i}`))
              if (i % 3 === 0) throw new Error(`transaction ${i} refused`)
              const [row] = await tx.query<{ on_hand: number }>('SELECT on_hand FROM stock WHERE sku = $1', [
                `c${i}`,
              ])
              return row.on_hand
            })
            .then(async (value) => {
              // Resolved means committed: another connection sees it at once.
              const seen = await store.query('SELECT 1 FROM stock WHERE sku = $1', [`c${i}`])
              return { value, seen: seen.length }
            }),
        ),
      )
      outcomes.forEach((outcome, i) => {
        if (i % 3 === 0) assert.equal(outcome.status, 'rejected', `transaction ${i}`)
        else assert.deepEqual(outcome.status === 'fulfilled' && outcome.value, { value: i, seen: 1 })
      })
      const rows = await store.query<{ sku: string }>("SELECT sku FROM stock WHERE sku LIKE 'c%'")
      const expected = Array.from({ length: 60 }, (_, i) => i).filter((i) => i % 3 !== 0)
      assert.deepEqual(rows.map((r) => r.sku).sort(), expected.map((i) => `c${i}`).sort())
      assert.deepEqual([...callbacks].sort(), expected.map((i) => `c${i}`).sort())
    })

    it('resolves a committed transaction even when an after-commit callback throws', async () => {
      const store = await newStore()
      const warned = new Promise<Error>((resolve) => {
        const listen = (warning: Error) => {
          if (!/a callback fails/.test(warning.message)) return
          process.off('warning', listen)
          resolve(warning)
        }
        process.on('warning', listen)
      })
      const ran: string[] = []
      const value = await store.transaction(async (tx) => {
        await tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['cb', 1])
        tx.afterCommit(() => {
          throw new Error('a callback fails')
        })
        tx.afterCommit(() => ran.push('next'))
        return 'done'
      })
      assert.equal(value, 'done')
      assert.deepEqual(ran, ['next'], 'the callbacks after it still run')
      assert.match((await warned).message, /a callback fails/)
      assert.equal((await store.query('SELECT 1 FROM stock WHERE sku = $1', ['cb'])).length, 1)
    })

    it('has an inbox: an event handled twice, or by concurrent callers, has one effect', async () => {
      const store = await newStore()
      await store.transaction((tx) =>
        tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['s', 0]),
      )
      const restock = () =>
        handleOnce(store, 'inventory', 'event-1', async (tx) => {
          await tx.execute('UPDATE stock SET on_hand = on_hand + 10 WHERE sku = $1', ['s'])
        })
      const outcomes = await Promise.all([restock(), restock(), restock()])
      assert.equal(await restock(), false)
      assert.equal(outcomes.filter(Boolean).length, 1)
      const [row] = await store.query<{ on_hand: number }>('SELECT on_hand FROM stock WHERE sku = $1', ['s'])
      assert.equal(row.on_hand, 10)
    })

    it('forgets handled events past the retention, batch after batch, and still absorbs a recent redelivery', async () => {
      const store = await newStore()
      const weekAgo = new Date(Date.now() - 7 * 86_400_000).toISOString()
      // More old rows than one prune statement deletes, of two consumers.
      await store.transaction(async (tx) => {
        for (let i = 0; i < 2_300; i++)
          await tx.execute('INSERT INTO mercato_inbox (consumer, event_id, handled_at) VALUES ($1, $2, $3)', [
            i % 2 ? 'order' : 'payment',
            `old-${i}`,
            weekAgo,
          ])
      })
      let effects = 0
      const handle = (id: string) =>
        handleOnce(store, 'order', id, async () => {
          effects++
        })
      assert.equal(await handle('recent'), true)
      assert.equal(await pruneInbox(store, new Date(Date.now() - 86_400_000)), 2_300)
      const left = await store.query<{ event_id: string }>('SELECT event_id FROM mercato_inbox')
      assert.deepEqual(
        left.map((row) => row.event_id),
        ['recent'],
      )
      assert.equal(await handle('recent'), false, 'a recent event is remembered')
      assert.equal(await handle('old-1'), true, 'a forgotten one is handled again')
      assert.equal(effects, 2)
    })

    it('relays the outbox; a crash between publish and mark publishes again, and the inbox absorbs it', async () => {
      const store = await newStore()
      const events = [productEvent('outbox', 0), productEvent('outbox', 1)]
      await store.transaction(async (tx) => {
        await tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['outbox', 3])
        await addToOutbox(store, tx, events)
      })
      const relay = () =>
        new OutboxRelay(
          store,
          stream,
          { batchSizeMax: 100, pollIntervalMs: 10, sentRetentionMs: 60_000 },
          silentLogger(),
          new Metrics(),
        )
      // The first relay publishes, then dies before it marks the rows sent.
      const crashing = relay()
      await crashing.publish(await crashing.pending())
      // The next one finds them unsent and publishes them again.
      const survivor = relay()
      survivor.start()
      await waitFor('the outbox to drain', async () => (await survivor.pending()).length === 0)
      await survivor.stop()

      const consumerStore = await newStore()
      const received: CloudEvent[] = []
      const handled: string[] = []
      const subscription = await stream.subscribe({
        group: uniqueName('outbox-consumer'),
        topics: ['products'],
        handle: async (event) => {
          if (event.subject !== 'outbox') return
          received.push(event)
          await handleOnce(consumerStore, 'catalog', event.id, async () => {
            handled.push(event.id)
          })
        },
      })
      await waitFor('both copies of both events', () => received.length === 4)
      await subscription.stop()
      assert.deepEqual(
        handled,
        events.map((e) => e.id),
      )
    })

    it("relays every committed event once: this process hands its rows over, another process's are read on the poll", async () => {
      const store = await newStore()
      const subject = uniqueName('handed')
      const received: string[] = []
      const subscription = await stream.subscribe({
        group: uniqueName('handed-consumer'),
        topics: ['products'],
        handle: async (event) => {
          if (event.subject.startsWith(subject)) received.push(event.id)
        },
      })
      const relay = new OutboxRelay(
        store,
        stream,
        { batchSizeMax: 4, pollIntervalMs: 20, sentRetentionMs: 60_000 },
        silentLogger(),
        new Metrics(),
      )
      relay.start()
      const events = Array.from({ length: 30 }, (_, i) => productEvent(`${subject}-${i % 3}`, i))
      // Transactions of this process, side by side, some with two events.
      await Promise.all(
        [0, 2, 4, 6, 8, 10, 12, 14, 16, 18].map((i) =>
          store.transaction((tx) => addToOutbox(store, tx, events.slice(i, i + 2))),
        ),
      )
      // Rows of another process (written past this process's outbox code), between more of ours.
      for (const event of events.slice(20, 25))
        await store.execute('INSERT INTO mercato_outbox (event, created_at) VALUES ($1, $2)', [
          JSON.stringify(event),
          new Date().toISOString(),
        ])
      await store.transaction((tx) => addToOutbox(store, tx, events.slice(25)))
      await waitFor('every event', () => received.length >= events.length)
      await new Promise((resolve) => setTimeout(resolve, 150)) // polls that must find nothing new
      await relay.stop()
      await subscription.stop()
      assert.deepEqual([...received].sort(), events.map((e) => e.id).sort())
      assert.deepEqual(await relay.pending(), [])
    })

    it('prunes the rows sent before the retention, batch after batch, and keeps the recent and the unsent', async () => {
      const store = await newStore()
      const hourAgo = new Date(Date.now() - 3_600_000).toISOString()
      const now = new Date().toISOString()
      // More old rows than one prune statement looks at, then recent ones, then unsent ones.
      const sentAt = [...Array(2_500).fill(hourAgo), ...Array(20).fill(now), ...Array(5).fill(null)]
      await store.transaction(async (tx) => {
        for (const at of sentAt)
          await tx.execute('INSERT INTO mercato_outbox (event, created_at, sent_at) VALUES ($1, $2, $3)', [
            '{}',
            hourAgo,
            at,
          ])
      })
      const relay = new OutboxRelay(
        store,
        stream,
        { batchSizeMax: 100, pollIntervalMs: 10, sentRetentionMs: 60_000 },
        silentLogger(),
        new Metrics(),
      )
      await relay.prune()
      const left = await store.query<{ sent_at: string | null }>(
        'SELECT sent_at FROM mercato_outbox ORDER BY id',
      )
      assert.deepEqual(
        left.map((row) => row.sent_at),
        sentAt.slice(2_500),
      )
    })

    it('refuses an invalid event in the outbox, rolling the state change back with it', async () => {
      const store = await newStore()
      const bad = productEvent('bad', 0)
      await assert.rejects(
        store.transaction(async (tx) => {
          await tx.execute('INSERT INTO stock (sku, on_hand) VALUES ($1, $2)', ['bad', 1])
          await addToOutbox(store, tx, [{ ...bad, data: { ...bad.data, currency: 'euro' } }])
        }),
        /currency/,
      )
      assert.deepEqual(await store.query('SELECT * FROM stock WHERE sku = $1', ['bad']), [])
    })

    it('answers a clear error within its timeout when the pool and its queue are full', async () => {
      const store = await newStore({ poolSizeMax: 1, queueLengthMax: 1, acquireTimeoutMs: 200 })
      let release: () => void = () => {}
      const held = store.transaction(
        () =>
          new Promise<void>((resolve) => {
            release = resolve
          }),
      )
      await waitFor('the holder to start', () => release.toString() !== '() => {}')
      const waiting = store.transaction((tx) => tx.query('SELECT 1'))
      const refused = store.transaction((tx) => tx.query('SELECT 1'))
      await assert.rejects(
        refused,
        (error: Error) => error instanceof OverloadedError && /waiting/.test(error.message),
      )
      await assert.rejects(
        waiting,
        (error: Error) => error instanceof OverloadedError && /200 ms/.test(error.message),
      )
      release()
      await held
      assert.equal((await store.transaction((tx) => tx.query('SELECT 1 AS one'))).length, 1)
    })
  })
}
