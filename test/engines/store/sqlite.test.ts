import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { SqliteStore } from '../../../src/engines/store/sqlite/sqlite-store.ts'
import { tempDir, waitFor } from '../../support/wait.ts'
import { defineStoreConformance } from './conformance.ts'

const dir = tempDir()
process.on('exit', () => dir.remove())

defineStoreConformance(
  'SQLite',
  undefined,
  async (service, limits) => new SqliteStore(dir.path, service, limits),
  async () => {},
)

test('a worker thread checkpoints the WAL, so it starts over instead of growing', async () => {
  const store = new SqliteStore(dir.path, 'wal_checkpoints', {
    poolSizeMax: 1,
    queueLengthMax: 100,
    acquireTimeoutMs: 5000,
    statementTimeoutMs: 5000,
  })
  await store.migrate([{ id: 'rows', sql: 'CREATE TABLE rows (id TEXT PRIMARY KEY, value TEXT)' }])
  const insert = () => store.execute('INSERT INTO rows VALUES ($1, $2)', [randomUUID(), 'x'.repeat(200)])
  // Past SQLite's own 1,000-page checkpoint, which Mercato's connections leave to the worker.
  for (let i = 0; i < 1500; i++) await insert()
  // The frames in the WAL, read from the wal-index header (mxFrame: a native u32 at byte 16,
  // sqlite.org/walformat.html), not by asking SQLite, whose answer would checkpoint.
  const walFrames = () => readFileSync(join(dir.path, 'wal_checkpoints.db-shm')).readUInt32LE(16)
  try {
    // Once the worker has copied the WAL back, the next commit starts it over.
    await waitFor('the WAL to start over', async () => {
      await insert()
      return walFrames() < 100
    })
  } finally {
    await store.close()
  }
})
