// Tokens and the key ring: key rotation without downtime, service tokens kept apart from
// access tokens, and users of an external OpenID Connect issuer verified by its JWKS URL.
import assert from 'node:assert/strict'
import { createServer, type Server } from 'node:http'
import { after, before, describe, it } from 'node:test'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { storeLimitDefaults } from '../../src/engines/store/port.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import { KeyRing } from '../../src/platform/identity/key-ring.ts'
import { Tokens } from '../../src/platform/identity/tokens.ts'
import { tempDir } from '../support/wait.ts'

const dir = tempDir()
after(() => dir.remove())

const tokenOptions = {
  issuer: 'mercato',
  audience: 'mercato-api',
  accessTtlSeconds: 300,
  serviceTtlSeconds: 60,
}
const ada = { kind: 'user' as const, subject: 'cus_ada', role: 'customer' as const, customerId: 'cus_ada' }

describe('the key ring', () => {
  let store: SqliteStore
  before(() => {
    store = new SqliteStore(`${dir.path}/stores`, 'identity', storeLimitDefaults)
  })
  after(() => store.close())

  it('rotates without downtime: the new key is published first, signs later, and the old one keeps verifying', async () => {
    const ring = await KeyRing.open(store, {
      tokenTtlMaxMs: 300_000,
      activationDelayMs: 200,
      refreshEveryMs: 60_000,
    })
    const tokens = new Tokens(ring, tokenOptions)
    const before = (await tokens.issueAccess(ada)).token
    const oldKid = ring.signing().kid
    const newKid = await ring.rotate()
    assert.deepEqual(
      ring.jwks().keys.map((key) => key.kid),
      [oldKid, newKid],
      'both published',
    )
    assert.equal(ring.signing().kid, oldKid, 'the new key does not sign before its activation')
    await new Promise((resolve) => setTimeout(resolve, 250))
    assert.equal(ring.signing().kid, newKid)
    const afterwards = (await tokens.issueAccess(ada)).token
    assert.deepEqual(await tokens.verifyAccess(before), ada)
    assert.deepEqual(await tokens.verifyAccess(afterwards), ada)

    // Another process on the same store learns the new key.
    const other = await KeyRing.open(store, {
      tokenTtlMaxMs: 300_000,
      activationDelayMs: 200,
      refreshEveryMs: 60_000,
    })
    assert.deepEqual(await new Tokens(other, tokenOptions).verifyAccess(afterwards), ada)
    ring.close()
    other.close()
  })

  it('stops taking a token it verified before once the key that signed it is retired', async () => {
    const ring = await KeyRing.open(store, {
      tokenTtlMaxMs: 100,
      activationDelayMs: 0,
      refreshEveryMs: 60_000,
    })
    const tokens = new Tokens(ring, { ...tokenOptions, verifiedMemoMs: 50 })
    const token = (await tokens.issueAccess(ada)).token
    assert.deepEqual(await tokens.verifyAccess(token), ada)
    await ring.rotate()
    // The old key's successor has signed for longer than a token of this ring lives.
    await new Promise((resolve) => setTimeout(resolve, 200))
    await assert.rejects(tokens.verifyAccess(token), { status: 401 })
    ring.close()
  })

  it('keeps service tokens and access tokens apart', async () => {
    const ring = await KeyRing.open(store, {
      tokenTtlMaxMs: 300_000,
      activationDelayMs: 0,
      refreshEveryMs: 60_000,
    })
    const tokens = new Tokens(ring, tokenOptions)
    const service = await tokens.issueService('gateway', 'query-api')
    assert.equal(await tokens.verifyService(service, 'query-api'), 'gateway')
    await assert.rejects(tokens.verifyService(service, 'command-api'), /audience|aud/)
    await assert.rejects(tokens.verifyAccess(service), { status: 401 })
    await assert.rejects(tokens.verifyService((await tokens.issueAccess(ada)).token, 'query-api'), {
      status: 401,
    })
    ring.close()
  })

  it('takes nothing on trust from a token that shares a verified token’s signature', async () => {
    const ring = await KeyRing.open(store, {
      tokenTtlMaxMs: 300_000,
      activationDelayMs: 0,
      refreshEveryMs: 60_000,
    })
    const tokens = new Tokens(ring, tokenOptions)
    const token = (await tokens.issueAccess(ada)).token
    assert.deepEqual(await tokens.verifyAccess(token), ada)
    const [header, payload, signature] = token.split('.')
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString())
    const forged = Buffer.from(JSON.stringify({ ...claims, role: 'staff' })).toString('base64url')
    await assert.rejects(tokens.verifyAccess(`${header}.${forged}.${signature}`), { status: 401 })
    assert.deepEqual(await tokens.verifyAccess(token), ada, 'the genuine token is still taken')
    ring.close()
  })
})

describe('an external OpenID Connect issuer', () => {
  let server: Server
  let jwksUrl: string
  let store: SqliteStore
  let ring: KeyRing
  let tokens: Tokens
  const issuer = 'https://id.example'
  const keys = generateKeyPair('ES256', { extractable: true })
  const stranger = generateKeyPair('ES256', { extractable: true })

  before(async () => {
    const { publicKey } = await keys
    const jwk = { ...(await exportJWK(publicKey)), kid: 'idp-1', alg: 'ES256', use: 'sig' }
    server = createServer((_request, response) => {
      response.setHeader('content-type', 'application/json')
      response.end(JSON.stringify({ keys: [jwk] }))
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const address = server.address() as { port: number }
    jwksUrl = `http://127.0.0.1:${address.port}/jwks`
    store = new SqliteStore(`${dir.path}/stores`, 'identity_oidc', storeLimitDefaults)
    ring = await KeyRing.open(store, { tokenTtlMaxMs: 300_000, activationDelayMs: 0, refreshEveryMs: 60_000 })
    tokens = new Tokens(ring, {
      ...tokenOptions,
      external: { issuer, jwksUrl, audience: 'mercato-api', algorithms: ['ES256'] },
    })
  })
  after(async () => {
    ring.close()
    await store.close()
    server.close()
  })

  const signed = async (key: typeof keys, claims: Record<string, unknown> = {}, audience = 'mercato-api') =>
    new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid: 'idp-1' })
      .setIssuer(issuer)
      .setAudience(audience)
      .setSubject('idp-user-7')
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign((await key).privateKey)

  it("takes its users as customers, whose id is the issuer's subject", async () => {
    assert.deepEqual(await tokens.verifyAccess(await signed(keys)), {
      kind: 'user',
      subject: 'idp-user-7',
      role: 'customer',
      customerId: 'idp-user-7',
    })
  })

  it('takes a role and a customer id when the token names them', async () => {
    const principal = await tokens.verifyAccess(await signed(keys, { role: 'support' }))
    assert.equal(principal.role, 'support')
    const customer = await tokens.verifyAccess(await signed(keys, { customer_id: 'cus_42' }))
    assert.equal(customer.customerId, 'cus_42')
  })

  it('refuses its tokens for another audience, and tokens signed by a key it does not publish', async () => {
    await assert.rejects(tokens.verifyAccess(await signed(keys, {}, 'another-api')), { status: 401 })
    await assert.rejects(tokens.verifyAccess(await signed(stranger)), { status: 401 })
  })
})
