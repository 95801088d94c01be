// The catalog's tables in one generation, per dialect.
//
// `products`: one row per SKU seen in any event, with what search filters, sorts and
// counts on. Stock events may come before the product's first upsert, so the descriptive
// columns are NULL until then; a product is listed (readable, searchable) once `category`
// is set. The description, the one long text, lives in `descriptions`, so the rows a
// search visits by the thousand stay small. On SQLite an integer `id` names the row in the
// FTS5 table (an INTEGER PRIMARY KEY survives VACUUM, an implicit rowid may not); on
// PostgreSQL a tsvector column holds the words, under a GIN index.
// `categories`: per category, how many products are listed and how many are in stock,
// kept by the fold, so the facets of a search without words and without a price range
// need not count the products.
// `reservations`: the lines of each reservation until it is released, since its release
// or commit carries only the reservation id; `committed` says whether its lines have left
// on hand already (an order cancelled after confirmation releases a committed reservation).
import type { Store } from '../../engines/store/port.ts'
import { adjustmentsCreateSql, adjustmentsTable } from './adjustments.ts'
import type { ProductDoc } from './catalog-view.ts'

function prefix(generation: number): string {
  if (!Number.isSafeInteger(generation) || generation < 0)
    throw new Error(`invalid generation: ${generation}`)
  return `catalog_g${generation}`
}

export const productsTable = (g: number) => `${prefix(g)}_products`
export const descriptionsTable = (g: number) => `${prefix(g)}_descriptions`
export const categoriesTable = (g: number) => `${prefix(g)}_categories`
export const reservationsTable = (g: number) => `${prefix(g)}_reservations`
/** SQLite only: the FTS5 index of name, category and description. */
export const ftsTable = (g: number) => `${prefix(g)}_fts`
/** SQLite only: the covering index a text search looks its matches up in. */
export const lookupIndex = (g: number) => `${prefix(g)}_products_lookup`

export function catalogTables(g: number): string[] {
  return [
    ftsTable(g),
    reservationsTable(g),
    categoriesTable(g),
    descriptionsTable(g),
    productsTable(g),
    adjustmentsTable(g),
  ]
}

export function catalogCreateSql(kind: Store['kind'], g: number): string[] {
  const P = productsTable(g)
  // PostgreSQL sorts text by the "C" collation, as SQLite's BINARY: by code point, the
  // same on every server, so both engines page in the same order.
  const c = kind === 'postgres' ? ' COLLATE "C"' : ''
  const int = kind === 'postgres' ? 'BIGINT' : 'INTEGER'
  const key =
    kind === 'postgres' ? `sku TEXT${c} PRIMARY KEY,` : 'id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE,'
  const statements = [
    `CREATE TABLE IF NOT EXISTS ${P} (${key} name TEXT, name_key TEXT${c}, category TEXT${c},
      price_minor ${int}, currency TEXT, on_hand ${int} NOT NULL DEFAULT 0, available ${int} NOT NULL DEFAULT 0,
      updated_at TEXT${c}, listed_at TEXT${c}${kind === 'postgres' ? ', search tsvector' : ''})`,
    `CREATE TABLE IF NOT EXISTS ${descriptionsTable(g)} (sku TEXT${c} PRIMARY KEY, description TEXT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS ${categoriesTable(g)} (category TEXT${c} PRIMARY KEY,
      listed ${int} NOT NULL, in_stock ${int} NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS ${reservationsTable(g)} (reservation_id TEXT NOT NULL, sku TEXT NOT NULL,
      quantity ${int} NOT NULL, committed ${int} NOT NULL DEFAULT 0, PRIMARY KEY (reservation_id, sku))`,
    adjustmentsCreateSql(kind, g),
    // One index per sort, with and without the category filter, each ending in the SKU
    // tie-break, so a page is a range read from the cursor on.
    `CREATE INDEX IF NOT EXISTS ${P}_name ON ${P} (name_key, sku)`,
    `CREATE INDEX IF NOT EXISTS ${P}_price ON ${P} (price_minor, sku)`,
    `CREATE INDEX IF NOT EXISTS ${P}_price_desc ON ${P} (price_minor DESC, sku)`,
    `CREATE INDEX IF NOT EXISTS ${P}_newest ON ${P} (listed_at DESC, sku)`,
    `CREATE INDEX IF NOT EXISTS ${P}_category_name ON ${P} (category, name_key, sku)`,
    `CREATE INDEX IF NOT EXISTS ${P}_category_price ON ${P} (category, price_minor, sku)`,
    `CREATE INDEX IF NOT EXISTS ${P}_category_price_desc ON ${P} (category, price_minor DESC, sku)`,
    `CREATE INDEX IF NOT EXISTS ${P}_category_newest ON ${P} (category, listed_at DESC, sku)`,
    // Facet counts of a price range or currency (without words) read this index alone, per category.
    `CREATE INDEX IF NOT EXISTS ${P}_facets ON ${P} (category, price_minor, available, currency)`,
  ]
  if (kind === 'postgres') {
    statements.push(`CREATE INDEX IF NOT EXISTS ${P}_search ON ${P} USING GIN (search)`)
  } else {
    // What a text search reads of each match, by id: a look-up in this narrow index
    // touches far fewer pages than one in the table (search.ts names it: INDEXED BY).
    statements.push(
      `CREATE INDEX IF NOT EXISTS ${lookupIndex(g)} ON ${P} (id, sku, category, price_minor, available, currency)`,
    )
    // Contentless: the words live in the index only (the text is in the tables);
    // contentless_delete lets a re-upsert delete a row by id. The text indexed is already
    // words (text.ts), which 'ascii' splits on spaces only. Prefix indexes of 2 and 3
    // characters make the short prefixes a shopper types first cheap.
    statements.push(
      `CREATE VIRTUAL TABLE IF NOT EXISTS ${ftsTable(g)} USING fts5(name, category, description,
        content='', contentless_delete=1, tokenize='ascii', prefix='2 3')`,
    )
  }
  return statements
}

/** The product columns a document is read from (with `d.description` of `descriptions` d). */
export const docColumns =
  'p.sku, p.name, p.category, p.price_minor, p.currency, p.on_hand, p.available, p.updated_at, p.listed_at'

export interface ProductRow {
  sku: string
  name: string
  description: string
  category: string
  price_minor: number | bigint
  currency: string
  on_hand: number | bigint
  available: number | bigint
  updated_at: string
  listed_at: string
}

export function docOf(row: ProductRow): ProductDoc {
  const available = Number(row.available)
  return {
    sku: row.sku,
    name: row.name,
    description: row.description,
    category: row.category,
    priceMinor: Number(row.price_minor),
    currency: row.currency,
    onHand: Math.max(0, Number(row.on_hand)),
    available: Math.max(0, available),
    inStock: available > 0,
    updatedAt: row.updated_at,
    listedAt: row.listed_at,
  }
}
