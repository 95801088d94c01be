// Reconciliation: the ledger against itself (every entry balances), each payment against
// its ledger, and each payment against the provider's record of its charge. A mismatch
// can be transient while an operation is between the provider and the local commit: each
// payment is read afresh when its turn comes, and one found mismatched is looked at again
// a moment later, and reported only if it still is. One that stays across runs needs a
// person. An authorization found at the provider for a payment that failed here (one that
// landed after the payment gave up) is voided: the order was, or is being, cancelled.
//
// A run looks at everything only now and then (a full pass); the runs between look at
// what can have changed since the run before: payments and ledger entries written since,
// authorizations open over an hour, and the payments whose last look found a mismatch. So
// a run costs what the shop did in a minute, not everything it ever did. What changed at
// the provider with nothing written here (a refund done there whose answer was lost, then
// dead-lettered) shows at the next full pass; its dead letter shows at once.
import { setTimeout as sleep } from 'node:timers/promises'
import { errorMessage } from '../../platform/errors.ts'
import type { Service } from '../../platform/service.ts'
import { type Imbalance, paymentLedger, unbalancedEntries } from './ledger.ts'
import {
  cancelsPendingSince,
  loadPayment,
  noteStrayCharge,
  type PaymentRow,
  type PaymentStatus,
  paymentsPage,
  paymentsToRecheck,
} from './payments.ts'
import { type ProviderCharge, ProviderClient } from './provider-client.ts'

export interface Mismatch {
  kind:
    | 'unbalanced-entry'
    | 'ledger-status'
    | 'ledger-amount'
    | 'provider-status'
    | 'provider-amount'
    | 'missing-at-provider'
    | 'untracked-charge'
    | 'stale-authorization'
    | 'kept-after-cancel'
  orderId?: string
  paymentId?: string
  chargeId?: string
  ours?: string | number
  provider?: string | number
  detail: string
}

/**
 * An authorization neither captured nor voided for this long is left behind: a capture or
 * a void that never happened (dead-lettered, say). The saga settles one within minutes,
 * even with capture on shipment.
 */
const authorizationOpenMaxMs = 3_600_000

/**
 * A cancelled order's payment still authorized or captured this long after the cancel: its
 * void or refund gave up (dead-lettered, the provider down), and the customer's money is kept.
 */
const cancelPendingMaxMs = 300_000

/** The ledger's view of a payment in each status ('none': no entries). */
const ledgerStatusOf: Record<PaymentStatus, string> = {
  authorized: 'authorized',
  captured: 'captured',
  refunded: 'refunded',
  voided: 'voided',
  declined: 'none',
  failed: 'none',
}

const pageSize = 200
const concurrency = 8

/**
 * The provider client reconciliation calls through: its own, so its calls neither trip nor
 * wait on the saga's circuit.
 */
export function reconciliationClient(
  service: Service,
  providerUrl: () => string | Promise<string>,
  apiKey?: string,
  inFlightPatienceMs?: number,
): ProviderClient {
  return new ProviderClient({
    providerUrl,
    apiKey,
    inFlightPatienceMs,
    name: 'reconciliation',
    timeoutMs: 5_000,
    attemptsMax: 2,
    concurrencyMax: concurrency,
    backoffBaseMs: 100,
    log: service.log,
    metrics: service.metrics,
  })
}

/** How long after a first look a payment found mismatched is looked at again. */
const recheckAfterMs = 2_000

/** How often a run is a full pass (the first run always is). */
const fullPassEveryMs = 86_400_000

/**
 * A run between full passes looks at what changed since this long before the run before
 * it began: a transaction under way then has committed by now.
 */
const overlapMs = 60_000

/** Reconciliation runs, full or since the run before; it remembers what the last ones found. */
export class Reconciliation {
  readonly #service: Service
  readonly #client: ProviderClient
  readonly #fullPassEveryMs: number
  readonly #pause: (stopping?: AbortSignal) => Promise<unknown>
  readonly #now: () => number
  #fullPassAt = Number.NEGATIVE_INFINITY
  /** Changes at or after this were not yet looked at; undefined before the first full pass. */
  #since: string | undefined
  /** The ledger is append-only: an entry found unbalanced stays so. */
  readonly #unbalanced = new Map<string, Mismatch>()
  /** Payments (by order id) whose last look found a mismatch: looked at again every run. */
  #suspects = new Set<string>()

