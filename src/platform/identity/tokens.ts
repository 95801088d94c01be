// Access tokens (users, RFC 9068 `at+jwt`) and service tokens (components calling each
// other, `service+jwt`), both short-lived and signed by the key ring. Verification pins the
// algorithm and the token type and checks exp, nbf, iss and aud, so neither kind passes
// for the other, `alg: none` and HS256-with-the-public-key are refused, and a tampered
// payload fails its signature. Tokens of an external OpenID Connect issuer are verified
// against its JWKS URL.
import {
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
  SignJWT,
} from 'jose'
import { MercatoError } from '../errors.ts'
import { type KeyRing, signingAlgorithm } from './key-ring.ts'

export type Role = 'customer' | 'admin' | 'support'
export const roles: readonly Role[] = ['customer', 'admin', 'support']

export interface UserPrincipal {
  kind: 'user'
  subject: string
  role: Role
  /** Set for customers: the customer they are. */
  customerId?: string
}

export type Principal = UserPrincipal | { kind: 'anonymous' }

export const anonymous: Principal = { kind: 'anonymous' }

/** Whether `principal` is staff (admin or support) rather than a customer or no one. */
export function isStaff(principal: Principal): boolean {
  return principal.kind === 'user' && principal.role !== 'customer'
}

export interface ExternalIssuer {
  issuer: string
  jwksUrl: string
  audience: string
  algorithms: string[]
}

export interface TokenOptions {
  issuer: string
  audience: string
  accessTtlSeconds: number
  serviceTtlSeconds: number
  external?: ExternalIssuer
  /**
   * How long a verified token is taken on trust before its signature is checked again
   * (default 30 s, as often as the key ring is re-read): a key retired since stops it then.
   */
  verifiedMemoMs?: number
}

/** Service tokens carry this issuer, never the users' one. */
const serviceIssuer = 'mercato-services'
const clockToleranceSeconds = 5
/** Verified tokens remembered at most; past it the memory starts afresh. */
const verifiedSizeMax = 10_000

export class InvalidTokenError extends MercatoError {
  constructor(detail: string) {
    super('invalid-token', 401, detail)
  }
}

export class Tokens {
  readonly options: TokenOptions
  readonly #ring: KeyRing
  readonly #resolveLocal: JWTVerifyGetKey
  readonly #resolveExternal: JWTVerifyGetKey | undefined
  readonly #serviceTokens = new Map<string, { token: string; renewAt: number }>()
  /**
   * By the token's signature, the last of its three parts: a key a tenth the token's length
   * to hash on every request (a header's string is new each time). The whole token and its
   * purpose are compared before an entry is believed.
   */
  readonly #verified = new Map<
    string,
    { token: string; purpose: string; value: UserPrincipal | string; expiresAtMs: number }
  >()

