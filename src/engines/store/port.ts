// The store port: one store per service (a SQLite file, or a PostgreSQL schema), with
// migrations and transactions. SQL is written once, with $1, $2 … placeholders and the
// common subset of both dialects; a migration may give each dialect its own text.
import { errorMessage } from '../../platform/errors.ts'

export type SqlValue = string | number | bigint | boolean | null | undefined | Uint8Array

export interface Tx {
  query<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]>
  /** Runs a statement; resolves with the number of rows it changed. */
  execute(sql: string, params?: SqlValue[]): Promise<number>
  /** Runs `callback` once this transaction has committed (never if it rolls back). */
  afterCommit(callback: () => void): void
}

export interface Migration {
  id: string
  sql: string | { sqlite: string; postgres: string }
}

export interface Store {
  readonly kind: 'sqlite' | 'postgres'
  readonly service: string
  migrate(migrations: Migration[]): Promise<void>
  /** Runs `work` in one transaction on one connection; commits if it resolves, rolls back if it throws. */
  transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T>
  query<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]>
  /** Runs one statement in a transaction of its own; resolves with the number of rows it changed. */
  execute(sql: string, params?: SqlValue[]): Promise<number>
  /** Runs one statement with a RETURNING clause in a transaction of its own; resolves with its rows. */
  executeReturning<Row = Record<string, unknown>>(sql: string, params?: SqlValue[]): Promise<Row[]>
  ping(): Promise<void>
  close(): Promise<void>
}

export interface StoreLimits {
  /** Connections (PostgreSQL) or concurrent transactions (SQLite: always 1 writer). */
  poolSizeMax: number
  /** Callers that may wait for a connection; past it they are refused at once. */
  queueLengthMax: number
  /** How long a caller may wait for a connection. */
  acquireTimeoutMs: number
  /** How long one statement may run. */
  statementTimeoutMs: number
}

export const storeLimitDefaults: StoreLimits = {
  poolSizeMax: 10,
  queueLengthMax: 200,
  acquireTimeoutMs: 2_000,
  statementTimeoutMs: 5_000,
}

/** Mercato's own tables, in every store: the inbox and the outbox. */
export const coreMigrations: Migration[] = [
  {
    id: 'mercato-0001-inbox',
    sql: `CREATE TABLE IF NOT EXISTS mercato_inbox (
      consumer TEXT NOT NULL, event_id TEXT NOT NULL, handled_at TEXT NOT NULL,
      PRIMARY KEY (consumer, event_id))`,
  },
  {
    id: 'mercato-0002-outbox',
    sql: {
      sqlite: `CREATE TABLE IF NOT EXISTS mercato_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, created_at TEXT NOT NULL, sent_at TEXT);
        CREATE INDEX IF NOT EXISTS mercato_outbox_unsent ON mercato_outbox (id) WHERE sent_at IS NULL`,
      postgres: `CREATE TABLE IF NOT EXISTS mercato_outbox (
        id BIGSERIAL PRIMARY KEY, event TEXT NOT NULL, created_at TEXT NOT NULL, sent_at TEXT);
        CREATE INDEX IF NOT EXISTS mercato_outbox_unsent ON mercato_outbox (id) WHERE sent_at IS NULL`,
    },
  },
  {
    // The inbox is pruned by age (pruneInbox); rows are added in handled_at order, so this
    // index grows at its right edge and costs a commit little.
    id: 'mercato-0003-inbox-handled-at',
    sql: 'CREATE INDEX IF NOT EXISTS mercato_inbox_handled_at ON mercato_inbox (handled_at)',
  },
]

/**
 * Runs a committed transaction's after-commit callbacks. The work is committed: a callback
 * that throws is reported as a process warning and must not make the transaction look failed.
 */
export function runAfterCommit(service: string, callbacks: (() => void)[]): void {
  for (const callback of callbacks) {
    try {
      callback()
    } catch (error) {
      process.emitWarning(`after-commit callback of store ${service} failed: ${errorMessage(error)}`)
    }
  }
}

export function migrationSql(migration: Migration, kind: Store['kind']): string {
  return typeof migration.sql === 'string' ? migration.sql : migration.sql[kind]
}

export function assertServiceName(service: string): void {
  if (!/^[a-z][a-z0-9_]{0,40}$/.test(service)) throw new Error(`invalid service name for a store: ${service}`)
}
