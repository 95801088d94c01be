// The catalog view on SQLite (FTS5) and PostgreSQL (tsvector): the stock fold (deltas in
// any order, reservations released or committed, redelivery), and search over a generated
// catalog of 10,000 products, every answer checked against the same search done in
// JavaScript over the generated data: text with prefixes, filters, facets, sorts, every
// page of a result, cursors of other queries, hostile query text. Last, the same history
// applied in other batches and another interleaving dumps byte for byte the same.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import fc from 'fast-check'
import pg from 'pg'
import { createEvent } from '../../src/contracts/envelope.ts'
import { type Store, storeLimitDefaults } from '../../src/engines/store/port.ts'
import { PostgresStore } from '../../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../../src/engines/store/sqlite/sqlite-store.ts'
import { partitionForKey } from '../../src/engines/stream/port.ts'
import { MercatoError } from '../../src/platform/errors.ts'
import {
  type CatalogPage,
  type CatalogQuery,
  type CatalogSort,
  catalogFold,
  getProduct,
  type ProductDoc,
  productCacheKey,
  searchCatalog,
} from '../../src/read/catalog/catalog-view.ts'
import { compareCodePoints, nameKeyOf, queryTermsOf, wordsOf } from '../../src/read/catalog/text.ts'
import { SqlViewStorage, viewStoreMigrations } from '../../src/read/sql-view.ts'
import type { ViewEvent } from '../../src/read/view.ts'
import { serverUrls, skipUnlessReachable } from '../support/servers.ts'
import { tempDir, uniqueName } from '../support/wait.ts'

const partitions = 4
const t0 = Date.parse('2026-11-01T10:00:00.000Z')

/** Events as the stream holds them: each on its topic and key's partition, offsets in order. */
class History {
  readonly events: ViewEvent[] = []
  readonly #offsets = new Map<string, number>()

  add(type: string, key: string, data: Record<string, unknown>, atMs: number): ViewEvent {
    const topic = type.startsWith('product.') ? 'products' : 'inventory'
    const partition = partitionForKey(key, partitions)
    const offset = this.#offsets.get(`${topic}/${partition}`) ?? 0
    this.#offsets.set(`${topic}/${partition}`, offset + 1)
    const event: ViewEvent = {
      event: createEvent({
        id: `evt_${topic}_${partition}_${offset}`,
        type,
        subject: key,
        source: 'mercato/test',
        data,
        time: new Date(atMs),
      }),
      position: { topic, partition, offset },
      // The append time is not the event time: the view must use the event's.
      timestampMs: t0 + 1e9 + this.events.length,
    }
    this.events.push(event)
    return event
  }
}

