// Catalog search on a generated catalog of 10,000 products, on SQLite FTS5 and PostgreSQL
// full-text search: ranking, prefix matching, filters, facets, sorting, keyset pagination
// through every page, and hostile queries that never throw.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import fc from 'fast-check'
import pg from 'pg'
import { createEvent } from '../../src/contracts/envelope.ts'
import { type Store, storeLimitDefaults } from '../../src/engines/store/port.ts'
import { PostgresStore } from '../../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import type { MercatoError } from '../../src/platform/errors.ts'
import { type CatalogQuery, catalogFold, searchCatalog } from '../../src/read/catalog/catalog-view.ts'
import { SqlViewStorage, viewStoreMigrations } from '../../src/read/sql-view.ts'
import type { ViewEvent } from '../../src/read/view.ts'
import { serverUrls, skipUnlessReachable } from '../support/servers.ts'
import { tempDir, uniqueName } from '../support/wait.ts'

const categories = ['audio', 'coffee', 'garden', 'kitchen', 'books', 'toys', 'apparel']
const adjectives = ['wireless', 'compact', 'classic', 'deluxe', 'rugged', 'silent', 'organic', 'smart']
const nouns = [
  'headphones',
  'speaker',
  'grinder',
  'kettle',
  'shovel',
  'novel',
  'puzzle',
  'jacket',
  'lamp',
  'mug',
]

interface Generated {
  sku: string
  name: string
  description: string
  category: string
  priceMinor: number
  stock: number
}

/** A deterministic catalog: names from a small vocabulary, so expected matches can be computed. */
function generate(count: number): Generated[] {
  let seed = 42
  const next = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
    return seed
  }
  return Array.from({ length: count }, (_, i) => {
    const adjective = adjectives[next() % adjectives.length]
    const noun = nouns[next() % nouns.length]
    return {
      sku: `GEN-${String(i).padStart(5, '0')}`,
      name: `${adjective} ${noun} ${i}`,
      description: `A ${noun} for every day, model ${next() % 1000}`,
      category: categories[next() % categories.length],
      priceMinor: 100 + (next() % 50_000),
      stock: next() % 5 === 0 ? 0 : 1 + (next() % 20),
    }
  })
}

const longWords = 'vexa vexb vexc vexd vexe vexf vexg vexh vexi vexj vexk vexl'.split(' ')

const catalog = [
  ...generate(10_000),
  {
    sku: 'RANK-NAME',
    name: 'Zephyrine lamp',
    description: 'a lamp',
    category: 'kitchen',
    priceMinor: 500,
    stock: 3,
  },
  {
    sku: 'RANK-DESC',
    name: 'Plain lamp',
    description: 'in the zephyrine style',
    category: 'kitchen',
    priceMinor: 400,
    stock: 3,
  },
  // A name match with a long description, and matches in descriptions alone: FTS5's bm25
  // divides by the whole row's length.
  {
    sku: 'RANK-LONG',
    name: 'Quillonite grinder',
    description: Array.from({ length: 400 }, (_, i) => nouns[i % nouns.length]).join(' '),
    category: 'kitchen',
    priceMinor: 900,
    stock: 3,
  },
  // One of two words in the name, the other in a short description.
  {
    sku: 'RANK-HALF',
    name: 'Quillonite tray',
    description: 'for a grinder',
    category: 'kitchen',
    priceMinor: 200,
    stock: 3,
  },
  // A word whole in a name, and the same letters only beginning a longer word of one.
  {
    sku: 'RANK-WHOLE',
    name: 'Brask',
    description: 'a brask',
    category: 'kitchen',
    priceMinor: 300,
    stock: 3,
  },
  { sku: 'RANK-WHOLE-2', name: 'Tea brask', description: '', category: 'kitchen', priceMinor: 300, stock: 3 },
  { sku: 'RANK-START', name: 'Braskwood', description: '', category: 'kitchen', priceMinor: 300, stock: 3 },
  // A long query: every word begun in one name, all but one whole in another.
  {
    sku: 'RANK-ALL-BEGUN',
    name: longWords.map((w) => `${w}x`).join(' '),
    description: '',
    category: 'kitchen',
    priceMinor: 300,
    stock: 3,
  },
  {
    sku: 'RANK-MOST-WHOLE',
    name: longWords.slice(0, -1).join(' '),
    description: longWords.at(-1) ?? '',
    category: 'kitchen',
    priceMinor: 300,
    stock: 3,
  },
  ...[1, 2, 3].map((i) => ({
    sku: `RANK-QDESC-${i}`,
    name: `Plain mug ${i}`,
    description: 'goes with a quillonite grinder, any quillonite grinder, every quillonite grinder',
    category: 'kitchen',
    priceMinor: 300,
    stock: 3,
  })),
]

