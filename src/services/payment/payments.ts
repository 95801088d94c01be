// The payments table: one payment per order, with its provider charge and its state.
import type { Migration, Store, Tx } from '../../engines/store/port.ts'
import { ledgerMigrations, type Reader } from './ledger.ts'

export type PaymentStatus = 'authorized' | 'captured' | 'voided' | 'refunded' | 'declined' | 'failed'

export interface PaymentRow {
  order_id: string
  payment_id: string
  customer_id: string
  charge_id: string | null
  status: PaymentStatus
  amount_minor: number
  currency: string
  captured_minor: number
  refunded_minor: number
  reason: string | null
  /** No longer written (a failed authorization is looked up by reference, not asked again); rows of before keep theirs. */
  payment_method_token?: string | null
  /** Set when the order was cancelled and the payment still holds money; cleared once voided or refunded. */
  cancel_pending_since?: string | null
  created_at: string
  updated_at: string
}

export const paymentMigrations: Migration[] = [
  {
    id: 'payment-0001-payments',
    sql: `CREATE TABLE IF NOT EXISTS payments (
        order_id TEXT PRIMARY KEY, payment_id TEXT NOT NULL UNIQUE, customer_id TEXT NOT NULL,
        charge_id TEXT, status TEXT NOT NULL, amount_minor BIGINT NOT NULL, currency TEXT NOT NULL,
        captured_minor BIGINT NOT NULL DEFAULT 0, refunded_minor BIGINT NOT NULL DEFAULT 0,
        reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)`,
  },
  ...ledgerMigrations,
  {
    id: 'payment-0003-payment-method-token',
    sql: 'ALTER TABLE payments ADD COLUMN payment_method_token TEXT',
  },
  {
    // For reconciliation between full passes: the payments changed lately, the
    // authorizations still open, and the ledger entries written lately.
    id: 'payment-0004-reconciliation-indexes',
    sql: `CREATE INDEX IF NOT EXISTS payments_updated ON payments (updated_at);
      CREATE INDEX IF NOT EXISTS payments_open ON payments (updated_at) WHERE status = 'authorized';
      CREATE INDEX IF NOT EXISTS ledger_entries_created ON ledger_entries (created_at)`,
  },
  {
    // A cancelled order's payment waiting for its void or refund: reconciliation reports
    // one that waits too long (its handler gave up: the provider down, say).
    id: 'payment-0005-cancel-pending',
    sql: `ALTER TABLE payments ADD COLUMN cancel_pending_since TEXT;
      CREATE INDEX IF NOT EXISTS payments_cancel_pending ON payments (cancel_pending_since)`,
  },
]

export async function loadPayment(reader: Reader, orderId: string): Promise<PaymentRow | undefined> {
  const [row] = await reader.query<PaymentRow>('SELECT * FROM payments WHERE order_id = $1', [orderId])
  return row && numeric(row)
}

/** Order ids of payments in order, after `afterOrderId`. */
export async function paymentsPage(
  reader: Reader,
  afterOrderId: string,
  countMax: number,
): Promise<string[]> {
  const rows = await reader.query<{ order_id: string }>(
    'SELECT order_id FROM payments WHERE order_id > $1 ORDER BY order_id LIMIT $2',
    [afterOrderId, countMax],
  )
  return rows.map((row) => row.order_id)
}

/**
 * The order ids of the payments reconciliation looks at between full passes: those changed
 * at or after `since`, those with a ledger entry written since, those authorized before
 * `openBefore` and still open, and `orderIds`.
 */
export async function paymentsToRecheck(
  reader: Reader,
  since: string,
  openBefore: string,
  orderIds: Iterable<string>,
): Promise<string[]> {
  const batches = await Promise.all([
    reader.query<{ order_id: string }>('SELECT order_id FROM payments WHERE updated_at >= $1', [since]),
    reader.query<{ order_id: string }>('SELECT order_id FROM ledger_entries WHERE created_at >= $1', [since]),
    reader.query<{ order_id: string }>(
      "SELECT order_id FROM payments WHERE status = 'authorized' AND updated_at < $1",
      [openBefore],
    ),
  ])
  const ids = new Set([...batches.flat().map((row) => row.order_id), ...orderIds])
  return [...ids].sort()
}

