import assert from 'node:assert/strict'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { SqliteLog, sqliteLogDefaults } from '../../../src/engines/stream/embedded/sqlite-log.ts'
import type { StreamRecord } from '../../../src/engines/stream/port.ts'
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

describe('embedded SQLite log: records read from memory', () => {
  const open = (file: string) => new SqliteLog({ ...sqliteLogDefaults, path: file })
  /** Two logs on one new file, as two processes would have, with topic `t` of one partition. */
  async function withTwoLogs(work: (a: SqliteLog, b: SqliteLog) => Promise<void>): Promise<void> {
    const file = join(dir.path, `${uniqueName('shared')}.db`)
    const a = open(file)
    const b = open(file)
    try {
      await a.ensureTopics(['t'], 1)
      await work(a, b)
    } finally {
      await a.close()
      await b.close()
    }
  }
  const outgoing = (writer: string, i: number) => ({
    topic: 't',
    key: 'one-key',
    value: Buffer.from(`${writer}-${i}`),
    headers: { ce_type: 'x', writer },
  })
  const comparable = (records: StreamRecord[]) =>
    records.map(({ offset, key, value, headers, timestampMs }) => ({
      offset,
      key,
      value: value.toString(),
      headers,
      timestampMs,
    }))

  it('reads what two processes appended to one partition in turn exactly as the file holds it', () =>
    withTwoLogs(async (a, b) => {
      await a.publish([0, 1, 2].map((i) => outgoing('a', i)))
      await b.publish([0, 1].map((i) => outgoing('b', i)))
      await a.publish([3, 4, 5].map((i) => outgoing('a', i)))
      const fromA = await a.read('t', 0, 0, 100)
      const fromB = await b.read('t', 0, 0, 100)
      assert.deepEqual(
        comparable(fromA).map((r) => r.value),
        ['a-0', 'a-1', 'a-2', 'b-0', 'b-1', 'a-3', 'a-4', 'a-5'],
      )
      assert.deepEqual(comparable(fromA), comparable(fromB))
      for (let from = 0; from < 8; from++) {
        assert.deepEqual(comparable(await a.read('t', 0, from, 2)), comparable(fromB.slice(from, from + 2)))
      }
    }))

  it('reads records older than the ones it keeps in memory from the file', () =>
    withTwoLogs(async (a, b) => {
      for (let batch = 0; batch < 6; batch++) {
        await a.publish(Array.from({ length: 500 }, (_, i) => outgoing('a', batch * 500 + i)))
      }
      for (const from of [0, 1_000, 2_000, 2_600, 2_999]) {
        assert.deepEqual(
          comparable(await a.read('t', 0, from, 300)),
          comparable(await b.read('t', 0, from, 300)),
        )
      }
      assert.equal((await a.read('t', 0, 3_000, 10)).length, 0)
    }))
})
