// Rotating refresh tokens (OAuth 2.0 Security BCP, section 4.14): each refresh spends the
// token and hands out the next one of the same family. A token spent twice means it was
// stolen by someone, so the whole family is revoked: thief and owner alike sign in again.
// Only a SHA-256 of each token is stored.
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import type { Migration, Store } from '../engines/store/port.ts'
import type { UserPrincipal } from '../platform/identity/tokens.ts'

export const refreshTokenMigrations: Migration[] = [
  {
    id: 'gateway-0001-refresh-tokens',
    sql: `CREATE TABLE IF NOT EXISTS gateway_refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        family_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        role TEXT NOT NULL,
        customer_id TEXT,
        expires_at BIGINT NOT NULL,
        spent_at BIGINT);
      CREATE INDEX IF NOT EXISTS gateway_refresh_tokens_family ON gateway_refresh_tokens (family_id);
      CREATE TABLE IF NOT EXISTS gateway_revoked_families (
        family_id TEXT PRIMARY KEY,
        revoked_at BIGINT NOT NULL,
        reason TEXT NOT NULL)`,
  },
]

export type RefreshOutcome =
  | { ok: true; principal: UserPrincipal; token: string }
  | { ok: false; reason: 'unknown' | 'expired' | 'revoked' | 'reused' }

function hashOf(token: string): string {
  return createHash('sha256').update(token).digest('base64url')
}

export class RefreshTokens {
  readonly #store: Store
  readonly #ttlMs: number

  constructor(store: Store, ttlMs: number) {
    this.#store = store
    this.#ttlMs = ttlMs
  }

  async migrate(): Promise<void> {
    await this.#store.migrate(refreshTokenMigrations)
  }

  /** The first token of a new family, at sign-in. */
  async issue(principal: UserPrincipal): Promise<string> {
    return this.#insert(principal, randomUUID())
  }

  /** Spends `token` and answers the next one of its family, or why it may not be used. */
  async rotate(token: string, now = Date.now()): Promise<RefreshOutcome> {
    const [row] = await this.#store.query<{
      family_id: string
      subject: string
      role: UserPrincipal['role']
      customer_id: string | null
      expires_at: string | number
      spent_at: string | number | null
    }>(
      'SELECT family_id, subject, role, customer_id, expires_at, spent_at FROM gateway_refresh_tokens WHERE token_hash = $1',
      [hashOf(token)],
    )
    if (!row) return { ok: false, reason: 'unknown' }
    const revoked = await this.#store.query('SELECT 1 FROM gateway_revoked_families WHERE family_id = $1', [
      row.family_id,
    ])
    if (revoked.length > 0) return { ok: false, reason: 'revoked' }
    if (Number(row.expires_at) <= now) return { ok: false, reason: 'expired' }
    // Spending is one conditional update, so two refreshes racing with one token cannot both win.
    const spent =
      row.spent_at === null
        ? await this.#store.execute(
            'UPDATE gateway_refresh_tokens SET spent_at = $1 WHERE token_hash = $2 AND spent_at IS NULL',
            [now, hashOf(token)],
          )
        : 0
    if (spent === 0) {
      await this.revokeFamily(row.family_id, 'a refresh token was used twice')
      return { ok: false, reason: 'reused' }
    }
    const principal: UserPrincipal = {
      kind: 'user',
      subject: row.subject,
      role: row.role,
      ...(row.customer_id ? { customerId: row.customer_id } : {}),
    }
    return { ok: true, principal, token: await this.#insert(principal, row.family_id) }
  }

  async revokeFamily(familyId: string, reason: string): Promise<void> {
    await this.#store.execute(
      'INSERT INTO gateway_revoked_families (family_id, revoked_at, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
      [familyId, Date.now(), reason],
    )
  }

  /** Forgets tokens expired for a day (their family's revocation is kept as long). */
  async prune(now = Date.now()): Promise<void> {
    await this.#store.execute('DELETE FROM gateway_refresh_tokens WHERE expires_at < $1', [now - 86_400_000])
  }

  async #insert(principal: UserPrincipal, familyId: string): Promise<string> {
    const token = `rt_${randomBytes(32).toString('base64url')}`
    await this.#store.execute(
      `INSERT INTO gateway_refresh_tokens (token_hash, family_id, subject, role, customer_id, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6)`,
      [
        hashOf(token),
        familyId,
        principal.subject,
        principal.role,
        principal.customerId ?? null,
        Date.now() + this.#ttlMs,
      ],
    )
    return token
  }
}
