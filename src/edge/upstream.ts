// The gateway's client for one upstream component running as several instances: round-robin
// over an undici Pool per instance, behind a bulkhead (outermost, so requests waiting out a
// half-open circuit still hold a bounded slot) and a circuit breaker. The gateway holds one
// Upstream per component, so a slow component fills its own bulkhead and no other's.
import {
  BrokenCircuitError,
  BulkheadRejectedError,
  bulkhead,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  handleAll,
  wrap,
} from 'cockatiel'
import { Pool } from 'undici'
import { MercatoError, OverloadedError, UnavailableError } from '../platform/errors.ts'
import { assertPositive, invariant } from '../platform/limits.ts'
import { Metrics } from '../platform/metrics.ts'
import { problemTypeHeader } from '../runtime/http.ts'

export interface UpstreamOptions {
  /** The component's name, shown to clients in errors and used as the metrics label. */
  name: string
  /** One origin per instance, e.g. `http://10.0.0.7:3001`. */
  urls: string[]
  /** Bound on one forward, from entering the bulkhead to the last byte of the answer. */
  timeoutMs: number
  concurrencyMax: number
  queueMax: number
  breaker: { consecutiveFailures: number; halfOpenAfterMs: number }
  /** Defaults to `concurrencyMax`: more connections could never be busy at once. */
  connectionsPerInstance?: number
  metrics?: Metrics
}

export interface UpstreamRequest {
  method: string
  /** Path with query string. */
  path: string
  headers: Record<string, string>
  body?: Buffer | string
}

export interface UpstreamAnswer {
  status: number
  headers: Record<string, string | string[]>
  body: Buffer
}

export type CircuitStateName = 'closed' | 'open' | 'half-open'

interface Instance {
  pool: Pool
  /** Until then the instance is tried only when every other one failed to connect. */
  downUntil: number
  /** Requests in a row that ran out their time on this instance. */
  timeouts: number
}

/**
 * Timeouts in a row after which an instance is taken for hung: one alone may be a request
 * slow by its nature (a read waiting for its consistency token).
 */
const hungAfterTimeouts = 2

// RFC 9110 §7.6.1. `expect` and `content-length` are dropped from requests too: undici refuses
// the first and computes the second from the buffered body.
const hopByHop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer'])
const requestOnly = new Set(['expect', 'content-length'])
/** Errors raised before the request left: safe to send it to another instance. */
const connectErrorCodes = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
])
const circuitGaugeValues = { closed: 0, 'half-open': 1, open: 2 } as const

export class Upstream {
  readonly name: string
  readonly #timeoutMs: number
  readonly #concurrencyMax: number
  readonly #queueMax: number
  readonly #halfOpenAfterMs: number
  readonly #instances: Instance[]
  readonly #breaker
  readonly #policy
  readonly #requests
  readonly #inFlight
  #cursor = 0
  #openedAt = 0

