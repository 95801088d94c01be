// Stock adjustments as the admin who asked sees them: each restock or write-off request
// with what came of it, applied or refused with the inventory service's reason (a
// write-off beyond the stock available, say). Part of the catalog view, which already
// waits for an adjustment's outcome; the request's `Location` names its document.
import type { Store, Tx } from '../../engines/store/port.ts'

export interface AdjustmentDoc {
  adjustmentId: string
  sku: string
  delta: number
  reason: string
  outcome: 'pending' | 'applied' | 'refused'
  /** Why it was refused; null otherwise. */
  detail: string | null
  requestedAt: string
  decidedAt: string | null
}

export const adjustmentsTable = (g: number) => `catalog_g${g}_adjustments`

/** By SKU too: the path names both, and a cached answer must not serve another SKU's path. */
export function adjustmentCacheKey(sku: string, adjustmentId: string): string {
  return `adjustment:${sku}:${adjustmentId}`
}

export function adjustmentsCreateSql(kind: Store['kind'], g: number): string {
  const int = kind === 'postgres' ? 'BIGINT' : 'INTEGER'
  return `CREATE TABLE IF NOT EXISTS ${adjustmentsTable(g)} (adjustment_id TEXT PRIMARY KEY, sku TEXT NOT NULL,
    delta ${int} NOT NULL, reason TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT, requested_at TEXT NOT NULL,
    decided_at TEXT)`
}

export async function recordAdjustmentRequest(
  tx: Tx,
  g: number,
  adjustmentId: string,
  request: { sku: string; delta: number; reason: string },
  time: string,
): Promise<void> {
  await tx.execute(
    `INSERT INTO ${adjustmentsTable(g)} (adjustment_id, sku, delta, reason, outcome, requested_at)
     VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT (adjustment_id) DO NOTHING`,
    [adjustmentId, request.sku, request.delta, request.reason, time],
  )
}

/** An outcome names its request as its cause; a second one of the same request changes nothing. */
export async function recordAdjustmentOutcome(
  tx: Tx,
  g: number,
  adjustmentId: string,
  outcome: 'applied' | 'refused',
  detail: string | null,
  time: string,
): Promise<void> {
  await tx.execute(
    `UPDATE ${adjustmentsTable(g)} SET outcome = $1, detail = $2, decided_at = $3
      WHERE adjustment_id = $4 AND outcome = 'pending'`,
    [outcome, detail, time, adjustmentId],
  )
}

interface AdjustmentRow {
  adjustment_id: string
  sku: string
  delta: number | bigint
  reason: string
  outcome: AdjustmentDoc['outcome']
  detail: string | null
  requested_at: string
  decided_at: string | null
}

function docOf(row: AdjustmentRow): AdjustmentDoc {
  return {
    adjustmentId: row.adjustment_id,
    sku: row.sku,
    delta: Number(row.delta),
    reason: row.reason,
    outcome: row.outcome,
    detail: row.detail ?? null,
    requestedAt: row.requested_at,
    decidedAt: row.decided_at ?? null,
  }
}

export async function getAdjustment(
  store: Store,
  g: number,
  adjustmentId: string,
): Promise<AdjustmentDoc | undefined> {
  const [row] = await store.query<AdjustmentRow>(
    `SELECT * FROM ${adjustmentsTable(g)} WHERE adjustment_id = $1`,
    [adjustmentId],
  )
  return row && docOf(row)
}

/** Every adjustment, in id order (for comparing generations). */
export async function allAdjustments(store: Store, g: number): Promise<AdjustmentDoc[]> {
  const rows = await store.query<AdjustmentRow>(`SELECT * FROM ${adjustmentsTable(g)} ORDER BY adjustment_id`)
  return rows.map(docOf)
}
