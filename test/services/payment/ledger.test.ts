import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import pg from 'pg'
import { type Store, storeLimitDefaults } from '../../../src/engines/store/port.ts'
import { PostgresStore } from '../../../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../../../src/engines/store/sqlite/sqlite-store.ts'
import {
  accounts,
  appendEntry,
  type EntryKind,
  linesFor,
  paymentLedger,
  post,
  trialBalance,
  unbalancedEntries,
} from '../../../src/services/payment/ledger.ts'
import { paymentMigrations } from '../../../src/services/payment/payments.ts'
import { serverUrls, skipUnlessReachable } from '../../support/servers.ts'
import { tempDir, uniqueName } from '../../support/wait.ts'

interface Engine {
  open(): Promise<Store>
  cleanup(store: Store): Promise<void>
}

const sqlite: Engine = (() => {
  const dir = tempDir()
  process.on('exit', () => dir.remove())
  return {
    open: async () => new SqliteStore(dir.path, uniqueName('payment'), storeLimitDefaults),
    cleanup: (store) => store.close(),
  }
})()

const postgres: Engine = {
  open: async () => new PostgresStore(serverUrls.postgres, uniqueName('payment'), storeLimitDefaults),
  async cleanup(store) {
    await store.close()
    const client = new pg.Client(serverUrls.postgres)
    await client.connect()
    await client.query(`DROP SCHEMA IF EXISTS ${store.service} CASCADE`)
    await client.end()
  },
}

let counter = 0
const payment = () => {
  counter++
  return { paymentId: `pay_${counter}_${uniqueName('p')}`, orderId: `order-${counter}`, currency: 'EUR' }
}

