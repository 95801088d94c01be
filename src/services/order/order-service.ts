// The order service: records orders and drives the saga. It asks inventory, payment and
// shipping for each step with an event on the orders topic (key: the order id), reacts to
// their answers, and cancels with a reason when a step fails or its deadline passes.
// Compensation follows from `order.cancelled`: inventory releases, payment voids or
// refunds, shipping cancels.
import type { CloudEvent } from '../../contracts/envelope.ts'
import { amountMinorMax, type OrderState, sagaConsumers } from '../../contracts/events.ts'
import type { Tx } from '../../engines/store/port.ts'
import { customerContext, type FlagReader } from '../../platform/flags.ts'
import {
  causeFrom,
  type Emit,
  type Handler,
  type Service,
  storedCause,
  sweepIntervalFor,
} from '../../platform/service.ts'

/** States in which the saga still waits for a step, each with a deadline. */
const waiting: OrderState[] = ['PENDING', 'STOCK_RESERVED', 'PAYMENT_AUTHORIZED']
/** States from which a customer may still cancel. */
const cancellable: OrderState[] = [...waiting, 'SHIPMENT_SCHEDULED', 'CONFIRMED']

export const orderMigrations = [
  {
    id: 'order-0001-orders',
    sql: `CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, state TEXT NOT NULL, lines TEXT NOT NULL,
        total_minor BIGINT NOT NULL, currency TEXT NOT NULL, shipping_address TEXT NOT NULL,
        payment_method_token TEXT NOT NULL, express BOOLEAN NOT NULL, reason TEXT, shipment_id TEXT,
        deadline_at BIGINT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS orders_deadline ON orders (deadline_at) WHERE deadline_at IS NOT NULL;
      CREATE TABLE IF NOT EXISTS order_steps (
        order_id TEXT NOT NULL, state TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (order_id, state));
      CREATE TABLE IF NOT EXISTS prices (
        sku TEXT PRIMARY KEY, price_minor BIGINT NOT NULL, currency TEXT NOT NULL)`,
  },
  // The order's request: a cancellation by the deadline job carries its correlation and trace.
  { id: 'order-0002-cause', sql: 'ALTER TABLE orders ADD COLUMN cause TEXT' },
]

export interface OrderRow {
  order_id: string
  customer_id: string
  state: OrderState
  lines: string
  total_minor: number
  currency: string
  shipping_address: string
  payment_method_token: string
  express: boolean | number
  reason: string | null
  shipment_id: string | null
  deadline_at: number | null
}

export interface OrderServiceOptions {
  stepTimeoutMs: number
  linesMax: number
}

