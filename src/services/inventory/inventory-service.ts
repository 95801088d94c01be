// The inventory service: stock per product, and reservations per order. An order reserves
// all its lines or none; a reservation becomes a sale when the order is confirmed, and goes
// back to stock when the order is cancelled or when it expires unconfirmed. The store
// itself refuses negative stock and any row where on-hand is not available + reserved.
import { sagaConsumers } from '../../contracts/events.ts'
import type { Tx } from '../../engines/store/port.ts'
import {
  causeFrom,
  type Emit,
  type Handler,
  type Service,
  storedCause,
  sweepIntervalFor,
} from '../../platform/service.ts'

export const inventoryMigrations = [
  {
    id: 'inventory-0001-stock',
    sql: `CREATE TABLE IF NOT EXISTS stock (
        sku TEXT PRIMARY KEY,
        on_hand BIGINT NOT NULL, available BIGINT NOT NULL, reserved BIGINT NOT NULL,
        CHECK (available >= 0 AND reserved >= 0 AND on_hand = available + reserved));
      CREATE TABLE IF NOT EXISTS reservations (
        order_id TEXT PRIMARY KEY, reservation_id TEXT NOT NULL, lines TEXT NOT NULL,
        status TEXT NOT NULL, expires_at BIGINT NOT NULL, updated_at TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS reservations_held ON reservations (expires_at) WHERE status = 'held'`,
  },
  // The event that asked for the reservation: its expiry's release carries its correlation and trace.
  { id: 'inventory-0002-cause', sql: 'ALTER TABLE reservations ADD COLUMN cause TEXT' },
]

interface Line {
  sku: string
  quantity: number
}

interface ReservationRow {
  order_id: string
  reservation_id: string
  lines: string
  status: 'held' | 'committed' | 'released'
}

type Shortages = { sku: string; requested: number; available: number }[]

/** Lines merged per product and sorted, so concurrent reservations lock rows in one order. */
function merged(lines: Line[]): Line[] {
  const bySku = new Map<string, number>()
  for (const line of lines) bySku.set(line.sku, (bySku.get(line.sku) ?? 0) + line.quantity)
  return [...bySku.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([sku, quantity]) => ({ sku, quantity }))
}

