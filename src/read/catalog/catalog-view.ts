// The product catalog view: products with their availability, and full-text search with
// relevance ranking, prefix matching, filters, category facets, sorting and keyset
// pagination. Embedded: SQLite FTS5 (bm25); distributed: PostgreSQL tsvector with a GIN
// index (ts_rank). Both tokenize without stemming ('unicode61' / 'simple'), so a query
// finds the same products on either engine.
//
// Stock arrives as deltas (restocks and write-offs, reservations, releases, commits) that
// commute, because events of different partitions reach the view in any order.
import { createHash } from 'node:crypto'
import type { SqlValue, Store, Tx } from '../../engines/store/port.ts'
import { MercatoError } from '../../platform/errors.ts'
import type { SqlFold } from '../sql-view.ts'

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
  /** The time of the last event that changed the product (never the wall clock). */
  updatedAt: string
}

export type CatalogSort = 'relevance' | 'price-asc' | 'price-desc' | 'name' | 'newest'

export interface CatalogQuery {
  q?: string
  category?: string
  minPrice?: number
  maxPrice?: number
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

const products = (g: number) => `catalog_g${g}_products`
const reservations = (g: number) => `catalog_g${g}_reservations`
const fts = (g: number) => `catalog_g${g}_fts`

export const catalogFold: SqlFold = {
  createSql(kind, g) {
    const common = [
      `CREATE TABLE IF NOT EXISTS ${reservations(g)} (reservation_id TEXT PRIMARY KEY, lines TEXT NOT NULL)`,
      `CREATE INDEX IF NOT EXISTS ${products(g)}_category ON ${products(g)} (category, price_minor)`,
      `CREATE INDEX IF NOT EXISTS ${products(g)}_price ON ${products(g)} (price_minor, sku)`,
      `CREATE INDEX IF NOT EXISTS ${products(g)}_name ON ${products(g)} (name, sku)`,
      `CREATE INDEX IF NOT EXISTS ${products(g)}_newest ON ${products(g)} (updated_at, sku)`,
    ]
    const columns = `sku TEXT NOT NULL UNIQUE, listed INTEGER NOT NULL DEFAULT 0,
      name TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '', category TEXT NOT NULL DEFAULT '',
      price_minor BIGINT NOT NULL DEFAULT 0, currency TEXT NOT NULL DEFAULT '',
      on_hand BIGINT NOT NULL DEFAULT 0, available BIGINT NOT NULL DEFAULT 0, updated_at TEXT NOT NULL DEFAULT ''`
    if (kind === 'sqlite') {
      return [
        `CREATE TABLE IF NOT EXISTS ${products(g)} (id INTEGER PRIMARY KEY, ${columns})`,
        `CREATE VIRTUAL TABLE IF NOT EXISTS ${fts(g)} USING fts5(name, category, description,
          tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')`,
        ...common,
      ]
    }
    return [
      `CREATE TABLE IF NOT EXISTS ${products(g)} (${columns}, document tsvector)`,
      `CREATE INDEX IF NOT EXISTS ${products(g)}_document ON ${products(g)} USING GIN (document)`,
      ...common,
    ]
  },
  tables: (g) => [fts(g), reservations(g), products(g)],
  async apply(tx, kind, g, { event }, changed) {
    const d = event.data as Record<string, any>
    switch (event.type) {
      case 'product.upserted':
        await upsertProduct(tx, kind, g, d, event.time)
        changed.add(productCacheKey(d.sku))
        return
      case 'inventory.adjusted':
        await addStock(tx, kind, g, d.sku, { onHand: d.delta, available: d.delta }, event.time)
        changed.add(productCacheKey(d.sku))
        return
      case 'inventory.reserved':
        await tx.execute(
          `INSERT INTO ${reservations(g)} (reservation_id, lines) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
          [d.reservationId, JSON.stringify(d.lines)],
        )
        for (const line of d.lines) {
          await addStock(tx, kind, g, line.sku, { onHand: 0, available: -line.quantity }, event.time)
          changed.add(productCacheKey(line.sku))
        }
        return
      case 'inventory.released':
      case 'inventory.committed': {
        const [row] = await tx.query<{ lines: string }>(
          `DELETE FROM ${reservations(g)} WHERE reservation_id = $1 RETURNING lines`,
          [d.reservationId],
        )
        if (!row) return
        const released = event.type === 'inventory.released'
        for (const line of JSON.parse(row.lines) as { sku: string; quantity: number }[]) {
          await addStock(
            tx,
            kind,
            g,
            line.sku,
            released ? { onHand: 0, available: line.quantity } : { onHand: -line.quantity, available: 0 },
            event.time,
          )
          changed.add(productCacheKey(line.sku))
        }
        return
      }
    }
  },
  async dump(store, g) {
    const rows = await store.query<ProductRow>(`SELECT ${productColumns} FROM ${products(g)} WHERE listed = 1 ORDER BY sku`)
    return rows.map(toDoc)
  },
}

/** The later of the stored and the new update time (events arrive in any order across partitions). */
const later = (kind: Store['kind'], table: string) =>
  `${kind === 'sqlite' ? 'MAX' : 'GREATEST'}(${table}.updated_at, excluded.updated_at)`

async function upsertProduct(tx: Tx, kind: Store['kind'], g: number, d: Record<string, any>, time: string) {
  const t = products(g)
  const document =
    "setweight(to_tsvector('simple', $2), 'A') || setweight(to_tsvector('simple', $4), 'B') || setweight(to_tsvector('simple', $3), 'C')"
  await tx.execute(
    `INSERT INTO ${t} (sku, listed, name, description, category, price_minor, currency, updated_at${kind === 'postgres' ? ', document' : ''})
     VALUES ($1, 1, $2, $3, $4, $5, $6, $7${kind === 'postgres' ? `, ${document}` : ''})
     ON CONFLICT (sku) DO UPDATE SET listed = 1, name = excluded.name, description = excluded.description,
       category = excluded.category, price_minor = excluded.price_minor, currency = excluded.currency,
       updated_at = ${later(kind, t)}${kind === 'postgres' ? ', document = excluded.document' : ''}`,
    [d.sku, d.name, d.description, d.category, d.priceMinor, d.currency, time],
  )
  if (kind === 'sqlite') {
    const [row] = await tx.query<{ id: number }>(`SELECT id FROM ${t} WHERE sku = $1`, [d.sku])
    await tx.execute(`DELETE FROM ${fts(g)} WHERE rowid = $1`, [row.id])
    await tx.execute(`INSERT INTO ${fts(g)} (rowid, name, category, description) VALUES ($1, $2, $3, $4)`, [
      row.id,
      d.name,
      d.category,
      d.description,
    ])
  }
}

async function addStock(
  tx: Tx,
  kind: Store['kind'],
  g: number,
  sku: string,
  delta: { onHand: number; available: number },
  time: string,
) {
  const t = products(g)
  await tx.execute(
    `INSERT INTO ${t} (sku, on_hand, available, updated_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (sku) DO UPDATE SET on_hand = ${t}.on_hand + excluded.on_hand,
       available = ${t}.available + excluded.available,
       updated_at = ${later(kind, t)}`,
    [sku, delta.onHand, delta.available, time],
  )
}

interface ProductRow {
  sku: string
  name: string
  description: string
  category: string
  price_minor: number
  currency: string
  on_hand: number
  available: number
  updated_at: string
}

const productColumns = 'sku, name, description, category, price_minor, currency, on_hand, available, updated_at'

function toDoc(row: ProductRow): ProductDoc {
  const available = Math.max(0, Number(row.available))
  return {
    sku: row.sku,
    name: row.name,
    description: row.description,
    category: row.category,
    priceMinor: Number(row.price_minor),
    currency: row.currency,
    onHand: Math.max(0, Number(row.on_hand)),
    available,
    inStock: available > 0,
    updatedAt: row.updated_at,
  }
}

export async function getProduct(store: Store, g: number, sku: string): Promise<ProductDoc | undefined> {
  const [row] = await store.query<ProductRow>(
    `SELECT ${productColumns} FROM ${products(g)} WHERE sku = $1 AND listed = 1`,
    [sku],
  )
  return row ? toDoc(row) : undefined
}

/** The words of a query: letters and digits only, so no search syntax ever reaches the engine. */
function wordsOf(q: string | undefined): string[] {
  return (q?.toLowerCase().normalize('NFKC').match(/[\p{L}\p{N}]+/gu) ?? []).slice(0, 8).map((w) => w.slice(0, 64))
}

interface SortSpec {
  column: string
  descending: boolean
}

const sorts: Record<CatalogSort, SortSpec> = {
  relevance: { column: 'score', descending: true },
  'price-asc': { column: 'price_minor', descending: false },
  'price-desc': { column: 'price_minor', descending: true },
  name: { column: 'name', descending: false },
  newest: { column: 'updated_at', descending: true },
}

export async function searchCatalog(store: Store, g: number, query: CatalogQuery): Promise<CatalogPage> {
  const words = wordsOf(query.q)
  const sortName: CatalogSort = query.sort ?? (words.length > 0 ? 'relevance' : 'name')
  const sort = sorts[sortName]
  const fingerprint = createHash('sha1')
    .update(JSON.stringify([words, query.category, query.minPrice, query.maxPrice, query.inStock, sortName]))
    .digest('base64url')
    .slice(0, 12)
  const after = query.cursor === undefined ? undefined : cursorOf(query.cursor, fingerprint)

  const params: SqlValue[] = []
  const param = (value: SqlValue) => {
    params.push(value)
    return `$${params.length}`
  }
  // The matching products with their score, before the filters.
  let matches: string
  if (words.length === 0) {
    matches = `SELECT ${productColumns}, 0 AS score FROM ${products(g)} WHERE listed = 1`
  } else if (store.kind === 'sqlite') {
    const match = param(words.map((w) => `"${w}"*`).join(' '))
    matches = `SELECT p.sku, p.name, p.description, p.category, p.price_minor, p.currency, p.on_hand, p.available,
        p.updated_at, -bm25(${fts(g)}, 10.0, 3.0, 1.0) AS score
      FROM ${fts(g)} JOIN ${products(g)} p ON p.id = ${fts(g)}.rowid WHERE ${fts(g)} MATCH ${match} AND p.listed = 1`
  } else {
    const tsquery = `to_tsquery('simple', ${param(words.map((w) => `${w}:*`).join(' & '))})`
    matches = `SELECT ${productColumns}, ts_rank(document, ${tsquery})::float8 AS score
      FROM ${products(g)} WHERE listed = 1 AND document @@ ${tsquery}`
  }
  const filters: string[] = []
  if (query.minPrice !== undefined) filters.push(`price_minor >= ${param(query.minPrice)}`)
  if (query.maxPrice !== undefined) filters.push(`price_minor <= ${param(query.maxPrice)}`)
  if (query.inStock !== undefined) filters.push(query.inStock ? 'available > 0' : 'available <= 0')
  const facetWhere = filters.length > 0 ? `WHERE ${filters.join(' AND ')}` : ''
  const facetParams = [...params]
  if (query.category !== undefined) filters.push(`category = ${param(query.category)}`)
  const where = filters.length > 0 ? `WHERE ${filters.join(' AND ')}` : ''
  const totalParams = [...params]

  const collate = store.kind === 'postgres' && sort.column === 'name' ? ' COLLATE "C"' : ''
  const skuCollate = store.kind === 'postgres' ? ' COLLATE "C"' : ''
  const pageFilters = [...filters]
  if (after) {
    const key = param(after.key)
    const sku = param(after.sku)
    pageFilters.push(
      `(${sort.column}${collate} ${sort.descending ? '<' : '>'} ${key}${collate} OR (${sort.column} = ${key} AND sku${skuCollate} > ${sku}${skuCollate}))`,
    )
  }
  const limit = param(query.limit + 1)
  const pageSql = `SELECT * FROM (${matches}) m ${pageFilters.length > 0 ? `WHERE ${pageFilters.join(' AND ')}` : ''}
    ORDER BY ${sort.column}${collate} ${sort.descending ? 'DESC' : 'ASC'}, sku${skuCollate} ASC LIMIT ${limit}`

  const [rows, [count], facetRows] = await Promise.all([
    store.query<ProductRow & { score: number }>(pageSql, params),
    store.query<{ total: number }>(`SELECT COUNT(*) AS total FROM (${matches}) m ${where}`, totalParams),
    store.query<{ category: string; count: number }>(
      `SELECT category, COUNT(*) AS count FROM (${matches}) m ${facetWhere} GROUP BY category`,
      facetParams,
    ),
  ])
  const page = rows.slice(0, query.limit)
  const last = page.at(-1)
  const keyOf = (row: ProductRow & { score: number }) => {
    const value = row[sort.column as keyof typeof row]
    return typeof value === 'string' ? value : Number(value)
  }
  return {
    items: page.map(toDoc),
    total: Number(count?.total ?? 0),
    facets: {
      category: facetRows
        .map((r) => ({ value: r.category, count: Number(r.count) }))
        .sort((a, b) => b.count - a.count || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0)),
    },
    nextCursor:
      rows.length > query.limit && last
        ? Buffer.from(JSON.stringify({ k: keyOf(last), s: last.sku, f: fingerprint })).toString('base64url')
        : null,
  }
}

function cursorOf(cursor: string, fingerprint: string): { key: string | number; sku: string } {
  try {
    const parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString())
    if (
      parsed.f === fingerprint &&
      typeof parsed.s === 'string' &&
      (typeof parsed.k === 'string' || typeof parsed.k === 'number')
    )
      return { key: parsed.k, sku: parsed.s }
  } catch {}
  throw new MercatoError('invalid-cursor', 400, 'cursor is not one this search gave (a cursor belongs to its query)', {
    errors: [{ in: 'querystring', field: '/cursor', message: 'is not a cursor of this search' }],
  })
}
