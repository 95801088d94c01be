// Calls to the payment provider, through cockatiel: retry with exponential backoff and
// jitter, around a circuit breaker, around a timeout per attempt, around a bulkhead.
// Every write carries its idempotency key, so a retry after a lost answer is answered
// from the provider's record and never charges twice. A decline (402) is an answer, not
// a failure: it is neither retried nor counted by the breaker.
//
// An open circuit fails an authorization at once (the saga gets its answer: failed). A
// capture, void or refund instead waits for the circuit to half-open and tries again
// within its attempts: failing those fast would only spend the stream's retries and
// dead-letter money movements while the provider recovers.
import {
  BrokenCircuitError,
  BulkheadRejectedError,
  bulkhead,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  DelegateBackoff,
  handleWhen,
  type IRetryBackoffContext,
  retry,
  TaskCancelledError,
  TimeoutStrategy,
  timeout,
  wrap,
} from 'cockatiel'
import { request as httpRequest, errors as undiciErrors } from 'undici'
import { errorMessage } from '../../platform/errors.ts'
import { backoffMs, sleep } from '../../platform/limits.ts'
import type { Logger } from '../../platform/logger.ts'
import { latencyBucketsSeconds, type Metrics } from '../../platform/metrics.ts'

export interface ProviderClientOptions {
  /** The provider's base URL (its API lives under /provider/v1). */
  providerUrl: () => string | Promise<string>
  /** The provider's API key, sent as a bearer token. */
  apiKey?: string
  timeoutMs: number
  /** Attempts at one call, the first included. */
  attemptsMax: number
  concurrencyMax: number
  backoffBaseMs: number
  /** How long the circuit stays open before one call may try again (default 5 s). */
  circuitHalfOpenAfterMs?: number
  /** How long a call waits for a key the provider still holds from a cut-short attempt (default 15 s). */
  inFlightPatienceMs?: number
  /** Who calls (a metric label): each client has its own circuit. Default `saga`. */
  name?: string
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
  /** No answer came: a timeout, a refused or broken connection, the circuit open, the bulkhead full. */
  readonly unanswered: boolean
  constructor(message: string, status: number | undefined, retryable: boolean, unanswered = false) {
    super(message)
    this.name = 'ProviderError'
    this.status = status
    this.retryable = retryable
    this.unanswered = unanswered
  }
}

/** How long a call waits for an idempotency key the provider still holds (its lease is 15 s at no latency). */
const inFlightPatienceDefaultMs = 15_000

/** Consecutive failed attempts that open the circuit: many, so a flaky provider is retried, a down one is not. */
const circuitFailuresMax = 10

interface ProviderRequest {
  method: 'GET' | 'POST'
  path: string
  key?: string
  body?: unknown
  /** Statuses that are answers; any other is an error. */
  expected: number[]
  patient?: boolean
}

interface Answer {
  status: number
  body: Record<string, unknown>
}

/** The provider still holds the key for an earlier attempt (cut short by a timeout or a crash). */
function keyHeld(error: unknown): boolean {
  return error instanceof ProviderError && error.status === 409 && error.retryable
}

function transient(error: unknown): boolean {
  if (error instanceof ProviderError) return error.retryable
  if (error instanceof BrokenCircuitError) return false
  // Timeouts, a full bulkhead, and network failures: undici's own errors and the socket's
  // (ECONNREFUSED, ECONNRESET, …).
  return (
    error instanceof TaskCancelledError ||
    error instanceof BulkheadRejectedError ||
    error instanceof undiciErrors.UndiciError ||
    isSocketError(error)
  )
}

function isSocketError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code
  return error instanceof Error && typeof code === 'string' && /^E[A-Z]+$/.test(code)
}

export class ProviderClient {
  readonly #options: ProviderClientOptions
  readonly #breaker
  /** Fails fast on an open circuit. */
  readonly #policy
  /** Waits out an open circuit. */
  readonly #patientPolicy
  readonly #attempts
  readonly #calls

