// Calls to the payment provider, through cockatiel: retry with exponential backoff and
// jitter, around a circuit breaker, around a timeout per attempt, around a bulkhead.
// Every write carries its idempotency key, so a retry after a lost answer is answered
// from the provider's record and never charges twice. A decline (402) is an answer, not
// a failure: it is neither retried nor counted by the breaker.
import {
  BrokenCircuitError,
  BulkheadRejectedError,
  bulkhead,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  ExponentialBackoff,
  handleWhen,
  retry,
  TaskCancelledError,
  TimeoutStrategy,
  timeout,
  wrap,
} from 'cockatiel'
import { errorMessage } from '../../platform/errors.ts'
import type { Logger } from '../../platform/logger.ts'
import { latencyBucketsSeconds, type Metrics } from '../../platform/metrics.ts'

export interface ProviderClientOptions {
  /** The provider's base URL (its API lives under /provider/v1). */
  providerUrl: () => string
  timeoutMs: number
  /** Attempts at one call, the first included. */
  attemptsMax: number
  concurrencyMax: number
  backoffBaseMs: number
  log: Logger
  metrics: Metrics
}

export interface ChargeSummary {
  chargeId: string
  status: 'authorized' | 'declined' | 'captured' | 'voided' | 'refunded'
  amountMinor: number
  currency: string
  capturedMinor: number
  refundedMinor: number
}

export interface ProviderCharge extends ChargeSummary {
  reference: string
  operations: { kind: string; amountMinor: number; at: string }[]
}

export type Authorization =
  | { outcome: 'authorized'; chargeId: string }
  | { outcome: 'declined'; reason: string; chargeId?: string }

/** The provider answered with an error, or could not be reached. */
export class ProviderError extends Error {
  readonly status: number | undefined
  readonly retryable: boolean
  constructor(message: string, status: number | undefined, retryable: boolean) {
    super(message)
    this.name = 'ProviderError'
    this.status = status
    this.retryable = retryable
  }
}

const circuitHalfOpenAfterMs = 5_000
const circuitFailuresMax = 5

function transient(error: unknown): boolean {
  if (error instanceof ProviderError) return error.retryable
  if (error instanceof BrokenCircuitError) return false
  // Timeouts, a full bulkhead, and network failures (fetch rejects with a TypeError).
  return (
    error instanceof TaskCancelledError ||
    error instanceof BulkheadRejectedError ||
    error instanceof TypeError
  )
}

export class ProviderClient {
  readonly #options: ProviderClientOptions
  readonly #breaker
  readonly #policy
  readonly #attempts
  readonly #calls

