// Idempotency keys, after the IETF draft "The Idempotency-Key HTTP Header Field" and
// Stripe's practice. A key belongs to a caller (its scope) and remembers a fingerprint of
// the request and, once the request is done, its answer. The record lives in the store,
// so every command-api process sees the same keys.
import { hash } from 'node:crypto'
import type { Migration, Store, Tx } from '../engines/store/port.ts'

export const idempotencyMigrations: Migration[] = [
  {
    id: 'command-api-0001-idempotency-keys',
    sql: `CREATE TABLE IF NOT EXISTS idempotency_keys (
      scope TEXT NOT NULL, idem_key TEXT NOT NULL, fingerprint TEXT NOT NULL, resource_id TEXT NOT NULL,
      status INTEGER, body TEXT, headers TEXT, locked_until BIGINT NOT NULL, expires_at BIGINT NOT NULL,
      PRIMARY KEY (scope, idem_key));
      CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at)`,
  },
]

export type KeyClaim =
  /** The caller owns the key now: do the work under `resourceId`, then `complete`. */
  | { kind: 'owned'; resourceId: string }
  | { kind: 'replay'; status: number; body: unknown; headers: Record<string, string> }
  | { kind: 'other-request' }
  | { kind: 'in-flight' }

interface KeyRow {
  fingerprint: string
  resource_id: string
  status: number | null
  body: string | null
  headers: string | null
  locked_until: number
  expires_at: number
}

const selectKey =
  'SELECT fingerprint, resource_id, status, body, headers, locked_until, expires_at FROM idempotency_keys WHERE scope = $1 AND idem_key = $2'

/** What a live key row means for a request with `fingerprint`; undefined when a retry may take it over. */
function takenBy(
  row: KeyRow,
  fingerprint: string,
  now: number,
): Exclude<KeyClaim, { kind: 'owned' }> | undefined {
  if (row.fingerprint !== fingerprint) return { kind: 'other-request' }
  if (row.status !== null) {
    return {
      kind: 'replay',
      status: Number(row.status),
      body: JSON.parse(row.body ?? 'null'),
      headers: JSON.parse(row.headers ?? '{}'),
    }
  }
  if (Number(row.locked_until) > now) return { kind: 'in-flight' }
  return undefined
}

/**
 * Whether a key is free for a new request: expired, and held by no request. A request that
 * took a lapsed lock over just before its key expired keeps it until its own lock lapses.
 */
function isFree(row: KeyRow, now: number): boolean {
  return Number(row.expires_at) <= now && (row.status !== null || Number(row.locked_until) <= now)
}

/** isFree as SQL, with `now` the placeholder of the current time. */
const freeAt = (now: string) => `expires_at <= ${now} AND (status IS NOT NULL OR locked_until <= ${now})`

export class IdempotencyKeys {
  readonly #store: Store
  readonly #ttlMs: number
  readonly #lockMs: number

  constructor(store: Store, options: { ttlMs: number; lockMs: number }) {
    this.#store = store
    this.#ttlMs = options.ttlMs
    this.#lockMs = options.lockMs
  }

  /**
   * Claims `key` for a request with `fingerprint`. A request still in flight holds its key
   * for the lock time; after that (its process died) a retry takes the key over, with the
   * same resource id, so the retry names the same order and duplicates nothing.
   * `onOwned` runs in the claim's transaction when the caller gets the key.
   */
  claim(
    scope: string,
    key: string,
    fingerprint: string,
    newResourceId: () => string,
    onOwned?: (tx: Tx, resourceId: string) => Promise<void>,
  ): Promise<KeyClaim> {
    return this.#store.transaction(async (tx) => {
      const now = Date.now()
      const resourceId = newResourceId()
      const insert = () =>
        tx.execute(
          `INSERT INTO idempotency_keys (scope, idem_key, fingerprint, resource_id, locked_until, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, idem_key) DO NOTHING`,
          [scope, key, fingerprint, resourceId, now + this.#lockMs, now + this.#ttlMs],
        )
      const owned = async (id: string): Promise<KeyClaim> => {
        await onOwned?.(tx, id)
        return { kind: 'owned', resourceId: id }
      }
      // A new key (the usual case) is one statement; only a key seen before is read.
      if ((await insert()) === 1) return owned(resourceId)
      // Each takeover below is conditional: when a concurrent claim changed the row first
      // (PostgreSQL runs claims side by side), this one finds what that claim left.
      const lostRace = async (): Promise<KeyClaim> => {
        const [winner] = await tx.query<KeyRow>(selectKey, [scope, key])
        return (winner && takenBy(winner, fingerprint, now)) ?? { kind: 'in-flight' }
      }
      const [row] = await tx.query<KeyRow>(selectKey, [scope, key])
      if (!row) return (await insert()) === 1 ? owned(resourceId) : lostRace()
      if (isFree(row, now)) {
        const took = await tx.execute(
          `UPDATE idempotency_keys SET fingerprint = $1, resource_id = $2, status = NULL, body = NULL,
             headers = NULL, locked_until = $3, expires_at = $4
           WHERE scope = $5 AND idem_key = $6 AND ${freeAt('$7')}`,
          [fingerprint, resourceId, now + this.#lockMs, now + this.#ttlMs, scope, key, now],
        )
        return took === 1 ? owned(resourceId) : lostRace()
      }
      const taken = takenBy(row, fingerprint, now)
      if (taken) return taken
      const took = await tx.execute(
        `UPDATE idempotency_keys SET locked_until = $1
         WHERE scope = $2 AND idem_key = $3 AND status IS NULL AND locked_until <= $4`,
        [now + this.#lockMs, scope, key, now],
      )
      return took === 1 ? owned(row.resource_id) : lostRace()
    })
  }

  /**
   * What a claim of `key` would find, without claiming it (one read, no transaction):
   * undefined when the caller would own it. For a request refused before it starts work,
   * which still gets its replay.
   */
  async peek(
    scope: string,
    key: string,
    fingerprint: string,
  ): Promise<Exclude<KeyClaim, { kind: 'owned' }> | undefined> {
    const now = Date.now()
    const [row] = await this.#store.query<KeyRow>(selectKey, [scope, key])
    if (!row || isFree(row, now)) return undefined
    return takenBy(row, fingerprint, now)
  }

  /** Stores the answer; later requests with the key get it back. */
  async complete(
    scope: string,
    key: string,
    status: number,
    body: unknown,
    headers: Record<string, string>,
  ): Promise<void> {
    await this.#store.execute(
      'UPDATE idempotency_keys SET status = $1, body = $2, headers = $3 WHERE scope = $4 AND idem_key = $5',
      [status, JSON.stringify(body), JSON.stringify(headers), scope, key],
    )
  }

  /** Lets go of a key whose request failed before it had any effect, so a retry starts afresh. */
  async release(scope: string, key: string): Promise<void> {
    await this.#store.execute(
      'DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 AND status IS NULL',
      [scope, key],
    )
  }

  /** Deletes expired keys no request holds; resolves with how many. */
  prune(): Promise<number> {
    return this.#store.execute(`DELETE FROM idempotency_keys WHERE ${freeAt('$1')}`, [Date.now()])
  }
}

/** The fingerprint of a request: method, path and the body in a canonical form. */
export function fingerprintOf(method: string, path: string, body: unknown): string {
  return hash('sha256', `${method} ${path}\n${canonicalJson(body)}`, 'base64url')
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value ?? null)
}
