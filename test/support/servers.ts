// Where the real servers are, and whether a suite may run. Under CI (MERCATO_TEST_REQUIRE_SERVERS=1)
// a missing server fails the run; on a laptop the suite is skipped and the reason recorded,
// so the test runner can say at the end what did not run.
import { appendFileSync } from 'node:fs'
import { createConnection } from 'node:net'

export const serverUrls = {
  kafka: process.env.MERCATO_TEST_KAFKA ?? '127.0.0.1:9092',
  postgres: process.env.MERCATO_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  redis: process.env.MERCATO_TEST_REDIS ?? 'redis://127.0.0.1:6379',
}

const required = process.env.MERCATO_TEST_REQUIRE_SERVERS === '1'

function reachable(host: string, port: number, timeoutMs = 1_500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    // A busy event loop may run the timer before the connect callback: ask the socket itself.
    socket.setTimeout(timeoutMs, () => done(!socket.connecting && !socket.destroyed))
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

/**
 * Resolves undefined when `server` answers; otherwise the reason to skip (recorded for the
 * summary), or throws when servers are required.
 */
export async function skipUnlessReachable(
  suite: string,
  server: keyof typeof serverUrls,
): Promise<string | undefined> {
  const url = serverUrls[server]
  const { hostname, port } = new URL(url.includes('://') ? url : `tcp://${url}`)
  if (await reachable(hostname, Number(port))) return undefined
  const reason = `${server} is not reachable at ${hostname}:${port}`
  if (required) throw new Error(`${suite}: ${reason}, and MERCATO_TEST_REQUIRE_SERVERS=1`)
  if (process.env.MERCATO_TEST_SKIPS_FILE)
    appendFileSync(process.env.MERCATO_TEST_SKIPS_FILE, `${suite}: ${reason}\n`)
  return reason
}

/**
 * Deletes the Kafka topics whose names start with `prefix` (a test's own, with their DLQs),
 * so test runs do not pile partitions up on a long-lived broker and slow it down for
 * everything after them. Best effort: a test's result never depends on it.
 */
export async function deleteKafkaTopics(prefix: string): Promise<void> {
  if (!prefix) throw new Error('a prefix is required: the broker is shared')
  const { Admin } = await import('@platformatic/kafka')
  const admin = new Admin({ clientId: 'mercato-test-cleanup', bootstrapBrokers: [serverUrls.kafka] })
  try {
    const topics = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix))
    if (topics.length > 0) await admin.deleteTopics({ topics })
  } catch {
    // Left for the next fresh broker.
  } finally {
    await admin.close().catch(() => {})
  }
}

/** Drops every PostgreSQL schema named with `prefix` (a test's or benchmark's stores); the server is shared. */
export async function dropPostgresSchemas(prefix: string, url = serverUrls.postgres): Promise<void> {
  if (!/^[a-z][a-z0-9_]{2,}$/.test(prefix)) throw new Error(`not a schema prefix of a test: ${prefix}`)
  const { default: pg } = await import('pg')
  const client = new pg.Client(url)
  try {
    await client.connect()
    const { rows } = await client.query<{ name: string }>(
      'SELECT nspname AS name FROM pg_namespace WHERE starts_with(nspname, $1)',
      [prefix],
    )
    for (const { name } of rows) await client.query(`DROP SCHEMA IF EXISTS "${name}" CASCADE`)
  } catch {
    // Left behind: harmless, only space.
  } finally {
    await client.end().catch(() => {})
  }
}
