import { join } from 'node:path'
import { SqliteLog, sqliteLogDefaults } from '../../../src/engines/stream/embedded/sqlite-log.ts'
import { tempDir, uniqueName } from '../../support/wait.ts'
import { defineStreamConformance } from './conformance.ts'

const dir = tempDir()
process.on('exit', () => dir.remove())

defineStreamConformance('embedded SQLite log', undefined, async ({ queueLengthMax }) => ({
  engine: new SqliteLog({
    ...sqliteLogDefaults,
    path: join(dir.path, `${uniqueName('stream')}.db`),
    heartbeatIntervalMs: 50,
    sessionTimeoutMs: 500,
    ...(queueLengthMax ? { publishQueueLengthMax: queueLengthMax } : {}),
  }),
  takeoverTimeoutMs: 500,
}))
