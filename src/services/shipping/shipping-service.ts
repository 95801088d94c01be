// The shipping service: books a shipment with a carrier once payment is authorized, and
// moves it to shipped and delivered on a simulated carrier clock after the order is
// confirmed. A cancelled order's shipment is cancelled if it has not left yet.
import { createHash } from 'node:crypto'
import { sagaConsumers } from '../../contracts/events.ts'
import type { Tx } from '../../engines/store/port.ts'
import {
  causeFrom,
  type Handler,
  type Service,
  storedCause,
  sweepIntervalFor,
} from '../../platform/service.ts'

export const shippingMigrations = [
  {
    id: 'shipping-0001-shipments',
    sql: `CREATE TABLE IF NOT EXISTS shipments (
        order_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL, carrier TEXT NOT NULL,
        tracking_number TEXT NOT NULL, status TEXT NOT NULL, next_step_at BIGINT,
        address TEXT NOT NULL, lines TEXT NOT NULL, updated_at TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS shipments_due ON shipments (next_step_at) WHERE next_step_at IS NOT NULL`,
  },
  // The event that asked for the shipment: the carrier clock's events carry its correlation and trace.
  { id: 'shipping-0002-cause', sql: 'ALTER TABLE shipments ADD COLUMN cause TEXT' },
]

type Status = 'scheduled' | 'ready' | 'shipped' | 'delivered' | 'cancelled'

interface ShipmentRow {
  order_id: string
  shipment_id: string
  status: Status
  next_step_at: number | null
  cause: string | null
}

export async function startShippingService(service: Service, options: { carrierStepMs: number }) {
  await service.start(shippingMigrations)

  async function shipment(tx: Tx, orderId: string): Promise<ShipmentRow | undefined> {
    const [row] = await tx.query<ShipmentRow>('SELECT * FROM shipments WHERE order_id = $1', [orderId])
    return row
  }

  /**
   * Moves a shipment on only from the status its caller saw (the carrier clock and an
   * order's cancellation may race on PostgreSQL); throws otherwise, so the transaction
   * rolls back and the caller is run again against the status that won.
   */
  async function setStatus(tx: Tx, row: ShipmentRow, status: Status, nextStepAt: number | null) {
    const moved = await tx.execute(
      'UPDATE shipments SET status = $1, next_step_at = $2, updated_at = $3 WHERE order_id = $4 AND status = $5',
      [status, nextStepAt, new Date().toISOString(), row.order_id, row.status],
    )
    if (moved !== 1) throw new Error(`shipment of ${row.order_id} left ${row.status} meanwhile`)
  }

  const handlers: Record<string, Handler> = {
    'order.shipment-requested': async (event, tools) => {
      const data = event.data as {
        orderId: string
        shippingAddress: unknown
        lines: unknown
        express: boolean
      }
      await tools.transact(async (tx, emit) => {
        if (await shipment(tx, data.orderId)) return
        const shipmentId = `shp_${data.orderId}`
        const carrier = data.express ? 'express-courier' : 'standard-post'
        const trackingNumber = `TRK${createHash('sha256').update(shipmentId).digest('hex').slice(0, 16).toUpperCase()}`
        await tx.execute(
          `INSERT INTO shipments (order_id, shipment_id, carrier, tracking_number, status, address, lines, updated_at, cause)
           VALUES ($1, $2, $3, $4, 'scheduled', $5, $6, $7, $8)`,
          [
            data.orderId,
            shipmentId,
            carrier,
            trackingNumber,
            JSON.stringify(data.shippingAddress),
            JSON.stringify(data.lines),
            new Date().toISOString(),
            storedCause(event),
          ],
        )
        emit({
          type: 'shipment.scheduled',
          subject: data.orderId,
          data: { orderId: data.orderId, shipmentId, carrier, trackingNumber },
        })
      })
    },

    'order.confirmed': async (event, tools) => {
      const { orderId } = event.data as { orderId: string }
      await tools.transact(async (tx) => {
        const row = await shipment(tx, orderId)
        if (row?.status === 'scheduled') await setStatus(tx, row, 'ready', Date.now() + options.carrierStepMs)
      })
    },

    'order.cancelled': async (event, tools) => {
      const { orderId } = event.data as { orderId: string }
      await tools.transact(async (tx, emit) => {
        const row = await shipment(tx, orderId)
        if (row && (row.status === 'scheduled' || row.status === 'ready')) {
          await setStatus(tx, row, 'cancelled', null)
          emit({
            type: 'shipment.cancelled',
            subject: orderId,
            data: { orderId, shipmentId: row.shipment_id },
          })
        }
      })
    },
  }

  await service.consume(sagaConsumers.shipping, handlers)

  // The carrier clock: ready → shipped → delivered, one step every carrierStepMs.
  service.every('carrier clock', sweepIntervalFor(options.carrierStepMs), async () => {
    const due = await service.store.query<{ order_id: string; cause: string | null }>(
      'SELECT order_id, cause FROM shipments WHERE next_step_at IS NOT NULL AND next_step_at <= $1 ORDER BY next_step_at LIMIT 500',
      [Date.now()],
    )
    for (const { order_id, cause } of due) {
      await service.transact(async (tx, emit) => {
        const row = await shipment(tx, order_id)
        if (!row || row.next_step_at === null || Number(row.next_step_at) > Date.now()) return
        const data = { orderId: order_id, shipmentId: row.shipment_id }
        if (row.status === 'ready') {
          await setStatus(tx, row, 'shipped', Date.now() + options.carrierStepMs)
          emit({ type: 'shipment.shipped', subject: order_id, data })
        } else if (row.status === 'shipped') {
          await setStatus(tx, row, 'delivered', null)
          emit({ type: 'shipment.delivered', subject: order_id, data })
        }
      }, causeFrom(cause))
    }
  })

  return { ready: () => service.store.ping(), stop: () => service.stop() }
}
