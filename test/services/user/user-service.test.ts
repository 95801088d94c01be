import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import Fastify from 'fastify'
import type { CloudEvent } from '../../../src/contracts/envelope.ts'
import type { Store } from '../../../src/engines/store/port.ts'
import { silentLogger } from '../../../src/platform/logger.ts'
import { hashPassword, passwordNeedsRehash, verifyPassword } from '../../../src/platform/passwords.ts'
import {
  findCredentials,
  findCustomer,
  startUserService,
  verifyLogin,
} from '../../../src/services/user/user-service.ts'
import { testIdentity } from '../../support/identity.ts'
import { waitFor } from '../../support/wait.ts'
import { type Harness, openHarness, storeKinds } from '../notification/harness.ts'

const address = (name: string) => ({
  name,
  line1: '1 Main Street',
  city: 'Springfield',
  postalCode: '12345',
  country: 'US',
})

describe('passwords', () => {
  it('hashes in the scrypt format and verifies only the right password', async () => {
    const hash = await hashPassword('correct horse battery staple')
    assert.match(hash, /^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/)
    assert.equal(await verifyPassword('correct horse battery staple', hash), true)
    assert.equal(await verifyPassword('correct horse battery stapler', hash), false)
    assert.notEqual(await hashPassword('correct horse battery staple'), hash, 'every hash has its own salt')
    assert.equal(passwordNeedsRehash(hash), false)
  })

  it('refuses hashes that are not its own, and never throws on them', async () => {
    for (const bad of [
      '',
      'plain',
      'scrypt$1$8$1$c2FsdA==$aGFzaA==',
      'scrypt$1048577$8$1$c2FsdA==$aGFzaA==',
      'bcrypt$x',
    ])
      assert.equal(await verifyPassword('anything', bad), false, bad)
    await assert.rejects(hashPassword(''))
  })
})