function events(): ViewEvent[] {
  const out: ViewEvent[] = []
  let offset = 0
  for (const p of catalog) {
    const time = new Date(Date.parse('2026-11-01T00:00:00Z') + offset * 1000)
    out.push({
      event: createEvent({
        type: 'product.upserted',
        subject: p.sku,
        source: 'mercato/test',
        time,
        data: {
          sku: p.sku,
          name: p.name,
          description: p.description,
          category: p.category,
          priceMinor: p.priceMinor,
          currency: 'USD',
        },
      }),
      position: { topic: 'products', partition: 0, offset: offset++ },
      timestampMs: time.getTime(),
    })
    if (p.stock > 0) {
      out.push({
        event: createEvent({
          type: 'inventory.adjusted',
          subject: p.sku,
          source: 'mercato/test',
          time,
          data: { sku: p.sku, delta: p.stock, reason: 'restock', onHand: p.stock, available: p.stock },
        }),
        position: { topic: 'inventory', partition: 0, offset: offset++ },
        timestampMs: time.getTime(),
      })
    }
  }
  return out
}

/** What a query should find, computed in JS: every word a prefix of a word of the product. */
function expected(query: Omit<CatalogQuery, 'limit' | 'cursor' | 'sort'>, withCategory = true): Generated[] {
  const words = (query.q ?? '').toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []
  return catalog.filter((p) => {
    const tokens = `${p.name} ${p.category} ${p.description}`.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []
    if (!words.every((w) => tokens.some((t) => t.startsWith(w)))) return false
    if (withCategory && query.category !== undefined && p.category !== query.category) return false
    if (query.minPrice !== undefined && p.priceMinor < query.minPrice) return false
    if (query.maxPrice !== undefined && p.priceMinor > query.maxPrice) return false
    if (query.inStock !== undefined && p.stock > 0 !== query.inStock) return false
    return true
  })
}

async function allPages(store: Store, query: Omit<CatalogQuery, 'cursor'>) {
  const skus: string[] = []
  let cursor: string | undefined
  for (let pages = 0; pages < 1_000; pages++) {
    const page = await searchCatalog(store, 1, { ...query, cursor })
    skus.push(...page.items.map((p) => p.sku))
    if (!page.nextCursor) return skus
    cursor = page.nextCursor
  }
  throw new Error('pagination did not end')
}

