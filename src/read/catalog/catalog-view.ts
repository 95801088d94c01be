// The product catalog: one document per product, its description from the products topic
// and its stock from the inventory topic, searchable by text with filters, facets and
// keyset pages (search.ts).
//
// Events of the two topics, and of different partitions of each, interleave in any order,
// so stock is kept as commutative deltas: an adjustment adds its delta to on hand and
// available; a reservation takes its lines from available (and remembers them, since its
// release or commit names only the reservation); a commit takes them from on hand; a
// release gives them back to available, and to on hand too if they had been committed.
// A reservation's own events share a key, so they come in order.
// updatedAt is the latest event time that touched the product, listedAt the earliest
// product.upserted time (what `newest` sorts by: stock changes leave it), both order-independent.
import type { Store, Tx } from '../../engines/store/port.ts'
import type { SqlFold } from '../sql-view.ts'
import {
  adjustmentCacheKey,
  allAdjustments,
  recordAdjustmentOutcome,
  recordAdjustmentRequest,
} from './adjustments.ts'
import {
  catalogCreateSql,
  catalogTables,
  categoriesTable,
  descriptionsTable,
  docColumns,
  docOf,
  ftsTable,
  type ProductRow,
  productsTable,
  reservationsTable,
} from './tables.ts'
import { indexTextOf, nameKeyOf, tsVectorOf } from './text.ts'

export { searchCatalog } from './search.ts'

export interface ProductDoc {
  sku: string
  name: string
  description: string
  category: string
  priceMinor: number
  currency: string
  onHand: number
  available: number
  inStock: boolean
  /** The time of the last event that changed the product (its `time`), never the wall clock. */
  updatedAt: string
  /** The time of the product's first product.upserted event: when it was listed. */
  listedAt: string
}

export type CatalogSort = 'relevance' | 'price-asc' | 'price-desc' | 'name' | 'newest'

export interface CatalogQuery {
  q?: string
  category?: string
  /** Prices are minor units of their own currency: a range or a price sort means one currency. */
  minPrice?: number
  maxPrice?: number
  currency?: string
  inStock?: boolean
  sort?: CatalogSort
  cursor?: string
  limit: number
}

export interface CatalogPage {
  items: ProductDoc[]
  total: number
  facets: { category: { value: string; count: number }[] }
  nextCursor: string | null
}

export function productCacheKey(sku: string): string {
  return `product:${sku}`
}

interface ProductData {
  sku: string
  name: string
  description: string
  category: string
  priceMinor: number
  currency: string
}

interface Line {
  sku: string
  quantity: number
}

