// `mercato start` in child processes that share one data directory, as a deployment of
// several processes runs: started until they listen, and never left running after a test.
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { createInterface } from 'node:readline'
import { after } from 'node:test'
import { storeLimitDefaults } from '../../src/engines/store/port.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import { silentLogger } from '../../src/platform/logger.ts'
import { Metrics } from '../../src/platform/metrics.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { openEventStream } from '../../src/runtime/engines.ts'
import { OrderWatcher } from '../../src/runtime/load.ts'
import { testIdentity } from './identity.ts'
import { tempDir } from './wait.ts'

export interface Started {
  child: ChildProcess
  url: string
}

/** A data directory, and a `start` that runs targets on it; everything is killed and removed after the file's tests. */
export function processesOnOneDataDir(baseEnv: Record<string, string> = {}) {
  const dir = tempDir()
  const children = new Set<ChildProcess>()
  after(() => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL')
    dir.remove()
  })
  function start(targets: string, env: Record<string, string> = {}): Promise<Started> {
    const child = spawn(process.execPath, ['src/main.ts', 'start', '--target', targets], {
      env: {
        ...process.env,
        MERCATO_PORT: '0',
        MERCATO_DATA_DIR: dir.path,
        MERCATO_SEED: 'false',
        MERCATO_LOG_LEVEL: 'info',
        ...baseEnv,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    children.add(child)
    return new Promise((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (/mercato is up/.test(line)) resolve({ child, url: JSON.parse(line).address })
      })
      child.once('exit', (code) => reject(new Error(`${targets} exited with ${code}`)))
    })
  }
  return { dir: dir.path, start }
}

/**
 * What a test outside the processes needs of their shared data directory: an OrderWatcher
 * on its stream, and an admin's and a customer's tokens signed by its own key ring.
 */
export async function watchAndSignIn(dir: string, customerId: string) {
  const stream = await openEventStream(
    loadConfig({ MERCATO_DATA_DIR: dir, MERCATO_LOG_LEVEL: 'silent' }),
    silentLogger(),
    new Metrics(),
  )
  const watcher = new OrderWatcher()
  await watcher.start(stream)
  const identityStore = new SqliteStore(`${dir}/stores`, 'identity', storeLimitDefaults)
  const { tokens, ring } = await testIdentity(identityStore)
  const admin = (await tokens.issueAccess({ kind: 'user', subject: 'stf_admin', role: 'admin' })).token
  const customer = (
    await tokens.issueAccess({ kind: 'user', subject: customerId, role: 'customer', customerId })
  ).token
  return {
    watcher,
    admin,
    customer,
    async close() {
      ring.close()
      await identityStore.close()
      await watcher.stop()
      await stream.close()
    },
  }
}

/**
 * A JSON request as a client sends it, with a fresh Idempotency-Key: a command (a /v1/ path)
 * must be answered 202, anything else 2xx.
 */
export async function send(url: string, method: string, path: string, body: unknown, bearer?: string) {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: {
      'content-type': 'application/json',
      'idempotency-key': randomUUID(),
      ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
    },
    body: JSON.stringify(body),
  })
  const text = await response.text()
  if (path.startsWith('/v1/')) assert.equal(response.status, 202, `${method} ${path}: ${text}`)
  else assert.ok(response.status < 300, `${method} ${path}: ${response.status} ${text}`)
  return JSON.parse(text) as { id: string }
}

/** Lists `sku` at `priceMinor` USD and restocks `units` of it, as the admin. */
export async function stockProduct(
  url: string,
  admin: string,
  sku: string,
  priceMinor: number,
  units: number,
) {
  const product = { name: sku, description: '', category: 'test', priceMinor, currency: 'USD' }
  await send(url, 'PUT', `/v1/products/${sku}`, product, admin)
  await send(url, 'POST', `/v1/inventory/${sku}/adjustments`, { delta: units, reason: 'restock' }, admin)
}
