import pg from 'pg'
import { PostgresStore } from '../../../src/engines/store/postgres/postgres-store.ts'
import { serverUrls, skipUnlessReachable } from '../../support/servers.ts'
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
