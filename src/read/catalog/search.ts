// Catalog search: text (every word a prefix, all required), filters, category facets,
// sorting and keyset pages, in two queries: the page, and the facet counts (from which
// the total follows, so no third count is run).
//
// Text: embedded, an FTS5 index ranked by bm25 with the name weighted 10, the category 4,
// the description 1; distributed, a tsvector (name A, category B, description C) under a
// GIN index, ranked by ts_rank. On both, names that hold more words of the query come
// first, however long the description, and of those, names that hold more of them whole. Both index the words of text.ts, so both engines find the
// same products. A score is rounded to an integer (×1e9) in SQL: a page's last score is
// carried in the cursor as that integer, and the next page starts strictly after
// (score, sku), so paging never repeats or skips a product, ties included.
//
// Facets count the matches of the text, price and stock filters but not the category
// filter, so a shopper in one category still sees how many the others hold; the total,
// which counts all the filters, is then the facet of the chosen category (or their sum).
import type { SqlValue, Store } from '../../engines/store/port.ts'
import type { CatalogPage, CatalogQuery, CatalogSort } from './catalog-view.ts'
import { type After, type CursorKey, decodeCursor, encodeCursor, fingerprintOf } from './cursor.ts'
import {
  categoriesTable,
  descriptionsTable,
  docColumns,
  docOf,
  ftsTable,
  lookupIndex,
  type ProductRow,
  productsTable,
} from './tables.ts'
import { compareCodePoints, ftsMatchOf, type QueryTerm, queryTermsOf, tsQueryOf } from './text.ts'

interface SortSpec {
  /** The key column of `products` (or the score, computed). */
  column: 'score' | 'price_minor' | 'name_key' | 'listed_at'
  descending: boolean
  keyType: 'number' | 'string'
}

const sorts: Record<CatalogSort, SortSpec> = {
  relevance: { column: 'score', descending: true, keyType: 'number' },
  'price-asc': { column: 'price_minor', descending: false, keyType: 'number' },
  'price-desc': { column: 'price_minor', descending: true, keyType: 'number' },
  name: { column: 'name_key', descending: false, keyType: 'string' },
  newest: { column: 'listed_at', descending: true, keyType: 'string' },
}

const scoreScale = 1e9
/**
 * Added to the score of a product for each word of the query its name holds: FTS5's bm25
 * divides by the length of the whole row (not of each column), and ts_rank adds up every
 * match, so a long description would otherwise rank a name that holds the words below names
 * that hold fewer of them, or none. bm25 and ts_rank scores stay far below it.
 */
const nameMatchBonus = 100_000
/**
 * Added for each word of the query its name holds whole, not only as the start of a longer
 * word: among names that hold as many of the words, "Cup" comes before "Cupboard" for `cup`.
 * The 16 words of the longest query add up to less than one more word in the name, and every
 * bonus together stays below 2^53 once scaled.
 */
const wholeWordBonus = 1_000

/**
 * A match's score on SQLite: bm25 with the name weighted 10, the category 4, the description
 * 1 (the FTS5 table's column order), above every match whose name holds fewer of the words;
 * rounded to an integer so a cursor can carry it exactly. One word is in the name when bm25
 * over the name alone is below zero; of several, each is looked up in the name column once
 * for the whole query (a look-up per matched row costs far more).
 */
function ftsScore(sql: Sql, F: string, terms: QueryTerm[]): string {
  const inName = (term: QueryTerm) =>
    `(rowid IN (SELECT rowid FROM ${F} WHERE ${F} MATCH ${sql.param(`name : ${ftsMatchOf([term])}`)}))`
  const inNameAtAll = terms.length === 1 ? `(bm25(${F}, 1.0, 0.0, 0.0) < 0)` : terms.map(inName).join(' + ')
  const inNameWhole = terms.map((term) => inName({ ...term, prefix: false })).join(' + ')
  return `CAST(round((-bm25(${F}, 10.0, 4.0, 1.0) + (${inNameAtAll}) * ${nameMatchBonus} + (${inNameWhole}) * ${wholeWordBonus}) * ${scoreScale}) AS INTEGER)`
}

type Row = ProductRow & { name_key: string; score?: number | bigint }