export async function startOrderService(service: Service, options: OrderServiceOptions, flags: FlagReader) {
  await service.start(orderMigrations)
  const deadlineIn = () => Date.now() + options.stepTimeoutMs
  const ended = service.metrics.counter(
    'mercato_orders_ended_total',
    'Orders that reached a terminal or confirmed state.',
    ['state', 'reason'],
  )

  async function load(tx: Tx, orderId: string): Promise<OrderRow | undefined> {
    const [row] = await tx.query<OrderRow>('SELECT * FROM orders WHERE order_id = $1', [orderId])
    return row
  }

  async function move(
    tx: Tx,
    order: OrderRow,
    state: OrderState,
    changes: { deadlineAt?: number | null; reason?: string; shipmentId?: string } = {},
  ): Promise<void> {
    const now = new Date().toISOString()
    // Only from the state the handler saw: two handlers of one order run concurrently (its
    // answers come on several topics), and on PostgreSQL both may have read the same state.
    // The loser fails here, rolls back, and is retried against the state that won.
    const moved = await tx.execute(
      `UPDATE orders SET state = $1, deadline_at = $2, reason = COALESCE($3, reason),
         shipment_id = COALESCE($4, shipment_id), updated_at = $5 WHERE order_id = $6 AND state = $7`,
      [
        state,
        changes.deadlineAt ?? null,
        changes.reason ?? null,
        changes.shipmentId ?? null,
        now,
        order.order_id,
        order.state,
      ],
    )
    if (moved !== 1) throw new Error(`order ${order.order_id} left ${order.state} meanwhile; handled again`)
    order.state = state
    await tx.execute(
      'INSERT INTO order_steps (order_id, state, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
      [order.order_id, state, now],
    )
    if (state === 'CONFIRMED' || state === 'CANCELLED' || state === 'DELIVERED') {
      tx.afterCommit(() => ended.inc({ state, reason: changes.reason ?? '' }))
    }
  }

  async function cancel(tx: Tx, emit: Emit, order: OrderRow, reason: string, detail?: string): Promise<void> {
    await move(tx, order, 'CANCELLED', { deadlineAt: null, reason })
    emit({
      type: 'order.cancelled',
      subject: order.order_id,
      data: {
        orderId: order.order_id,
        customerId: order.customer_id,
        reason,
        ...(detail ? { detail: detail.slice(0, 500) } : {}),
      },
    })
  }

  /** A handler for an answer about an order: runs `step` when the order is in `from`. */
  const whenIn =
    (
      from: OrderState[],
      step: (tx: Tx, emit: Emit, order: OrderRow, event: CloudEvent) => Promise<void>,
    ): Handler =>
    async (event, tools) => {
      const orderId = (event.data as { orderId: string }).orderId
      await tools.transact(async (tx, emit) => {
        const order = await load(tx, orderId)
        if (order && from.includes(order.state)) await step(tx, emit, order, event)
      })
    }

  const handlers: Record<string, Handler> = {
    'product.upserted': async (event, tools) => {
      const { sku, priceMinor, currency } = event.data as {
        sku: string
        priceMinor: number
        currency: string
      }
      await tools.transact((tx) =>
        tx.execute(
          `INSERT INTO prices (sku, price_minor, currency) VALUES ($1, $2, $3)
           ON CONFLICT (sku) DO UPDATE SET price_minor = excluded.price_minor, currency = excluded.currency`,
          [sku, priceMinor, currency],
        ),
      )
    },

    'order.requested': async (event, tools) => {
      const data = event.data as {
        orderId: string
        customerId: string
        lines: { sku: string; quantity: number }[]
        shippingAddress: unknown
        paymentMethodToken: string
        express?: boolean
      }
      const context = customerContext(data.customerId)
      const linesMax = Math.min(
        options.linesMax,
        await flags.number('max-lines-per-order', options.linesMax, context),
      )
      const expressAllowed = await flags.boolean('express-shipping', true, context)
      await tools.transact(async (tx, emit) => {
        if (await load(tx, data.orderId)) return // the same order asked for twice
        const priced: { sku: string; quantity: number; unitPriceMinor: number }[] = []
        const problems: string[] = []
        const currencies = new Set<string>()
        for (const line of data.lines) {
          const [price] = await tx.query<{ price_minor: number; currency: string }>(
            'SELECT price_minor, currency FROM prices WHERE sku = $1',
            [line.sku],
          )
          if (!price) problems.push(`unknown product ${line.sku}`)
          else {
            currencies.add(price.currency)
            priced.push({ ...line, unitPriceMinor: Number(price.price_minor) })
          }
        }
        if (currencies.size > 1) problems.push('products in more than one currency')
        if (data.lines.length > linesMax) problems.push(`more than ${linesMax} lines`)
        const summed = priced.reduce((sum, line) => sum + line.quantity * line.unitPriceMinor, 0)
        // Past the most any amount may be (the events' bound) the sum may not even be exact:
        // the order is refused, and its row (whose total is required) records 0.
        const tooLarge = summed > amountMinorMax
        if (tooLarge)
          problems.push(`the total is more than ${amountMinorMax} minor units, the most an order may come to`)
        const total = tooLarge ? 0 : summed
        const now = new Date().toISOString()
        await tx.execute(
          `INSERT INTO orders (order_id, customer_id, state, lines, total_minor, currency, shipping_address,
             payment_method_token, express, deadline_at, created_at, updated_at, cause)
           VALUES ($1, $2, 'PENDING', $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)`,
          [
            data.orderId,
            data.customerId,
            JSON.stringify(priced.length === data.lines.length ? priced : data.lines),
            total,
            [...currencies][0] ?? 'XXX',
            JSON.stringify(data.shippingAddress),
            data.paymentMethodToken,
            Boolean(data.express && expressAllowed),
            deadlineIn(),
            now,
            storedCause(event),
          ],
        )
        await tx.execute('INSERT INTO order_steps (order_id, state, at) VALUES ($1, $2, $3)', [
          data.orderId,
          'PENDING',
          now,
        ])
        const order = (await load(tx, data.orderId)) as OrderRow
        if (problems.length > 0) return cancel(tx, emit, order, 'invalid-order', problems.join('; '))
        emit({
          type: 'order.placed',
          subject: data.orderId,
          data: {
            orderId: data.orderId,
            customerId: data.customerId,
            lines: priced,
            totalMinor: total,
            currency: [...currencies][0],
            express: Boolean(order.express),
          },
        })
      })
    },

    'inventory.reserved': whenIn(['PENDING'], async (tx, emit, order) => {
      await move(tx, order, 'STOCK_RESERVED', { deadlineAt: deadlineIn() })
      emit({
        type: 'order.payment-requested',
        subject: order.order_id,
        data: {
          orderId: order.order_id,
          customerId: order.customer_id,
          paymentMethodToken: order.payment_method_token,
          amountMinor: Number(order.total_minor),
          currency: order.currency,
        },
      })
    }),

    'inventory.rejected': whenIn(['PENDING'], async (tx, emit, order, event) => {
      const shortages = (event.data as { shortages: { sku: string }[] }).shortages
      await cancel(
        tx,
        emit,
        order,
        'out-of-stock',
        `not enough stock of ${shortages.map((s) => s.sku).join(', ')}`,
      )
    }),

    'inventory.released': whenIn(waiting, async (tx, emit, order, event) => {
      if ((event.data as { reason: string }).reason === 'expired') {
        await cancel(tx, emit, order, 'deadline-passed', 'the stock reservation expired')
      }
    }),

    'payment.authorized': whenIn(['STOCK_RESERVED'], async (tx, emit, order) => {
      await move(tx, order, 'PAYMENT_AUTHORIZED', { deadlineAt: deadlineIn() })
      emit({
        type: 'order.shipment-requested',
        subject: order.order_id,
        data: {
          orderId: order.order_id,
          customerId: order.customer_id,
          shippingAddress: JSON.parse(order.shipping_address),
          lines: (JSON.parse(order.lines) as { sku: string; quantity: number }[]).map(
            ({ sku, quantity }) => ({
              sku,
              quantity,
            }),
          ),
          express: Boolean(order.express),
        },
      })
    }),

    'payment.declined': whenIn(['STOCK_RESERVED'], (tx, emit, order, event) =>
      cancel(tx, emit, order, 'payment-declined', (event.data as { reason: string }).reason),
    ),

    'payment.failed': whenIn(['STOCK_RESERVED'], (tx, emit, order, event) =>
      cancel(tx, emit, order, 'payment-failed', (event.data as { reason: string }).reason),
    ),

    'shipment.scheduled': whenIn(['PAYMENT_AUTHORIZED'], async (tx, emit, order, event) => {
      const shipmentId = (event.data as { shipmentId: string }).shipmentId
      await move(tx, order, 'SHIPMENT_SCHEDULED', { deadlineAt: null, shipmentId })
      await move(tx, order, 'CONFIRMED', { deadlineAt: null })
      emit({ type: 'order.confirmed', subject: order.order_id, data: { orderId: order.order_id } })
    }),

    'shipment.shipped': whenIn(['CONFIRMED'], async (tx, emit, order, event) => {
      const { shipmentId } = event.data as { shipmentId: string }
      await move(tx, order, 'SHIPPED')
      emit({ type: 'order.shipped', subject: order.order_id, data: { orderId: order.order_id, shipmentId } })
    }),

    'shipment.delivered': whenIn(['SHIPPED'], async (tx, emit, order, event) => {
      const { shipmentId } = event.data as { shipmentId: string }
      await move(tx, order, 'DELIVERED')
      emit({
        type: 'order.delivered',
        subject: order.order_id,
        data: { orderId: order.order_id, shipmentId },
      })
    }),

    'order.cancel-requested': async (event, tools) => {
      const { orderId, requestedBy, reason } = event.data as {
        orderId: string
        requestedBy: string
        reason?: string
      }
      await tools.transact(async (tx, emit) => {
        const order = await load(tx, orderId)
        if (!order) return
        if (cancellable.includes(order.state)) {
          const by = requestedBy === order.customer_id ? 'customer-cancelled' : 'operator-cancelled'
          return cancel(tx, emit, order, by, reason)
        }
        // Said, so the customer's order status shows why nothing happened.
        emit({ type: 'order.cancel-refused', subject: orderId, data: { orderId, state: order.state } })
      })
    },
  }

  await service.consume(sagaConsumers.order, handlers)

  // Deadlines: an order that waits too long on a step is cancelled, which compensates.
  service.every('order deadlines', sweepIntervalFor(options.stepTimeoutMs), async () => {
    const overdue = await service.store.query<{ order_id: string; cause: string | null }>(
      'SELECT order_id, cause FROM orders WHERE deadline_at IS NOT NULL AND deadline_at < $1 ORDER BY deadline_at LIMIT 200',
      [Date.now()],
    )
    for (const { order_id, cause } of overdue) {
      await service.transact(async (tx, emit) => {
        const order = await load(tx, order_id)
        if (
          order &&
          waiting.includes(order.state) &&
          order.deadline_at !== null &&
          Number(order.deadline_at) < Date.now()
        ) {
          await cancel(
            tx,
            emit,
            order,
            'deadline-passed',
            `no answer while ${order.state} within ${options.stepTimeoutMs} ms`,
          )
        }
      }, causeFrom(cause))
    }
  })

  return {
    ready: () => service.store.ping(),
    stop: () => service.stop(),
  }
}