  constructor(options: ProviderClientOptions) {
    this.#options = options
    const base = options.backoffBaseMs
    this.#breaker = circuitBreaker(
      handleWhen((error) => transient(error) && !(error instanceof BulkheadRejectedError)),
      { halfOpenAfter: circuitHalfOpenAfterMs, breaker: new ConsecutiveBreaker(circuitFailuresMax) },
    )
    this.#policy = wrap(
      retry(handleWhen(transient), {
        maxAttempts: options.attemptsMax - 1,
        backoff: new ExponentialBackoff({
          initialDelay: base,
          maxDelay: base * 2 ** Math.max(0, options.attemptsMax - 1),
        }),
      }),
      this.#breaker,
      timeout(options.timeoutMs, TimeoutStrategy.Aggressive),
      bulkhead(options.concurrencyMax, options.concurrencyMax),
    )
    this.#attempts = options.metrics.histogram(
      'mercato_payment_provider_call_seconds',
      'Time of one attempt at a payment provider call, by operation and outcome.',
      ['operation', 'outcome'],
      latencyBucketsSeconds,
    )
    this.#calls = options.metrics.counter(
      'mercato_payment_provider_calls_total',
      'Payment provider calls (retries included), by operation and final outcome.',
      ['operation', 'outcome'],
    )
    const circuit = options.metrics.gauge(
      'mercato_payment_provider_circuit_open',
      '1 while the circuit to the payment provider is open.',
    )
    this.#breaker.onStateChange((state) => {
      circuit.set(state === CircuitState.Open ? 1 : 0)
      if (state === CircuitState.Open) options.log.warn('payment provider circuit opened: calls fail fast')
      if (state === CircuitState.Closed) options.log.info('payment provider circuit closed again')
    })
  }

  get circuitOpen(): boolean {
    return this.#breaker.state === CircuitState.Open
  }

  async authorize(
    request: { amountMinor: number; currency: string; paymentMethodToken: string; reference: string },
    key: string,
  ): Promise<Authorization> {
    const answer = await this.#call('authorize', 'POST', '/authorizations', key, request, [201, 402])
    if (answer.status === 402) {
      const reason = typeof answer.body.reason === 'string' ? answer.body.reason : 'declined'
      const chargeId = typeof answer.body.chargeId === 'string' ? answer.body.chargeId : undefined
      return { outcome: 'declined', reason, ...(chargeId ? { chargeId } : {}) }
    }
    return { outcome: 'authorized', chargeId: String(answer.body.chargeId) }
  }

  async capture(chargeId: string, key: string): Promise<ChargeSummary> {
    return (await this.#call('capture', 'POST', `/charges/${enc(chargeId)}/capture`, key, {}, [200]))
      .body as unknown as ChargeSummary
  }

  async void(chargeId: string, key: string): Promise<ChargeSummary> {
    return (await this.#call('void', 'POST', `/charges/${enc(chargeId)}/void`, key, {}, [200]))
      .body as unknown as ChargeSummary
  }

  /** Refunds all that is left of a captured charge. */
  async refund(chargeId: string, key: string): Promise<ChargeSummary> {
    return (await this.#call('refund', 'POST', `/charges/${enc(chargeId)}/refund`, key, {}, [200]))
      .body as unknown as ChargeSummary
  }

  async charge(chargeId: string): Promise<ProviderCharge | undefined> {
    const answer = await this.#call(
      'get',
      'GET',
      `/charges/${enc(chargeId)}`,
      undefined,
      undefined,
      [200, 404],
    )
    return answer.status === 404 ? undefined : (answer.body as unknown as ProviderCharge)
  }

  async chargesFor(reference: string): Promise<ProviderCharge[]> {
    const path = `/charges?reference=${enc(reference)}`
    const answer = await this.#call('list', 'GET', path, undefined, undefined, [200])
    return (answer.body as { charges: ProviderCharge[] }).charges
  }

  async #call(
    operation: string,
    method: 'GET' | 'POST',
    path: string,
    key: string | undefined,
    body: unknown,
    expected: number[],
  ): Promise<{ status: number; body: Record<string, unknown> }> {
    const url = `${apiBase(this.#options.providerUrl())}${path}`
    try {
      const answer = await this.#policy.execute(({ signal }) =>
        this.#attempt(operation, url, method, key, body, expected, signal),
      )
      this.#calls.inc({ operation, outcome: String(answer.status) })
      return answer
    } catch (error) {
      const outcome =
        error instanceof BrokenCircuitError
          ? 'circuit-open'
          : error instanceof ProviderError
            ? String(error.status ?? 'unreachable')
            : 'unreachable'
      this.#calls.inc({ operation, outcome })
      throw error instanceof ProviderError
        ? error
        : new ProviderError(
            `payment provider ${operation} failed: ${describe(error)}`,
            undefined,
            transient(error),
          )
    }
  }

  async #attempt(
    operation: string,
    url: string,
    method: 'GET' | 'POST',
    key: string | undefined,
    body: unknown,
    expected: number[],
    signal: AbortSignal,
  ): Promise<{ status: number; body: Record<string, unknown> }> {
    const started = performance.now()
    let outcome = 'unreachable'
    try {
      const response = await fetch(url, {
        method,
        headers: {
          accept: 'application/json',
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(key ? { 'idempotency-key': key } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      })
      const payload = ((await response.json().catch(() => ({}))) ?? {}) as Record<string, unknown>
      outcome = String(response.status)
      if (expected.includes(response.status)) return { status: response.status, body: payload }
      const inFlight = response.status === 409 && String(payload.type).endsWith('/idempotency-key-in-flight')
      const retryable = response.status >= 500 || response.status === 429 || inFlight
      const detail = typeof payload.detail === 'string' ? `: ${payload.detail}` : ''
      throw new ProviderError(
        `payment provider answered ${operation} with ${response.status}${detail}`,
        response.status,
        retryable,
      )
    } catch (error) {
      if (signal.aborted) outcome = 'timeout'
      throw error
    } finally {
      this.#attempts.observe({ operation, outcome }, (performance.now() - started) / 1000)
    }
  }
}

function describe(error: unknown): string {
  if (error instanceof BrokenCircuitError) return 'the circuit is open'
  if (error instanceof TaskCancelledError) return 'timed out'
  if (error instanceof BulkheadRejectedError) return 'too many calls in flight'
  return errorMessage(error)
}

function apiBase(url: string): string {
  const trimmed = url.replace(/\/+$/, '')
  return trimmed.endsWith('/provider/v1') ? trimmed : `${trimmed}/provider/v1`
}

const enc = encodeURIComponent
