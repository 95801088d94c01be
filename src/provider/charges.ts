// The provider's durable record: every charge and every operation on it. State changes
// are conditional updates (`WHERE status = …`), so two concurrent operations on one charge
// cannot both succeed; a refused operation is answered as a problem, and changes nothing.
import type { Migration, Store, Tx } from '../engines/store/port.ts'
import { MercatoError, toProblem } from '../platform/errors.ts'
import { uuidv7 } from '../platform/ids.ts'
import type { Answer } from './idempotency.ts'

export type ChargeStatus = 'authorized' | 'declined' | 'captured' | 'voided' | 'refunded'
export type OperationKind = 'authorize' | 'decline' | 'capture' | 'void' | 'refund'

export interface OperationView {
  operationId: string
  kind: OperationKind
  amountMinor: number
  idempotencyKey: string
  at: string
}

export interface ChargeView {
  chargeId: string
  reference: string
  status: ChargeStatus
  amountMinor: number
  currency: string
  capturedMinor: number
  refundedMinor: number
  declineReason?: string
  createdAt: string
  updatedAt: string
  operations: OperationView[]
}

export interface AuthorizationRequest {
  amountMinor: number
  currency: string
  paymentMethodToken: string
  reference: string
}

interface ChargeRow {
  id: string
  reference: string
  status: ChargeStatus
  amount_minor: number
  currency: string
  captured_minor: number
  refunded_minor: number
  decline_reason: string | null
  created_at: string
  updated_at: string
}

export const chargeMigrations: Migration[] = [
  {
    id: 'provider-0001-charges',
    sql: `CREATE TABLE IF NOT EXISTS provider_charges (
        id TEXT PRIMARY KEY, reference TEXT NOT NULL, status TEXT NOT NULL,
        amount_minor BIGINT NOT NULL, currency TEXT NOT NULL, payment_method_token TEXT NOT NULL,
        captured_minor BIGINT NOT NULL DEFAULT 0, refunded_minor BIGINT NOT NULL DEFAULT 0,
        decline_reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS provider_charges_reference ON provider_charges (reference);
      CREATE TABLE IF NOT EXISTS provider_operations (
        id TEXT PRIMARY KEY, charge_id TEXT NOT NULL REFERENCES provider_charges (id), seq INTEGER NOT NULL,
        kind TEXT NOT NULL, amount_minor BIGINT NOT NULL, idempotency_key TEXT NOT NULL, created_at TEXT NOT NULL,
        UNIQUE (charge_id, seq))`,
  },
]

/** Authorizes, or records a decline when `declineReason` is given. */
export async function authorize(
  tx: Tx,
  request: AuthorizationRequest,
  key: string,
  declineReason: string | undefined,
): Promise<Answer> {
  const chargeId = `ch_${uuidv7()}`
  const now = new Date().toISOString()
  const status: ChargeStatus = declineReason ? 'declined' : 'authorized'
  await tx.execute(
    `INSERT INTO provider_charges (id, reference, status, amount_minor, currency, payment_method_token,
       decline_reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)`,
    [
      chargeId,
      request.reference,
      status,
      request.amountMinor,
      request.currency,
      request.paymentMethodToken,
      declineReason ?? null,
      now,
    ],
  )
  await recordOperation(tx, chargeId, declineReason ? 'decline' : 'authorize', request.amountMinor, key, now)
  if (declineReason) return { status: 402, body: { status: 'declined', reason: declineReason, chargeId } }
  return {
    status: 201,
    body: { chargeId, status: 'authorized', amountMinor: request.amountMinor, currency: request.currency },
  }
}

export async function capture(tx: Tx, chargeId: string, key: string, instance: string): Promise<Answer> {
  const now = new Date().toISOString()
  const changed = await tx.execute(
    `UPDATE provider_charges SET status = 'captured', captured_minor = amount_minor, updated_at = $2
     WHERE id = $1 AND status = 'authorized'`,
    [chargeId, now],
  )
  const charge = await loadCharge(tx, chargeId)
  if (!charge) return notFound(chargeId, instance)
  if (changed === 0) return refused(charge, 'capture', 'only an authorized charge can be captured', instance)
  await recordOperation(tx, chargeId, 'capture', charge.amount_minor, key, now)
  return { status: 200, body: summary(charge) }
}

export async function voidCharge(tx: Tx, chargeId: string, key: string, instance: string): Promise<Answer> {
  const now = new Date().toISOString()
  const changed = await tx.execute(
    `UPDATE provider_charges SET status = 'voided', updated_at = $2 WHERE id = $1 AND status = 'authorized'`,
    [chargeId, now],
  )
  const charge = await loadCharge(tx, chargeId)
  if (!charge) return notFound(chargeId, instance)
  if (changed === 0)
    return refused(charge, 'void', 'only an authorized, uncaptured charge can be voided', instance)
  await recordOperation(tx, chargeId, 'void', charge.amount_minor, key, now)
  return { status: 200, body: summary(charge) }
}

