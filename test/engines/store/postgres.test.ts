import assert from 'node:assert/strict'
import { type AddressInfo, connect, createServer, type Socket } from 'node:net'
import { describe, it } from 'node:test'
import pg from 'pg'
import { storeLimitDefaults } from '../../../src/engines/store/port.ts'
import { PostgresStore } from '../../../src/engines/store/postgres/postgres-store.ts'
import { serverUrls, skipUnlessReachable } from '../../support/servers.ts'
import { uniqueName } from '../../support/wait.ts'
import { defineStoreConformance } from './conformance.ts'

const skip = await skipUnlessReachable('store port conformance: PostgreSQL', 'postgres')

defineStoreConformance(
  'PostgreSQL',
  skip,
  async (service, limits) => new PostgresStore(serverUrls.postgres, service, limits),
  async (service) => {
    const client = new pg.Client(serverUrls.postgres)
    await client.connect()
    await client.query(`DROP SCHEMA IF EXISTS ${service} CASCADE`)
    await client.end()
  },
)

describe('the PostgreSQL store when a connection is lost mid-query', { skip }, () => {
  it('fails that query, keeps the process alive, and works on with a new connection', async () => {
    // A TCP proxy in front of PostgreSQL, whose connections the test resets, as a network
    // failure or a server crash would.
    const target = new URL(serverUrls.postgres)
    const sockets = new Set<Socket>()
    const proxy = createServer((inbound) => {
      const outbound = connect(Number(target.port || 5432), target.hostname)
      for (const socket of [inbound, outbound]) {
        sockets.add(socket)
        socket.on('error', () => {})
        socket.on('close', () => sockets.delete(socket))
      }
      inbound.pipe(outbound).pipe(inbound)
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
    const via = new URL(serverUrls.postgres)
    via.host = `127.0.0.1:${(proxy.address() as AddressInfo).port}`
    const service = uniqueName('pglost').toLowerCase()
    const store = new PostgresStore(via.toString(), service, storeLimitDefaults)
    try {
      await store.migrate([])
      const slow = store.query('SELECT pg_sleep(5)')
      await new Promise((resolve) => setTimeout(resolve, 200))
      for (const socket of sockets) socket.resetAndDestroy()
      await assert.rejects(slow)
      assert.deepEqual(await store.query('SELECT 1 AS one'), [{ one: 1 }])
    } finally {
      await store.close()
      proxy.close()
      for (const socket of sockets) socket.destroy()
      const admin = new pg.Client(serverUrls.postgres)
      await admin.connect()
      await admin.query(`DROP SCHEMA IF EXISTS ${service} CASCADE`)
      await admin.end()
    }
  })
})
