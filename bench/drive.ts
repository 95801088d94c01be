// The one autocannon driver of the HTTP benchmarks: `connections` clients for `seconds`,
// counting 2xx answers. A POST gets a fresh Idempotency-Key per request; `paths` are
// taken in turn (default /v1/orders).
import { randomUUID } from 'node:crypto'
import autocannon from 'autocannon'

export interface Driven {
  perSecond: number
  p50: number
  p99: number
  non2xx: number
}

export interface DrivenRequest {
  method: 'GET' | 'POST'
  headers: Record<string, string>
  paths?: string[]
  body?: string
}

export async function drive(
  url: string,
  seconds: number,
  connections: number,
  request: DrivenRequest,
): Promise<Driven> {
  let next = 0
  const result = await autocannon({
    url,
    connections,
    duration: seconds,
    requests: [
      {
        method: request.method,
        headers: request.headers,
        body: request.body,
        setupRequest: (r) => ({
          ...r,
          path: request.paths ? request.paths[next++ % request.paths.length] : '/v1/orders',
          headers: request.method === 'POST' ? { ...r.headers, 'idempotency-key': randomUUID() } : r.headers,
        }),
      },
    ],
  })
  if (result.non2xx > 0)
    console.error(`  ${request.method} ${url}: answers by status ${JSON.stringify(result.statusCodeStats)}`)
  return {
    perSecond: result['2xx'] / seconds,
    p50: result.latency.p50,
    p99: result.latency.p99,
    non2xx: result.non2xx,
  }
}

/** Request headers with the bearer token, when there is one. */
export function withBearer(headers: Record<string, string>, bearer: string): Record<string, string> {
  return bearer ? { ...headers, authorization: `Bearer ${bearer}` } : headers
}