  constructor(ring: KeyRing, options: TokenOptions) {
    this.#ring = ring
    this.options = options
    this.#resolveLocal = async (header) => {
      const key = await ring.verifying(header.kid)
      if (!key) throw new InvalidTokenError('the token is signed by a key this deployment does not know')
      return key
    }
    if (options.external) this.#resolveExternal = createRemoteJWKSet(new URL(options.external.jwksUrl))
  }

  async issueAccess(principal: UserPrincipal): Promise<{ token: string; expiresIn: number }> {
    const { kid, privateKey } = this.#ring.signing()
    const token = await new SignJWT({
      role: principal.role,
      ...(principal.customerId ? { customer_id: principal.customerId } : {}),
    })
      .setProtectedHeader({ alg: signingAlgorithm, kid, typ: 'at+jwt' })
      .setIssuer(this.options.issuer)
      .setAudience(this.options.audience)
      .setSubject(principal.subject)
      .setIssuedAt()
      .setNotBefore('0s')
      .setExpirationTime(`${this.options.accessTtlSeconds}s`)
      .setJti(crypto.randomUUID())
      .sign(privateKey)
    return { token, expiresIn: this.options.accessTtlSeconds }
  }

  /** The user an access token names when this process verified it a moment ago; undefined otherwise. */
  knownAccess(token: string): UserPrincipal | undefined {
    return this.#recall(token, 'access') as UserPrincipal | undefined
  }

  /** The user an access token names; throws InvalidTokenError (401) with a safe reason. */
  async verifyAccess(token: string): Promise<UserPrincipal> {
    const known = this.#recall(token, 'access')
    if (known) return known as UserPrincipal
    const payload = await this.#verifyAccess(token)
    this.#remember(token, 'access', payload.principal, payload.expSeconds)
    return payload.principal
  }

  async #verifyAccess(token: string): Promise<{ principal: UserPrincipal; expSeconds: number }> {
    let issuer: unknown
    try {
      issuer = decodeJwt(token).iss
      decodeProtectedHeader(token)
    } catch {
      throw new InvalidTokenError('the bearer token is not a JWT')
    }
    const external = this.options.external
    if (external && issuer === external.issuer && this.#resolveExternal) {
      const payload = await verify(token, this.#resolveExternal, {
        issuer: external.issuer,
        audience: external.audience,
        algorithms: external.algorithms,
      })
      return { principal: principalOfClaims(payload, true), expSeconds: payload.exp as number }
    }
    const payload = await verify(token, this.#resolveLocal, {
      issuer: this.options.issuer,
      audience: this.options.audience,
      algorithms: [signingAlgorithm],
      typ: 'at+jwt',
    })
    return { principal: principalOfClaims(payload, false), expSeconds: payload.exp as number }
  }

  /** A token naming `caller` to `audience`, reused until a third of its life is left. */
  async issueService(caller: string, audience: string): Promise<string> {
    const cacheKey = `${caller}\u0000${audience}`
    const cached = this.#serviceTokens.get(cacheKey)
    if (cached && cached.renewAt > Date.now()) return cached.token
    const { kid, privateKey } = this.#ring.signing()
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: signingAlgorithm, kid, typ: 'service+jwt' })
      .setIssuer(serviceIssuer)
      .setAudience(audience)
      .setSubject(caller)
      .setIssuedAt()
      .setNotBefore('0s')
      .setExpirationTime(`${this.options.serviceTtlSeconds}s`)
      .sign(privateKey)
    this.#serviceTokens.set(cacheKey, {
      token,
      renewAt: Date.now() + (this.options.serviceTtlSeconds * 1000 * 2) / 3,
    })
    return token
  }

  /** The component a service token addressed to `audience` names, when this process verified it a moment ago. */
  knownService(token: string, audience: string): string | undefined {
    return this.#recall(token, `service\u0000${audience}`) as string | undefined
  }

  /** The component a service token names, when it is addressed to `audience`. */
  async verifyService(token: string, audience: string): Promise<string> {
    const purpose = `service\u0000${audience}`
    const known = this.#recall(token, purpose)
    if (known) return known as string
    const payload = await verify(token, this.#resolveLocal, {
      issuer: serviceIssuer,
      audience,
      algorithms: [signingAlgorithm],
      typ: 'service+jwt',
    })
    if (typeof payload.sub !== 'string' || payload.sub.length === 0)
      throw new InvalidTokenError('the service token names no caller')
    this.#remember(token, purpose, payload.sub, payload.exp as number)
    return payload.sub
  }

  /**
   * Keeps what a verified token said for a while (never past its expiry): every request of
   * a client carries the same token, and one signature check serves them all. Bounded; a
   * token seen again after it was dropped is simply verified again.
   */
  #remember(token: string, purpose: string, value: UserPrincipal | string, expSeconds: number): void {
    if (this.#verified.size >= verifiedSizeMax) this.#verified.clear()
    const memoMs = this.options.verifiedMemoMs ?? 30_000
    this.#verified.set(signatureOf(token), {
      token,
      purpose,
      value,
      expiresAtMs: Math.min(expSeconds * 1000, Date.now() + memoMs),
    })
  }

  #recall(token: string, purpose: string): UserPrincipal | string | undefined {
    const key = signatureOf(token)
    const known = this.#verified.get(key)
    if (!known || known.token !== token || known.purpose !== purpose) return undefined
    if (known.expiresAtMs > Date.now()) return known.value
    this.#verified.delete(key)
    return undefined
  }
}

function signatureOf(token: string): string {
  return token.slice(token.lastIndexOf('.') + 1)
}

async function verify(
  token: string,
  keys: JWTVerifyGetKey,
  options: { issuer: string; audience: string; algorithms: string[]; typ?: string },
): Promise<JWTPayload> {
  try {
    const { payload } = await jwtVerify(token, keys, {
      ...options,
      clockTolerance: clockToleranceSeconds,
      requiredClaims: ['exp', 'sub'],
    })
    return payload
  } catch (error) {
    if (error instanceof InvalidTokenError) throw error
    throw new InvalidTokenError(reasonOf(error))
  }
}

/** A reason safe to show: jose's error codes, in words. */
function reasonOf(error: unknown): string {
  const code = (error as { code?: string }).code
  switch (code) {
    case 'ERR_JWT_EXPIRED':
      return 'the token has expired'
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const claim = (error as { claim?: string }).claim
      return claim === 'nbf'
        ? 'the token is not valid yet'
        : `the token's ${claim ?? 'claims'} is not accepted`
    }
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return "the token's algorithm is not accepted"
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return "the token's signature does not verify"
    default:
      return 'the token is not valid'
  }
}

function principalOfClaims(payload: JWTPayload, external: boolean): UserPrincipal {
  const subject = payload.sub as string
  const claimed = payload.role
  const role: Role = roles.includes(claimed as Role) ? (claimed as Role) : 'customer'
  // An external issuer's users are customers unless it says otherwise; their customer id
  // is the issuer's subject unless it names one.
  const customerId =
    typeof payload.customer_id === 'string'
      ? payload.customer_id
      : external && role === 'customer'
        ? subject
        : undefined
  if (role === 'customer' && !customerId) throw new InvalidTokenError('a customer token names no customer')
  return { kind: 'user', subject, role, ...(role === 'customer' ? { customerId } : {}) }
}
