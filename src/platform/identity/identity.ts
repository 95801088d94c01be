// A process's identity: the shared key ring, the tokens it signs and verifies, and the
// Cedar policies. One call, so every process (and every test) builds it the same way.
import type { Store } from '../../engines/store/port.ts'
import type { PolicyEngine } from '../policy.ts'
import type { Identity } from './guard.ts'
import { KeyRing } from './key-ring.ts'
import { type ExternalIssuer, Tokens } from './tokens.ts'

export interface IdentitySettings {
  accessTokenTtlSeconds: number
  serviceTokenTtlSeconds: number
  keyActivationDelayMs: number
  auth: {
    issuer: string
    audience: string
    external: ExternalIssuer | undefined
  }
}

/** How often every process re-reads the key ring: a key another process adds is published within it. */
export const keyRingRefreshMs = 30_000

/**
 * How long a verifier may cache the JWKS: a new key is published within keyRingRefreshMs of
 * its rotation and signs `activationDelayMs` after it, so a copy fetched just before it was
 * published must have run out by then.
 */
export function jwksMaxAgeSeconds(activationDelayMs: number): number {
  return Math.max(0, Math.floor((activationDelayMs - keyRingRefreshMs) / 1000))
}

export async function openIdentity(
  store: Store,
  settings: IdentitySettings,
  policy: PolicyEngine,
): Promise<Identity & { ring: KeyRing }> {
  const ring = await KeyRing.open(store, {
    tokenTtlMaxMs: Math.max(settings.accessTokenTtlSeconds, settings.serviceTokenTtlSeconds) * 1000,
    activationDelayMs: settings.keyActivationDelayMs,
    refreshEveryMs: keyRingRefreshMs,
  })
  const tokens = new Tokens(ring, {
    issuer: settings.auth.issuer,
    audience: settings.auth.audience,
    accessTtlSeconds: settings.accessTokenTtlSeconds,
    serviceTtlSeconds: settings.serviceTokenTtlSeconds,
    external: settings.auth.external,
  })
  return { tokens, policy, ring }
}
