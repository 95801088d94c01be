import { createHash } from 'node:crypto'
import type { Socket } from 'node:net'
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

/** A connection idle this long is closed. */
const idleCloseMs = 30_000

/**
 * One PostgreSQL schema per service, on a bounded set of connections. A caller waits for a
 * connection only within `acquireTimeoutMs` and only while fewer than `queueLengthMax`
 * others wait; a transaction holds exactly one connection and never asks for a second.
 *
 * The store keeps its own idle connections (a stack: the most recently used, whose
 * prepared statements are warm, goes out first) rather than pg.Pool, whose checkout and
 * per-release idle timer cost about a sixth of a short query's CPU. Connections run in
 * node-pg's pipeline mode, so a transaction's BEGIN goes out with its first statement
 * instead of taking a round trip of its own.
 */
export class PostgresStore implements Store {
  readonly kind = 'postgres' as const
  readonly service: string
  readonly #clientConfig: pg.ClientConfig
  readonly #idle: { client: pg.Client; idleSince: number }[] = []
  /** Connections that failed while out: thrown away on release. */
  readonly #broken = new WeakSet<pg.Client>()
  readonly #sweep: NodeJS.Timeout
  #closed = false
  /** Callers holding (or opening) a connection; close() waits for them. */
  #inUse = 0
  #drained: PromiseWithResolvers<void> | undefined
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
    this.#clientConfig = {
      connectionString: url,
      connectionTimeoutMillis: limits.acquireTimeoutMs,
      statement_timeout: limits.statementTimeoutMs,
      idle_in_transaction_session_timeout: limits.statementTimeoutMs * 2,
      options: `-c search_path=${schema}`,
      types,
      pipeline: true,
    } as pg.ClientConfig
    this.#sweep = setInterval(() => void this.#closeIdle(Date.now() - idleCloseMs), idleCloseMs / 3)
    this.#sweep.unref()
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
        // A migration may build an index over a large table: no statement timeout for it.
        await tx.execute('SET LOCAL statement_timeout = 0')
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
      // Not awaited here: the work's first statement goes out right behind it (pipeline
      // mode), and the server runs them in order. Only a lost connection fails a BEGIN, and
      // then the statement behind it fails too. The socket is corked until the work has
      // issued what it issues at once, so BEGIN and that statement are one write, and one
      // wake-up of the server, not two.
      const socket = socketOf(client)
      socket.cork()
      const begun = client.query('BEGIN')
      begun.catch(() => {})
      let result: T
      try {
        let working: Promise<T>
        try {
          working = work(tx)
        } finally {
          socket.uncork()
        }
        result = await working
        await begun
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

  /** Refuses new work, waits for the work in flight, then closes every connection. */
  async close(): Promise<void> {
    this.#closed = true
    clearInterval(this.#sweep)
    if (this.#inUse > 0) {
      this.#drained ??= Promise.withResolvers<void>()
      await this.#drained.promise
    }
    await Promise.all(this.#closeIdle(Number.POSITIVE_INFINITY))
  }

  async #withClient<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
    return this.#connections.run(async () => {
      if (this.#closed) throw new Error(`the ${this.service} store is closed`)
      this.#inUse++
      try {
        const client = this.#idle.pop()?.client ?? (await this.#connect())
        try {
          return await work(client)
        } catch (error) {
          if (error instanceof Error && /terminat|Connection/i.test(error.message)) this.#broken.add(client)
          throw error
        } finally {
          if (this.#closed || this.#broken.has(client)) client.end().catch(() => {})
          else this.#idle.push({ client, idleSince: Date.now() })
        }
      } finally {
        if (--this.#inUse === 0) this.#drained?.resolve()
      }
    })
  }

  async #connect(): Promise<pg.Client> {
    const client = new pg.Client(this.#clientConfig)
    // A connection lost, idle or in use, is an 'error' event on its client: unheard, it
    // would end the process. Its query fails, and it is thrown away.
    client.on('error', () => {
      this.#broken.add(client)
      const at = this.#idle.findIndex((idle) => idle.client === client)
      if (at >= 0) {
        this.#idle.splice(at, 1)
        client.end().catch(() => {})
      }
    })
    try {
      await client.connect()
    } catch (error) {
      client.end().catch(() => {})
      throw error
    }
    return client
  }

  /** Closes the idle connections unused since `before` (the stack's bottom holds the oldest). */
  #closeIdle(before: number): Promise<void>[] {
    const ended: Promise<void>[] = []
    while (this.#idle.length > 0 && this.#idle[0].idleSince < before) {
      const { client } = this.#idle.shift() as { client: pg.Client }
      ended.push(client.end().catch(() => {}))
    }
    return ended
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

/** The client's socket: node-pg keeps it as `connection.stream`, which it corks itself around a statement's messages. */
function socketOf(client: pg.Client): Socket {
  return (client as unknown as { connection: { stream: Socket } }).connection.stream
}

function toPg(value: SqlValue): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  return value ?? null
}