  constructor(options: ProviderClientOptions) {
    this.#options = options
    const halfOpenAfter = options.circuitHalfOpenAfterMs ?? 5_000
    const base = options.backoffBaseMs
    const backoffMaxMs = base * 2 ** Math.max(0, options.attemptsMax - 1)
    const backoff = new DelegateBackoff((context: IRetryBackoffContext<unknown>) =>
      'error' in context.result && context.result.error instanceof BrokenCircuitError
        ? halfOpenAfter
        : backoffMs(context.attempt, base, backoffMaxMs),
    )
    // A full bulkhead, or a key still in flight at the provider (its answer to a request
    // whose first attempt a crash cut short), says nothing of the provider's health.
    this.#breaker = circuitBreaker(
      handleWhen((error) => transient(error) && !(error instanceof BulkheadRejectedError) && !keyHeld(error)),
      { halfOpenAfter, breaker: new ConsecutiveBreaker(circuitFailuresMax) },
    )
    const perAttempt = [
      this.#breaker,
      // An attempt reads its whole answer before it returns, so there is nothing left to abort
      // then; aborting anyway built a DOMException (with its stack) for every call.
      timeout(options.timeoutMs, { strategy: TimeoutStrategy.Aggressive, abortOnReturn: false }),
      bulkhead(options.concurrencyMax, options.concurrencyMax),
    ] as const
    // A held key is not retried here but waited for in #call, once a second, for as long as
    // the call's patience: attempts in quick succession would only be told the same.
    const maxAttempts = options.attemptsMax - 1
    this.#policy = wrap(
      retry(
        handleWhen((error) => transient(error) && !keyHeld(error)),
        { maxAttempts, backoff },
      ),
      ...perAttempt,
    )
    this.#patientPolicy = wrap(
      retry(
        handleWhen((error) => (transient(error) && !keyHeld(error)) || error instanceof BrokenCircuitError),
        { maxAttempts, backoff },
      ),
      ...perAttempt,
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
      "1 while a client's circuit to the payment provider is open.",
      ['client'],
    )
    const client = { client: options.name ?? 'saga' }
    this.#breaker.onStateChange((state) => {
      circuit.set(client, state === CircuitState.Open ? 1 : 0)
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
    const answer = await this.#call('authorize', {
      method: 'POST',
      path: '/authorizations',
      key,
      body: request,
      expected: [201, 402],
    })
    if (answer.status === 402) {
      const reason = typeof answer.body.reason === 'string' ? answer.body.reason : 'declined'
      const chargeId = typeof answer.body.chargeId === 'string' ? answer.body.chargeId : undefined
      return { outcome: 'declined', reason, ...(chargeId ? { chargeId } : {}) }
    }
    return { outcome: 'authorized', chargeId: String(answer.body.chargeId) }
  }

  capture(chargeId: string, key: string): Promise<ChargeSummary> {
    return this.#chargeOperation('capture', chargeId, key)
  }

  void(chargeId: string, key: string): Promise<ChargeSummary> {
    return this.#chargeOperation('void', chargeId, key)
  }

  /** Refunds all that is left of a captured charge. */
  refund(chargeId: string, key: string): Promise<ChargeSummary> {
    return this.#chargeOperation('refund', chargeId, key)
  }

  async charge(chargeId: string): Promise<ProviderCharge | undefined> {
    const path = `/charges/${enc(chargeId)}`
    const answer = await this.#call('get', { method: 'GET', path, expected: [200, 404] })
    return answer.status === 404 ? undefined : (answer.body as unknown as ProviderCharge)
  }

  /** The charges made for `reference`; `patient` waits out an open circuit (for compensations). */
  async chargesFor(reference: string, patient = false): Promise<ProviderCharge[]> {
    const path = `/charges?reference=${enc(reference)}`
    const answer = await this.#call('list', { method: 'GET', path, expected: [200], patient })
    return (answer.body as { charges: ProviderCharge[] }).charges
  }

  async #chargeOperation(
    operation: 'capture' | 'void' | 'refund',
    chargeId: string,
    key: string,
  ): Promise<ChargeSummary> {
    const path = `/charges/${enc(chargeId)}/${operation}`
    const answer = await this.#call(operation, {
      method: 'POST',
      path,
      key,
      body: {},
      expected: [200],
      patient: true,
    })
    return answer.body as unknown as ChargeSummary
  }

  async #call(operation: string, request: ProviderRequest): Promise<Answer> {
    const url = `${apiBase(await this.#options.providerUrl())}${request.path}`
    const policy = request.patient ? this.#patientPolicy : this.#policy
    const patienceMs = this.#options.inFlightPatienceMs ?? inFlightPatienceDefaultMs
    /** When the provider first said it holds the key: the wait is counted from there. */
    let heldSince: number | undefined
    try {
      for (;;) {
        try {
          const answer = await policy.execute(({ signal }) => this.#attempt(operation, url, request, signal))
          this.#calls.inc({ operation, outcome: String(answer.status) })
          return answer
        } catch (error) {
          // The key is still held by an attempt cut short (a timeout, a crash): the provider
          // answers it once that attempt ends or its lease runs out, so wait for that a while
          // rather than give the step up.
          if (!keyHeld(error)) throw error
          heldSince ??= Date.now()
          const leftMs = heldSince + patienceMs - Date.now()
          if (leftMs <= 0) throw error
          await sleep(Math.min(1_000, leftMs))
        }
      }
    } catch (error) {
      const outcome =
        error instanceof BrokenCircuitError
          ? 'circuit-open'
          : error instanceof TaskCancelledError
            ? 'timeout'
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
            // (A request undici refuses to make, a bad URL or header, is no outage.)
            (transient(error) || error instanceof BrokenCircuitError) &&
              !(error instanceof undiciErrors.InvalidArgumentError),
          )
    }
  }

  async #attempt(
    operation: string,
    url: string,
    request: ProviderRequest,
    signal: AbortSignal,
  ): Promise<Answer> {
    const { method, key, body, expected } = request
    const started = performance.now()
    let outcome = 'unreachable'
    try {
      // undici's request, not fetch: the same pooled keep-alive connections, without the
      // WHATWG streams and Headers objects fetch builds for every call.
      const response = await httpRequest(url, {
        method,
        headers: {
          accept: 'application/json',
          ...(this.#options.apiKey ? { authorization: `Bearer ${this.#options.apiKey}` } : {}),
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(key ? { 'idempotency-key': key } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      })
      const payload = ((await response.body.json().catch(() => ({}))) ?? {}) as Record<string, unknown>
      outcome = String(response.statusCode)
      const status = response.statusCode
      if (expected.includes(status)) return { status, body: payload }
      const inFlight = status === 409 && String(payload.type).endsWith('/idempotency-key-in-flight')
      const retryable = status >= 500 || status === 429 || inFlight
      const detail = typeof payload.detail === 'string' ? `: ${payload.detail}` : ''
      throw new ProviderError(
        `payment provider answered ${operation} with ${status}${detail}`,
        status,
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
