import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
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

const soloStore = (service: string) =>
  new SqliteStore(dir.path, service, {
    poolSizeMax: 1,
    queueLengthMax: 100,
    acquireTimeoutMs: 5000,
    statementTimeoutMs: 5000,
  })

test('a worker thread checkpoints the WAL, so it starts over instead of growing', async () => {
  const store = soloStore('wal_checkpoints')
  await store.migrate([{ id: 'rows', sql: 'CREATE TABLE rows (id TEXT PRIMARY KEY, value TEXT)' }])
  const insert = () => store.execute('INSERT INTO rows VALUES ($1, $2)', [randomUUID(), 'x'.repeat(200)])
  // Past SQLite's own 1,000-page checkpoint, which Mercato's connections leave to the worker.
  for (let i = 0; i < 1500; i++) await insert()
  // Read from the wal-index (sqlite.org/walformat.html), not by asking SQLite, whose answer
  // would checkpoint: the frames in the WAL (mxFrame, a native u32 at byte 16) and how many
  // a checkpoint has copied back (nBackfill, at byte 96).
  const walIndex = () => readFileSync(join(dir.path, 'wal_checkpoints.db-shm'))
  const walFrames = () => walIndex().readUInt32LE(16)
  try {
    assert.ok(walFrames() > 1_000, 'the WAL has grown past SQLite own checkpoint')
    // With no commit under way, the worker's checkpoint copies every frame back; a commit
    // racing it each time (as polling with inserts did) could keep it from ever finishing.
    await waitFor('the worker to copy the WAL back', async () => {
      const index = walIndex()
      return index.readUInt32LE(96) === index.readUInt32LE(16)
    })
    // The next commit starts it over.
    await insert()
    assert.ok(walFrames() < 100, `${walFrames()} frames in the WAL after its checkpoint`)
  } finally {
    await store.close()
  }
})

test('a closed store has let go of its file: the WAL checkpoint thread closed its connection too', async () => {
  const store = soloStore('closed_store')
  await store.migrate([{ id: 'rows', sql: 'CREATE TABLE rows (id TEXT PRIMARY KEY)' }])
  await store.execute('INSERT INTO rows VALUES ($1)', [randomUUID()])
  // Long enough for the worker to have opened its own connection to the file.
  await new Promise((resolve) => setTimeout(resolve, 300))
  await store.close()
  // The last connection to close removes the -wal and -shm files: that one is the thread's.
  const left = readdirSync(dir.path).filter((name) => name.startsWith('closed_store.db-'))
  assert.deepEqual(left, [])
})
