import { createHash } from 'node:crypto'
import pg from 'pg'
import { UnreachableError } from '../../../platform/errors.ts'
import { Semaphore, withTimeout } from '../../../platform/limits.ts'
import {
  assertServiceName,
  coreMigrations,
  type Migration,
  migrationSql,
  runAfterCommit,
  type SqlValue,
  type Store,
  type StoreLimits,
  type Tx,
} from '../port.ts'

// BIGINT and COUNT(*) come back as numbers, as they do from SQLite.
const types = {
  getTypeParser: (oid: number, format?: 'text' | 'binary') =>
    oid === 20 ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format as 'text'),
}

/**
 * One PostgreSQL schema per service, on a bounded pool. A caller waits for a connection
 * only within `acquireTimeoutMs` and only while fewer than `queueLengthMax` others wait;
 * a transaction holds exactly one connection and never asks for a second.
 */
export class PostgresStore implements Store {
  readonly kind = 'postgres' as const
  readonly service: string
  readonly #pool: pg.Pool
  readonly #connections: Semaphore
  readonly #url: string

  readonly schema: string

  /** `schema` defaults to the service name; a deployment usually prefixes it (MERCATO_STORE_SCHEMA_PREFIX). */
  constructor(url: string, service: string, limits: StoreLimits, schema = service) {
    assertServiceName(service)
    assertServiceName(schema)
    this.service = service
    this.schema = schema
    this.#url = url
    this.#pool = new pg.Pool({
      connectionString: url,
      max: limits.poolSizeMax,
      connectionTimeoutMillis: limits.acquireTimeoutMs,
      idleTimeoutMillis: 30_000,
      statement_timeout: limits.statementTimeoutMs,
      idle_in_transaction_session_timeout: limits.statementTimeoutMs * 2,
      options: `-c search_path=${schema}`,
      types,
    })
    this.#pool.on('error', () => {})
    this.#connections = new Semaphore(`store.${service}`, {
      permitsMax: limits.poolSizeMax,
      queueLengthMax: limits.queueLengthMax,
      acquireTimeoutMs: limits.acquireTimeoutMs,
    })
  }

  async migrate(migrations: Migration[]): Promise<void> {
    await this.#withClient(async (client) => {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${this.schema}`)
      await client.query(
        'CREATE TABLE IF NOT EXISTS mercato_migrations (id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)',
      )
    })
    for (const migration of [...coreMigrations, ...migrations]) {
      await this.transaction(async (tx) => {
        // Several processes may start at once: one applies each migration, the others wait.
        await tx.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`mercato-migrate-${this.schema}`])
        const done = await tx.query('SELECT 1 FROM mercato_migrations WHERE id = $1', [migration.id])
        if (done.length > 0) return
        await tx.execute(migrationSql(migration, 'postgres'))
        await tx.execute('INSERT INTO mercato_migrations (id, applied_at) VALUES ($1, $2)', [
          migration.id,
          new Date().toISOString(),
        ])
      })
    }
  }

  async transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    return this.#withClient(async (client) => {
      const callbacks: (() => void)[] = []
      const tx: Tx = {
        query: async (sql, params) => (await client.query(statement(sql, params))).rows,
        execute: async (sql, params) => (await client.query(statement(sql, params))).rowCount ?? 0,
        afterCommit: (callback) => callbacks.push(callback),
      }
      await client.query('BEGIN')
      let result: T
      try {
        result = await work(tx)
        await client.query('COMMIT')
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {})
        throw error
      }
      runAfterCommit(this.service, callbacks)
      return result
    })
  }

  /** One statement is a transaction of its own (autocommit): one round trip, not three. */
  execute(sql: string, params?: SqlValue[]): Promise<number> {
    return this.#withClient(async (client) => (await client.query(statement(sql, params))).rowCount ?? 0)
  }

  executeReturning<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]> {
    return this.query<Row>(sql, params)
  }

  async query<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]> {
    return this.#withClient(async (client) => (await client.query(statement(sql, params))).rows as Row[])
  }

  async ping(): Promise<void> {
    try {
      await withTimeout('postgres ping', 5_000, this.query('SELECT 1'))
    } catch (error) {
      throw new UnreachableError('PostgreSQL', this.#url, error)
    }
  }

  async close(): Promise<void> {
    await this.#pool.end()
  }

  async #withClient<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.#connections.run(async () => {
      const client = await this.#pool.connect()
      let broken: Error | undefined
      // A connection lost while checked out is an 'error' event on the client (the pool
      // listens only to idle ones): unheard, it would end the process. Its query fails, and
      // the connection is thrown away on release.
      const lost = (error: Error) => {
        broken = error
      }
      client.on('error', lost)
      try {
        return await work(client)
      } catch (error) {
        broken ??= error instanceof Error && /terminat|Connection/i.test(error.message) ? error : undefined
        throw error
      } finally {
        client.off('error', lost)
        client.release(broken)
      }
    })
  }
}

/**
 * A statement with parameters is prepared once per connection under a name drawn from its
 * text, so PostgreSQL parses and plans it once rather than on every call. One without
 * parameters (BEGIN, a migration's several statements) goes as a simple query.
 */
function statement(sql: string, params: SqlValue[] | undefined): string | pg.QueryConfig {
  if (params === undefined) return sql
  let name = statementNames.get(sql)
  if (name === undefined) {
    name = `m_${createHash('sha1').update(sql).digest('base64url')}`
    if (statementNames.size >= 10_000) statementNames.clear()
    statementNames.set(sql, name)
  }
  return { name, text: sql, values: params.map(toPg) }
}

const statementNames = new Map<string, string>()

function toPg(value: SqlValue): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  return value ?? null
}
