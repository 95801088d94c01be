import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync, type SQLInputValue } from 'node:sqlite'
import { Semaphore } from '../../../platform/limits.ts'
import {
  assertServiceName,
  coreMigrations,
  type Migration,
  migrationSql,
  type SqlValue,
  type Store,
  type StoreLimits,
  type Tx,
} from '../port.ts'

/**
 * One SQLite file per service (WAL). SQLite has one writer, so transactions run one at a
 * time through a bounded queue: a caller past the queue bound or the wait bound is refused.
 */
export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const
  readonly service: string
  readonly #db: DatabaseSync
  readonly #writer: Semaphore
  readonly #statements = new Map<string, ReturnType<DatabaseSync['prepare']>>()

  constructor(dataDir: string, service: string, limits: StoreLimits) {
    assertServiceName(service)
    this.service = service
    mkdirSync(dataDir, { recursive: true })
    this.#db = new DatabaseSync(join(dataDir, `${service}.db`))
    this.#db.exec(`PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
      PRAGMA busy_timeout = ${limits.acquireTimeoutMs};`)
    this.#writer = new Semaphore(`store.${service}`, {
      permitsMax: 1,
      queueLengthMax: limits.queueLengthMax,
      acquireTimeoutMs: limits.acquireTimeoutMs,
    })
  }

  async migrate(migrations: Migration[]): Promise<void> {
    this.#db.exec('CREATE TABLE IF NOT EXISTS mercato_migrations (id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)')
    for (const migration of [...coreMigrations, ...migrations]) {
      await this.transaction(async (tx) => {
        const done = await tx.query('SELECT 1 FROM mercato_migrations WHERE id = $1', [migration.id])
        if (done.length > 0) return
        this.#db.exec(migrationSql(migration, 'sqlite'))
        await tx.execute('INSERT INTO mercato_migrations (id, applied_at) VALUES ($1, $2)', [
          migration.id,
          new Date().toISOString(),
        ])
      })
    }
  }

  async transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    return this.#writer.run(async () => {
      const callbacks: (() => void)[] = []
      const tx: Tx = {
        query: async (sql, params) => this.#all(sql, params),
        execute: async (sql, params) => this.#run(sql, params),
        afterCommit: (callback) => callbacks.push(callback),
      }
      this.#db.exec('BEGIN IMMEDIATE')
      let result: T
      try {
        result = await work(tx)
        this.#db.exec('COMMIT')
      } catch (error) {
        if (this.#db.isTransaction) this.#db.exec('ROLLBACK')
        throw error
      }
      for (const callback of callbacks) callback()
      return result
    })
  }

  async query<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]> {
    return this.#all(sql, params) as Row[]
  }

  async ping(): Promise<void> {
    this.#all('SELECT 1')
  }

  async close(): Promise<void> {
    await this.#writer.run(async () => this.#db.close())
  }

  #all<Row>(sql: string, params: SqlValue[] = []): Row[] {
    return this.#prepare(sql).all(...params.map(toSqlite)) as Row[]
  }

  #run(sql: string, params: SqlValue[] = []): number {
    return Number(this.#prepare(sql).run(...params.map(toSqlite)).changes)
  }

  #prepare(sql: string) {
    let statement = this.#statements.get(sql)
    if (!statement) {
      statement = this.#db.prepare(sql.replace(/\$(\d+)/g, '?$1'))
      if (this.#statements.size > 500) this.#statements.clear()
      this.#statements.set(sql, statement)
    }
    return statement
  }
}

function toSqlite(value: SqlValue): SQLInputValue {
  if (value === undefined) return null
  if (typeof value === 'boolean') return value ? 1 : 0
  return value
}