/** Refunds `amountMinor` (default: all that is left) of a captured charge. */
export async function refund(
  tx: Tx,
  chargeId: string,
  amountMinor: number | undefined,
  key: string,
  instance: string,
): Promise<Answer> {
  const before = await loadCharge(tx, chargeId)
  if (!before) return notFound(chargeId, instance)
  const left = before.captured_minor - before.refunded_minor
  const amount = amountMinor ?? left
  if (before.status !== 'captured' || amount <= 0) {
    return refused(before, 'refund', 'only a captured charge with an amount left can be refunded', instance)
  }
  if (amount > left) {
    return refused(before, 'refund', `at most ${left} can still be refunded, not ${amount}`, instance)
  }
  const now = new Date().toISOString()
  const changed = await tx.execute(
    `UPDATE provider_charges SET refunded_minor = refunded_minor + $2,
       status = CASE WHEN refunded_minor + $2 = captured_minor THEN 'refunded' ELSE status END, updated_at = $3
     WHERE id = $1 AND status = 'captured' AND refunded_minor + $2 <= captured_minor`,
    [chargeId, amount, now],
  )
  const charge = (await loadCharge(tx, chargeId))!
  if (changed === 0) return refused(charge, 'refund', 'the charge changed while refunding; retry', instance)
  await recordOperation(tx, chargeId, 'refund', amount, key, now)
  return { status: 200, body: summary(charge) }
}

export async function getCharge(store: Store, chargeId: string): Promise<ChargeView | undefined> {
  const [row] = await store.query<ChargeRow>('SELECT * FROM provider_charges WHERE id = $1', [chargeId])
  return row ? (await views(store, [row]))[0] : undefined
}

export async function chargesByReference(store: Store, reference: string): Promise<ChargeView[]> {
  const rows = await store.query<ChargeRow>(
    'SELECT * FROM provider_charges WHERE reference = $1 ORDER BY created_at, id',
    [reference],
  )
  return views(store, rows)
}

async function views(store: Store, rows: ChargeRow[]): Promise<ChargeView[]> {
  const result: ChargeView[] = []
  for (const row of rows) {
    const operations = await store.query<{
      id: string
      kind: OperationKind
      amount_minor: number
      idempotency_key: string
      created_at: string
    }>(
      'SELECT id, kind, amount_minor, idempotency_key, created_at FROM provider_operations WHERE charge_id = $1 ORDER BY seq',
      [row.id],
    )
    result.push({
      ...summary(row),
      reference: row.reference,
      ...(row.decline_reason ? { declineReason: row.decline_reason } : {}),
      createdAt: row.created_at,
      updatedAt: row.updated_at,
      operations: operations.map((op) => ({
        operationId: op.id,
        kind: op.kind,
        amountMinor: Number(op.amount_minor),
        idempotencyKey: op.idempotency_key,
        at: op.created_at,
      })),
    })
  }
  return result
}

async function loadCharge(tx: Tx, chargeId: string): Promise<ChargeRow | undefined> {
  const [row] = await tx.query<ChargeRow>('SELECT * FROM provider_charges WHERE id = $1', [chargeId])
  return row
}

async function recordOperation(
  tx: Tx,
  chargeId: string,
  kind: OperationKind,
  amountMinor: number,
  key: string,
  at: string,
): Promise<void> {
  await tx.execute(
    `INSERT INTO provider_operations (id, charge_id, seq, kind, amount_minor, idempotency_key, created_at)
     VALUES ($1, $2, (SELECT COUNT(*) + 1 FROM provider_operations WHERE charge_id = $2), $3, $4, $5, $6)`,
    [`op_${uuidv7()}`, chargeId, kind, amountMinor, key, at],
  )
}

function summary(row: ChargeRow) {
  return {
    chargeId: row.id,
    status: row.status,
    amountMinor: Number(row.amount_minor),
    currency: row.currency,
    capturedMinor: Number(row.captured_minor),
    refundedMinor: Number(row.refunded_minor),
  }
}

function notFound(chargeId: string, instance: string): Answer {
  const error = new MercatoError('charge-not-found', 404, `no charge ${chargeId}`, { chargeId })
  return { status: 404, body: toProblem(error, instance) }
}

function refused(charge: ChargeRow, operation: string, why: string, instance: string): Answer {
  const error = new MercatoError(
    'charge-state-conflict',
    409,
    `cannot ${operation} charge ${charge.id}: ${why}`,
    {
      chargeId: charge.id,
      chargeStatus: charge.status,
      operation,
    },
  )
  return { status: 409, body: toProblem(error, instance) }
}