/** A small deterministic PRNG (mulberry32). */
function random(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** The same events interleaved otherwise (each partition's order kept), in batches of random size. */
function reshuffled(events: ViewEvent[], seed: number, batchMax: number): ViewEvent[][] {
  const rng = random(seed)
  const queues = new Map<string, ViewEvent[]>()
  for (const e of events) {
    const key = `${e.position.topic}/${e.position.partition}`
    queues.set(key, [...(queues.get(key) ?? []), e])
  }
  const open = [...queues.values()]
  const order: ViewEvent[] = []
  while (open.length > 0) {
    const i = Math.floor(rng() * open.length)
    order.push(open[i].shift()!)
    if (open[i].length === 0) open.splice(i, 1)
  }
  const batches: ViewEvent[][] = []
  for (let i = 0; i < order.length; ) {
    const size = 1 + Math.floor(rng() * batchMax)
    batches.push(order.slice(i, i + size))
    i += size
  }
  return batches
}

function inBatches(events: ViewEvent[], size: number): ViewEvent[][] {
  const batches: ViewEvent[][] = []
  for (let i = 0; i < events.length; i += size) batches.push(events.slice(i, i + size))
  return batches
}

/** The catalog folded in JavaScript, straight from the fold's rules: the reference answers. */
function referenceDocs(events: ViewEvent[]): Map<string, ProductDoc> {
  const stock = new Map<string, { onHand: number; available: number; time: string }>()
  const products = new Map<string, Record<string, unknown>>()
  const listedAt = new Map<string, string>()
  const reservations = new Map<string, { lines: { sku: string; quantity: number }[]; committed: boolean }>()
  const touch = (sku: string, onHand: number, available: number, time: string) => {
    const s = stock.get(sku) ?? { onHand: 0, available: 0, time }
    stock.set(sku, {
      onHand: s.onHand + onHand,
      available: s.available + available,
      time: time > s.time ? time : s.time,
    })
  }
  for (const { event } of events) {
    const d = event.data as Record<string, any>
    if (event.type === 'product.upserted') {
      products.set(d.sku, d)
      const listed = listedAt.get(d.sku)
      if (listed === undefined || event.time < listed) listedAt.set(d.sku, event.time)
      touch(d.sku, 0, 0, event.time)
    } else if (event.type === 'inventory.adjusted') touch(d.sku, d.delta, d.delta, event.time)
    else if (event.type === 'inventory.reserved') {
      reservations.set(d.reservationId, { lines: d.lines, committed: false })
      for (const line of d.lines) touch(line.sku, 0, -line.quantity, event.time)
    } else if (event.type === 'inventory.committed') {
      const reservation = reservations.get(d.reservationId)
      if (reservation && !reservation.committed) {
        for (const line of reservation.lines) touch(line.sku, -line.quantity, 0, event.time)
        reservation.committed = true
      }
    } else if (event.type === 'inventory.released') {
      const reservation = reservations.get(d.reservationId)
      for (const line of reservation?.lines ?? []) {
        touch(line.sku, reservation?.committed ? line.quantity : 0, line.quantity, event.time)
      }
      reservations.delete(d.reservationId)
    }
  }
  const docs = new Map<string, ProductDoc>()
  for (const [sku, p] of products) {
    const s = stock.get(sku)!
    docs.set(sku, {
      sku,
      name: p.name as string,
      description: p.description as string,
      category: p.category as string,
      priceMinor: p.priceMinor as number,
      currency: p.currency as string,
      onHand: Math.max(0, s.onHand),
      available: Math.max(0, s.available),
      inStock: s.available > 0,
      updatedAt: s.time,
      listedAt: listedAt.get(sku)!,
    })
  }
  return docs
}

// --- The generated catalog ---------------------------------------------------------------

const nouns: Record<string, string[]> = {
  audio: ['headphones', 'speaker', 'earbuds', 'headset', 'amplifier', 'turntable'],
  kitchen: ['kettle', 'grinder', 'blender', 'toaster', 'skillet', 'whisk'],
  garden: ['hose', 'shovel', 'planter', 'trowel', 'sprinkler', 'rake'],
  books: ['novel', 'atlas', 'cookbook', 'biography', 'anthology', 'handbook'],
  toys: ['puzzle', 'robot', 'blocks', 'kite', 'yo-yo', 'doll'],
  sports: ['racket', 'helmet', 'football', 'dumbbell', 'yoga mat', 'bicycle'],
  office: ['stapler', 'notebook', 'monitor', 'keyboard', 'desk lamp', 'chair'],
  'home & living': ['candle', 'cushion', 'rug', 'vase', 'throw', 'mirror'],
}
const categoryWeights: [string, number][] = [
  ['audio', 3],
  ['kitchen', 2],
  ['garden', 1],
  ['books', 3],
  ['toys', 1],
  ['sports', 2],
  ['office', 2],
  ['home & living', 1],
]
const adjectives = [
  'Wireless',
  'Compact',
  'Classic',
  'Deluxe',
  'Portable',
  'Vintage',
  'Smart',
  'Crème',
  'Ergonomic',
]
const brands = ['Acme', 'Zenith', 'Nordic', 'Helios', 'Orbit', 'Crux', 'Vela', 'Lumen']
const extras = [
  'Built to last.',
  'Ships in recycled packaging.',
  'A favourite of our staff.',
  'Two-year warranty included.',
  'Goes well with headphones.',
  'Now with a longer cable.',
  'Made from organic cotton.',
]

function generatedCatalog(count: number): History {
  const rng = random(42)
  const pick = <T>(items: T[]) => items[Math.floor(rng() * items.length)]
  const weightTotal = categoryWeights.reduce((sum, [, w]) => sum + w, 0)
  const categoryOf = () => {
    let r = rng() * weightTotal
    for (const [category, w] of categoryWeights) if ((r -= w) < 0) return category
    return categoryWeights[0][0]
  }
  const history = new History()
  const at = (ms: number) => t0 + ms
  let order = 0
  for (let i = 0; i < count; i++) {
    const sku = `SKU-${String(i).padStart(5, '0')}`
    const category = categoryOf()
    const noun = pick(nouns[category])
    const brand = pick(brands)
    const name = `${brand} ${pick(adjectives)} ${noun} ${String.fromCharCode(65 + (i % 26))}${100 + (i % 900)}`
    const description = `A ${pick(adjectives).toLowerCase()} ${noun} by ${brand}. ${pick(extras)}${rng() < 0.3 ? ` ${pick(extras)}` : ''}`
    // Few price points and coarse times: many ties, broken by SKU.
    const priceMinor = 500 + 250 * Math.floor(rng() * 60)
    history.add(
      'product.upserted',
      sku,
      { sku, name, description, category, priceMinor, currency: 'EUR' },
      at(Math.floor(i / 4) * 1000),
    )
    const r = rng()
    if (r < 0.1) continue // never stocked
    const stocked = 1 + Math.floor(rng() * 30)
    history.add(
      'inventory.adjusted',
      sku,
      { sku, delta: stocked, reason: 'restock', onHand: stocked, available: stocked },
      at(Math.floor(rng() * count) * 250),
    )
    if (r < 0.25) {
      // An order takes all of it: reserved, then committed (sold out) or released (back).
      const orderId = `ord_${order++}`
      const reservationId = `res_${orderId}`
      history.add(
        'inventory.reserved',
        orderId,
        {
          orderId,
          reservationId,
          lines: [{ sku, quantity: stocked }],
          expiresAt: '2026-11-02T00:00:00.000Z',
        },
        at(count * 250 + i),
      )
      if (rng() < 0.7) {
        history.add('inventory.committed', orderId, { orderId, reservationId }, at(count * 300 + i))
        // Now and then the order is cancelled after its confirmation.
        if (rng() < 0.1)
          history.add(
            'inventory.released',
            orderId,
            { orderId, reservationId, reason: 'compensation' },
            at(count * 300 + i + 1),
          )
      } else
        history.add(
          'inventory.released',
          orderId,
          { orderId, reservationId, reason: 'expired' },
          at(count * 300 + i),
        )
    }
  }
  return history
}

// --- Reference search ------------------------------------------------------------------

const compareBy: Record<Exclude<CatalogSort, 'relevance'>, (a: ProductDoc, b: ProductDoc) => number> = {
  'price-asc': (a, b) => a.priceMinor - b.priceMinor || compareCodePoints(a.sku, b.sku),
  'price-desc': (a, b) => b.priceMinor - a.priceMinor || compareCodePoints(a.sku, b.sku),
  name: (a, b) => compareCodePoints(nameKeyOf(a.name), nameKeyOf(b.name)) || compareCodePoints(a.sku, b.sku),
  newest: (a, b) => compareCodePoints(b.listedAt, a.listedAt) || compareCodePoints(a.sku, b.sku),
}

class Reference {
  readonly docs: ProductDoc[]
  readonly #words = new Map<string, string[]>()

  constructor(docs: Map<string, ProductDoc>) {
    this.docs = [...docs.values()]
    for (const d of this.docs) {
      this.#words.set(d.sku, [
        ...new Set([...wordsOf(d.name), ...wordsOf(d.category), ...wordsOf(d.description)]),
      ])
    }
  }

  /** Matches of the text and every filter but the category. */
  #facetBase(query: Omit<CatalogQuery, 'limit'>): ProductDoc[] {
    const terms = queryTermsOf(query.q)
    if (terms.length === 0 && (query.q ?? '').trim() !== '') return [] // symbols alone match nothing
    return this.docs.filter(
      (d) =>
        terms.every((t) =>
          this.#words.get(d.sku)!.some((x) => (t.prefix ? x.startsWith(t.word) : x === t.word)),
        ) &&
        (query.minPrice === undefined || d.priceMinor >= query.minPrice) &&
        (query.maxPrice === undefined || d.priceMinor <= query.maxPrice) &&
        (query.inStock === undefined || d.inStock === query.inStock),
    )
  }

  matches(query: Omit<CatalogQuery, 'limit'>): ProductDoc[] {
    return this.#facetBase(query).filter((d) => query.category === undefined || d.category === query.category)
  }

  sorted(query: Omit<CatalogQuery, 'limit'> & { sort: Exclude<CatalogSort, 'relevance'> }): string[] {
    return this.matches(query)
      .sort(compareBy[query.sort])
      .map((d) => d.sku)
  }

  facets(query: Omit<CatalogQuery, 'limit'>): { value: string; count: number }[] {
    const counts = new Map<string, number>()
    for (const d of this.#facetBase(query)) counts.set(d.category, (counts.get(d.category) ?? 0) + 1)
    return [...counts]
      .map(([value, count]) => ({ value, count }))
      .sort((a, b) => b.count - a.count || compareCodePoints(a.value, b.value))
  }
}

