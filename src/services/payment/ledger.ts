// The payment service's double-entry ledger: append-only entries, each made of lines whose
// signed amounts (debit positive, credit negative, minor units) sum to zero. The store
// refuses UPDATE and DELETE on both tables (triggers), so history can only grow; a
// correction is a new, reversing entry.
//
// Accounts, per payment:
//   authorize: Dr authorizations_receivable   Cr customer_authorizations
//   void:      Dr customer_authorizations     Cr authorizations_receivable   (reverses authorize)
//   capture:   reverses authorize, then Dr provider_receivable  Cr sales
//   refund:    Dr sales                       Cr provider_receivable
// So authorizations_receivable holds what is authorized and not yet captured or voided,
// and provider_receivable what was captured and not refunded.
import type { Migration, Tx } from '../../engines/store/port.ts'
import { uuidv7 } from '../../platform/ids.ts'

export const accounts = {
  authorizationsReceivable: 'authorizations_receivable',
  customerAuthorizations: 'customer_authorizations',
  providerReceivable: 'provider_receivable',
  sales: 'sales',
} as const

export type Account = (typeof accounts)[keyof typeof accounts]
export type EntryKind = 'authorize' | 'void' | 'capture' | 'refund'

export interface Line {
  account: Account
  /** Debit positive, credit negative, in minor units. */
  amountMinor: number
}

export interface NewEntry {
  /** Defaults to a random id; the payment service uses `<paymentId>:<kind>`, so an entry cannot be booked twice. */
  id?: string
  paymentId: string
  orderId: string
  kind: EntryKind
  currency: string
  lines: Line[]
}

/** A transaction or a store: whatever can read. */
export type Reader = Pick<Tx, 'query'>

const appendOnly = (table: string) => ({
  sqlite: `CREATE TRIGGER IF NOT EXISTS ${table}_no_update BEFORE UPDATE ON ${table}
      BEGIN SELECT RAISE(ABORT, '${table} is append-only: UPDATE refused'); END;
    CREATE TRIGGER IF NOT EXISTS ${table}_no_delete BEFORE DELETE ON ${table}
      BEGIN SELECT RAISE(ABORT, '${table} is append-only: DELETE refused'); END;`,
  postgres: `CREATE TRIGGER ${table}_append_only BEFORE UPDATE OR DELETE ON ${table}
      FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
    CREATE TRIGGER ${table}_no_truncate BEFORE TRUNCATE ON ${table}
      FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();`,
})

export const ledgerMigrations: Migration[] = [
  {
    id: 'payment-0002-ledger',
    sql: {
      sqlite: `CREATE TABLE IF NOT EXISTS ledger_entries (
          id TEXT PRIMARY KEY, payment_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL,
          currency TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS ledger_entries_payment ON ledger_entries (payment_id);
        CREATE TABLE IF NOT EXISTS ledger_lines (
          entry_id TEXT NOT NULL REFERENCES ledger_entries (id), line_no INTEGER NOT NULL,
          account TEXT NOT NULL, amount_minor BIGINT NOT NULL, currency TEXT NOT NULL,
          PRIMARY KEY (entry_id, line_no));
        ${appendOnly('ledger_entries').sqlite}
        ${appendOnly('ledger_lines').sqlite}`,
      postgres: `CREATE TABLE IF NOT EXISTS ledger_entries (
          id TEXT PRIMARY KEY, payment_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL,
          currency TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS ledger_entries_payment ON ledger_entries (payment_id);
        CREATE TABLE IF NOT EXISTS ledger_lines (
          entry_id TEXT NOT NULL REFERENCES ledger_entries (id), line_no INTEGER NOT NULL,
          account TEXT NOT NULL, amount_minor BIGINT NOT NULL, currency TEXT NOT NULL,
          PRIMARY KEY (entry_id, line_no));
        CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
        END $$;
        ${appendOnly('ledger_entries').postgres}
        ${appendOnly('ledger_lines').postgres}`,
    },
  },
]

/** The lines of a standard entry of `kind` for `amountMinor`. */
export function linesFor(kind: EntryKind, amountMinor: number): Line[] {
  const a = amountMinor
  const {
    authorizationsReceivable: authorized,
    customerAuthorizations: customer,
    providerReceivable: provider,
    sales,
  } = accounts
  switch (kind) {
    case 'authorize':
      return [
        { account: authorized, amountMinor: a },
        { account: customer, amountMinor: -a },
      ]
    case 'void':
      return [
        { account: customer, amountMinor: a },
        { account: authorized, amountMinor: -a },
      ]
    case 'capture':
      return [
        { account: customer, amountMinor: a },
        { account: authorized, amountMinor: -a },
        { account: provider, amountMinor: a },
        { account: sales, amountMinor: -a },
      ]
    case 'refund':
      return [
        { account: sales, amountMinor: a },
        { account: provider, amountMinor: -a },
      ]
  }
}

