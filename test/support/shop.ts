// A whole Mercato in the test process: every component on the engines a suite names, on
// port 0, with short saga deadlines, and helpers to drive it over HTTP like a client.
import { randomUUID } from 'node:crypto'
import type { Store } from '../../src/engines/store/port.ts'
import { silentLogger } from '../../src/platform/logger.ts'
import { App } from '../../src/runtime/app.ts'
import { loadConfig } from '../../src/runtime/config.ts'
import { OrderWatcher } from '../../src/runtime/load.ts'
import { deleteKafkaTopics, dropPostgresSchemas, serverUrls } from './servers.ts'
import { tempDir, uniqueName } from './wait.ts'

/** The customer the shop's orders are placed for. */
export const testCustomerId = 'cus_test'

export type EngineSet = 'embedded' | 'distributed'

export interface ShopRoute {
  method: string
  url: string
}

export interface Shop {
  url: string
  /** Every route the shop's HTTP server serves. */
  routes: ShopRoute[]
  app: App
  watcher: OrderWatcher
  store(service: string): Promise<Store>
  post(
    path: string,
    body: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; body: any; headers: Headers }>
  put(
    path: string,
    body: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; body: any; headers: Headers }>
  get(path: string): Promise<{ status: number; body: any }>
  /** Creates products (price `priceMinor`, 1000 by default, in USD) with `stock` units each, and waits until orders can use them. */
  stockUp(skus: string[], stock: number, priceMinor?: number): Promise<void>
  placeOrder(lines: { sku: string; quantity: number }[], token?: string): Promise<string>
  /** A bearer access token for a role, minted by the shop's own key ring. */
  bearer(role: 'admin' | 'support' | 'customer', customerId?: string): Promise<string>
  stop(): Promise<void>
}

export function engineEnv(engines: EngineSet, name: string): Record<string, string> {
  if (engines === 'embedded') return {}
  return {
    MERCATO_STREAM: `kafka://${serverUrls.kafka}`,
    MERCATO_STREAM_TOPIC_PREFIX: `${name}.`,
    MERCATO_STREAM_PARTITIONS: '4',
    MERCATO_STORE: serverUrls.postgres,
    MERCATO_STORE_SCHEMA_PREFIX: `${name.replaceAll(/[^a-z0-9]/g, '_')}_`,
  }
}

export async function startShop(engines: EngineSet, env: Record<string, string> = {}): Promise<Shop> {
  const dir = tempDir()
  const name = uniqueName('shop').toLowerCase()
  const config = loadConfig({
    MERCATO_PORT: '0',
    MERCATO_DATA_DIR: dir.path,
    MERCATO_SEED: 'false',
    MERCATO_LOG_LEVEL: 'silent',
    MERCATO_SAGA_STEP_TIMEOUT_MS: '15000',
    MERCATO_CARRIER_STEP_MS: '200',
    MERCATO_HANDLER_BACKOFF_BASE_MS: '20',
    MERCATO_HANDLER_BACKOFF_MAX_MS: '200',
    MERCATO_PAYMENT_PROVIDER_TIMEOUT_MS: '500',
    MERCATO_ACCESS_TOKEN_TTL_SECONDS: '3600',
    MERCATO_RATE_LIMIT_PRINCIPAL_PER_MINUTE: '1000000',
    MERCATO_RATE_LIMIT_ADDRESS_PER_MINUTE: '1000000',
    MERCATO_RATE_LIMIT_REGISTER_PER_MINUTE: '1000000',
    ...engineEnv(engines, name),
    ...env,
  })
  const app = new App(config, silentLogger())
  const routes: ShopRoute[] = []
  app.context.http.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routes.push({ method, url: route.url })
  })
  const url = await app.start()
  const watcher = new OrderWatcher()
  await watcher.start(app.context.stream!)

  const stores = new Map<string, Promise<Store>>()
  const tokens = app.context.identity!.tokens
  async function bearer(role: 'admin' | 'support' | 'customer', customerId = testCustomerId) {
    const principal =
      role === 'customer'
        ? { kind: 'user' as const, subject: customerId, role, customerId }
        : { kind: 'user' as const, subject: `stf_${role}`, role }
    return `Bearer ${(await tokens.issueAccess(principal)).token}`
  }
  const adminBearer = await bearer('admin')
  const customerBearer = await bearer('customer')

  // Orders are placed and cancelled by the test customer; everything else is the admin's.
  async function request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
    const authorization = method === 'POST' && path.startsWith('/v1/orders') ? customerBearer : adminBearer
    headers = { authorization, ...headers }
    const response = await fetch(`${url}${path}`, {
      method,
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    })
    const text = await response.text()
    let parsed: unknown = text
    try {
      parsed = JSON.parse(text)
    } catch {}
    return { status: response.status, body: parsed as any, headers: response.headers }
  }

  const shop: Shop = {
    url,
    routes,
    app,
    watcher,
    store(service) {
      // One store per service for the whole test; the stores component closes it when the app stops.
      let store = stores.get(service)
      if (!store) {
        store = app.context.openStore!(service)
        stores.set(service, store)
      }
      return store
    },
    bearer,
    post: (path, body, headers) => request('POST', path, body, headers),
    put: (path, body, headers) => request('PUT', path, body, headers),
    get: (path) => request('GET', path),
    async stockUp(skus, stock, priceMinor = 1000) {
      for (const sku of skus) {
        const product = {
          name: `Product ${sku}`,
          description: '',
          category: 'test',
          priceMinor,
          currency: 'USD',
        }
        const put = await shop.put(`/v1/products/${sku}`, product)
        if (put.status !== 202) throw new Error(`product ${sku}: ${put.status} ${JSON.stringify(put.body)}`)
        const adjusted = await shop.post(
          `/v1/inventory/${sku}/adjustments`,
          { delta: stock, reason: 'restock' },
          { 'idempotency-key': randomUUID() },
        )
        if (adjusted.status !== 202) throw new Error(`stock ${sku}: ${adjusted.status}`)
      }
      const inventory = await shop.store('inventory')
      const order = await shop.store('order')
      for (let i = 0; i < 1_000; i++) {
        const stocked = await inventory.query('SELECT sku FROM stock WHERE on_hand >= $1', [stock])
        const priced = await order.query('SELECT sku FROM prices')
        const has = (rows: Record<string, unknown>[]) => skus.every((sku) => rows.some((r) => r.sku === sku))
        if (has(stocked) && has(priced)) return
        await new Promise((r) => setTimeout(r, 20))
      }
      throw new Error('stock and prices did not arrive')
    },
    async placeOrder(lines, token = 'tok_visa') {
      const answer = await shop.post(
        '/v1/orders',
        {
          customerId: testCustomerId,
          lines,
          shippingAddress: {
            name: 'T',
            line1: '1 Test St',
            city: 'Testville',
            postalCode: '1',
            country: 'US',
          },
          paymentMethodToken: token,
        },
        { 'idempotency-key': randomUUID() },
      )
      if (answer.status !== 202)
        throw new Error(`order refused: ${answer.status} ${JSON.stringify(answer.body)}`)
      return answer.body.id
    },
    async stop() {
      await watcher.stop()
      await app.stop()
      dir.remove()
      if (config.stream.kind === 'kafka' && config.streamTopicPrefix)
        await deleteKafkaTopics(config.streamTopicPrefix)
      if (config.store.kind === 'postgres') await dropPostgresSchemas(config.storeSchemaPrefix)
    },
  }
  return shop
}
