// The order-status document, folded from the events of one order. The view keeps each
// order's events (a small, append-only set) and folds them when read, so events of the
// order's different topics may arrive in any order and the result is the same.
import type { CloudEvent } from '../../contracts/envelope.ts'
import { cancelDetailsForCustomers, type OrderState, orderStates } from '../../contracts/events.ts'

/** What the view keeps of one event: enough to fold the document and show the timeline. */
export interface OrderStep {
  id: string
  type: string
  time: string
  data: Record<string, unknown>
}

export type OrderStatus = OrderState

export interface OrderDocument {
  orderId: string
  customerId: string | null
  status: OrderStatus
  cancellation: { reason: string; detail: string | null } | null
  lines: { sku: string; quantity: number; unitPriceMinor: number | null }[]
  totalMinor: number | null
  currency: string | null
  shippingAddress: Record<string, unknown> | null
  express: boolean
  payment: {
    state: 'authorized' | 'declined' | 'failed' | 'captured' | 'voided' | 'refunded'
    paymentId: string | null
    amountMinor: number | null
    currency: string | null
    reason: string | null
  } | null
  shipment: {
    state: 'scheduled' | 'cancelled' | 'shipped' | 'delivered'
    shipmentId: string
    carrier: string | null
    trackingNumber: string | null
  } | null
  placedAt: string | null
  updatedAt: string
  timeline: { at: string; event: string; status: OrderStatus | null; detail: string | null }[]
}

export interface OrderSummary {
  orderId: string
  status: OrderStatus
  totalMinor: number | null
  currency: string | null
  placedAt: string | null
  updatedAt: string
}

/** The event types the view keeps: every step of the saga that concerns one order. */
const kept = new Set([
  'order.requested',
  'order.placed',
  'order.cancel-requested',
  'order.cancel-refused',
  'order.payment-requested',
  'order.shipment-requested',
  'order.confirmed',
  'order.cancelled',
  'order.shipped',
  'order.delivered',
  'inventory.reserved',
  'inventory.rejected',
  'inventory.committed',
  'inventory.released',
  'payment.authorized',
  'payment.declined',
  'payment.failed',
  'payment.captured',
  'payment.voided',
  'payment.refunded',
  'shipment.scheduled',
  'shipment.cancelled',
  'shipment.shipped',
  'shipment.delivered',
])

export const orderStatusTopics = ['orders', 'inventory', 'payments', 'shipments']

/** The step an event adds to its order, or undefined when the view does not keep it. */
export function orderStepOf(event: CloudEvent): { orderId: string; step: OrderStep } | undefined {
  const data = event.data as Record<string, unknown>
  if (!kept.has(event.type) || typeof data.orderId !== 'string') return undefined
  const { paymentMethodToken: _token, ...shown } = data
  return { orderId: data.orderId, step: { id: event.id, type: event.type, time: event.time, data: shown } }
}

/** The customer an event names for its order (order.requested and order.placed do). */
export function customerOf(step: OrderStep): string | undefined {
  return (step.type === 'order.requested' || step.type === 'order.placed') &&
    typeof step.data.customerId === 'string'
    ? step.data.customerId
    : undefined
}

const statusOfStep: Record<string, OrderStatus> = {
  'order.requested': 'PENDING',
  'order.placed': 'PENDING',
  'inventory.reserved': 'STOCK_RESERVED',
  'payment.authorized': 'PAYMENT_AUTHORIZED',
  'shipment.scheduled': 'SHIPMENT_SCHEDULED',
  'order.confirmed': 'CONFIRMED',
  'order.shipped': 'SHIPPED',
  'order.delivered': 'DELIVERED',
  'order.cancelled': 'CANCELLED',
}
const statusRank: OrderStatus[] = orderStates.filter((state) => state !== 'CANCELLED')
const paymentRank = ['declined', 'failed', 'authorized', 'voided', 'captured', 'refunded'] as const
const shipmentRank = ['scheduled', 'cancelled', 'shipped', 'delivered'] as const

/**
 * Steps in the order they happened: by time; at the same millisecond a request before what
 * it caused and the cancellation after the rest; then by id (deterministic).
 */