/** Every page of a search, checked page by page; the items in order. */
async function allPages(
  store: Store,
  g: number,
  query: CatalogQuery,
): Promise<{ items: ProductDoc[]; first: CatalogPage }> {
  const items: ProductDoc[] = []
  let first: CatalogPage | undefined
  let cursor: string | undefined
  for (let pages = 0; ; pages++) {
    assert.ok(pages < 10_000, 'paging ends')
    const page = await searchCatalog(store, g, { ...query, cursor })
    first ??= page
    assert.ok(page.items.length <= query.limit)
    assert.equal(page.total, first.total, 'the total is the same on every page')
    items.push(...page.items)
    if (page.nextCursor === null) break
    assert.equal(page.items.length, query.limit, 'only the last page is short')
    cursor = page.nextCursor
  }
  return { items, first: first! }
}

const skus = (docs: ProductDoc[]) => docs.map((d) => d.sku)

function assertInvalidCursor(error: unknown): true {
  assert.ok(error instanceof MercatoError, String(error))
  assert.equal(error.code, 'invalid-cursor')
  assert.equal(error.status, 400)
  return true
}

// --- The suite, per engine --------------------------------------------------------------

interface Engine {
  store: Store
  cleanup: () => Promise<void>
}

function defineCatalogTests(name: string, skip: string | undefined, open: () => Promise<Engine>) {
  describe(`catalog view: ${name}`, { skip, concurrency: false }, () => {
    let engine: Engine
    let store: Store
    let storage: SqlViewStorage
    let catalog: History
    let reference: Reference
    let nextGeneration = 10

    /** A fresh generation with `batches` applied; resolves with it and the changed keys. */
    const build = async (batches: ViewEvent[][]) => {
      const g = nextGeneration++
      await storage.create(g)
      const changed: string[] = []
      for (const batch of batches) changed.push(...(await storage.apply(g, batch)))
      return { g, changed }
    }

    before(async () => {
      engine = await open()
      store = engine.store
      await store.migrate(viewStoreMigrations)
      storage = new SqlViewStorage('catalog', store, catalogFold)
      catalog = generatedCatalog(10_000)
      reference = new Reference(referenceDocs(catalog.events))
      await storage.create(1)
      for (const batch of inBatches(catalog.events, 500)) await storage.apply(1, batch)
    })
    after(async () => engine?.cleanup())

    describe('the fold', () => {
      // One product; two orders reserve it, one is released, one committed; restocks and a write-off.
      const history = new History()
      const sku = 'LAMP-1'
      const lines = (quantity: number) => [{ sku, quantity }]
      const reserve = (orderId: string, quantity: number, ms: number) =>
        history.add(
          'inventory.reserved',
          orderId,
          {
            orderId,
            reservationId: `res_${orderId}`,
            lines: lines(quantity),
            expiresAt: '2026-11-02T00:00:00.000Z',
          },
          t0 + ms,
        )
      history.add(
        'inventory.adjusted',
        sku,
        { sku, delta: 10, reason: 'restock', onHand: 10, available: 10 },
        t0 + 1000,
      )
      reserve('ord_a', 3, 2000)
      history.add(
        'product.upserted',
        sku,
        {
          sku,
          name: 'Desk lamp',
          description: 'A warm desk lamp',
          category: 'home',
          priceMinor: 2500,
          currency: 'EUR',
        },
        t0 + 3000,
      )
      history.add(
        'inventory.adjusted',
        sku,
        { sku, delta: -2, reason: 'write-off', onHand: 8, available: 5 },
        t0 + 4000,
      )
      reserve('ord_b', 4, 5000)
      history.add(
        'inventory.released',
        'ord_a',
        { orderId: 'ord_a', reservationId: 'res_ord_a', reason: 'compensation' },
        t0 + 6000,
      )
      history.add('inventory.committed', 'ord_b', { orderId: 'ord_b', reservationId: 'res_ord_b' }, t0 + 7000)
      // A reservation of two lines of another product, then more than there is.
      history.add(
        'product.upserted',
        'MUG-1',
        {
          sku: 'MUG-1',
          name: 'Mug',
          description: 'Stoneware',
          category: 'kitchen',
          priceMinor: 900,
          currency: 'EUR',
        },
        t0 + 1500,
      )
      history.add(
        'inventory.adjusted',
        'MUG-1',
        { sku: 'MUG-1', delta: 3, reason: 'restock', onHand: 3, available: 3 },
        t0 + 1600,
      )
      history.add(
        'inventory.reserved',
        'ord_c',
        {
          orderId: 'ord_c',
          reservationId: 'res_ord_c',
          lines: [
            { sku: 'MUG-1', quantity: 2 },
            { sku: 'MUG-1', quantity: 3 },
          ],
          expiresAt: '2026-11-02T00:00:00.000Z',
        },
        t0 + 2500,
      )
      const expectedLamp: ProductDoc = {
        sku,
        name: 'Desk lamp',
        description: 'A warm desk lamp',
        category: 'home',
        priceMinor: 2500,
        currency: 'EUR',
        onHand: 4, // 10 - 2 written off - 4 committed
        available: 4, // 10 - 3 - 2 - 4 + 3 released
        inStock: true,
        updatedAt: new Date(t0 + 7000).toISOString(),
        listedAt: new Date(t0 + 3000).toISOString(),
      }

      test('on hand and available: restock, write-off, reserve, release, commit', async () => {
        const { g, changed } = await build([history.events])
        assert.deepEqual(await getProduct(store, g, sku), expectedLamp)
        assert.deepEqual(await getProduct(store, g, 'MUG-1'), {
          sku: 'MUG-1',
          name: 'Mug',
          description: 'Stoneware',
          category: 'kitchen',
          priceMinor: 900,
          currency: 'EUR',
          onHand: 3,
          available: 0, // 3 - 5 reserved, shown as 0
          inStock: false,
          updatedAt: new Date(t0 + 2500).toISOString(),
          listedAt: new Date(t0 + 1500).toISOString(),
        })
        assert.deepEqual(changed.sort(), [productCacheKey('LAMP-1'), productCacheKey('MUG-1')])
      })

      test('an order cancelled after its confirmation gives its committed lines back to on hand and available', async () => {
        const cancelled = new History()
        cancelled.add(
          'product.upserted',
          'PEN-1',
          {
            sku: 'PEN-1',
            name: 'Pen',
            description: 'Blue ink',
            category: 'office',
            priceMinor: 300,
            currency: 'EUR',
          },
          t0,
        )
        cancelled.add(
          'inventory.adjusted',
          'PEN-1',
          { sku: 'PEN-1', delta: 10, reason: 'restock', onHand: 10, available: 10 },
          t0 + 1000,
        )
        const reservation = { orderId: 'ord_p', reservationId: 'res_ord_p' }
        cancelled.add(
          'inventory.reserved',
          'ord_p',
          { ...reservation, lines: [{ sku: 'PEN-1', quantity: 3 }], expiresAt: '2026-11-02T00:00:00.000Z' },
          t0 + 2000,
        )
        cancelled.add('inventory.committed', 'ord_p', reservation, t0 + 3000)
        const committed = await build([cancelled.events])
        assert.deepEqual(
          [
            (await getProduct(store, committed.g, 'PEN-1'))?.onHand,
            (await getProduct(store, committed.g, 'PEN-1'))?.available,
          ],
          [7, 7],
        )
        cancelled.add('inventory.released', 'ord_p', { ...reservation, reason: 'compensation' }, t0 + 4000)
        // Redelivered as new events (new ids and offsets): the second commit and release find nothing to do.
        cancelled.add('inventory.committed', 'ord_p', reservation, t0 + 5000)
        cancelled.add('inventory.released', 'ord_p', { ...reservation, reason: 'compensation' }, t0 + 6000)
        const { g } = await build([cancelled.events])
        const pen = await getProduct(store, g, 'PEN-1')
        assert.deepEqual([pen?.onHand, pen?.available, pen?.inStock], [10, 10, true])
      })

      test('stock deltas in any order (per partition order kept) give the same documents', async () => {
        const { g } = await build([history.events])
        const expected = await storage.dump(g)
        for (let seed = 1; seed <= 6; seed++) {
          const other = await build(reshuffled(history.events, seed, 3))
          assert.equal(await storage.dump(other.g), expected, `interleaving ${seed}`)
          assert.deepEqual(await getProduct(store, other.g, sku), expectedLamp)
        }
      })

      test('stock before the product: not listed until upserted, then with its stock', async () => {
        const stockOnly = history.events.filter((e) => e.event.type !== 'product.upserted')
        const { g } = await build([stockOnly])
        assert.equal(await getProduct(store, g, sku), undefined)
        assert.equal((await searchCatalog(store, g, { q: 'lamp', limit: 10 })).total, 0)
        assert.equal(await storage.dump(g), '')
        await storage.apply(g, history.events)
        assert.deepEqual(await getProduct(store, g, sku), expectedLamp)
        assert.deepEqual(skus((await searchCatalog(store, g, { q: 'lamp', limit: 10 })).items), [sku])
      })

      test('a redelivered batch (same positions) changes nothing', async () => {
        const { g } = await build(inBatches(history.events, 4))
        const dumped = await storage.dump(g)
        const positions = await storage.positions(g)
        assert.deepEqual(await storage.apply(g, history.events), [], 'no document changed')
        for (const batch of reshuffled(history.events, 7, 4)) await storage.apply(g, batch)
        assert.equal(await storage.dump(g), dumped)
        assert.deepEqual(await storage.positions(g), positions)
        assert.deepEqual(await getProduct(store, g, sku), expectedLamp)
      })

      test('two processes taking turns on a partition apply every event once', async () => {
        // Each process remembers the positions it stored; the other moves them meanwhile,
        // as when a partition changes hands and comes back with its events redelivered.
        const other = new SqlViewStorage('catalog', store, catalogFold)
        const { g } = await build([])
        const once = await build([history.events])
        // The events of the busiest partition, in three parts; the others' go first.
        const byPartition = Map.groupBy(history.events, (e) => `${e.position.topic}/${e.position.partition}`)
        const busiest = [...byPartition.values()].sort((a, b) => b.length - a.length)[0]
        assert.ok(busiest.length >= 3)
        const [first, second, third] = [busiest.slice(0, 1), busiest.slice(1, 2), busiest.slice(2)]
        await storage.apply(
          g,
          history.events.filter((e) => !busiest.includes(e)),
        )
        await storage.apply(g, first)
        await other.apply(g, [...first, ...second])
        await storage.apply(g, [...second, ...third])
        await other.apply(g, third)
        assert.equal(await storage.dump(g), await storage.dump(once.g))
        assert.deepEqual(await storage.positions(g), await storage.positions(once.g))
        assert.deepEqual(await getProduct(store, g, sku), expectedLamp)
      })

      test('newest sorts by listing time: a sale, a restock or a new price does not move a product', async () => {
        const h = new History()
        const product = (sku: string, priceMinor: number, ms: number) =>
          h.add(
            'product.upserted',
            sku,
            {
              sku,
              name: `Tent ${sku}`,
              description: 'outdoor',
              category: 'camping',
              priceMinor,
              currency: 'EUR',
            },
            t0 + ms,
          )
        product('TENT-OLD', 5000, 1000)
        product('TENT-NEW', 6000, 2000)
        h.add(
          'inventory.adjusted',
          'TENT-OLD',
          { sku: 'TENT-OLD', delta: 5, reason: 'restock', onHand: 5, available: 5 },
          t0 + 3000,
        )
        product('TENT-OLD', 4500, 4000)
        const { g } = await build([h.events])
        const page = await searchCatalog(store, g, { category: 'camping', sort: 'newest', limit: 10 })
        assert.deepEqual(skus(page.items), ['TENT-NEW', 'TENT-OLD'])
        assert.equal(page.items[1].listedAt, new Date(t0 + 1000).toISOString())
        assert.equal(page.items[1].updatedAt, new Date(t0 + 4000).toISOString())
      })

      test('a re-upsert replaces the words searched; the price alone keeps them', async () => {
        const h = new History()
        const upsert = (name: string, priceMinor: number, ms: number) =>
          h.add(
            'product.upserted',
            'TOY-1',
            { sku: 'TOY-1', name, description: 'for kids', category: 'toys', priceMinor, currency: 'EUR' },
            t0 + ms,
          )
        upsert('Red kite', 1000, 1000)
        const { g } = await build([h.events])
        assert.equal((await searchCatalog(store, g, { q: 'kite', limit: 5 })).total, 1)
        upsert('Red kite', 1200, 2000)
        upsert('Blue balloon', 1300, 3000)
        await storage.apply(g, h.events)
        assert.equal((await searchCatalog(store, g, { q: 'kite', limit: 5 })).total, 0)
        assert.equal((await searchCatalog(store, g, { q: 'ball', limit: 5 })).total, 1)
        upsert('Blue balloon', 900, 4000)
        await storage.apply(g, h.events)
        const found = await searchCatalog(store, g, { q: 'balloon', limit: 5 })
        assert.deepEqual(
          found.items.map((d) => [d.sku, d.priceMinor, d.updatedAt, d.listedAt]),
          [['TOY-1', 900, new Date(t0 + 4000).toISOString(), new Date(t0 + 1000).toISOString()]],
        )
      })
    })

    describe('search over 10,000 products', () => {
      test('the view holds the generated catalog', async () => {
        const docs = new Map(reference.docs.map((d) => [d.sku, d]))
        assert.equal((await searchCatalog(store, 1, { limit: 1 })).total, docs.size)
        for (const sku of ['SKU-00000', 'SKU-00007', 'SKU-04242', 'SKU-09999']) {
          assert.deepEqual(await getProduct(store, 1, sku), docs.get(sku))
        }
        assert.ok(reference.docs.some((d) => !d.inStock) && reference.docs.some((d) => d.inStock))
      })

      test('relevance: a product with the word in its name ranks above one with it only in the description', async () => {
        const { items } = await allPages(store, 1, { q: 'headphones', limit: 100 })
        const inName = (d: ProductDoc) => wordsOf(d.name).includes('headphones')
        const named = items.filter(inName).length
        assert.ok(named > 50 && items.length - named > 50, `${named} of ${items.length} named`)
        assert.ok(items.slice(0, named).every(inName), 'every product named so comes first')
        assert.deepEqual(skus(items).sort(), skus(reference.matches({ q: 'headphones' })).sort())
      })

      test('prefix matching: "head" finds headphones and headsets; "HEAD Goe" both words, any case', async () => {
        const head = await allPages(store, 1, { q: 'head', limit: 100 })
        assert.deepEqual(skus(head.items).sort(), skus(reference.matches({ q: 'head' })).sort())
        assert.ok(head.items.some((d) => d.name.includes('headphones')))
        assert.ok(head.items.some((d) => d.name.includes('headset')))
        const two = await allPages(store, 1, { q: 'HEAD Goe', limit: 100 })
        assert.ok(two.items.length > 0)
        assert.deepEqual(skus(two.items).sort(), skus(reference.matches({ q: 'head goe' })).sort())
        assert.ok(two.items.length < head.items.length)
        // The word being typed is a prefix from its first letter: "head g" holds "head goe"'s.
        const typing = await allPages(store, 1, { q: 'head g', limit: 100 })
        assert.ok(skus(two.items).every((sku) => skus(typing.items).includes(sku)))
        assert.deepEqual(skus(typing.items).sort(), skus(reference.matches({ q: 'head g' })).sort())
        // Diacritics and compatibility forms fold: "creme" finds "Crème", "ｃｒèｍｅ" too.
        const creme = reference.matches({ q: 'crème' }).length
        assert.ok(creme > 0)
        assert.equal((await searchCatalog(store, 1, { q: 'creme', limit: 1 })).total, creme)
        assert.equal((await searchCatalog(store, 1, { q: 'ｃｒèｍｅ', limit: 1 })).total, creme)
      })

      const queries: Omit<CatalogQuery, 'limit'>[] = [
        {},
        { q: 'wireless' },
        { category: 'audio' },
        { category: 'home & living' },
        { category: 'no such category' },
        { minPrice: 5000 },
        { maxPrice: 2000 },
        { minPrice: 3000, maxPrice: 3000 },
        { inStock: true },
        { inStock: false },
        { q: 'acme', category: 'books', inStock: true, minPrice: 1000, maxPrice: 9000 },
        { q: 'k', inStock: false },
        { q: 'vintage lamp', category: 'office' },
      ]

      test('filters, total and facets (every category but the filtered one counts) equal those computed in JavaScript', async () => {
        for (const query of queries) {
          const page = await searchCatalog(store, 1, { ...query, limit: 5 })
          const expected = reference.matches(query)
          assert.equal(page.total, expected.length, JSON.stringify(query))
          assert.deepEqual(page.facets.category, reference.facets(query), JSON.stringify(query))
          for (const d of page.items) assert.ok(expected.some((e) => e.sku === d.sku))
        }
        const audio = await searchCatalog(store, 1, { category: 'audio', limit: 5 })
        assert.ok(audio.facets.category.length > 1, 'other categories are counted beside the chosen one')
      })

      test('every sort, paged through every page: each match once, in order', async () => {
        const sortsToCheck: Exclude<CatalogSort, 'relevance'>[] = [
          'price-asc',
          'price-desc',
          'name',
          'newest',
        ]
        const cases: [Omit<CatalogQuery, 'limit'>, number][] = [
          [{ category: 'garden' }, 37],
          [{ q: 'classic', inStock: true }, 41],
          [{ minPrice: 10_000, maxPrice: 12_000 }, 100],
          [{ inStock: false }, 29],
        ]
        for (const [query, limit] of cases) {
          for (const sort of sortsToCheck) {
            const { items } = await allPages(store, 1, { ...query, sort, limit })
            assert.deepEqual(
              skus(items),
              reference.sorted({ ...query, sort }),
              `${JSON.stringify(query)} by ${sort}`,
            )
          }
        }
        // Without a word the default is by name; with words, by relevance.
        const byName = await allPages(store, 1, { category: 'toys', limit: 100 })
        assert.deepEqual(skus(byName.items), reference.sorted({ category: 'toys', sort: 'name' }))
        const relevance = await searchCatalog(store, 1, { q: 'x', sort: 'relevance', limit: 3 })
        const explicit = await searchCatalog(store, 1, { q: 'x', limit: 3 })
        assert.deepEqual(skus(relevance.items), skus(explicit.items))
      })

      test('the whole catalog by name, and a relevance result with ties, page by page: nothing twice, nothing missing', async () => {
        const all = await allPages(store, 1, { sort: 'name', limit: 100 })
        assert.equal(all.items.length, reference.docs.length)
        assert.deepEqual(skus(all.items), reference.sorted({ sort: 'name' }))
        for (const [q, limit] of [
          ['acme', 33],
          ['a', 100],
        ] as const) {
          const { items, first } = await allPages(store, 1, { q, limit })
          const expected = skus(reference.matches({ q })).sort()
          assert.equal(first.total, expected.length)
          assert.equal(new Set(skus(items)).size, items.length, 'no product twice')
          assert.deepEqual(skus(items).sort(), expected)
        }
      })

      test('a malformed cursor, or one of another query, is a 400 invalid-cursor', async () => {
        const base: CatalogQuery = { q: 'classic', category: 'audio', sort: 'price-asc', limit: 5 }
        const { nextCursor } = await searchCatalog(store, 1, base)
        assert.ok(nextCursor)
        // The same query with another page size follows the cursor.
        const next = await searchCatalog(store, 1, { ...base, limit: 7, cursor: nextCursor })
        assert.equal(next.items.length, 7)
        const bad = [
          'not-a-cursor',
          '!!!',
          Buffer.from('{"k":1}').toString('base64url'),
          Buffer.from('[1,"x",1,"a"]').toString('base64url'),
          nextCursor.slice(0, -3),
        ]
        for (const cursor of bad) {
          await assert.rejects(searchCatalog(store, 1, { ...base, cursor }), assertInvalidCursor, cursor)
        }
        for (const other of [
          { q: 'vintage' },
          { category: 'books' },
          { sort: 'price-desc' as const },
          { sort: 'name' as const },
          { minPrice: 1 },
          { maxPrice: 999_999 },
          { inStock: true },
        ]) {
          await assert.rejects(
            searchCatalog(store, 1, { ...base, ...other, cursor: nextCursor }),
            assertInvalidCursor,
            JSON.stringify(other),
          )
        }
      })

      test('hostile query text never fails, and finds what its words find (property)', async () => {
        const hostile = fc.oneof(
          fc.string({ unit: 'binary', maxLength: 40 }),
          fc.string({
            unit: fc.constantFrom(
              '"',
              "'",
              '*',
              'NEAR(',
              ')',
              '(',
              '-',
              ':',
              '^',
              '+',
              '&',
              '|',
              '!',
              '<->',
              '\\',
              ' ',
              'AND',
              'OR',
              'NOT',
              'head',
              'é',
              '😀',
              'ß',
              '\u0000',
              '%',
              '_',
              ':*',
              '{',
              '}',
              'title:',
              '$1',
              ';',
            ),
            maxLength: 12,
          }),
        )
        await fc.assert(
          fc.asyncProperty(hostile, fc.boolean(), async (q, inStock) => {
            const page = await searchCatalog(store, 1, { q, inStock, limit: 3 })
            assert.equal(page.total, reference.matches({ q, inStock }).length, JSON.stringify(q))
          }),
          { numRuns: 150, seed: 7 },
        )
        for (const q of [
          '"',
          '""',
          '*',
          'NEAR(a b)',
          'a:*',
          "'",
          '\\',
          '-head',
          'head*',
          '(',
          'NOT',
          '!!',
          '\uD800',
          '\u0301',
        ]) {
          const page = await searchCatalog(store, 1, { q, limit: 3 })
          assert.equal(page.total, reference.matches({ q }).length, q)
        }
        // The category is matched exactly, whatever it holds.
        await fc.assert(
          fc.asyncProperty(hostile, async (category) => {
            const page = await searchCatalog(store, 1, { category, limit: 1 })
            assert.equal(page.total, reference.matches({ category }).length)
          }),
          { numRuns: 50, seed: 8 },
        )
      })

      test('the same history in other batches and another interleaving dumps byte for byte the same', async () => {
        await storage.create(2)
        for (const batch of reshuffled(catalog.events, 99, 900)) await storage.apply(2, batch)
        const [one, two] = [await storage.dump(1), await storage.dump(2)]
        assert.equal(two, one)
        assert.equal(one.split('\n').length, reference.docs.length)
        assert.deepEqual(
          JSON.parse(one.split('\n')[0]),
          reference.docs.find((d) => d.sku === 'SKU-00000'),
        )
        await storage.drop(2)
        await assert.rejects(getProduct(store, 2, 'SKU-00000'), 'the dropped generation has no tables')
      })
    })
  })
}

// Asked before any suite runs: a suite's synchronous SQLite work would starve the check.
const skipPostgres = await skipUnlessReachable('catalog view on PostgreSQL', 'postgres')

defineCatalogTests('SQLite (FTS5)', undefined, async () => {
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

defineCatalogTests('PostgreSQL (tsvector)', skipPostgres, async () => {
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

describe('the words of a query', () => {
  test('matches every word as a prefix; a one-letter word whole, unless it is the one being typed', () => {
    assert.deepEqual(queryTermsOf('Red K'), [
      { word: 'red', prefix: true },
      { word: 'k', prefix: true },
    ])
    assert.deepEqual(queryTermsOf('usb c charger'), [
      { word: 'usb', prefix: true },
      { word: 'c', prefix: false },
      { word: 'charger', prefix: true },
    ])
    assert.deepEqual(queryTermsOf('k'), [{ word: 'k', prefix: true }])
    // Beside another one-letter word too: "a s" looks for the word "a".
    assert.deepEqual(queryTermsOf('a s'), [
      { word: 'a', prefix: false },
      { word: 's', prefix: true },
    ])
  })
})