function numeric(row: PaymentRow): PaymentRow {
  return {
    ...row,
    amount_minor: Number(row.amount_minor),
    captured_minor: Number(row.captured_minor),
    refunded_minor: Number(row.refunded_minor),
  }
}

export async function insertPayment(
  tx: Tx,
  payment: Pick<
    PaymentRow,
    | 'order_id'
    | 'payment_id'
    | 'customer_id'
    | 'charge_id'
    | 'status'
    | 'amount_minor'
    | 'currency'
    | 'reason'
    | 'payment_method_token'
  >,
): Promise<boolean> {
  const now = new Date().toISOString()
  const inserted = await tx.execute(
    `INSERT INTO payments (order_id, payment_id, customer_id, charge_id, status, amount_minor, currency, reason,
       created_at, updated_at, payment_method_token) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)
     ON CONFLICT DO NOTHING`,
    [
      payment.order_id,
      payment.payment_id,
      payment.customer_id,
      payment.charge_id,
      payment.status,
      payment.amount_minor,
      payment.currency,
      payment.reason,
      now,
      payment.payment_method_token ?? null,
    ],
  )
  return inserted === 1
}

/** Moves a payment from `from` to `to`; false when it was not in `from` (nothing changed). */
export async function movePayment(
  tx: Tx,
  orderId: string,
  from: PaymentStatus,
  to: PaymentStatus,
  amounts: { capturedMinor?: number; refundedMinor?: number } = {},
): Promise<boolean> {
  const changed = await tx.execute(
    `UPDATE payments SET status = $3, captured_minor = COALESCE($4, captured_minor),
       refunded_minor = COALESCE($5, refunded_minor), updated_at = $6,
       cancel_pending_since = CASE WHEN $3 IN ('voided', 'refunded') THEN NULL ELSE cancel_pending_since END
     WHERE order_id = $1 AND status = $2`,
    [
      orderId,
      from,
      to,
      amounts.capturedMinor ?? null,
      amounts.refundedMinor ?? null,
      new Date().toISOString(),
    ],
  )
  return changed === 1
}

/** Records an authorization found at the provider for a payment that failed here, once voided. */
export async function noteStrayCharge(tx: Tx, payment: PaymentRow, chargeId: string): Promise<void> {
  const reason = payment.reason ?? 'failed'
  const note = reason.endsWith(strayVoided) ? reason : `${reason}${strayVoided}`
  await tx.execute(
    `UPDATE payments SET charge_id = COALESCE(charge_id, $2), reason = $3, updated_at = $4 WHERE order_id = $1`,
    [payment.order_id, chargeId, note.slice(0, 500), new Date().toISOString()],
  )
}

const strayVoided = '; stray authorization voided'

/**
 * Marks a cancelled order's payment as owing its void or refund, in a transaction of its own
 * before the provider is called: if every attempt fails and the event is dead-lettered, the
 * mark stays, and reconciliation reports the money kept.
 */
export async function markCancelPending(store: Store, orderId: string): Promise<void> {
  await store.execute(
    `UPDATE payments SET cancel_pending_since = $1
      WHERE order_id = $2 AND status IN ('authorized', 'captured') AND cancel_pending_since IS NULL`,
    [new Date().toISOString(), orderId],
  )
}

/** Payments of cancelled orders still waiting for their void or refund since before `before`, the oldest `countMax`. */
export async function cancelsPendingSince(
  reader: Reader,
  before: string,
  countMax: number,
): Promise<PaymentRow[]> {
  const rows = await reader.query<PaymentRow>(
    `SELECT * FROM payments WHERE cancel_pending_since IS NOT NULL AND cancel_pending_since < $1
      ORDER BY cancel_pending_since, order_id LIMIT $2`,
    [before, countMax],
  )
  return rows.map(numeric)
}
