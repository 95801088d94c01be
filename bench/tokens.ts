// Access tokens for a benchmark's own Mercato process, minted with that deployment's key
// ring (in its identity store), as an operator's tool could: the benchmark measures the
// API, not the sign-in, and needs many customers without registering each.
import { openIdentity } from '../src/platform/identity/identity.ts'
import { loadConfig } from '../src/runtime/config.ts'
import { loadPolicy, storeOpener } from '../src/runtime/engines.ts'

export interface BenchTokens {
  admin: string
  customer(customerId: string): Promise<string>
  /** A service token of the gateway's, addressed to `audience`. */
  service(audience: string): Promise<string>
  close(): Promise<void>
}

export async function benchTokens(env: Record<string, string>): Promise<BenchTokens> {
  // Long-lived tokens: a benchmark's direct calls reuse one token for minutes.
  const config = loadConfig({
    ...env,
    MERCATO_LOG_LEVEL: 'silent',
    MERCATO_ACCESS_TOKEN_TTL_SECONDS: '86400',
    MERCATO_SERVICE_TOKEN_TTL_SECONDS: '3600',
  })
  const store = await storeOpener(config)('identity')
  const identity = await openIdentity(store, config, await loadPolicy(config))
  const issue = async (principal: Parameters<typeof identity.tokens.issueAccess>[0]) =>
    (await identity.tokens.issueAccess(principal)).token
  return {
    admin: await issue({ kind: 'user', subject: 'stf_bench_admin', role: 'admin' }),
    customer: (customerId) => issue({ kind: 'user', subject: customerId, role: 'customer', customerId }),
    service: (audience) => identity.tokens.issueService('gateway', audience),
    close: async () => {
      identity.ring.close()
      await store.close()
    },
  }
}

/** Settings for a benchmark's process: limits that would refuse a benchmark's load are lifted. */
export const benchLimits = {
  MERCATO_RATE_LIMIT_PRINCIPAL_PER_MINUTE: '100000000',
  MERCATO_RATE_LIMIT_ADDRESS_PER_MINUTE: '100000000',
}