function defineLedgerSuite(name: string, skip: string | undefined, engine: Engine) {
  describe(`the payment ledger on ${name}`, { skip }, () => {
    let store: Store
    before(async () => {
      store = await engine.open()
      await store.migrate(paymentMigrations)
    })
    after(async () => {
      if (store) await engine.cleanup(store)
    })

    it('refuses UPDATE and DELETE of entries and lines at the store level', async () => {
      const p = payment()
      const entryId = await store.transaction((tx) => post(tx, p, 'authorize', 1_000))
      const refused = [
        ['UPDATE ledger_entries SET kind = $1 WHERE id = $2', ['void', entryId]],
        ['DELETE FROM ledger_entries WHERE id = $1', [entryId]],
        ['UPDATE ledger_lines SET amount_minor = $1 WHERE entry_id = $2', [0, entryId]],
        ['DELETE FROM ledger_lines WHERE entry_id = $1', [entryId]],
      ] as const
      for (const [sql, params] of refused) {
        await assert.rejects(
          store.transaction((tx) => tx.execute(sql, [...params])),
          /append-only/,
          sql,
        )
      }
      const lines = await store.query<{ account: string; amount_minor: number }>(
        'SELECT account, amount_minor FROM ledger_lines WHERE entry_id = $1 ORDER BY line_no',
        [entryId],
      )
      assert.deepEqual(
        lines.map((l) => [l.account, Number(l.amount_minor)]),
        [
          [accounts.authorizationsReceivable, 1_000],
          [accounts.customerAuthorizations, -1_000],
        ],
      )
      const [entry] = await store.query<{ kind: string }>('SELECT kind FROM ledger_entries WHERE id = $1', [
        entryId,
      ])
      assert.equal(entry.kind, 'authorize')
    })

    it('refuses an entry that does not balance, and writes none of it', async () => {
      const p = payment()
      await assert.rejects(
        store.transaction((tx) =>
          appendEntry(tx, {
            ...p,
            kind: 'capture',
            lines: [
              { account: accounts.providerReceivable, amountMinor: 500 },
              { account: accounts.sales, amountMinor: -499 },
            ],
          }),
        ),
        /does not balance/,
      )
      const rows = await store.query('SELECT id FROM ledger_entries WHERE payment_id = $1', [p.paymentId])
      assert.equal(rows.length, 0)
    })

    it('finds an entry written past the code that does not balance', async () => {
      const own = await engine.open()
      try {
        await own.migrate(paymentMigrations)
        const p = payment()
        await own.transaction((tx) => post(tx, p, 'authorize', 300))
        await own.transaction(async (tx) => {
          await tx.execute(
            `INSERT INTO ledger_entries (id, payment_id, order_id, kind, currency, created_at)
             VALUES ('raw', $1, $2, 'capture', 'EUR', $3)`,
            [p.paymentId, p.orderId, new Date().toISOString()],
          )
          await tx.execute(
            `INSERT INTO ledger_lines (entry_id, line_no, account, amount_minor, currency)
             VALUES ('raw', 1, 'sales', -5, 'EUR')`,
          )
        })
        assert.deepEqual(await unbalancedEntries(own), [{ entryId: 'raw', currency: 'EUR', sumMinor: -5 }])
        const total = (await trialBalance(own)).reduce((sum, account) => sum + account.balanceMinor, 0)
        assert.equal(total, -5)
      } finally {
        await engine.cleanup(own)
      }
    })

    it('books each kind of entry once per payment', async () => {
      const p = payment()
      await store.transaction((tx) => post(tx, p, 'authorize', 700))
      await assert.rejects(store.transaction((tx) => post(tx, p, 'authorize', 700)))
      assert.equal((await paymentLedger(store, p.paymentId)).openAuthorizedMinor, 700)
    })

    it('keeps every entry balanced and the ledger at zero through any sequence of steps', async () => {
      const step = fc.oneof(
        fc.record({
          kind: fc.constant<EntryKind>('authorize'),
          // Zero too: an order of free products is authorized and captured for nothing.
          amount: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 1_000_000 })),
        }),
        fc.record({ kind: fc.constant<EntryKind>('capture'), amount: fc.constant(0) }),
        fc.record({ kind: fc.constant<EntryKind>('void'), amount: fc.constant(0) }),
        fc.record({ kind: fc.constant<EntryKind>('refund'), amount: fc.integer({ min: 1, max: 1_000_000 }) }),
      )
      await fc.assert(
        fc.asyncProperty(fc.array(step, { maxLength: 12 }), async (steps) => {
          const p = payment()
          // The payment's state machine, as the service runs it; refunds may be partial here.
          const model = { status: 'none', authorized: 0, captured: 0, refunded: 0 }
          for (const { kind, amount } of steps) {
            let booked: number | undefined
            if (kind === 'authorize' && model.status === 'none') {
              Object.assign(model, { status: 'authorized', authorized: amount })
              booked = amount
            } else if (kind === 'capture' && model.status === 'authorized') {
              Object.assign(model, { status: 'captured', captured: model.authorized })
              booked = model.authorized
            } else if (kind === 'void' && model.status === 'authorized') {
              model.status = 'voided'
              booked = model.authorized
            } else if (kind === 'refund' && model.status === 'captured') {
              booked = Math.min(amount, model.captured - model.refunded)
              model.refunded += booked
              if (model.refunded === model.captured) model.status = 'refunded'
            }
            if (booked === undefined) continue
            const lines = linesFor(kind, booked)
            await store.transaction((tx) => appendEntry(tx, { ...p, kind, lines }))
          }
          const ledger = await paymentLedger(store, p.paymentId)
          assert.equal(ledger.status, model.status)
          assert.equal(ledger.openAuthorizedMinor, model.status === 'authorized' ? model.authorized : 0)
          assert.equal(ledger.capturedMinor, model.captured)
          assert.equal(ledger.refundedMinor, model.refunded)
          assert.deepEqual(await unbalancedEntries(store), [])
          const total = (await trialBalance(store)).reduce((sum, account) => sum + account.balanceMinor, 0)
          assert.equal(total, 0)
        }),
        { numRuns: 60 },
      )
    })
  })
}

defineLedgerSuite('SQLite', undefined, sqlite)
defineLedgerSuite('PostgreSQL', await skipUnlessReachable('payment ledger: PostgreSQL', 'postgres'), postgres)