export async function searchCatalog(
  store: Store,
  generation: number,
  query: CatalogQuery,
): Promise<CatalogPage> {
  const terms = queryTermsOf(query.q)
  // Words are what a search matches: a q of symbols alone (☕, "(") matches nothing, rather
  // than being taken for no q at all.
  if (terms.length === 0 && query.q !== undefined && query.q.trim() !== '')
    return { items: [], total: 0, facets: { category: [] }, nextCursor: null }
  const sortName: CatalogSort =
    query.sort === undefined || (query.sort === 'relevance' && terms.length === 0)
      ? terms.length > 0
        ? 'relevance'
        : 'name'
      : query.sort
  const sort = sorts[sortName]
  const fingerprint = fingerprintOf([
    terms.map(({ word, prefix }) => (prefix ? `${word}*` : word)),
    query.category ?? null,
    query.minPrice ?? null,
    query.maxPrice ?? null,
    query.currency ?? null,
    query.inStock ?? null,
    sortName,
  ])
  let after = query.cursor === undefined ? undefined : decodeCursor(query.cursor, fingerprint, sort.keyType)
  const tables = {
    P: productsTable(generation),
    D: descriptionsTable(generation),
    C: categoriesTable(generation),
    F: ftsTable(generation),
    L: lookupIndex(generation),
  }
  const text =
    terms.length === 0 ? undefined : store.kind === 'postgres' ? tsQueryOf(terms) : ftsMatchOf(terms)
  // bm25 moves with the whole catalog (how many products, how long they are): a page's
  // last score, carried in the cursor, may no longer be its product's score. The next page
  // starts after what that product scores now, so the catalog's changing beneath the pages
  // moves them all alike. (A change to that product itself, or one that makes two products
  // trade places, may still repeat or skip a product at the page's edge.)
  if (after && sortName === 'relevance' && store.kind === 'sqlite' && text !== undefined)
    after = { ...after, key: (await currentScore(store, tables, text, terms, after.sku)) ?? after.key }
  const page = pageSql(store.kind, tables, query, text, terms, sortName, after)
  const facets = facetSql(store.kind, tables, query, text)

  const [rows, facetRows] = await Promise.all([
    store.query<Row>(page.text, page.params),
    store.query<{ value: string; count: number | bigint }>(facets.text, facets.params),
  ])
  const category = facetRows
    .map((r) => ({ value: r.value, count: Number(r.count) }))
    .filter((f) => f.count > 0)
    .sort((a, b) => b.count - a.count || compareCodePoints(a.value, b.value))
  const total =
    query.category === undefined
      ? category.reduce((sum, f) => sum + f.count, 0)
      : (category.find((f) => f.value === query.category)?.count ?? 0)
  const items = rows.slice(0, query.limit)
  const last = items.at(-1)
  return {
    items: items.map(docOf),
    total,
    facets: { category },
    nextCursor:
      rows.length > query.limit && last
        ? encodeCursor(fingerprint, { key: keyOf(last, sortName), sku: last.sku })
        : null,
  }
}

interface Tables {
  P: string
  D: string
  C: string
  F: string
  L: string
}

/** A product's score for the words now; undefined when it matches them no more. */
async function currentScore(
  store: Store,
  { P, F }: Tables,
  text: string,
  terms: QueryTerm[],
  sku: string,
): Promise<number | undefined> {
  const sql = newSql()
  sql.text = `SELECT ${ftsScore(sql, F, terms)} AS score FROM ${F} WHERE ${F} MATCH ${sql.param(text)}
    AND rowid = (SELECT id FROM ${P} WHERE sku = ${sql.param(sku)})`
  const [row] = await store.query<{ score: number | bigint }>(sql.text, sql.params)
  return row === undefined ? undefined : Number(row.score)
}

/** One page of products (one more than asked, to know whether another follows), in order. */
function pageSql(
  kind: Store['kind'],
  { P, D, F, L }: Tables,
  query: CatalogQuery,
  text: string | undefined,
  terms: QueryTerm[],
  sortName: CatalogSort,
  after: After | undefined,
): Sql {
  const sql = newSql()
  const sort = sorts[sortName]
  // Without words, a page sorted by name or time is read along that sort's index, the
  // price range checked on the way; on SQLite (which keeps no statistics here) the unary
  // plus keeps the planner from taking the price index instead and sorting its whole range.
  const price =
    kind === 'sqlite' && text === undefined && sort.column !== 'price_minor' ? '+p.price_minor' : undefined
  const where = ['p.category IS NOT NULL', ...filters(sql, query, price)]
  if (query.category !== undefined) {
    // No category holds a NUL (PostgreSQL text cannot): such a filter matches nothing.
    where.push(query.category.includes('\0') ? '1 = 0' : `p.category = ${sql.param(query.category)}`)
  }
  let from = `${P} p`
  let key = `p.${sort.column}`
  if (text !== undefined && kind === 'postgres') {
    const tsquery = `${sql.param(text)}::tsquery`
    where.push(`p.search @@ ${tsquery}`)
    if (sortName === 'relevance') {
      // ts_rank adds up every matching word, so words repeated in a description can outweigh
      // the name: as on SQLite, each word of the query found in the name comes first.
      const inName = (term: QueryTerm) =>
        `(ts_filter(p.search, '{a}') @@ ${sql.param(tsQueryOf([term]))}::tsquery)::int`
      const atAll = terms.map(inName).join(' + ')
      const whole = terms.map((term) => inName({ ...term, prefix: false })).join(' + ')
      key = `round((ts_rank(p.search, ${tsquery}) + (${atAll}) * ${nameMatchBonus} + (${whole}) * ${wholeWordBonus})::float8 * ${scoreScale})::bigint`
    }
  } else if (text !== undefined) {
    // The matches drive: each is one look-up of its product by id, in the narrow
    // covering index unless the sort needs a column only the table holds.
    const score = sortName === 'relevance' ? `, ${ftsScore(sql, F, terms)} AS score` : ''
    const narrow = sort.column === 'score' || sort.column === 'price_minor' ? ` INDEXED BY ${L}` : ''
    from = `(SELECT rowid AS id${score} FROM ${F} WHERE ${F} MATCH ${sql.param(text)}) m CROSS JOIN ${P} p${narrow}`
    where.push('p.id = m.id')
    if (sortName === 'relevance') key = 'm.score'
  }
  // Only the sort key and the SKU are carried through the sort; the documents of the
  // page's rows are read after.
  const select = `SELECT p.sku AS sku, ${key} AS k FROM ${from} WHERE ${where.join(' AND ')}`
  const direction = sort.descending ? 'DESC' : 'ASC'
  let keys: string
  if (sortName === 'relevance') {
    // The score is an output column: filter and order on it around the select.
    const range = after ? `WHERE ${keyset(sql, 'x.k', 'x.sku', true, after)}` : ''
    keys = `SELECT * FROM (${select}) x ${range} ORDER BY x.k DESC, x.sku ASC`
  } else {
    const range = after ? ` AND ${keyset(sql, key, 'p.sku', sort.descending, after)}` : ''
    keys = `${select}${range} ORDER BY ${key} ${direction}, p.sku ASC`
  }
  sql.text = `SELECT ${docColumns}, d.description, p.name_key, y.k AS score
    FROM (${keys} LIMIT ${sql.param(query.limit + 1)}) y
    JOIN ${P} p ON p.sku = y.sku JOIN ${D} d ON d.sku = y.sku ORDER BY y.k ${direction}, y.sku ASC`
  return sql
}