/** Appends one entry; refuses (throws) an entry whose lines do not sum to zero. */
export async function appendEntry(tx: Tx, entry: NewEntry): Promise<string> {
  if (entry.lines.length < 2) throw new Error(`ledger entry ${entry.kind} needs at least two lines`)
  for (const line of entry.lines) {
    if (!Number.isSafeInteger(line.amountMinor)) {
      throw new Error(
        `ledger line on ${line.account} is not a whole number of minor units: ${line.amountMinor}`,
      )
    }
  }
  const sum = entry.lines.reduce((total, line) => total + line.amountMinor, 0)
  if (sum !== 0) throw new Error(`ledger entry ${entry.kind} for ${entry.paymentId} does not balance: ${sum}`)
  const id = entry.id ?? uuidv7()
  await tx.execute(
    `INSERT INTO ledger_entries (id, payment_id, order_id, kind, currency, created_at)
     VALUES ($1, $2, $3, $4, $5, $6)`,
    [id, entry.paymentId, entry.orderId, entry.kind, entry.currency, new Date().toISOString()],
  )
  await tx.execute(
    `INSERT INTO ledger_lines (entry_id, line_no, account, amount_minor, currency)
     VALUES ${entry.lines.map((_, i) => `($1, $${3 * i + 3}, $${3 * i + 4}, $${3 * i + 5}, $2)`).join(', ')}`,
    [id, entry.currency, ...entry.lines.flatMap((line, i) => [i + 1, line.account, line.amountMinor])],
  )
  return id
}

/** Books the standard entry of `kind` for a payment. */
export function post(
  tx: Tx,
  payment: { paymentId: string; orderId: string; currency: string },
  kind: EntryKind,
  amountMinor: number,
): Promise<string> {
  return appendEntry(tx, {
    id: `${payment.paymentId}:${kind}`,
    ...payment,
    kind,
    lines: linesFor(kind, amountMinor),
  })
}

export interface PaymentLedger {
  /** The state the entries put the payment in; 'none' when it has no entries. */
  status: 'none' | 'authorized' | 'captured' | 'refunded' | 'voided'
  /** Authorized and neither captured nor voided yet. */
  openAuthorizedMinor: number
  capturedMinor: number
  refundedMinor: number
}

/** What the ledger says about one payment. */
export async function paymentLedger(reader: Reader, paymentId: string): Promise<PaymentLedger> {
  const rows = await reader.query<{ kind: EntryKind; account: Account; amount_minor: number }>(
    `SELECT e.kind, l.account, l.amount_minor FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id
     WHERE e.payment_id = $1`,
    [paymentId],
  )
  let openAuthorizedMinor = 0
  let capturedMinor = 0
  let refundedMinor = 0
  for (const row of rows) {
    const amount = Number(row.amount_minor)
    if (row.account === accounts.authorizationsReceivable) openAuthorizedMinor += amount
    if (row.account === accounts.providerReceivable && amount > 0) capturedMinor += amount
    if (row.account === accounts.providerReceivable && amount < 0) refundedMinor -= amount
  }
  const kinds = new Set(rows.map((row) => row.kind))
  const status: PaymentLedger['status'] =
    rows.length === 0
      ? 'none'
      : openAuthorizedMinor > 0
        ? 'authorized'
        : capturedMinor > 0
          ? refundedMinor >= capturedMinor
            ? 'refunded'
            : 'captured'
          : // Nothing open, nothing captured: a void, or a payment of zero, which only its
            // entries' kinds tell apart.
            kinds.has('refund')
            ? 'refunded'
            : kinds.has('capture')
              ? 'captured'
              : kinds.has('void')
                ? 'voided'
                : 'authorized'
  return { status, openAuthorizedMinor, capturedMinor, refundedMinor }
}

export interface Imbalance {
  entryId: string
  currency: string
  sumMinor: number
}

/**
 * Entries whose lines do not sum to zero (per currency), or that have no lines at all:
 * every entry, or those written at or after `since`.
 */
export async function unbalancedEntries(reader: Reader, since?: string): Promise<Imbalance[]> {
  const [written, params] = since === undefined ? ['', []] : ['WHERE e.created_at >= $1', [since]]
  const sums = await reader.query<{ entry_id: string; currency: string; total: number }>(
    `SELECT l.entry_id, l.currency, CAST(SUM(l.amount_minor) AS BIGINT) AS total
     FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.id ${written}
     GROUP BY l.entry_id, l.currency HAVING SUM(l.amount_minor) <> 0`,
    params,
  )
  const empty = await reader.query<{ id: string; currency: string }>(
    `SELECT e.id, e.currency FROM ledger_entries e ${written || 'WHERE TRUE'}
     AND NOT EXISTS (SELECT 1 FROM ledger_lines l WHERE l.entry_id = e.id)`,
    params,
  )
  return [
    ...sums.map((row) => ({ entryId: row.entry_id, currency: row.currency, sumMinor: Number(row.total) })),
    ...empty.map((row) => ({ entryId: row.id, currency: row.currency, sumMinor: 0 })),
  ]
}

/** The balance of every account, per currency: all of them sum to zero in each currency. */
export async function trialBalance(
  reader: Reader,
): Promise<{ account: string; currency: string; balanceMinor: number }[]> {
  const rows = await reader.query<{ account: string; currency: string; balance: number }>(
    `SELECT account, currency, CAST(SUM(amount_minor) AS BIGINT) AS balance FROM ledger_lines
     GROUP BY account, currency ORDER BY currency, account`,
  )
  return rows.map((row) => ({
    account: row.account,
    currency: row.currency,
    balanceMinor: Number(row.balance),
  }))
}
