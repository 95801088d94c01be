// Identity for tests: the real key ring, tokens and policies on a store the test owns, and
// tokens for the roles a test acts as.
import type { Store } from '../../src/engines/store/port.ts'
import { openIdentity } from '../../src/platform/identity/identity.ts'
import { PolicyEngine } from '../../src/platform/policy.ts'
import { loadConfig } from '../../src/runtime/config.ts'

export async function testIdentity(store: Store) {
  return openIdentity(
    store,
    loadConfig({ MERCATO_ACCESS_TOKEN_TTL_SECONDS: '3600' }),
    await PolicyEngine.load(PolicyEngine.defaultDir()),
  )
}
