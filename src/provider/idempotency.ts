// Idempotency keys of the provider stand-in (IETF "Idempotency-Key" draft, Stripe's
// practice). A key is reserved in a short transaction of its own before anything happens,
// so a concurrent duplicate finds it in flight (409); the operation and its answer are
// then written together in a second transaction, so a stored answer always describes
// what was done. A reservation whose process died before answering is taken over once
// its lease has passed: nothing was done under it, since the work commits with the answer.
import { createHash, randomUUID } from 'node:crypto'
import type { Migration, Store, Tx } from '../engines/store/port.ts'
import { MercatoError } from '../platform/errors.ts'

export interface Answer {
  status: number
  body: Record<string, unknown>
}

export type Reservation = { kind: 'reserved'; lease: string } | { kind: 'replay'; answer: Answer }

export const idempotencyMigrations: Migration[] = [
  {
    id: 'provider-0002-idempotency-keys',
    sql: `CREATE TABLE IF NOT EXISTS provider_idempotency_keys (
      idempotency_key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, lease TEXT NOT NULL,
      started_at BIGINT NOT NULL, status_code INTEGER, response TEXT, completed_at TEXT)`,
  },
]

/** What identifies a request: the operation, its target and its body, keys in a fixed order. */
export function requestHash(operation: string, target: string, body: Record<string, unknown>): string {
  const canonical = JSON.stringify([operation, target, body], (_key, value) =>
    value && typeof value === 'object' && !Array.isArray(value)
      ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : value,
  )
  return createHash('sha256').update(canonical).digest('hex')
}

export async function reserve(
  store: Store,
  key: string,
  hash: string,
  leaseMs: number,
): Promise<Reservation> {
  return store.transaction(async (tx) => {
    const lease = randomUUID()
    const now = Date.now()
    const inserted = await tx.execute(
      `INSERT INTO provider_idempotency_keys (idempotency_key, request_hash, lease, started_at)
       VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
      [key, hash, lease, now],
    )
    if (inserted === 1) return { kind: 'reserved', lease }
    const [row] = await tx.query<{
      request_hash: string
      started_at: number
      status_code: number | null
      response: string | null
    }>(
      'SELECT request_hash, started_at, status_code, response FROM provider_idempotency_keys WHERE idempotency_key = $1',
      [key],
    )
    if (row.request_hash !== hash) {
      throw new MercatoError(
        'idempotency-key-reused',
        422,
        'this Idempotency-Key was used with another request; use a new key for a new request',
      )
    }
    if (row.status_code !== null && row.response !== null) {
      return { kind: 'replay', answer: { status: Number(row.status_code), body: JSON.parse(row.response) } }
    }
    if (now - Number(row.started_at) < leaseMs) {
      throw new MercatoError(
        'idempotency-key-in-flight',
        409,
        'a request with this Idempotency-Key is still being processed; retry later',
      )
    }
    await tx.execute(
      'UPDATE provider_idempotency_keys SET lease = $2, started_at = $3 WHERE idempotency_key = $1',
      [key, lease, now],
    )
    return { kind: 'reserved', lease }
  })
}

/** Stores the answer, in the transaction that did the work; throws (rolling the work back) if the lease was lost. */
export async function complete(tx: Tx, key: string, lease: string, answer: Answer): Promise<void> {
  const updated = await tx.execute(
    `UPDATE provider_idempotency_keys SET status_code = $3, response = $4, completed_at = $5
     WHERE idempotency_key = $1 AND lease = $2 AND status_code IS NULL`,
    [key, lease, answer.status, JSON.stringify(answer.body), new Date().toISOString()],
  )
  // Past its lease, a retry took the key over and does the work: this request's is rolled
  // back, and it is told what a retry is told while that one runs (no error of the provider's).
  if (updated !== 1)
    throw new MercatoError(
      'idempotency-key-in-flight',
      409,
      'a retry with this Idempotency-Key took it over while this request was slow; retry for its answer',
    )
}

/** Frees a reservation whose work failed unexpectedly, so a retry can do it. */
export async function release(store: Store, key: string, lease: string): Promise<void> {
  await store.execute(
    'DELETE FROM provider_idempotency_keys WHERE idempotency_key = $1 AND lease = $2 AND status_code IS NULL',
    [key, lease],
  )
}
