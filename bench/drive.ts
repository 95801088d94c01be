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

/**
 * Runs `baseline` and `subject` in turns, `rounds` of each, with the baseline once more at the
 * end (A B A … B A), so that a drift in the machine's speed during a run falls on both alike.
 * Each figure is the mean over the runs, except the non-2xx answers, which are summed: a
 * p99 is the mean of the runs' p99s, not the p99 of all their answers together.
 */
export async function alternate<T extends Driven>(
  baseline: () => Promise<T>,
  subject: () => Promise<T>,
  rounds: number,
): Promise<{ baseline: T; subject: T }> {
  const baselines: T[] = []
  const subjects: T[] = []
  for (let round = 0; round < rounds; round++) {
    baselines.push(await baseline())
    subjects.push(await subject())
  }
  baselines.push(await baseline())
  return { baseline: meanOf(baselines), subject: meanOf(subjects) }
}

function meanOf<T extends Driven>(runs: T[]): T {
  const mean: Record<string, number> = {}
  for (const key of Object.keys(runs[0]))
    mean[key] = runs.reduce((sum, run) => sum + (run[key as keyof T] as number), 0)
  for (const key of Object.keys(mean)) if (key !== 'non2xx') mean[key] /= runs.length
  return mean as unknown as T
}
