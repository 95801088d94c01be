import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite'
import { Semaphore } from '../../../platform/limits.ts'
import { checkpointInBackground } from '../../sqlite/wal-checkpoints.ts'
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

/**
 * One SQLite file per service (WAL). SQLite has one writer, so transactions run one at a
 * time through a bounded queue: a caller past the queue bound or the wait bound is refused.
 * Reads outside a transaction use a second connection, so they never see uncommitted work.
 */
export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const
  readonly service: string
  readonly #db: DatabaseSync
  readonly #reader: DatabaseSync
  readonly #checkpoints: { release(): Promise<void> }
  readonly #writer: Semaphore
  readonly #statements = new Map<string, StatementSync>()
  readonly #readStatements = new Map<string, StatementSync>()
  /** Transactions done and waiting for the group's commit. */
  readonly #group: { done(): void; failed(error: unknown): void; callbacks: (() => void)[] }[] = []
  /** Transactions that joined the open one, failed ones included. */
  #joined = 0
  /** A commit of the open group waits for the end of this turn of the event loop. */
  #commitScheduled = false

  constructor(dataDir: string, service: string, limits: StoreLimits) {
    assertServiceName(service)
    this.service = service
    mkdirSync(dataDir, { recursive: true })
    const path = join(dataDir, `${service}.db`)
    this.#db = new DatabaseSync(path)
    this.#db.exec(`PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
      PRAGMA busy_timeout = ${limits.acquireTimeoutMs};`)
    this.#checkpoints = checkpointInBackground(this.#db, path)
    this.#reader = new DatabaseSync(path)
    this.#reader.exec(`PRAGMA busy_timeout = ${limits.acquireTimeoutMs}; PRAGMA query_only = ON;`)
    this.#writer = new Semaphore(`store.${service}`, {
      permitsMax: 1,
      queueLengthMax: limits.queueLengthMax,
      acquireTimeoutMs: limits.acquireTimeoutMs,
    })
  }

  async migrate(migrations: Migration[]): Promise<void> {
    this.#db.exec(
      'CREATE TABLE IF NOT EXISTS mercato_migrations (id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)',
    )
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

  /**
   * Group commit: transactions run one after another in savepoints of one open SQLite
   * transaction (one that fails rolls back alone), and the group commits once the writer
   * has no one waiting at the end of the event loop's turn (or the group is full). Every
   * caller's promise resolves only after that commit. Under load one commit serves the
   * requests that arrived in the same turn; a lone caller waits at most that turn.
   */
  transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#writer.run(() => this.#joinGroup(work, resolve, reject)).catch(reject)
    })
  }

  async #joinGroup<T>(
    work: (tx: Tx) => Promise<T>,
    resolve: (result: T) => void,
    reject: (error: unknown) => void,
  ): Promise<void> {
    const callbacks: (() => void)[] = []
    const tx: Tx = {
      query: async (sql, params) => this.#all(this.#db, this.#statements, sql, params),
      execute: async (sql, params) => this.#run(sql, params),
      afterCommit: (callback) => callbacks.push(callback),
    }
    try {
      if (!this.#db.isTransaction) {
        this.#db.exec('BEGIN IMMEDIATE')
        this.#joined = 0
      }
      this.#joined++
      this.#db.exec('SAVEPOINT mercato_tx')
      let result: T
      try {
        result = await work(tx)
        this.#db.exec('RELEASE mercato_tx')
      } catch (error) {
        if (!this.#db.isTransaction) {
          // SQLite gave up the whole transaction: the group's work is gone with it.
          this.#failGroup(error)
        } else {
          this.#db.exec('ROLLBACK TO mercato_tx')
          this.#db.exec('RELEASE mercato_tx')
        }
        reject(error)
        return
      }
      this.#group.push({ done: () => resolve(result), failed: reject, callbacks })
    } catch (error) {
      // BEGIN, SAVEPOINT or RELEASE failed: nothing of this group can be trusted.
      reject(error)
      this.#failGroup(error)
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK')
      return
    } finally {
      // Failed members count too: a stream of failing transactions must not hold the
      // group's commit back.
      if (this.#db.isOpen && this.#db.isTransaction) {
        if (this.#joined >= groupSizeMax) this.#commitGroup()
        else if (this.#writer.waiting === 0) this.#scheduleCommit()
      }
    }
  }

  #scheduleCommit(): void {
    if (this.#commitScheduled) return
    this.#commitScheduled = true
    setImmediate(() => {
      // Behind the writers that came in this turn: they join the group first.
      this.#writer
        .run(async () => {
          this.#commitScheduled = false
          if (this.#db.isOpen && this.#db.isTransaction) this.#commitGroup()
        })
        .catch(() => {
          // Refused by a full queue: the writers in it run on, and the group commits when
          // it is full or the last of them finds no one waiting.
          this.#commitScheduled = false
        })
    })
  }

  #commitGroup(): void {
    const group = this.#group.splice(0)
    try {
      this.#db.exec('COMMIT')
    } catch (error) {
      for (const member of group) member.failed(error)
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK')
      return
    }
    for (const member of group) {
      runAfterCommit(this.service, member.callbacks)
      member.done()
    }
  }

  #failGroup(error: unknown): void {
    for (const member of this.#group.splice(0)) member.failed(error)
  }

  execute(sql: string, params?: SqlValue[]): Promise<number> {
    return this.transaction((tx) => tx.execute(sql, params))
  }

  executeReturning<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]> {
    return this.transaction((tx) => tx.query<Row>(sql, params))
  }

  async query<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]> {
    return this.#all(this.#reader, this.#readStatements, sql, params) as Row[]
  }

  async ping(): Promise<void> {
    await this.query('SELECT 1')
  }

  async close(): Promise<void> {
    await this.#writer.run(async () => {
      if (this.#db.isTransaction) this.#commitGroup()
      this.#db.close()
      this.#reader.close()
      await this.#checkpoints.release()
    })
  }

  #all<Row>(
    db: DatabaseSync,
    cache: Map<string, StatementSync>,
    sql: string,
    params: SqlValue[] = [],
  ): Row[] {
    // Plain objects, as PostgreSQL's driver gives (node:sqlite's rows have no prototype).
    return prepare(db, cache, sql)
      .all(...params.map(toSqlite))
      .map((row) => ({ ...row })) as Row[]
  }

  #run(sql: string, params: SqlValue[] = []): number {
    return Number(prepare(this.#db, this.#statements, sql).run(...params.map(toSqlite)).changes)
  }
}

/** Transactions that share one commit at most: bounds how long the first waits for the last. */
const groupSizeMax = 64

/** Prepares once per connection; $1, $2 … become SQLite's ?1, ?2 …. */
function prepare(db: DatabaseSync, cache: Map<string, StatementSync>, sql: string): StatementSync {
  let statement = cache.get(sql)
  if (!statement) {
    statement = db.prepare(sql.replace(/\$(\d+)/g, '?$1'))
    if (cache.size > 500) cache.clear()
    cache.set(sql, statement)
  }
  return statement
}

function toSqlite(value: SqlValue): SQLInputValue {
  if (value === undefined) return null
  if (typeof value === 'boolean') return value ? 1 : 0
  return value
}