  constructor(
    service: Service,
    client: ProviderClient,
    options: {
      fullPassEveryMs?: number
      /** What a run waits for between a first look at a mismatch and the second (a moment). */
      pause?: (stopping?: AbortSignal) => Promise<unknown>
      now?: () => number
    } = {},
  ) {
    this.#service = service
    this.#client = client
    this.#fullPassEveryMs = options.fullPassEveryMs ?? fullPassEveryMs
    this.#pause = options.pause ?? ((stopping) => sleep(recheckAfterMs, undefined, { signal: stopping }))
    this.#now = options.now ?? Date.now
  }

  /** Every mismatch known now: those found by this run, and unbalanced entries found before. */
  async run(stopping?: AbortSignal): Promise<Mismatch[]> {
    const startedAt = this.#now()
    const since = startedAt - this.#fullPassAt < this.#fullPassEveryMs ? this.#since : undefined
    const { store } = this.#service
    if (since === undefined) this.#unbalanced.clear()
    for (const entry of await unbalancedEntries(store, since))
      this.#unbalanced.set(entry.entryId, unbalanced(entry))
    const mismatches = [...this.#unbalanced.values()]
    /** Payments found mismatched on a first look, by order id: looked at again before the run ends. */
    const mismatched = new Set<string>()
    const look = async (orderIds: string[], into: (orderId: string, found: Mismatch[]) => void) => {
      for (let i = 0; i < orderIds.length; i += concurrency) {
        const batch = orderIds.slice(i, i + concurrency)
        const found = await Promise.all(batch.map((id) => check(this.#service, this.#client, id, startedAt)))
        for (const [j, mismatchesOf] of found.entries()) into(batch[j], mismatchesOf)
      }
    }
    const firstLook = (orderIds: string[]) =>
      look(orderIds, (orderId, found) => found.length > 0 && mismatched.add(orderId))
    if (since === undefined) {
      for (let after = ''; ; ) {
        const page = await paymentsPage(store, after, pageSize)
        if (page.length === 0) break
        after = page[page.length - 1]
        await firstLook(page)
      }
      this.#fullPassAt = startedAt
    } else {
      const openBefore = new Date(startedAt - authorizationOpenMaxMs).toISOString()
      await firstLook(await paymentsToRecheck(store, since, openBefore, this.#suspects))
    }
    // A capture or void between the provider and its commit here settles in a moment.
    const suspects = new Set<string>()
    if (mismatched.size > 0) {
      // A service stopping does not wait the moment out: what this run found unconfirmed is
      // left for the next run of its next start.
      await this.#pause(stopping).catch((error) => {
        if (!stopping?.aborted) throw error
      })
      if (stopping?.aborted) return mismatches
      await look([...mismatched], (orderId, found) => {
        if (found.length > 0) suspects.add(orderId)
        mismatches.push(...found)
      })
    }
    // Few, and looked at every run: one stays until its void or refund goes through. During
    // a long provider outage they pile up: the oldest thousand are reported.
    const pendingBefore = new Date(startedAt - cancelPendingMaxMs).toISOString()
    for (const payment of await cancelsPendingSince(store, pendingBefore, 1_000))
      mismatches.push(keptAfterCancel(payment, startedAt))
    this.#suspects = suspects
    this.#since = new Date(startedAt - overlapMs).toISOString()
    this.#service.metrics
      .gauge(
        'mercato_payment_reconciliation_mismatches',
        'Mismatches known after the last payment reconciliation.',
      )
      .set(mismatches.length)
    return mismatches
  }
}

/** One full pass. */
export function reconcile(service: Service, client: ProviderClient): Promise<Mismatch[]> {
  return new Reconciliation(service, client).run()
}

function keptAfterCancel(payment: PaymentRow, now: number): Mismatch {
  const minutes = Math.round((now - Date.parse(payment.cancel_pending_since ?? '')) / 60_000)
  const owed = payment.status === 'captured' ? 'refund' : 'void'
  return {
    kind: 'kept-after-cancel',
    orderId: payment.order_id,
    paymentId: payment.payment_id,
    ours: payment.status,
    detail: `the order was cancelled ${minutes} min ago, but the payment is still ${payment.status}: its ${owed} did not go through (it waits while the provider is down, see mercato_stream_outage_waits_total; a refused one is in the orders dead letters)`,
  }
}

function unbalanced(entry: Imbalance): Mismatch {
  return {
    kind: 'unbalanced-entry',
    ours: entry.sumMinor,
    detail: `ledger entry ${entry.entryId} sums to ${entry.sumMinor} ${entry.currency}, not 0`,
  }
}

async function check(
  service: Service,
  client: ProviderClient,
  orderId: string,
  now: number,
): Promise<Mismatch[]> {
  // Read now, not when its page was: a page's payments move on while the page is looked at.
  const payment = await loadPayment(service.store, orderId)
  if (!payment) return []
  const ids = { orderId: payment.order_id, paymentId: payment.payment_id }
  const found: Mismatch[] = []
  const ledger = await paymentLedger(service.store, payment.payment_id)
  if (ledger.status !== ledgerStatusOf[payment.status]) {
    found.push({
      kind: 'ledger-status',
      ...ids,
      ours: payment.status,
      detail: `payment is ${payment.status} but its ledger entries say ${ledger.status}`,
    })
  }
  const openForMs = now - Date.parse(payment.updated_at)
  if (payment.status === 'authorized' && openForMs > authorizationOpenMaxMs) {
    found.push({
      kind: 'stale-authorization',
      ...ids,
      ours: payment.status,
      detail: `authorized ${Math.round(openForMs / 60_000)} min ago, and neither captured nor voided since`,
    })
  }
  if (ledger.capturedMinor !== payment.captured_minor || ledger.refundedMinor !== payment.refunded_minor) {
    found.push({
      kind: 'ledger-amount',
      ...ids,
      detail:
        `payment has captured ${payment.captured_minor}, refunded ${payment.refunded_minor}; ` +
        `ledger has captured ${ledger.capturedMinor}, refunded ${ledger.refundedMinor}`,
    })
  }
  if (payment.status === 'failed') {
    // Nothing should have moved at the provider; an authorization left behind by a lost answer shows here.
    for (const charge of await client.chargesFor(payment.order_id)) {
      if (charge.status === 'voided' || charge.status === 'declined') continue
      if (charge.status === 'authorized' && (await voidStray(service, client, payment, charge))) continue
      found.push({
        kind: 'untracked-charge',
        ...ids,
        chargeId: charge.chargeId,
        ours: payment.status,
        provider: charge.status,
        detail: `payment failed here, but the provider has charge ${charge.chargeId} ${charge.status}`,
      })
    }
    return found
  }
  if (!payment.charge_id) return found
  const charge = await client.charge(payment.charge_id)
  if (!charge) {
    found.push({
      kind: 'missing-at-provider',
      ...ids,
      chargeId: payment.charge_id,
      detail: `the provider has no charge ${payment.charge_id}`,
    })
    return found
  }
  return [...found, ...compare(payment, charge)]
}

/** Voids an authorization of a payment that failed here; false if the provider refused for now. */
async function voidStray(
  service: Service,
  client: ProviderClient,
  payment: PaymentRow,
  charge: ProviderCharge,
): Promise<boolean> {
  try {
    await client.void(charge.chargeId, `${payment.order_id}:void`)
  } catch (error) {
    service.log.warn(
      { orderId: payment.order_id, chargeId: charge.chargeId, err: errorMessage(error) },
      'could not void an authorization left behind by a failed payment; reported, and tried again next run',
    )
    return false
  }
  service.log.warn(
    { orderId: payment.order_id, chargeId: charge.chargeId },
    'reconciliation voided an authorization left behind by a failed payment',
  )
  await service.transact((tx) => noteStrayCharge(tx, payment, charge.chargeId))
  return true
}

function compare(payment: PaymentRow, charge: ProviderCharge): Mismatch[] {
  const ids = { orderId: payment.order_id, paymentId: payment.payment_id, chargeId: charge.chargeId }
  const found: Mismatch[] = []
  if (charge.status !== payment.status) {
    found.push({
      kind: 'provider-status',
      ...ids,
      ours: payment.status,
      provider: charge.status,
      detail: `payment is ${payment.status}; the provider's charge is ${charge.status}`,
    })
  }
  for (const [field, ours, theirs] of [
    ['captured', payment.captured_minor, charge.capturedMinor],
    ['refunded', payment.refunded_minor, charge.refundedMinor],
  ] as const) {
    if (ours !== Number(theirs)) {
      found.push({
        kind: 'provider-amount',
        ...ids,
        ours,
        provider: Number(theirs),
        detail: `${field} ${ours} here, ${theirs} at the provider`,
      })
    }
  }
  return found
}
