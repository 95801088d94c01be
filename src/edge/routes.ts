// The public routes the gateway sends to an upstream component, when that component runs
// in another process. In the all-in-one mode the components serve them in process.
export type UpstreamName = 'command-api' | 'query-api'

export interface UpstreamRoute {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  url: string
  upstream: UpstreamName
}

export const upstreamRoutes: UpstreamRoute[] = [
  { method: 'POST', url: '/v1/orders', upstream: 'command-api' },
  { method: 'POST', url: '/v1/orders/:id/cancel', upstream: 'command-api' },
  { method: 'POST', url: '/v1/customers', upstream: 'command-api' },
  { method: 'PUT', url: '/v1/products/:sku', upstream: 'command-api' },
  { method: 'POST', url: '/v1/inventory/:sku/adjustments', upstream: 'command-api' },
  { method: 'PUT', url: '/v1/flags/:key', upstream: 'command-api' },
  { method: 'POST', url: '/v1/webhooks', upstream: 'command-api' },
  { method: 'DELETE', url: '/v1/webhooks/:id', upstream: 'command-api' },
  { method: 'GET', url: '/v1/flags', upstream: 'query-api' },
  { method: 'GET', url: '/v1/webhooks', upstream: 'query-api' },
  { method: 'GET', url: '/v1/inventory/:sku/adjustments/:id', upstream: 'query-api' },
  { method: 'GET', url: '/v1/webhooks/:id', upstream: 'query-api' },
  { method: 'GET', url: '/v1/flags/:key', upstream: 'query-api' },
  { method: 'GET', url: '/v1/products', upstream: 'query-api' },
  { method: 'GET', url: '/v1/products/:sku', upstream: 'query-api' },
  { method: 'GET', url: '/v1/orders/:id', upstream: 'query-api' },
  { method: 'GET', url: '/v1/customers/:id/orders', upstream: 'query-api' },
  { method: 'GET', url: '/v1/customers/:id/360', upstream: 'query-api' },
]

const openApiPaths = new Map<string, string>()

/** A fastify route template in OpenAPI form: `/v1/orders/:id` → `/v1/orders/{id}`. */
export function openApiPath(url: string): string {
  let path = openApiPaths.get(url)
  if (path === undefined) {
    path = url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')
    // Templates come from the route table, so the map stays as small as the table.
    openApiPaths.set(url, path)
  }
  return path
}