  constructor(options: UpstreamOptions) {
    const { name, urls, timeoutMs, concurrencyMax, queueMax, breaker } = options
    invariant(urls.length > 0, `${name}: at least one instance URL`)
    assertPositive(`${name}.timeoutMs`, timeoutMs)
    assertPositive(`${name}.concurrencyMax`, concurrencyMax)
    invariant(Number.isInteger(queueMax) && queueMax >= 0, `${name}.queueMax is a whole number`)
    assertPositive(`${name}.breaker.consecutiveFailures`, breaker.consecutiveFailures)
    assertPositive(`${name}.breaker.halfOpenAfterMs`, breaker.halfOpenAfterMs)
    this.name = name
    this.#timeoutMs = timeoutMs
    this.#concurrencyMax = concurrencyMax
    this.#queueMax = queueMax
    this.#halfOpenAfterMs = breaker.halfOpenAfterMs
    const connections = options.connectionsPerInstance ?? concurrencyMax
    this.#instances = urls.map((url) => ({
      pool: new Pool(url, { connections, pipelining: 1 }),
      downUntil: 0,
      timeouts: 0,
    }))

    this.#breaker = circuitBreaker(
      handleAll.orWhenResult((answer) => isFailure(answer as UpstreamAnswer)),
      {
        halfOpenAfter: breaker.halfOpenAfterMs,
        breaker: new ConsecutiveBreaker(breaker.consecutiveFailures),
      },
    )
    this.#policy = wrap(bulkhead(concurrencyMax, queueMax), this.#breaker)

    const metrics = options.metrics ?? new Metrics()
    this.#requests = metrics.counter(
      'mercato_upstream_requests_total',
      'Requests forwarded to an upstream component, by outcome (status class, or why none came).',
      ['upstream', 'outcome'],
    )
    this.#inFlight = metrics.gauge(
      'mercato_upstream_in_flight',
      'Requests being sent to an upstream component now.',
      ['upstream'],
    )
    const circuit = metrics.gauge(
      'mercato_upstream_circuit_state',
      'Circuit to an upstream component: 0 closed, 1 half-open, 2 open.',
      ['upstream'],
    )
    circuit.set({ upstream: name }, 0)
    this.#breaker.onBreak(() => {
      this.#openedAt = Date.now()
    })
    this.#breaker.onStateChange(() => circuit.set({ upstream: name }, circuitGaugeValues[this.state()]))
  }

  state(): CircuitStateName {
    switch (this.#breaker.state) {
      case CircuitState.Closed:
        return 'closed'
      case CircuitState.HalfOpen:
        return 'half-open'
      default:
        return 'open'
    }
  }

  async forward(request: UpstreamRequest): Promise<UpstreamAnswer> {
    const deadline = AbortSignal.timeout(this.#timeoutMs)
    try {
      const answer = await this.#policy.execute(({ signal }) => this.#send(request, signal), deadline)
      this.#requests.inc({ upstream: this.name, outcome: `${Math.floor(answer.status / 100)}xx` })
      return answer
    } catch (error) {
      const [outcome, refusal] = this.#refusal(error, deadline)
      this.#requests.inc({ upstream: this.name, outcome })
      throw refusal
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.#instances.map((instance) => instance.pool.close()))
  }

  /** Tries instances in round-robin order, healthy ones first, moving on only when one refused to connect. */
  async #send(request: UpstreamRequest, signal: AbortSignal): Promise<UpstreamAnswer> {
    const start = this.#cursor
    this.#cursor = (this.#cursor + 1) % this.#instances.length
    const rotated = [...this.#instances.slice(start), ...this.#instances.slice(0, start)]
    const now = Date.now()
    const candidates = [
      ...rotated.filter((instance) => instance.downUntil <= now),
      ...rotated.filter((instance) => instance.downUntil > now),
    ]
    this.#inFlight.inc({ upstream: this.name })
    try {
      let lastError: unknown
      let lastAnswer: UpstreamAnswer | undefined
      for (const instance of candidates) {
        try {
          const answer = await this.#sendTo(instance.pool, request, signal)
          instance.timeouts = 0
          // An instance shutting down did nothing with the request: the next one may take it.
          if (answer.status === 503 && answer.headers[problemTypeHeader] === drainingType) {
            instance.downUntil = Date.now() + this.#halfOpenAfterMs
            lastAnswer = answer
            continue
          }
          instance.downUntil = 0
          return answer
        } catch (error) {
          const refused = connectErrorCodes.has((error as { code?: string }).code ?? '')
          if (signal.aborted) instance.timeouts++
          // A refused instance, or one that let requests run out their time (hung, not
          // dead), waits as long as an open circuit before it is preferred again: round
          // robin would otherwise send it every n-th request, and the successes of the
          // others in between keep the circuit from opening.
          if (refused || instance.timeouts >= hungAfterTimeouts)
            instance.downUntil = Date.now() + this.#halfOpenAfterMs
          if (signal.aborted || !refused) throw error
          lastError = error
        }
      }
      if (lastAnswer) return lastAnswer
      throw lastError
    } finally {
      this.#inFlight.dec({ upstream: this.name })
    }
  }

  async #sendTo(pool: Pool, request: UpstreamRequest, signal: AbortSignal): Promise<UpstreamAnswer> {
    const answer = await pool.request({
      method: request.method,
      path: request.path,
      headers: endToEnd(request.headers, requestOnly),
      body: request.body ?? null,
      signal,
    })
    const body = Buffer.from(await answer.body.arrayBuffer())
    return { status: answer.statusCode, headers: endToEnd(answer.headers), body }
  }

  /** What a caller sees instead of an answer: a short message, never an internal URL or stack. */
  #refusal(error: unknown, deadline: AbortSignal): [outcome: string, refusal: MercatoError] {
    if (error instanceof BrokenCircuitError) {
      const leftMs = this.#openedAt + this.#halfOpenAfterMs - Date.now()
      const retryAfterSeconds = Math.max(1, Math.ceil(leftMs / 1000))
      return [
        'circuit-open',
        new UnavailableError(this.name, 'circuit open after repeated failures', retryAfterSeconds),
      ]
    }
    if (error instanceof BulkheadRejectedError) {
      const detail = `${this.#concurrencyMax} requests in flight and ${this.#queueMax} waiting`
      return ['rejected', new OverloadedError(this.name, detail)]
    }
    if (deadline.aborted) {
      const message = `${this.name} did not answer within ${this.#timeoutMs} ms`
      const shown = 'the part of the service that answers this request did not answer in time'
      return ['timeout', new MercatoError('upstream-timeout', 504, message, {}, shown)]
    }
    return ['unreachable', new UnavailableError(this.name, 'no instance could be reached')]
  }
}

/** Drops hop-by-hop headers, those the `connection` header names, and `extra`; lower-cases names. */
function endToEnd<T>(
  headers: Record<string, T | undefined>,
  extra: ReadonlySet<string> = new Set(),
): Record<string, T> {
  const lowered = Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value] as const)
  const connection = lowered.find(([name]) => name === 'connection')?.[1]
  const listed = new Set(
    String(connection ?? '')
      .split(',')
      .map((token) => token.trim().toLowerCase()),
  )
  const kept: Record<string, T> = {}
  for (const [name, value] of lowered) {
    if (value === undefined || hopByHop.has(name) || name.startsWith('proxy-')) continue
    if (listed.has(name) || extra.has(name)) continue
    kept[name] = value
  }
  return kept
}

/** A 503 of an instance shutting down: the request was not taken, and another may take it. */
const drainingType = 'https://mercato.dev/problems/draining'

/** Problem types of a 503 an upstream answers by its own choice, healthy and busy. */
const deliberateRefusals = new Set([
  'https://mercato.dev/problems/overloaded', // load shedding, admission control, a full queue
  'https://mercato.dev/problems/view-unavailable', // a view still being built
  drainingType,
])

/**
 * A 5xx answer counts toward the circuit, but not a 503 the upstream chose (see
 * deliberateRefusals): opening the circuit on it would refuse every route of the upstream,
 * not just the busy one. A 503 for a timeout or a dependency down does count.
 */
function isFailure(answer: UpstreamAnswer): boolean {
  if (answer.status < 500) return false
  if (answer.status !== 503) return true
  const type = answer.headers[problemTypeHeader]
  return !(typeof type === 'string' && deliberateRefusals.has(type))
}
