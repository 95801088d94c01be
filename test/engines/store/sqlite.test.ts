import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { test } from 'node:test'
import { checkpointInBackground } from '../../../src/engines/sqlite/wal-checkpoints.ts'
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

// Read from the wal-index (sqlite.org/walformat.html), not by asking SQLite, whose answer
// would checkpoint: the frames in the WAL (mxFrame, a native u32 at byte 16) and how many a
// checkpoint has copied back (nBackfill, at byte 96).
const walIndex = (service: string) => readFileSync(join(dir.path, `${service}.db-shm`))
const walCopiedBack = (service: string) => {
  const index = walIndex(service)
  return index.readUInt32LE(96) === index.readUInt32LE(16)
}

test('a worker thread checkpoints the WAL, so it starts over instead of growing', async () => {
  const store = soloStore('wal_checkpoints')
  await store.migrate([{ id: 'rows', sql: 'CREATE TABLE rows (id TEXT PRIMARY KEY, value TEXT)' }])
  const insert = () => store.execute('INSERT INTO rows VALUES ($1, $2)', [randomUUID(), 'x'.repeat(200)])
  // Past SQLite's own 1,000-page checkpoint, which Mercato's connections leave to the worker
  // (on a slow run the worker may start the WAL over in between: how far it grew is no
  // witness).
  for (let i = 0; i < 1500; i++) await insert()
  const walFrames = () => walIndex('wal_checkpoints').readUInt32LE(16)
  try {
    // With no commit under way, only the worker copies the last frames back; a commit
    // racing it each time (as polling with inserts did) could keep it from ever finishing.
    await waitFor('the worker to copy the WAL back', () => walCopiedBack('wal_checkpoints'))
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

test('the worker opens a file that was locked when it first came to it, and leaves no connection behind', async () => {
  const path = join(dir.path, 'locked_at_first.db')
  // In exclusive locking mode no other connection may read the file, as for a moment while
  // a migration holds it.
  const holder = new DatabaseSync(path)
  holder.exec(`PRAGMA journal_mode = WAL; PRAGMA locking_mode = EXCLUSIVE;
    CREATE TABLE rows (id TEXT PRIMARY KEY, value TEXT)`)
  const held = checkpointInBackground(holder, path)
  await new Promise((resolve) => setTimeout(resolve, 300))
  // The lock goes, and a store takes the file over before the worker is told to let go.
  holder.close()
  const store = soloStore('locked_at_first')
  await held.release()
  try {
    for (let i = 0; i < 1500; i++)
      await store.execute('INSERT INTO rows VALUES ($1, $2)', [randomUUID(), 'x'.repeat(200)])
    await waitFor('the worker to copy the WAL back', () => walCopiedBack('locked_at_first'))
  } finally {
    await store.close()
  }
  const left = readdirSync(dir.path).filter((name) => name.startsWith('locked_at_first.db-'))
  assert.deepEqual(left, [])
})
