import { SqliteStore } from '../../../src/engines/store/sqlite/sqlite-store.ts'
import { tempDir } from '../../support/wait.ts'
import { defineStoreConformance } from './conformance.ts'

const dir = tempDir()
process.on('exit', () => dir.remove())

defineStoreConformance(
  'SQLite',
  undefined,
  async (service, limits) => new SqliteStore(dir.path, service, limits),
  async () => {},
)
