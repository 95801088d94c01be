// The payment service: authorizes, captures, voids and refunds with the provider as the
// order saga asks, and books each step in its double-entry ledger. A provider call is made
// outside any store transaction (never hold the store across HTTP); its result is then
// recorded, booked and announced in one transaction, under the provider idempotency key
// `<orderId>:<step>`, so a redelivered event repeats the call harmlessly.
//
// An authorization always gets an answer (authorized, declined or failed): the saga waits
// on it. A capture, void or refund that cannot be done throws instead: while the provider is
// down the stream waits it out; one the provider refuses is retried with backoff and finally
// dead-lettered. Money is never dropped silently.
import type { CloudEvent } from '../../contracts/envelope.ts'
import { sagaConsumers } from '../../contracts/events.ts'
import { errorMessage, UnavailableError } from '../../platform/errors.ts'
import { customerContext, type FlagReader } from '../../platform/flags.ts'
import { uuidv7 } from '../../platform/ids.ts'
import type { Emit, Handler, HandlerTools, Service } from '../../platform/service.ts'
import { post } from './ledger.ts'
import {
  insertPayment,
  loadPayment,
  markCancelPending,
  movePayment,
  noteStrayCharge,
  type PaymentRow,
  paymentMigrations,
} from './payments.ts'
import { type Authorization, ProviderClient, ProviderError } from './provider-client.ts'
import { Reconciliation, reconciliationClient } from './reconcile.ts'

export interface PaymentServiceOptions {
  /** The provider's base URL. */
  providerUrl: () => string | Promise<string>
  /** The provider's API key, sent as a bearer token. */
  apiKey?: string
  timeoutMs: number
  attemptsMax: number
  concurrencyMax: number
  backoffBaseMs: number
  /** How long the circuit to the provider stays open before a call may try again (default 5 s). */
  circuitHalfOpenAfterMs?: number
  /** How long a call waits for a key the provider still holds from a cut-short attempt (default 15 s). */
  inFlightPatienceMs?: number
}

interface PaymentRequested {
  orderId: string
  customerId: string
  paymentMethodToken: string
  amountMinor: number
  currency: string
}

type AuthorizationOutcome = Authorization | { outcome: 'failed'; reason: string }

const reconcileEveryMs = 60_000
const reasonLengthMax = 200

