// Load as real clients make it: orders over HTTP with idempotency keys (some sent twice, as
// a client that timed out would), and each order followed on the stream to its end.
// Used by `mercato load` and by the saga benchmark.
import { randomUUID } from 'node:crypto'
import type { EventStream, Subscription } from '../engines/stream/event-stream.ts'
import { sleep } from '../platform/limits.ts'

export interface OrderOutcome {
  state: 'CONFIRMED' | 'CANCELLED'
  reason?: string
  atMs: number
}

/** Follows the orders topic from now on, and remembers how each order ended. */
export class OrderWatcher {
  readonly outcomes = new Map<string, OrderOutcome>()
  #subscription: Subscription | undefined
  #stream: EventStream | undefined
  readonly #group = `watch-${randomUUID()}`
  readonly #waiters = new Map<string, () => void>()

  async start(stream: EventStream): Promise<void> {
    this.#stream = stream
    this.#subscription = await stream.subscribe({
      group: this.#group,
      topics: ['orders'],
      startAt: 'latest',
      handle: async (event) => {
        const { orderId, reason } = event.data as { orderId: string; reason?: string }
        if (this.outcomes.has(orderId)) return
        if (event.type === 'order.confirmed') this.#end(orderId, { state: 'CONFIRMED', atMs: Date.now() })
        else if (event.type === 'order.cancelled') {
          this.#end(orderId, { state: 'CANCELLED', reason, atMs: Date.now() })
        }
      },
    })
    // A new group starts at the end only once it owns its partitions.
    for (let i = 0; i < 300 && this.#subscription.assignment().length === 0; i++) await sleep(20)
  }

  #end(orderId: string, outcome: OrderOutcome): void {
    this.outcomes.set(orderId, outcome)
    this.#waiters.get(orderId)?.()
    this.#waiters.delete(orderId)
  }

  /** Resolves with the outcome, or undefined when the order has not ended within `timeoutMs`. */
  async waitFor(orderId: string, timeoutMs: number): Promise<OrderOutcome | undefined> {
    const known = this.outcomes.get(orderId)
    if (known) return known
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs)
      this.#waiters.set(orderId, () => {
        clearTimeout(timer)
        resolve()
      })
    })
    return this.outcomes.get(orderId)
  }

  /** Stops following, and deletes the watcher's consumer group: no one will read as it again. */
  async stop(): Promise<void> {
    await this.#subscription?.stop()
    // A group left behind (the engine refused) costs only its offsets.
    await this.#stream?.engine.deleteGroup(this.#stream.group(this.#group)).catch(() => {})
  }
}

export interface LoadOptions {
  url: string
  orders: number
  /** Orders offered per second; 0 for as fast as `concurrency` allows. */
  rate: number
  concurrency: number
  /** Share of orders sent a second time with the same key. */
  retryShare: number
  /** Access tokens of the customers the orders are placed for, taken in turn. */
  bearers: string[]
  skus: string[]
  requestTimeoutMs: number
  /** How long to wait for the last orders to end. */
  settleTimeoutMs: number
  onProgress?: (progress: LoadProgress) => void
}

export interface LoadProgress {
  sent: number
  answered: number
  accepted: number
  ended: number
  elapsedMs: number
}

export interface LoadSummary {
  offered: number
  byStatus: Record<string, number>
  replayed: number
  accepted: number
  confirmed: number
  cancelled: Record<string, number>
  unfinished: number
  elapsedMs: number
  acceptedPerSecond: number
  completedPerSecond: number
  requestMs: { p50: number; p99: number; max: number }
  confirmMs: { p50: number; p99: number; max: number }
}

/** How often one order is sent again after a 503 or 429 that named a time to come back. */
const refusedRetriesMax = 3

