// What the customer is told at each step, as plain-text e-mail. Templates are rendered
// when the message is sent, from the event's data and the customer's name as then known.
import { cancelDetailsForCustomers } from '../../contracts/events.ts'

/** The template of each customer-facing event type. */
export const templateOf: Record<string, string> = {
  'customer.registered': 'welcome',
  'customer.registration-rejected': 'registration-refused',
  'order.placed': 'order-received',
  'order.confirmed': 'order-confirmed',
  'order.cancelled': 'order-cancelled',
  'order.shipped': 'order-shipped',
  'order.delivered': 'order-delivered',
  'payment.refunded': 'payment-refunded',
}

export interface Recipient {
  givenName?: string
  familyName?: string
}

export interface RenderedEmail {
  subject: string
  text: string
}

/**
 * What a cancellation means for the customer's money. Payment is captured on confirmation
 * (or shipment), never before, so only a customer's or operator's cancel of a confirmed
 * order finds a charge to refund (its own e-mail follows); an earlier one at most voids an
 * authorization.
 */
const cancelMoney: Record<string, string> = {
  'out-of-stock': 'You have not been charged for it.',
  'invalid-order': 'You have not been charged for it.',
  'payment-declined': 'You have not been charged for it.',
  'payment-failed': 'You have not been charged for it; any hold on your card for it will be released.',
  'deadline-passed': 'You have not been charged for it; any hold on your card for it will be released.',
}
const cancelMoneyOtherwise =
  'If you have been charged for it, we will refund you and write to you when we have; otherwise any hold on your card for it will be released.'

const cancelReasons: Record<string, string> = {
  'out-of-stock': 'some of the items are no longer in stock',
  'payment-declined': 'the payment was declined',
  'payment-failed': 'the payment could not be processed',
  'deadline-passed': 'it could not be completed in time',
  'customer-cancelled': 'you asked us to cancel it',
  'operator-cancelled': 'our team cancelled it',
  'invalid-order': 'it could not be accepted',
}

/** An amount in minor units, in its currency's own notation (EUR 1234 → €12.34). */
export function formatMoney(amountMinor: number, currency: string): string {
  try {
    const { format, digits } = moneyFormatOf(currency)
    return format.format(amountMinor / 10 ** digits)
  } catch {
    return `${(amountMinor / 100).toFixed(2)} ${currency}`
  }
}

/** One formatter per currency: building an Intl.NumberFormat costs far more than using one. */
const moneyFormats = new Map<string, { format: Intl.NumberFormat; digits: number }>()

function moneyFormatOf(currency: string): { format: Intl.NumberFormat; digits: number } {
  let known = moneyFormats.get(currency)
  if (!known) {
    const format = new Intl.NumberFormat('en', { style: 'currency', currency })
    known = { format, digits: format.resolvedOptions().maximumFractionDigits ?? 2 }
    if (moneyFormats.size < 1_000) moneyFormats.set(currency, known)
  }
  return known
}

const str = (value: unknown) => (typeof value === 'string' ? value : String(value ?? ''))
const num = (value: unknown) => (typeof value === 'number' && Number.isFinite(value) ? value : 0)

export function renderEmail(template: string, data: Record<string, unknown>, to: Recipient): RenderedEmail {
  const greeting = to.givenName ? `Hello ${to.givenName},` : 'Hello,'
  const signature = '\n\nThank you for shopping with Mercato.\n'
  const orderId = str(data.orderId)
  switch (template) {
    case 'welcome':
      return {
        subject: `Welcome to Mercato${to.givenName ? `, ${to.givenName}` : ''}`,
        // Not "sign in with": an account registered without a password (by staff, or one
        // that signs in elsewhere) has none to sign in with here.
        text: `${greeting}\n\nyour Mercato account for ${str(data.email)} is ready.${signature}`,
      }
    case 'registration-refused':
      // Sent to the address the registration named, whoever asked: it tells them nothing
      // they cannot know, and tells the registrant, who has no account to read it from.
      return {
        subject: 'Your Mercato registration',
        text:
          'Hello,\n\nsomeone, perhaps you, asked to register a new Mercato account with this e-mail ' +
          'address. An account with this address already exists, so no new one was made. If it was ' +
          'you, sign in to your account; if it was not, you need do nothing.' +
          signature,
      }
    case 'order-received': {
      const currency = str(data.currency)
      const lines = Array.isArray(data.lines) ? (data.lines as Record<string, unknown>[]) : []
      const names = (data.productNames ?? {}) as Record<string, string>
      const items = lines
        .map((line) => {
          const sku = str(line.sku)
          const product = names[sku] ? `${names[sku]} (${sku})` : sku
          return `  ${num(line.quantity)} × ${product} at ${formatMoney(num(line.unitPriceMinor), currency)}`
        })
        .join('\n')
      return {
        subject: `We have received your order ${orderId}`,
        text:
          `${greeting}\n\nwe have received your order ${orderId}:\n\n${items}\n\n` +
          `Total: ${formatMoney(num(data.totalMinor), currency)}\n\n` +
          `We will write again once it is confirmed.${signature}`,
      }
    }
    case 'order-confirmed':
      return {
        subject: `Your order ${orderId} is confirmed`,
        text: `${greeting}\n\nyour order ${orderId} is confirmed; we are preparing it for shipment.${signature}`,
      }
    case 'order-cancelled': {
      const reason = cancelReasons[str(data.reason)] ?? 'it could not be completed'
      // A decline's detail is the provider's code (card_declined), for API clients; the
      // reason already says it in words.
      const told =
        cancelDetailsForCustomers.has(str(data.reason)) && data.reason !== 'payment-declined' && data.detail
      const detail = told ? `\n\n${str(data.detail)}` : ''
      const money = cancelMoney[str(data.reason)] ?? cancelMoneyOtherwise
      return {
        subject: `Your order ${orderId} has been cancelled`,
        text: `${greeting}\n\nwe are sorry: your order ${orderId} has been cancelled because ${reason}.${detail}\n\n${money}${signature}`,
      }
    }
    case 'order-shipped': {
      // The carrier and tracking number come from the order's shipment, once it is known.
      const tracking = data.trackingNumber
        ? ` with ${str(data.carrier)}; its tracking number is ${str(data.trackingNumber)}`
        : ''
      return {
        subject: `Your order ${orderId} is on its way`,
        text: `${greeting}\n\nyour order ${orderId} has been shipped${tracking}.${signature}`,
      }
    }
    case 'order-delivered':
      return {
        subject: `Your order ${orderId} has been delivered`,
        text: `${greeting}\n\nyour order ${orderId} has been delivered. We hope you enjoy it.${signature}`,
      }
    case 'payment-refunded': {
      const amount = formatMoney(num(data.amountMinor), str(data.currency))
      return {
        subject: `We have refunded ${amount} for order ${orderId}`,
        text:
          `${greeting}\n\nwe have refunded ${amount} for your order ${orderId}. ` +
          `Depending on your bank, it may take a few days to appear.${signature}`,
      }
    }
    default:
      throw new Error(`unknown e-mail template ${template}`)
  }
}
