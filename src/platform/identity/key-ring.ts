// The signing keys of a deployment: Ed25519 key pairs in the `identity` store, shared by
// every process. The newest active key signs; every key that may still have live tokens
// verifies and is published in the JWKS. Rotation adds a key that starts signing after
// `activationDelayMs`, so verifiers that cache the JWKS learn it before they meet it; the
// key it replaces keeps verifying until the last token it signed has expired.
import { randomUUID } from 'node:crypto'
import { type CryptoKey, exportJWK, generateKeyPair, importJWK, type JWK } from 'jose'
import type { Migration, Store } from '../../engines/store/port.ts'

export const keyRingMigrations: Migration[] = [
  {
    id: 'identity-0001-signing-keys',
    sql: `CREATE TABLE IF NOT EXISTS identity_signing_keys (
        kid TEXT PRIMARY KEY,
        private_jwk TEXT NOT NULL,
        public_jwk TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        active_from BIGINT NOT NULL)`,
  },
]

export const signingAlgorithm = 'EdDSA'

type Key = CryptoKey | Uint8Array

interface LoadedKey {
  kid: string
  privateKey: Key
  publicKey: Key
  publicJwk: JWK
  activeFrom: number
}

export interface KeyRingOptions {
  /** How long a token lives at most: a replaced key verifies this long after it stopped signing. */
  tokenTtlMaxMs: number
  /** How long a new key is published before it signs. */
  activationDelayMs: number
  /** How often the ring re-reads the store, to learn keys other processes added. */
  refreshEveryMs: number
}

export class KeyRing {
  readonly #store: Store
  readonly #options: KeyRingOptions
  #keys: LoadedKey[] = []
  #timer: NodeJS.Timeout | undefined
  #lastRefresh = 0

  private constructor(store: Store, options: KeyRingOptions) {
    this.#store = store
    this.#options = options
  }

  /** Opens the ring, creating the first key on an empty store. */
  static async open(store: Store, options: KeyRingOptions): Promise<KeyRing> {
    await store.migrate(keyRingMigrations)
    const ring = new KeyRing(store, options)
    await ring.refresh()
    if (ring.#keys.length === 0) {
      await ring.#add(Date.now())
      await ring.refresh()
    }
    ring.#timer = setInterval(() => ring.refresh().catch(() => {}), options.refreshEveryMs)
    ring.#timer.unref()
    return ring
  }

  /** Re-reads the keys: those that sign now or later, and those whose tokens may still live. */
  async refresh(): Promise<void> {
    const rows = await this.#store.query<{
      kid: string
      private_jwk: string
      public_jwk: string
      active_from: string | number
    }>(
      'SELECT kid, private_jwk, public_jwk, active_from FROM identity_signing_keys ORDER BY active_from, kid',
    )
    const known = new Map(this.#keys.map((key) => [key.kid, key]))
    const loaded: LoadedKey[] = []
    for (const row of rows) {
      const existing = known.get(row.kid)
      if (existing) {
        loaded.push(existing)
        continue
      }
      const publicJwk = JSON.parse(row.public_jwk) as JWK
      loaded.push({
        kid: row.kid,
        privateKey: await importJWK(JSON.parse(row.private_jwk) as JWK, signingAlgorithm),
        publicKey: await importJWK(publicJwk, signingAlgorithm),
        publicJwk,
        activeFrom: Number(row.active_from),
      })
    }
    this.#keys = loaded
    this.#lastRefresh = Date.now()
  }

  /** The key that signs now: the newest active one. */
  signing(now = Date.now()): { kid: string; privateKey: Key } {
    const active = this.#keys.filter((key) => key.activeFrom <= now)
    const key = active.at(-1) ?? this.#keys[0]
    if (!key) throw new Error('the key ring holds no key')
    return { kid: key.kid, privateKey: key.privateKey }
  }

  /** The public key for `kid`, re-reading the store once a second at most when it is unknown. */
  async verifying(kid: string | undefined): Promise<Key | undefined> {
    if (kid === undefined) return undefined
    let key = this.#live().find((k) => k.kid === kid)
    if (!key && Date.now() - this.#lastRefresh > 1_000) {
      await this.refresh()
      key = this.#live().find((k) => k.kid === kid)
    }
    return key?.publicKey
  }

  /** The JWKS document: every key that signs, will sign, or signed tokens that may still live. */
  jwks(): { keys: JWK[] } {
    return {
      keys: this.#live().map((key) => ({
        ...key.publicJwk,
        kid: key.kid,
        alg: signingAlgorithm,
        use: 'sig',
      })),
    }
  }

  /** Adds a key that signs after the activation delay; answers its kid. */
  async rotate(): Promise<string> {
    const kid = await this.#add(Date.now() + this.#options.activationDelayMs)
    await this.refresh()
    return kid
  }

  close(): void {
    clearInterval(this.#timer)
  }

  /** Keys minus those replaced longer ago than a token lives. */
  #live(now = Date.now()): LoadedKey[] {
    return this.#keys.filter((_key, i) => {
      const successor = this.#keys.slice(i + 1).find((next) => next.activeFrom <= now)
      return !successor || now - successor.activeFrom < this.#options.tokenTtlMaxMs
    })
  }

  async #add(activeFrom: number): Promise<string> {
    const { privateKey, publicKey } = await generateKeyPair(signingAlgorithm, {
      crv: 'Ed25519',
      extractable: true,
    })
    const kid = randomUUID()
    await this.#store.execute(
      `INSERT INTO identity_signing_keys (kid, private_jwk, public_jwk, created_at, active_from)
       VALUES ($1, $2, $3, $4, $5)`,
      [
        kid,
        JSON.stringify(await exportJWK(privateKey)),
        JSON.stringify(await exportJWK(publicKey)),
        Date.now(),
        activeFrom,
      ],
    )
    return kid
  }
}