for (const { kind, skip } of await storeKinds('user service')) {
  describe(`user service (${kind} store)`, { concurrency: false, skip }, () => {
    let harness: Harness
    let store: Store
    let stop: () => Promise<void>
    let events: CloudEvent[]
    const ofType = (type: string, customerId?: string) =>
      events.filter((e) => e.type === type && (!customerId || e.data.customerId === customerId))

    before(async () => {
      harness = await openHarness(kind)
      const service = harness.service('user')
      store = service.store
      const identity = await testIdentity(service.store)
      const running = await startUserService(service, {
        http: Fastify(),
        identity,
        log: silentLogger(),
        staff: {
          admin: { email: 'admin@test.local', password: 'admin-password-1' },
          support: { email: 'support@test.local', password: 'support-password-1' },
        },
      })
      stop = running.stop
      await running.ready()
      events = (await harness.collect(['customers'])).events
    })
    after(async () => {
      await stop()
      await harness.close()
    })

    it('registers a customer: profile, credentials and address book, with its events', async () => {
      const passwordHash = await hashPassword('s3cret-enough')
      await harness.publish('customer.registration-requested', 'c-ada', {
        customerId: 'c-ada',
        email: 'Ada@Example.com',
        givenName: 'Ada',
        familyName: 'Lovelace',
        passwordHash,
        addresses: [address('Ada Home'), address('Ada Work')],
      })
      await waitFor('customer.registered', () => ofType('customer.registered', 'c-ada').length === 1)
      await waitFor('two address-added', () => ofType('customer.address-added', 'c-ada').length === 2)
      const registered = ofType('customer.registered', 'c-ada')[0]
      assert.deepEqual(registered.data, {
        customerId: 'c-ada',
        email: 'Ada@Example.com',
        givenName: 'Ada',
        familyName: 'Lovelace',
      })
      assert.equal(registered.dataversion, 2)
      const emitted = events.filter((e) => e.source === 'mercato/user')
      assert.ok(
        !JSON.stringify(emitted).includes(passwordHash.split('$')[5]),
        'the hash never leaves the service',
      )

      const credentials = await findCredentials(store, 'ADA@example.COM')
      assert.equal(credentials?.customerId, 'c-ada')
      assert.equal(await verifyPassword('s3cret-enough', credentials!.passwordHash), true)
      assert.equal(await findCredentials(store, 'nobody@example.com'), undefined)

      const profile = await findCustomer(store, 'c-ada')
      assert.deepEqual(
        profile?.addresses.map((a) => a.name),
        ['Ada Home', 'Ada Work'],
      )
      const addressIds = ofType('customer.address-added', 'c-ada').map((e) => e.data.addressId)
      assert.deepEqual(new Set(addressIds), new Set(profile?.addresses.map((a) => a.addressId)))
    })

    it('signs in staff and customers, each with their own password; a staff address is not registered again', async () => {
      assert.deepEqual(await verifyLogin(store, 'ADMIN@test.local', 'admin-password-1'), {
        subject: 'stf_admin',
        role: 'admin',
      })
      assert.equal(await verifyLogin(store, 'admin@test.local', 'wrong-password'), undefined)
      assert.equal(await verifyLogin(store, 'nobody@test.local', 'admin-password-1'), undefined)
      await harness.publish('customer.registration-requested', 'c-squatter', {
        customerId: 'c-squatter',
        email: 'Support@test.local',
        givenName: 'S',
        familyName: 'Q',
        passwordHash: await hashPassword('squatter-password'),
        addresses: [],
      })
      await waitFor('rejection', () => ofType('customer.registration-rejected', 'c-squatter').length === 1)
      assert.match(
        String(ofType('customer.registration-rejected', 'c-squatter')[0].data.reason),
        /already registered/,
      )
      assert.equal(await findCustomer(store, 'c-squatter'), undefined)
      assert.deepEqual(await verifyLogin(store, 'support@test.local', 'support-password-1'), {
        subject: 'stf_support',
        role: 'support',
      })
      assert.equal(await verifyLogin(store, 'support@test.local', 'squatter-password'), undefined)
    })

    it('rejects a registration whose e-mail (in any case) belongs to another customer', async () => {
      await harness.publish('customer.registration-requested', 'c-imposter', {
        customerId: 'c-imposter',
        email: 'ada@EXAMPLE.com',
        givenName: 'Not',
        familyName: 'Ada',
      })
      await waitFor('rejection', () => ofType('customer.registration-rejected', 'c-imposter').length === 1)
      assert.match(
        String(ofType('customer.registration-rejected', 'c-imposter')[0].data.reason),
        /already registered/,
      )
      assert.equal(ofType('customer.registered', 'c-imposter').length, 0)
      assert.equal(await findCustomer(store, 'c-imposter'), undefined)
    })

    it('changes nothing on a redelivered request, nor on a second request for the same customer', async () => {
      const first = await harness.publish('customer.registration-requested', 'c-bob', {
        customerId: 'c-bob',
        email: 'bob@example.com',
        givenName: 'Bob',
        familyName: '',
        addresses: [address('Bob')],
      })
      await waitFor('bob registered', () => ofType('customer.registered', 'c-bob').length === 1)
      // The same event again (same id), then a new request for the same customer with other data.
      await harness.stream.publish([first])
      await harness.publish('customer.registration-requested', 'c-bob', {
        customerId: 'c-bob',
        email: 'robert@example.com',
        givenName: 'Robert',
        familyName: 'B',
        addresses: [address('Robert')],
      })
      // A sentinel on the same partition key: once it is handled, so are the two before it.
      await harness.publish('customer.registration-requested', 'c-bob', {
        customerId: 'c-sentinel',
        email: 'sentinel@example.com',
        givenName: 'Sentinel',
        familyName: '',
      })
      await waitFor(
        'sentinel registered',
        async () => (await findCustomer(store, 'c-sentinel')) !== undefined,
      )
      const outbox = await store.query<{ event: string }>('SELECT event FROM mercato_outbox ORDER BY id')
      const bobEvents = outbox
        .map((row) => JSON.parse(row.event) as CloudEvent)
        .filter((e) => e.data.customerId === 'c-bob')
      assert.deepEqual(
        bobEvents.map((e) => e.type),
        ['customer.registered', 'customer.address-added'],
      )
      const bob = await findCustomer(store, 'c-bob')
      assert.equal(bob?.email, 'bob@example.com')
      assert.equal(bob?.addresses.length, 1)
      assert.equal(await findCredentials(store, 'robert@example.com'), undefined)
    })
  })
}