export const catalogFold: SqlFold = {
  // A restock or write-off changes the product's stock, or is refused.
  awaits: ['inventory.adjustment-requested'],
  createSql: catalogCreateSql,
  tables: catalogTables,
  async apply(tx, kind, g, { event }, changed) {
    const data = event.data as Record<string, unknown>
    const time = isoTime(event.time)
    switch (event.type) {
      case 'product.upserted': {
        const product = data as unknown as ProductData
        await upsertProduct(tx, kind, g, product, time)
        changed.add(productCacheKey(product.sku))
        return
      }
      case 'inventory.adjustment-requested': {
        const request = data as { sku: string; delta: number; reason: string }
        await recordAdjustmentRequest(tx, g, event.id, request, time)
        changed.add(adjustmentCacheKey(request.sku, event.id))
        return
      }
      case 'inventory.adjusted': {
        const { sku, delta } = data as { sku: string; delta: number }
        await addStock(tx, g, sku, delta, delta, time)
        changed.add(productCacheKey(sku))
        if (event.causationid !== event.id) {
          await recordAdjustmentOutcome(tx, g, event.causationid, 'applied', null, time)
          changed.add(adjustmentCacheKey(sku, event.causationid))
        }
        return
      }
      case 'inventory.adjustment-rejected': {
        const { sku, reason } = data as { sku: string; reason: string }
        if (event.causationid === event.id) return
        await recordAdjustmentOutcome(tx, g, event.causationid, 'refused', reason, time)
        changed.add(adjustmentCacheKey(sku, event.causationid))
        return
      }
      case 'inventory.reserved': {
        const { reservationId, lines } = data as { reservationId: string; lines: Line[] }
        const R = reservationsTable(g)
        const known = await tx.query(`SELECT 1 AS known FROM ${R} WHERE reservation_id = $1 LIMIT 1`, [
          reservationId,
        ])
        if (known.length > 0) return
        for (const [sku, quantity] of mergedLines(lines)) {
          await tx.execute(`INSERT INTO ${R} (reservation_id, sku, quantity) VALUES ($1, $2, $3)`, [
            reservationId,
            sku,
            quantity,
          ])
          await addStock(tx, g, sku, 0, -quantity, time)
          changed.add(productCacheKey(sku))
        }
        return
      }
      case 'inventory.committed': {
        // A second commit finds no line left to commit.
        const { reservationId } = data as { reservationId: string }
        const R = reservationsTable(g)
        for (const line of await reservedLines(tx, R, reservationId)) {
          if (line.committed) continue
          await addStock(tx, g, line.sku, -line.quantity, 0, time)
          changed.add(productCacheKey(line.sku))
        }
        await tx.execute(`UPDATE ${R} SET committed = 1 WHERE reservation_id = $1`, [reservationId])
        return
      }
      case 'inventory.released': {
        // The reservation is over: its lines go back, and it is forgotten (a second release
        // finds nothing).
        const { reservationId } = data as { reservationId: string }
        const R = reservationsTable(g)
        const lines = await reservedLines(tx, R, reservationId)
        for (const line of lines) {
          await addStock(tx, g, line.sku, line.committed ? line.quantity : 0, line.quantity, time)
          changed.add(productCacheKey(line.sku))
        }
        if (lines.length > 0) await tx.execute(`DELETE FROM ${R} WHERE reservation_id = $1`, [reservationId])
        return
      }
    }
  },
  async dump(store, g) {
    const rows = await store.query<ProductRow>(
      `SELECT ${docColumns}, d.description FROM ${productsTable(g)} p JOIN ${descriptionsTable(g)} d ON d.sku = p.sku
       WHERE p.category IS NOT NULL ORDER BY p.sku`,
    )
    return [...rows.map(docOf), ...(await allAdjustments(store, g))]
  },
}

async function reservedLines(
  tx: Tx,
  table: string,
  reservationId: string,
): Promise<{ sku: string; quantity: number; committed: boolean }[]> {
  const rows = await tx.query<{ sku: string; quantity: number | bigint; committed: number | bigint }>(
    `SELECT sku, quantity, committed FROM ${table} WHERE reservation_id = $1 ORDER BY sku`,
    [reservationId],
  )
  return rows.map((row) => ({
    sku: row.sku,
    quantity: Number(row.quantity),
    committed: Number(row.committed) === 1,
  }))
}

export async function getProduct(
  store: Store,
  generation: number,
  sku: string,
): Promise<ProductDoc | undefined> {
  const [row] = await store.query<ProductRow>(
    `SELECT ${docColumns}, d.description FROM ${productsTable(generation)} p
     JOIN ${descriptionsTable(generation)} d ON d.sku = p.sku WHERE p.sku = $1 AND p.category IS NOT NULL`,
    [sku],
  )
  return row ? docOf(row) : undefined
}

/** The event's time in one form (ISO, UTC, milliseconds), so times compare as text. */
function isoTime(time: string): string {
  const ms = Date.parse(time)
  return Number.isNaN(ms) ? time : new Date(ms).toISOString()
}