function defineSearchTests(
  name: string,
  skip: string | undefined,
  open: () => Promise<{ store: Store; cleanup: () => Promise<void> }>,
) {
  describe(`catalog search on 10,000 products: ${name}`, { skip }, () => {
    let store: Store
    let cleanup: () => Promise<void>
    let storage: SqlViewStorage
    /** Past every offset of the history. */
    let nextOffset: number

    before(async () => {
      ;({ store, cleanup } = await open())
      await store.migrate(viewStoreMigrations)
      storage = new SqlViewStorage('catalog', store, catalogFold)
      await storage.create(1)
      const all = events()
      for (let i = 0; i < all.length; i += 500) await storage.apply(1, all.slice(i, i + 500))
      nextOffset = all.length
    })
    after(async () => cleanup?.())

    test('a word in the name ranks above the same word in the description', async () => {
      const page = await searchCatalog(store, 1, { q: 'zephyrine', limit: 10 })
      assert.deepEqual(
        page.items.map((p) => p.sku),
        ['RANK-NAME', 'RANK-DESC'],
      )
    })

    test('a word in the name ranks first, however long the description', async () => {
      const page = await searchCatalog(store, 1, { q: 'quillonite', limit: 10 })
      assert.deepEqual(
        page.items.slice(0, 2).map((p) => p.sku),
        ['RANK-HALF', 'RANK-LONG'],
      )
      assert.equal(page.total, 5)
      // A name with both words ranks above a name with one, however long its description.
      const both = await searchCatalog(store, 1, { q: 'quillonite grinder', limit: 10 })
      assert.deepEqual(
        both.items.map((p) => p.sku),
        ['RANK-LONG', 'RANK-HALF', 'RANK-QDESC-1', 'RANK-QDESC-2', 'RANK-QDESC-3'],
      )
    })

    test('a word a name holds whole ranks above a longer word it only begins', async () => {
      const page = await searchCatalog(store, 1, { q: 'brask', limit: 10 })
      assert.equal(page.total, 3)
      assert.deepEqual(page.items.map((p) => p.sku).sort(), ['RANK-START', 'RANK-WHOLE', 'RANK-WHOLE-2'])
      assert.equal(page.items[2].sku, 'RANK-START')
      // However many words: one more word in the name outranks every word whole.
      const long = await searchCatalog(store, 1, { q: longWords.join(' '), limit: 10 })
      assert.deepEqual(
        long.items.map((p) => p.sku),
        ['RANK-ALL-BEGUN', 'RANK-MOST-WHOLE'],
      )
      // Still a prefix match: a longer word begun, and nothing whole, is found.
      const begun = await searchCatalog(store, 1, { q: 'braskw', limit: 10 })
      assert.deepEqual(
        begun.items.map((p) => p.sku),
        ['RANK-START'],
      )
    })

    test('every word is matched as a prefix', async () => {
      const page = await searchCatalog(store, 1, { q: 'head', limit: 5 })
      assert.equal(page.total, expected({ q: 'head' }).length)
      assert.ok(page.total > 0)
      for (const p of page.items) assert.match(`${p.name} ${p.description}`, /headphones/)
      const two = await searchCatalog(store, 1, { q: 'wire HEADPH', limit: 5 })
      assert.equal(two.total, expected({ q: 'wire headph' }).length)
    })

    test('a q of symbols alone matches nothing; an empty q is no q', async () => {
      for (const q of ['☕', '(', '"', '%', '-- *']) {
        const page = await searchCatalog(store, 1, { q, limit: 5 })
        assert.deepEqual([page.total, page.items, page.facets.category], [0, [], []], q)
      }
      const blank = await searchCatalog(store, 1, { q: '  ', limit: 5 })
      assert.equal(blank.total, (await searchCatalog(store, 1, { limit: 5 })).total)
    })

    test('filters and facet counts agree with the catalog', async () => {
      const cases: Omit<CatalogQuery, 'limit'>[] = [
        { category: 'audio' },
        { minPrice: 1_000, maxPrice: 2_000 },
        { inStock: true, q: 'kettle' },
        { inStock: false, category: 'toys', maxPrice: 10_000 },
        { q: 'compact', category: 'coffee', minPrice: 20_000 },
      ]
      for (const query of cases) {
        const page = await searchCatalog(store, 1, { ...query, limit: 20 })
        assert.equal(page.total, expected(query).length, JSON.stringify(query))
        const facets = new Map<string, number>()
        for (const p of expected(query, false)) facets.set(p.category, (facets.get(p.category) ?? 0) + 1)
        const want = [...facets]
          .map(([value, count]) => ({ value, count }))
          .sort((a, b) => b.count - a.count || (a.value < b.value ? -1 : 1))
        assert.deepEqual(page.facets.category, want, `facets of ${JSON.stringify(query)}`)
        for (const p of page.items) {
          if (query.category) assert.equal(p.category, query.category)
          if (query.inStock !== undefined) assert.equal(p.inStock, query.inStock)
        }
      }
    })

    test('paging through every page gives each match once, in the sort order', async () => {
      const query = { category: 'garden', sort: 'price-asc' as const, limit: 100 }
      const want = expected(query)
        .sort((a, b) => a.priceMinor - b.priceMinor || (a.sku < b.sku ? -1 : 1))
        .map((p) => p.sku)
      assert.deepEqual(await allPages(store, query), want)

      const byName = expected({ inStock: true, maxPrice: 5_000 })
        .map((p) => ({ ...p, key: p.name.toLowerCase() }))
        .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.sku < b.sku ? -1 : 1))
        .map((p) => p.sku)
      assert.deepEqual(
        await allPages(store, { inStock: true, maxPrice: 5_000, sort: 'name', limit: 37 }),
        byName,
      )

      const relevant = await allPages(store, { q: 'lamp', limit: 50 })
      assert.equal(new Set(relevant).size, relevant.length, 'no product twice')
      assert.deepEqual(
        [...relevant].sort(),
        expected({ q: 'lamp' })
          .map((p) => p.sku)
          .sort(),
      )

      const newest = await allPages(store, { category: 'books', sort: 'newest', limit: 100 })
      assert.deepEqual(
        newest,
        expected({ category: 'books' })
          .map((p) => p.sku)
          .reverse(),
      )
    })

    test("a malformed cursor, or another query's, is a 400", async () => {
      const page = await searchCatalog(store, 1, { q: 'lamp', limit: 5 })
      assert.ok(page.nextCursor)
      for (const cursor of [
        'garbage',
        page.nextCursor.slice(1),
        Buffer.from('{"k":1}').toString('base64url'),
      ]) {
        await assert.rejects(
          searchCatalog(store, 1, { q: 'lamp', limit: 5, cursor }),
          (e: MercatoError) => e.status === 400,
        )
      }
      await assert.rejects(
        searchCatalog(store, 1, { q: 'mug', limit: 5, cursor: page.nextCursor }),
        (e: MercatoError) => e.status === 400,
      )
    })

    test('a relevance page goes on where it ended though the catalog changed in between', async () => {
      // It adds a product the tests before it do not expect (it matches no query of the test after it).
      const want = expected({ q: 'lamp' }).map((p) => p.sku)
      const first = await searchCatalog(store, 1, { q: 'lamp', limit: 50 })
      const time = new Date('2026-11-02T00:00:00Z')
      await storage.apply(1, [
        {
          event: createEvent({
            type: 'product.upserted',
            subject: 'UNRELATED-1',
            source: 'mercato/test',
            time,
            data: {
              sku: 'UNRELATED-1',
              name: 'Unrelated thing',
              description: Array.from({ length: 300 }, () => 'filler').join(' '),
              category: 'misc',
              priceMinor: 100,
              currency: 'USD',
            },
          }),
          position: { topic: 'products', partition: 0, offset: nextOffset },
          timestampMs: time.getTime(),
        },
      ])
      const skus = first.items.map((p) => p.sku)
      let cursor = first.nextCursor ?? undefined
      while (cursor) {
        const page = await searchCatalog(store, 1, { q: 'lamp', limit: 50, cursor })
        skus.push(...page.items.map((p) => p.sku))
        cursor = page.nextCursor ?? undefined
      }
      assert.equal(new Set(skus).size, skus.length, 'no product twice')
      assert.deepEqual([...skus].sort(), [...want].sort(), 'none skipped')
    })

    test('hostile queries never throw', async () => {
      for (const q of [
        '"',
        '*',
        'NEAR(a b)',
        'a OR b',
        '-lamp',
        'name:lamp',
        "'; DROP TABLE x; --",
        '😀',
        'ä ö ü',
        '   ',
      ]) {
        await searchCatalog(store, 1, { q, limit: 3 })
      }
      await fc.assert(
        fc.asyncProperty(fc.string({ maxLength: 60, unit: 'binary' }), async (q) => {
          const page = await searchCatalog(store, 1, { q, limit: 3 })
          assert.ok(page.total >= 0)
        }),
        { numRuns: 150 },
      )
    })
  })
}

// Asked before any suite runs: a suite's synchronous SQLite work would starve the check.
const skip = await skipUnlessReachable('catalog search on PostgreSQL', 'postgres')

defineSearchTests('SQLite FTS5', undefined, async () => {
  const dir = tempDir()
  const store = new SqliteStore(dir.path, 'views', storeLimitDefaults)
  return {
    store,
    cleanup: async () => {
      await store.close()
      dir.remove()
    },
  }
})

defineSearchTests('PostgreSQL full-text search', skip, async () => {
  const schema = uniqueName('catalog').toLowerCase()
  const store = new PostgresStore(serverUrls.postgres, 'views', storeLimitDefaults, schema)
  return {
    store,
    cleanup: async () => {
      await store.close()
      const client = new pg.Client(serverUrls.postgres)
      await client.connect()
      await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
      await client.end()
    },
  }
})