/**
 * Products per category, over the matches of the words, price and stock filters (not
 * the category filter). Without words: from the kept counts, or with a price range or currency, by
 * counting each category's range of the facet index.
 */
function facetSql(
  kind: Store['kind'],
  { P, C, F, L }: Tables,
  query: CatalogQuery,
  text: string | undefined,
): Sql {
  const sql = newSql()
  if (
    text === undefined &&
    query.minPrice === undefined &&
    query.maxPrice === undefined &&
    query.currency === undefined
  ) {
    const count = query.inStock === undefined ? 'listed' : query.inStock ? 'in_stock' : 'listed - in_stock'
    sql.text = `SELECT category AS value, ${count} AS count FROM ${C} WHERE listed > 0`
    return sql
  }
  const where = filters(sql, query)
  if (text === undefined) {
    sql.text = `SELECT c.category AS value, (SELECT COUNT(*) FROM ${P} p
      WHERE p.category = c.category AND ${where.join(' AND ')}) AS count FROM ${C} c WHERE c.listed > 0`
    return sql
  }
  let from = `${P} p`
  if (kind === 'postgres') {
    where.push(`p.search @@ ${sql.param(text)}::tsquery`)
  } else {
    from = `(SELECT rowid AS id FROM ${F} WHERE ${F} MATCH ${sql.param(text)}) m CROSS JOIN ${P} p INDEXED BY ${L}`
    where.push('p.id = m.id')
  }
  where.push('p.category IS NOT NULL')
  sql.text = `SELECT p.category AS value, COUNT(*) AS count FROM ${from} WHERE ${where.join(' AND ')}
    GROUP BY p.category`
  return sql
}

function keyOf(row: Row, sort: CatalogSort): CursorKey {
  switch (sort) {
    case 'relevance':
      return Number(row.score)
    case 'price-asc':
    case 'price-desc':
      return Number(row.price_minor)
    case 'name':
      return row.name_key
    case 'newest':
      return row.listed_at
  }
}

interface Sql {
  text: string
  params: SqlValue[]
  param(value: SqlValue): string
}

function newSql(): Sql {
  const params: SqlValue[] = []
  return {
    text: '',
    params,
    param(value) {
      params.push(value)
      return `$${params.length}`
    },
  }
}

/** The price, currency and stock filters (the category filter is the caller's: facets leave it out). */
function filters(sql: Sql, query: CatalogQuery, price = 'p.price_minor'): string[] {
  const where: string[] = []
  if (query.minPrice !== undefined) where.push(`${price} >= ${sql.param(query.minPrice)}`)
  if (query.maxPrice !== undefined) where.push(`${price} <= ${sql.param(query.maxPrice)}`)
  if (query.currency !== undefined) where.push(`p.currency = ${sql.param(query.currency)}`)
  if (query.inStock === true) where.push('p.available > 0')
  if (query.inStock === false) where.push('p.available <= 0')
  return where
}

/**
 * The rows strictly after the cursor's (key, sku) in the sort order. The bound on the key
 * alone (key >= last, or <= when descending) lets the engine start the index range there.
 */
function keyset(sql: Sql, key: string, sku: string, descending: boolean, after: After): string {
  const k = sql.param(after.key)
  const s = sql.param(after.sku)
  const [beyond, from] = descending ? ['<', '<='] : ['>', '>=']
  return `${key} ${from} ${k} AND (${key} ${beyond} ${k} OR (${key} = ${k} AND ${sku} > ${s}))`
}