/** A reservation's quantity per SKU (a SKU may be on several lines), by SKU. */
function mergedLines(lines: Line[]): [string, number][] {
  const bySku = new Map<string, number>()
  for (const { sku, quantity } of lines) bySku.set(sku, (bySku.get(sku) ?? 0) + quantity)
  return [...bySku].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

/** Of the stored time in `column` and the event's, the later (`>`) or the earlier (`<`). */
const keptTime = (P: string, column: string, keep: '>' | '<') =>
  `CASE WHEN ${P}.${column} IS NULL OR excluded.${column} ${keep} ${P}.${column} THEN excluded.${column} ELSE ${P}.${column} END`

async function addStock(tx: Tx, g: number, sku: string, onHand: number, available: number, time: string) {
  const P = productsTable(g)
  const [row] = await tx.query<{ category: string | null; available: number | bigint }>(
    `INSERT INTO ${P} (sku, on_hand, available, updated_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (sku) DO UPDATE SET on_hand = ${P}.on_hand + excluded.on_hand,
       available = ${P}.available + excluded.available, updated_at = ${keptTime(P, 'updated_at', '>')}
     RETURNING category, available`,
    [sku, onHand, available, time],
  )
  const after = Number(row.available)
  const before = after - available
  if (row.category !== null && before > 0 !== after > 0) {
    await countCategory(tx, g, row.category, 0, after > 0 ? 1 : -1)
  }
}

/** Adds to a category's count of listed products and of those in stock. */
async function countCategory(tx: Tx, g: number, category: string, listed: number, inStock: number) {
  const C = categoriesTable(g)
  await tx.execute(
    `INSERT INTO ${C} (category, listed, in_stock) VALUES ($1, $2, $3)
     ON CONFLICT (category) DO UPDATE SET listed = ${C}.listed + excluded.listed, in_stock = ${C}.in_stock + excluded.in_stock`,
    [category, listed, inStock],
  )
}

async function upsertProduct(tx: Tx, kind: Store['kind'], g: number, product: ProductData, time: string) {
  const P = productsTable(g)
  const D = descriptionsTable(g)
  const [before] = await tx.query<{
    name: string | null
    category: string | null
    available: number | bigint
    description: string | null
  }>(
    `SELECT p.name, p.category, p.available, d.description FROM ${P} p LEFT JOIN ${D} d ON d.sku = p.sku
     WHERE p.sku = $1`,
    [product.sku],
  )
  const params = [
    product.sku,
    product.name,
    nameKeyOf(product.name),
    product.category,
    product.priceMinor,
    product.currency,
    time,
  ]
  const set = `name = excluded.name, name_key = excluded.name_key, category = excluded.category,
    price_minor = excluded.price_minor, currency = excluded.currency, updated_at = ${keptTime(P, 'updated_at', '>')},
    listed_at = ${keptTime(P, 'listed_at', '<')}`
  let id: number | undefined
  if (kind === 'postgres') {
    const search = tsVectorOf([
      [product.name, 'A'],
      [product.category, 'B'],
      [product.description, 'C'],
    ])
    await tx.execute(
      `INSERT INTO ${P} (sku, name, name_key, category, price_minor, currency, updated_at, listed_at, search)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8::tsvector)
       ON CONFLICT (sku) DO UPDATE SET ${set}, search = excluded.search`,
      [...params, search],
    )
  } else {
    const [row] = await tx.query<{ id: number }>(
      `INSERT INTO ${P} (sku, name, name_key, category, price_minor, currency, updated_at, listed_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
       ON CONFLICT (sku) DO UPDATE SET ${set} RETURNING id`,
      params,
    )
    id = Number(row.id)
  }
  if (before?.description !== product.description) {
    await tx.execute(
      `INSERT INTO ${D} (sku, description) VALUES ($1, $2)
       ON CONFLICT (sku) DO UPDATE SET description = excluded.description`,
      [product.sku, product.description],
    )
  }
  const listed = before?.category != null
  if (before?.category !== product.category) {
    const inStock = before !== undefined && Number(before.available) > 0 ? 1 : 0
    if (listed) await countCategory(tx, g, before.category as string, -1, -inStock)
    await countCategory(tx, g, product.category, 1, inStock)
  }
  if (id === undefined) return
  if (
    listed &&
    before.name === product.name &&
    before.category === product.category &&
    before.description === product.description
  ) {
    return // a new price or currency: the words are as they were
  }
  const F = ftsTable(g)
  if (listed) await tx.execute(`DELETE FROM ${F} WHERE rowid = $1`, [id])
  await tx.execute(`INSERT INTO ${F} (rowid, name, category, description) VALUES ($1, $2, $3, $4)`, [
    id,
    indexTextOf(product.name),
    indexTextOf(product.category),
    indexTextOf(product.description),
  ])
}