export async function startPaymentService(
  service: Service,
  options: PaymentServiceOptions,
  flags: FlagReader,
): Promise<{ stop(): Promise<void>; ready(): Promise<void> }> {
  await service.start(paymentMigrations)
  const log = service.log.child({ component: 'payment' })
  const store = service.store
  const client = new ProviderClient({ ...options, log, metrics: service.metrics })
  const steps = service.metrics.counter(
    'mercato_payment_steps_total',
    'Payment saga steps, by step and outcome.',
    ['step', 'outcome'],
  )

  const announce = (emit: Emit, payment: PaymentRow) => {
    const { order_id: orderId, payment_id: paymentId, amount_minor: amountMinor, currency } = payment
    const reason = payment.reason ?? payment.status
    if (payment.status === 'authorized') {
      emit({
        type: 'payment.authorized',
        subject: orderId,
        data: { orderId, paymentId, amountMinor, currency },
      })
    } else if (payment.status === 'declined') {
      emit({ type: 'payment.declined', subject: orderId, data: { orderId, reason } })
    } else if (payment.status === 'failed') {
      emit({ type: 'payment.failed', subject: orderId, data: { orderId, reason } })
    }
  }

  async function authorizeWithProvider(request: PaymentRequested): Promise<AuthorizationOutcome> {
    try {
      return await client.authorize(
        {
          amountMinor: request.amountMinor,
          currency: request.currency,
          paymentMethodToken: request.paymentMethodToken,
          reference: request.orderId,
        },
        `${request.orderId}:authorize`,
      )
    } catch (error) {
      log.warn(
        { orderId: request.orderId, err: errorMessage(error) },
        'authorization failed: answering payment.failed',
      )
      return { outcome: 'failed', reason: errorMessage(error).slice(0, reasonLengthMax) }
    }
  }

  const onPaymentRequested: Handler = async (event, tools) => {
    const request = event.data as unknown as PaymentRequested
    const known = await loadPayment(store, request.orderId)
    if (known) {
      // Asked again: the same answer again, without a second authorization.
      await tools.transact(async (_tx, emit) => announce(emit, known))
      return
    }
    const result = await authorizeWithProvider(request)
    await tools.transact(async (tx, emit) => {
      const payment: PaymentRow = {
        order_id: request.orderId,
        payment_id: `pay_${uuidv7()}`,
        customer_id: request.customerId,
        charge_id: result.outcome === 'failed' ? null : (result.chargeId ?? null),
        status: result.outcome,
        amount_minor: request.amountMinor,
        currency: request.currency,
        captured_minor: 0,
        refunded_minor: 0,
        reason: result.outcome === 'authorized' ? null : result.reason.slice(0, reasonLengthMax),
        created_at: '',
        updated_at: '',
      }
      if (!(await insertPayment(tx, payment))) {
        const current = await loadPayment(tx, request.orderId)
        if (current) announce(emit, current)
        return
      }
      if (payment.status === 'authorized') {
        await post(tx, ids(payment), 'authorize', payment.amount_minor)
      }
      announce(emit, payment)
    })
    steps.inc({ step: 'authorize', outcome: result.outcome })
  }

  async function capture(
    event: CloudEvent,
    tools: HandlerTools,
    when: 'on confirmation' | 'on shipment',
  ): Promise<void> {
    const { orderId } = event.data as { orderId: string }
    const payment = await loadPayment(store, orderId)
    if (payment?.status !== 'authorized') return
    // Read for the order's customer, as the order service reads its flags: a rule can tell customers apart.
    if (
      when === 'on confirmation' &&
      (await flags.string('capture-on', 'confirmation', customerContext(payment.customer_id))) !==
        'confirmation'
    )
      return
    await withProvider('capture', orderId, () => client.capture(chargeOf(payment), `${orderId}:capture`))
    await tools.transact(async (tx, emit) => {
      if (
        !(await movePayment(tx, orderId, 'authorized', 'captured', { capturedMinor: payment.amount_minor }))
      )
        return
      await post(tx, ids(payment), 'capture', payment.amount_minor)
      emit({ type: 'payment.captured', subject: orderId, data: money(payment, payment.amount_minor) })
    })
    steps.inc({ step: 'capture', outcome: 'ok' })
    log.info({ orderId, when }, 'payment captured')
  }

  const onConfirmed: Handler = (event, tools) => capture(event, tools, 'on confirmation')

  // Whatever the flag says now, goods that ship are paid for: a payment still only
  // authorized here (captured on shipment, or the flag changed in between) is captured.
  const onShipped: Handler = (event, tools) => capture(event, tools, 'on shipment')

  const onCancelled: Handler = async (event, tools) => {
    const { orderId } = event.data as { orderId: string }
    const payment = await loadPayment(store, orderId)
    if (payment?.status === 'authorized' || payment?.status === 'captured')
      await markCancelPending(store, orderId)
    if (payment?.status === 'authorized') {
      await withProvider('void', orderId, () => client.void(chargeOf(payment), `${orderId}:void`))
      await tools.transact(async (tx, emit) => {
        if (!(await movePayment(tx, orderId, 'authorized', 'voided'))) return
        await post(tx, ids(payment), 'void', payment.amount_minor)
        emit({ type: 'payment.voided', subject: orderId, data: money(payment, payment.amount_minor) })
      })
      steps.inc({ step: 'void', outcome: 'ok' })
    } else if (payment?.status === 'captured') {
      const amount = payment.captured_minor - payment.refunded_minor
      await withProvider('refund', orderId, () => client.refund(chargeOf(payment), `${orderId}:refund`))
      await tools.transact(async (tx, emit) => {
        const refunded = { refundedMinor: payment.captured_minor }
        if (!(await movePayment(tx, orderId, 'captured', 'refunded', refunded))) return
        await post(tx, ids(payment), 'refund', amount)
        emit({ type: 'payment.refunded', subject: orderId, data: money(payment, amount) })
      })
      steps.inc({ step: 'refund', outcome: 'ok' })
    } else if (payment?.status === 'failed') {
      await releaseStrayAuthorization(payment, tools)
    }
  }

  /**
   * An authorization whose answer was lost on every attempt may still have happened at the
   * provider; when the order is cancelled, it is found by reference and voided. One that was
   * still in flight there lands later: reconciliation finds it and voids it then. (Asking
   * again with the authorization's key would wait for such a one, but where no attempt
   * reached the provider it authorizes anew: a hold on the card for a cancelled order.)
   */
  async function releaseStrayAuthorization(payment: PaymentRow, tools: HandlerTools): Promise<void> {
    const orderId = payment.order_id
    const charges = await withProvider('void', orderId, () => client.chargesFor(orderId, true))
    const stray = charges.find((charge) => charge.status === 'authorized')
    if (!stray) return
    await withProvider('void', orderId, () => client.void(stray.chargeId, `${orderId}:void`))
    log.warn({ orderId, chargeId: stray.chargeId }, 'voided an authorization left behind by a failed payment')
    await tools.transact((tx) => noteStrayCharge(tx, payment, stray.chargeId))
  }

  /**
   * A capture or compensation that fails is thrown. When the provider is down (no answer, a
   * timeout, its circuit open, a 5xx or 429, a key it still holds), it is an outage: the stream waits it out and
   * tries again, however long, since money owed must not end in a dead letter because the
   * provider was away for a minute. Any other refusal (a 4xx) is retried, then dead-lettered,
   * for an operator.
   */
  async function withProvider<T>(step: string, orderId: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call()
    } catch (error) {
      steps.inc({ step, outcome: 'failed' })
      // Down: no answer, or a 5xx or 429; a key the provider still holds (409) is waited out
      // too. Anything else (a 4xx, a setting that makes no request) is no outage.
      const down =
        error instanceof ProviderError &&
        (error.unanswered ||
          (error.status !== undefined &&
            (error.status >= 500 || error.status === 429 || error.status === 409) &&
            error.retryable))
      if (down)
        throw new UnavailableError('payment provider', `${step} of ${orderId}: ${errorMessage(error)}`)
      log.error(
        { orderId, step, err: errorMessage(error) },
        `payment ${step} refused by the provider; the event is retried, then dead-lettered`,
      )
      throw error
    }
  }

  await service.consume(
    sagaConsumers.payment,
    {
      'order.payment-requested': onPaymentRequested,
      'order.confirmed': onConfirmed,
      'order.shipped': onShipped,
      'order.cancelled': onCancelled,
    },
    { oneAtATime: true },
  )

  const reconciliation = new Reconciliation(
    service,
    reconciliationClient(service, options.providerUrl, options.apiKey, options.inFlightPatienceMs),
  )
  service.every('payment-reconciliation', reconcileEveryMs, async (stopping) => {
    const mismatches = await reconciliation.run(stopping)
    if (mismatches.length > 0) {
      log.warn(
        { count: mismatches.length, first: mismatches.slice(0, 5) },
        'payment reconciliation found mismatches',
      )
    }
  })

  return {
    ready: () => store.ping(),
    stop: () => service.stop(),
  }
}

function ids(payment: PaymentRow) {
  return { paymentId: payment.payment_id, orderId: payment.order_id, currency: payment.currency }
}

function money(payment: PaymentRow, amountMinor: number) {
  return { orderId: payment.order_id, paymentId: payment.payment_id, amountMinor, currency: payment.currency }
}

function chargeOf(payment: PaymentRow): string {
  if (!payment.charge_id)
    throw new Error(`payment ${payment.payment_id} is ${payment.status} without a charge`)
  return payment.charge_id
}