export function sortSteps(steps: OrderStep[]): OrderStep[] {
  const tieRank = (step: OrderStep) =>
    step.type === 'order.cancelled' ? 1 : /[.-]requested$/.test(step.type) ? -1 : 0
  return [...steps].sort((a, b) =>
    a.time < b.time
      ? -1
      : a.time > b.time
        ? 1
        : tieRank(a) - tieRank(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  )
}

/** Folds an order's steps, in any order, into its document. */
export function foldOrder(orderId: string, unsorted: OrderStep[]): OrderDocument {
  const steps = sortSteps(unsorted)
  const doc: OrderDocument = {
    orderId,
    customerId: null,
    status: 'PENDING',
    cancellation: null,
    lines: [],
    totalMinor: null,
    currency: null,
    shippingAddress: null,
    express: false,
    payment: null,
    shipment: null,
    placedAt: null,
    updatedAt: steps.at(-1)?.time ?? '',
    timeline: [],
  }
  let rank = 0
  for (const step of steps) {
    const d = step.data as Record<string, any>
    // A step that comes after the cancellation (a late answer, then undone) moves nothing.
    const status = doc.cancellation ? null : (statusOfStep[step.type] ?? null)
    if (status === 'CANCELLED') {
      doc.cancellation = { reason: d.reason, detail: customerDetailOf(d) }
    } else if (status) rank = Math.max(rank, statusRank.indexOf(status))
    switch (step.type) {
      case 'order.requested':
        doc.customerId ??= d.customerId
        doc.placedAt ??= step.time
        doc.shippingAddress = d.shippingAddress
        doc.express = d.express === true
        if (doc.lines.length === 0)
          doc.lines = d.lines.map((l: any) => ({ sku: l.sku, quantity: l.quantity, unitPriceMinor: null }))
        break
      case 'order.placed':
        doc.customerId = d.customerId
        doc.lines = d.lines.map((l: any) => ({
          sku: l.sku,
          quantity: l.quantity,
          unitPriceMinor: l.unitPriceMinor,
        }))
        doc.totalMinor = d.totalMinor
        doc.currency = d.currency
        if (typeof d.express === 'boolean') doc.express = d.express
        break
      case 'payment.authorized':
      case 'payment.declined':
      case 'payment.failed':
      case 'payment.captured':
      case 'payment.voided':
      case 'payment.refunded': {
        const state = step.type.slice('payment.'.length) as (typeof paymentRank)[number]
        if (!doc.payment || paymentRank.indexOf(state) >= paymentRank.indexOf(doc.payment.state)) {
          doc.payment = {
            state,
            paymentId: d.paymentId ?? doc.payment?.paymentId ?? null,
            amountMinor: d.amountMinor ?? doc.payment?.amountMinor ?? null,
            currency: d.currency ?? doc.payment?.currency ?? null,
            // A failure's reason is the provider's or the network's error: the customer gets
            // the timeline's sentence, operators the logs.
            reason: state === 'failed' ? detailOf(step) : (d.reason ?? null),
          }
        }
        break
      }
      case 'shipment.scheduled':
      case 'shipment.cancelled':
      case 'shipment.shipped':
      case 'shipment.delivered': {
        const state = step.type.slice('shipment.'.length) as (typeof shipmentRank)[number]
        if (!doc.shipment || shipmentRank.indexOf(state) >= shipmentRank.indexOf(doc.shipment.state)) {
          doc.shipment = {
            state,
            shipmentId: d.shipmentId,
            carrier: d.carrier ?? doc.shipment?.carrier ?? null,
            trackingNumber: d.trackingNumber ?? doc.shipment?.trackingNumber ?? null,
          }
        }
        break
      }
    }
    doc.timeline.push({ at: step.time, event: step.type, status, detail: detailOf(step) })
  }
  doc.status = doc.cancellation ? 'CANCELLED' : statusRank[rank]
  return doc
}

export function summaryOf(doc: OrderDocument): OrderSummary {
  return {
    orderId: doc.orderId,
    status: doc.status,
    totalMinor: doc.totalMinor,
    currency: doc.currency,
    placedAt: doc.placedAt,
    updatedAt: doc.updatedAt,
  }
}

function detailOf(step: OrderStep): string | null {
  const d = step.data as Record<string, any>
  switch (step.type) {
    case 'order.cancelled': {
      const detail = customerDetailOf(d)
      return detail ? `${d.reason}: ${detail}` : d.reason
    }
    case 'inventory.rejected':
      return (d.shortages as { sku: string; requested: number; available: number }[])
        .map((s) => `${s.sku}: ${s.requested} requested, ${s.available} available`)
        .join('; ')
    case 'order.cancel-refused':
      return `too late to cancel: the order is ${d.state}`
    case 'inventory.released':
      return d.reason
    case 'payment.declined':
      return d.reason
    case 'payment.failed':
      // Its reason is the provider's or the network's error: for operators, in the logs.
      return 'the payment could not be processed'
    case 'shipment.scheduled':
      return `${d.carrier} ${d.trackingNumber}`
    default:
      return null
  }
}

export function orderCacheKey(orderId: string): string {
  return `order:${orderId}`
}

export function customerOrdersCacheKey(customerId: string): string {
  return `customer-orders:${customerId}`
}

/** A cancellation's detail where it is meant for the customer (see cancelDetailsForCustomers). */
function customerDetailOf(d: { reason?: string; detail?: string }): string | null {
  return d.detail && cancelDetailsForCustomers.has(String(d.reason)) ? d.detail : null
}