export async function runLoad(options: LoadOptions, watcher: OrderWatcher): Promise<LoadSummary> {
  const started = performance.now()
  const startedAtMs = Date.now()
  const byStatus: Record<string, number> = {}
  const requestMs: number[] = []
  const acceptedAt = new Map<string, number>()
  let sent = 0
  let answered = 0
  let replayed = 0
  let lastAnswerMs = 0
  const count = (status: string) => {
    byStatus[status] = (byStatus[status] ?? 0) + 1
  }

  async function post(
    body: unknown,
    key: string,
    bearer: string,
  ): Promise<{ status: number; id?: string; replay: boolean; retryAfterS?: number }> {
    const t0 = performance.now()
    try {
      const response = await fetch(`${options.url}/v1/orders`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'idempotency-key': key,
          authorization: `Bearer ${bearer}`,
        },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(options.requestTimeoutMs),
      })
      const answer = (await response.json().catch(() => ({}))) as { id?: string }
      requestMs.push(performance.now() - t0)
      return {
        status: response.status,
        id: answer.id,
        replay: response.headers.get('idempotent-replayed') === 'true',
        retryAfterS: Number(response.headers.get('retry-after')) || undefined,
      }
    } catch (error) {
      requestMs.push(performance.now() - t0)
      return { status: (error as Error).name === 'TimeoutError' ? -1 : 0, replay: false }
    }
  }

  async function placeOne(i: number): Promise<void> {
    const lineCount = 1 + (i % 3)
    const skus = new Set<string>()
    while (skus.size < Math.min(lineCount, options.skus.length)) {
      skus.add(options.skus[Math.floor(Math.random() * options.skus.length)])
    }
    const bearer = options.bearers[i % options.bearers.length]
    const body = {
      lines: [...skus].map((sku) => ({ sku, quantity: 1 + Math.floor(Math.random() * 2) })),
      shippingAddress: {
        name: 'Load Test',
        line1: '1 Load Street',
        city: 'Benchville',
        postalCode: '10001',
        country: 'US',
      },
      paymentMethodToken: 'tok_visa',
    }
    const key = randomUUID()
    sent++
    let first = await post(body, key, bearer)
    // Told to come back later (503 or 429 with Retry-After): wait as told, a few times, with the same key.
    for (let wait = 1; wait <= refusedRetriesMax && first.retryAfterS !== undefined; wait++) {
      count(`${first.status}, then retried`)
      await sleep(Math.min(first.retryAfterS, 10) * 1_000)
      first = await post(body, key, bearer)
    }
    answered++
    lastAnswerMs = Date.now()
    count(outcomeOf(first.status))
    if (first.status === 202 && first.id) acceptedAt.set(first.id, Date.now())
    if (Math.random() < options.retryShare) {
      const again = await post(body, key, bearer)
      if (again.replay) replayed++
      else count(`sent again with its key: ${outcomeOf(again.status)}, not a replay`)
    }
  }

  const progress = setInterval(() => {
    options.onProgress?.({
      sent,
      answered,
      accepted: acceptedAt.size,
      ended: [...acceptedAt.keys()].filter((id) => watcher.outcomes.has(id)).length,
      elapsedMs: performance.now() - started,
    })
  }, 1_000)

  const inFlight = new Set<Promise<void>>()
  for (let i = 0; i < options.orders; i++) {
    if (options.rate > 0) {
      const due = started + (i * 1_000) / options.rate
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
    }
    while (inFlight.size >= options.concurrency) await Promise.race(inFlight)
    const p = placeOne(i).finally(() => inFlight.delete(p))
    inFlight.add(p)
  }
  await Promise.all(inFlight)
  const sendEndedMs = performance.now()
  await Promise.all([...acceptedAt.keys()].map((id) => watcher.waitFor(id, options.settleTimeoutMs)))
  clearInterval(progress)

  const cancelled: Record<string, number> = {}
  const confirmMs: number[] = []
  let confirmed = 0
  let unfinished = 0
  let lastEndMs = startedAtMs
  for (const [id, at] of acceptedAt) {
    const outcome = watcher.outcomes.get(id)
    if (!outcome) {
      unfinished++
      continue
    }
    lastEndMs = Math.max(lastEndMs, outcome.atMs)
    if (outcome.state === 'CONFIRMED') {
      confirmed++
      confirmMs.push(outcome.atMs - at)
    } else cancelled[outcome.reason ?? 'unknown'] = (cancelled[outcome.reason ?? 'unknown'] ?? 0) + 1
  }
  const elapsedMs = Math.max(1, lastEndMs - startedAtMs, lastAnswerMs - startedAtMs)
  return {
    offered: options.orders,
    byStatus,
    replayed,
    accepted: acceptedAt.size,
    confirmed,
    cancelled,
    unfinished,
    elapsedMs,
    acceptedPerSecond: (acceptedAt.size * 1_000) / Math.max(1, sendEndedMs - started),
    completedPerSecond: (confirmed * 1_000) / elapsedMs,
    requestMs: percentiles(requestMs),
    confirmMs: percentiles(confirmMs),
  }
}

export function percentiles(values: number[]): { p50: number; p99: number; max: number } {
  if (values.length === 0) return { p50: 0, p99: 0, max: 0 }
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
  const round = (n: number) => Math.round(n * 100) / 100
  return { p50: round(at(0.5)), p99: round(at(0.99)), max: round(sorted[sorted.length - 1]) }
}

/** An answer's status, or what stood in for one (-1: no answer in time; 0: no connection). */
function outcomeOf(status: number): string {
  return status === -1 ? 'timeout' : status === 0 ? 'network-error' : String(status)
}