export async function startInventoryService(service: Service, options: { reservationTtlMs: number }) {
  await service.start(inventoryMigrations)

  async function reservation(tx: Tx, orderId: string): Promise<ReservationRow | undefined> {
    const [row] = await tx.query<ReservationRow>('SELECT * FROM reservations WHERE order_id = $1', [orderId])
    return row
  }

  /**
   * Moves a reservation on only from the status its caller saw (the expiry sweeper and an
   * order's answer may race on PostgreSQL); throws otherwise, so the transaction rolls back
   * (stock included) and the caller is run again against the status that won.
   */
  async function setStatus(tx: Tx, row: ReservationRow, status: ReservationRow['status']): Promise<void> {
    const moved = await tx.execute(
      'UPDATE reservations SET status = $1, updated_at = $2 WHERE order_id = $3 AND status = $4',
      [status, new Date().toISOString(), row.order_id, row.status],
    )
    if (moved !== 1) throw new Error(`reservation of ${row.order_id} left ${row.status} meanwhile`)
  }

  /**
   * Takes every line from available stock, or none: resolves with the shortages, having
   * changed nothing, when some line is short. The check reads every line first, so a
   * shortage (routine in a sell-out) leaves no partial update to undo.
   */
  async function take(tx: Tx, lines: Line[], into: 'reserved' | 'sold'): Promise<Shortages> {
    const wanted = merged(lines)
    const rows = await tx.query<{ sku: string; available: number }>(
      `SELECT sku, available FROM stock WHERE sku IN (${wanted.map((_, i) => `$${i + 1}`).join(', ')})`,
      wanted.map((line) => line.sku),
    )
    const available = new Map(rows.map((row) => [row.sku, Number(row.available)]))
    const shortages = wanted
      .filter((line) => (available.get(line.sku) ?? 0) < line.quantity)
      .map((line) => ({ sku: line.sku, requested: line.quantity, available: available.get(line.sku) ?? 0 }))
    if (shortages.length > 0) return shortages
    for (const line of wanted) {
      const changed = await tx.execute(
        into === 'reserved'
          ? 'UPDATE stock SET available = available - $1, reserved = reserved + $1 WHERE sku = $2 AND available >= $1'
          : 'UPDATE stock SET available = available - $1, on_hand = on_hand - $1 WHERE sku = $2 AND available >= $1',
        [line.quantity, line.sku],
      )
      // Another writer took the stock between the read and this update (PostgreSQL, under
      // READ COMMITTED): the transaction fails whole, and its retry reads the stock again.
      if (changed === 0) throw new Error(`stock of ${line.sku} changed while it was taken; trying again`)
    }
    return []
  }

  async function release(
    tx: Tx,
    emit: Emit,
    row: ReservationRow,
    reason: 'compensation' | 'expired',
  ): Promise<void> {
    for (const line of merged(JSON.parse(row.lines))) {
      await tx.execute(
        row.status === 'held'
          ? 'UPDATE stock SET available = available + $1, reserved = reserved - $1 WHERE sku = $2'
          : 'UPDATE stock SET available = available + $1, on_hand = on_hand + $1 WHERE sku = $2',
        [line.quantity, line.sku],
      )
    }
    await setStatus(tx, row, 'released')
    emit({
      type: 'inventory.released',
      subject: row.order_id,
      data: { orderId: row.order_id, reservationId: row.reservation_id, reason },
    })
  }

  const handlers: Record<string, Handler> = {
    'order.placed': async (event, tools) => {
      const { orderId, lines } = event.data as {
        orderId: string
        lines: (Line & { unitPriceMinor: number })[]
      }
      const plain = lines.map(({ sku, quantity }) => ({ sku, quantity }))
      await tools.transact(async (tx, emit) => {
        if (await reservation(tx, orderId)) return
        const shortages = await take(tx, plain, 'reserved')
        if (shortages.length > 0) {
          emit({ type: 'inventory.rejected', subject: orderId, data: { orderId, shortages } })
          return
        }
        const expiresAt = Date.now() + options.reservationTtlMs
        const reservationId = `res_${orderId}`
        await tx.execute(
          `INSERT INTO reservations (order_id, reservation_id, lines, status, expires_at, updated_at, cause)
           VALUES ($1, $2, $3, 'held', $4, $5, $6)`,
          [
            orderId,
            reservationId,
            JSON.stringify(plain),
            expiresAt,
            new Date().toISOString(),
            storedCause(event),
          ],
        )
        emit({
          type: 'inventory.reserved',
          subject: orderId,
          data: { orderId, reservationId, lines: plain, expiresAt: new Date(expiresAt).toISOString() },
        })
      })
    },

    'order.confirmed': async (event, tools) => {
      const { orderId } = event.data as { orderId: string }
      await tools.transact(async (tx, emit) => {
        const row = await reservation(tx, orderId)
        if (!row || row.status === 'committed') return
        if (row.status === 'held') {
          for (const line of merged(JSON.parse(row.lines))) {
            await tx.execute(
              'UPDATE stock SET reserved = reserved - $1, on_hand = on_hand - $1 WHERE sku = $2',
              [line.quantity, line.sku],
            )
          }
        } else {
          // Released on expiry before the confirmation arrived: sell from available stock again.
          const shortages = await take(tx, JSON.parse(row.lines), 'sold')
          if (shortages.length > 0) {
            tx.afterCommit(() => {
              service.log.error({ orderId, shortages }, 'a confirmed order lost its expired reservation')
              service.metrics
                .counter('mercato_inventory_oversold_total', 'Confirmed orders whose stock was gone.')
                .inc()
            })
            return
          }
        }
        await setStatus(tx, row, 'committed')
        emit({
          type: 'inventory.committed',
          subject: orderId,
          data: { orderId, reservationId: row.reservation_id },
        })
      })
    },

    'order.cancelled': async (event, tools) => {
      const { orderId } = event.data as { orderId: string }
      await tools.transact(async (tx, emit) => {
        const row = await reservation(tx, orderId)
        if (row && row.status !== 'released') await release(tx, emit, row, 'compensation')
      })
    },

    'inventory.adjustment-requested': async (event, tools) => {
      const { sku, delta, reason } = event.data as {
        sku: string
        delta: number
        reason: 'restock' | 'write-off'
      }
      await tools.transact(async (tx, emit) => {
        await tx.execute(
          'INSERT INTO stock (sku, on_hand, available, reserved) VALUES ($1, 0, 0, 0) ON CONFLICT (sku) DO NOTHING',
          [sku],
        )
        const changed = await tx.execute(
          'UPDATE stock SET on_hand = on_hand + $1, available = available + $1 WHERE sku = $2 AND available + $1 >= 0',
          [delta, sku],
        )
        const [row] = await tx.query<{ on_hand: number; available: number }>(
          'SELECT on_hand, available FROM stock WHERE sku = $1',
          [sku],
        )
        if (changed === 0) {
          emit({
            type: 'inventory.adjustment-rejected',
            subject: sku,
            data: { sku, delta, reason: `only ${row.available} available to write off` },
          })
          return
        }
        emit({
          type: 'inventory.adjusted',
          subject: sku,
          data: { sku, delta, reason, onHand: Number(row.on_hand), available: Number(row.available) },
        })
      })
    },
  }

  await service.consume(sagaConsumers.inventory, handlers)

  service.every('reservation expiry', sweepIntervalFor(options.reservationTtlMs), async () => {
    const expired = await service.store.query<{ order_id: string; cause: string | null }>(
      "SELECT order_id, cause FROM reservations WHERE status = 'held' AND expires_at < $1 LIMIT 200",
      [Date.now()],
    )
    for (const { order_id, cause } of expired) {
      await service.transact(async (tx, emit) => {
        const row = await reservation(tx, order_id)
        if (row?.status === 'held') await release(tx, emit, row, 'expired')
      }, causeFrom(cause))
    }
  })

  return { ready: () => service.store.ping(), stop: () => service.stop() }
}

/** Stock of every product, for tests and operators: on-hand always equals available + reserved. */
export async function stockLevels(service: Service) {
  return service.store.query<{ sku: string; on_hand: number; available: number; reserved: number }>(
    'SELECT sku, on_hand, available, reserved FROM stock ORDER BY sku',
  )
}
