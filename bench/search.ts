// Catalog search over 100,000 products (part of `npm run bench -- query`): the products
// and their stock folded into a catalog view through the view's own fold
// (SqlViewStorage.apply with catalogFold, in batches of 1,000 events, as the projector
// does), then a few thousand typical shopper queries (one or two words, the last often
// half typed, with and without filters and sorts, facets always included, and now and then
// the second page of a result through its cursor) timed one after another; on the embedded
// engine (SQLite, FTS5) and, given a PostgreSQL URL, on PostgreSQL (tsvector + GIN) in a
// schema of its own, dropped afterwards.
//
// Baseline: as many look-ups of one product by SKU through the view's own read
// (getProduct: a primary-key probe of `products` joined to `descriptions`) on the same
// store in the same run, interleaved with the searches and timed the same way. It is the
// cheapest query the view answers, so it measures what every query pays anyway (the store
// call, statement cache, row conversion) and the ratio says what the search itself costs
// on top. A LIKE scan would be no baseline (it is the slow thing full-text search
// replaces), and a query without the view's tables would not measure the same path.
import { performance } from 'node:perf_hooks'
import { createEvent } from '../src/contracts/envelope.ts'
import { type Store, storeLimitDefaults } from '../src/engines/store/port.ts'
import { PostgresStore } from '../src/engines/store/postgres/postgres-store.ts'
import { SqliteStore } from '../src/engines/store/sqlite/sqlite-store.ts'
import { partitionForKey } from '../src/engines/stream/port.ts'
import {
  type CatalogQuery,
  catalogFold,
  getProduct,
  searchCatalog,
} from '../src/read/catalog/catalog-view.ts'
import { SqlViewStorage, viewStoreMigrations } from '../src/read/sql-view.ts'
import type { ViewEvent } from '../src/read/view.ts'
import { dropPostgresSchemas } from '../test/support/servers.ts'
import { tempDir, uniqueName } from '../test/support/wait.ts'
import { percentile, progress, type Row, row } from './rows.ts'

const queryCount = 3_000
const warmupCount = 200
const batchSize = 1_000
const generation = 1

export async function benchSearch(options: { products: number; postgres?: string }): Promise<Row[]> {
  const catalog = generateCatalog(options.products)
  const queries = typicalQueries(catalog, queryCount + warmupCount)
  const rows: Row[] = []
  const scenario = `catalog search, ${Math.round(options.products / 1000)}k products, ${queryCount} mixed queries`

  const dir = tempDir('mercato-bench-search-')
  const sqlite = new SqliteStore(dir.path, 'views', storeLimitDefaults)
  try {
    rows.push(...(await measure(sqlite, 'embedded', scenario, catalog, queries)))
  } finally {
    await sqlite.close()
    dir.remove()
  }

  if (options.postgres) {
    const schema = uniqueName('bench_search')
    const postgres = new PostgresStore(options.postgres, 'views', storeLimitDefaults, schema)
    try {
      rows.push(...(await measure(postgres, 'postgres', scenario, catalog, queries)))
    } finally {
      await postgres.close().catch(() => {})
      await dropPostgresSchemas(schema, options.postgres)
    }
  }
  return rows
}

async function measure(
  store: Store,
  engine: string,
  scenario: string,
  catalog: Catalog,
  queries: ShopperQuery[],
): Promise<Row[]> {
  await store.migrate(viewStoreMigrations)
  const storage = new SqlViewStorage('catalog', store, catalogFold)
  await storage.create(generation)
  const report = progress(
    `search (${engine}): folding ${catalog.events.length} events`,
    catalog.events.length,
  )
  const buildStarted = performance.now()
  for (let i = 0; i < catalog.events.length; i += batchSize) {
    await storage.apply(generation, catalog.events.slice(i, i + batchSize))
    report(Math.min(catalog.events.length, i + batchSize))
  }
  const buildSeconds = (performance.now() - buildStarted) / 1000
  // What autovacuum would do soon after 100,000 inserts; the planner needs the statistics.
  if (store.kind === 'postgres') {
    const tables = await store.query<{ name: string }>(
      'SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()',
    )
    for (const { name } of tables) await store.query(`ANALYZE ${name}`)
  }
  const listed = (await searchCatalog(store, generation, { limit: 1 })).total
  if (listed !== catalog.skus.length)
    throw new Error(`the view lists ${listed} products, not ${catalog.skus.length}`)

  const search: number[] = []
  const lookup: number[] = []
  const byKind = new Map<string, number[]>()
  let matched = 0
  let noSecondPage = 0
  const timing = progress(`search (${engine}): ${queries.length} queries`, queries.length)
  for (const [i, { kind, query, secondPage }] of queries.entries()) {
    let started = performance.now()
    let page = await searchCatalog(store, generation, query)
    let searchMs = performance.now() - started
    // A page-2 query: the shopper saw the first page (its time is not kept) and asks for
    // the next; a result of one page only counts as the first-page query it was.
    const paged = secondPage && page.nextCursor !== null
    if (secondPage && !paged) noSecondPage++
    if (paged) {
      started = performance.now()
      page = await searchCatalog(store, generation, { ...query, cursor: page.nextCursor as string })
      searchMs = performance.now() - started
      if (page.items.length === 0) throw new Error(`a cursor led to an empty page: ${JSON.stringify(query)}`)
    }
    matched += page.total
    const sku = catalog.skus[(i * 7919) % catalog.skus.length]
    started = performance.now()
    const product = await getProduct(store, generation, sku)
    const lookupMs = performance.now() - started
    if (product?.sku !== sku) throw new Error(`product ${sku} not found`)
    if (i >= warmupCount) {
      search.push(searchMs)
      lookup.push(lookupMs)
      // Each time counts in its kind and in each of the groups it belongs to.
      const filtered =
        query.category !== undefined || query.inStock !== undefined || query.minPrice !== undefined
      const groups = [
        kind,
        ...(filtered ? ['(any) filtered'] : ['(any) unfiltered']),
        ...(query.sort !== undefined ? ['(any) sorted by price or time'] : []),
        ...(paged ? ['(any) page 2 by cursor'] : []),
      ]
      for (const group of groups) byKind.set(group, [...(byKind.get(group) ?? []), searchMs])
    }
    timing(i + 1)
  }
  if (matched === 0) throw new Error('no query matched anything: the generated catalog is wrong')
  const ms = (n: number) => Math.round(n * 100) / 100
  console.error(`search (${engine}): ${catalog.events.length} events folded in ${buildSeconds.toFixed(1)} s`)
  if (noSecondPage > 0)
    console.error(`search (${engine}): ${noSecondPage} page-2 queries had one page only (timed as page 1)`)
  console.table(
    [...byKind]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([kind, times]) => ({
        engine,
        kind,
        queries: times.length,
        p50: ms(percentile(times, 0.5)),
        p99: ms(percentile(times, 0.99)),
        max: ms(Math.max(...times)),
      })),
  )
  return [
    row(scenario, engine, 'p50', percentile(search, 0.5), 'ms', percentile(lookup, 0.5)),
    row(scenario, engine, 'p99', percentile(search, 0.99), 'ms', percentile(lookup, 0.99)),
  ]
}

// --- A generated catalog -----------------------------------------------------------------

interface Catalog {
  events: ViewEvent[]
  skus: string[]
  categories: string[]
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

// Twelve departments, each with its own nouns and the adjectives its products are
// described with (a few shared: "wireless" audio and computers, "stainless" kitchen and
// outdoor), so a word's share of the catalog is what it would be in a real shop: a noun
// about 1%, an adjective a few percent, a brand 2.5%.
const departments: Record<string, { nouns: string[]; adjectives: string[] }> = {
  audio: {
    nouns: [
      'headphones',
      'speaker',
      'earbuds',
      'headset',
      'amplifier',
      'turntable',
      'soundbar',
      'microphone',
    ],
    adjectives: [
      'wireless',
      'noise-cancelling',
      'portable',
      'hi-fi',
      'compact',
      'bluetooth',
      'studio',
      'bass',
    ],
  },
  kitchen: {
    nouns: ['kettle', 'grinder', 'blender', 'toaster', 'skillet', 'whisk', 'saucepan', 'colander'],
    adjectives: [
      'stainless',
      'ceramic',
      'non-stick',
      'electric',
      'cast-iron',
      'compact',
      'dishwasher-safe',
      'bamboo',
    ],
  },
  garden: {
    nouns: ['hose', 'shovel', 'planter', 'trowel', 'sprinkler', 'rake', 'wheelbarrow', 'pruner'],
    adjectives: [
      'heavy-duty',
      'galvanised',
      'ergonomic',
      'weatherproof',
      'terracotta',
      'cordless',
      'solar',
      'foldable',
    ],
  },
  books: {
    nouns: ['novel', 'atlas', 'cookbook', 'biography', 'anthology', 'handbook', 'thriller', 'memoir'],
    adjectives: [
      'paperback',
      'hardcover',
      'illustrated',
      'annotated',
      'bestselling',
      'signed',
      'classic',
      'abridged',
    ],
  },
  toys: {
    nouns: ['puzzle', 'robot', 'blocks', 'kite', 'yoyo', 'doll', 'marbles', 'train'],
    adjectives: [
      'wooden',
      'educational',
      'plush',
      'remote-control',
      'magnetic',
      'colourful',
      'classic',
      'giant',
    ],
  },
  sports: {
    nouns: ['racket', 'helmet', 'football', 'dumbbell', 'yoga mat', 'bicycle', 'skateboard', 'gloves'],
    adjectives: [
      'lightweight',
      'adjustable',
      'professional',
      'carbon',
      'padded',
      'breathable',
      'waterproof',
      'foldable',
    ],
  },
  office: {
    nouns: ['stapler', 'notebook', 'monitor', 'keyboard', 'desk lamp', 'chair', 'whiteboard', 'shredder'],
    adjectives: [
      'ergonomic',
      'adjustable',
      'mechanical',
      'recycled',
      'magnetic',
      'quiet',
      'slim',
      'heavy-duty',
    ],
  },
  beauty: {
    nouns: ['serum', 'lotion', 'shampoo', 'brush', 'perfume', 'balm', 'cleanser', 'mascara'],
    adjectives: [
      'organic',
      'vegan',
      'fragrance-free',
      'hydrating',
      'travel-size',
      'gentle',
      'natural',
      'refillable',
    ],
  },
  outdoor: {
    nouns: ['tent', 'backpack', 'lantern', 'sleeping bag', 'compass', 'hammock', 'canteen', 'stove'],
    adjectives: [
      'waterproof',
      'ultralight',
      'stainless',
      'insulated',
      'rechargeable',
      'packable',
      'rugged',
      'solar',
    ],
  },
  pets: {
    nouns: ['leash', 'collar', 'litter box', 'aquarium', 'scratcher', 'kennel', 'feeder', 'chew toy'],
    adjectives: [
      'reflective',
      'automatic',
      'washable',
      'durable',
      'orthopedic',
      'natural',
      'adjustable',
      'calming',
    ],
  },
  computers: {
    nouns: ['laptop', 'mouse', 'router', 'webcam', 'docking station', 'ssd', 'printer', 'tablet'],
    adjectives: [
      'wireless',
      'gaming',
      'refurbished',
      'portable',
      'mechanical',
      'high-speed',
      'slim',
      'usb-c',
    ],
  },
  lighting: {
    nouns: [
      'bulb',
      'chandelier',
      'floor lamp',
      'spotlight',
      'fairy lights',
      'sconce',
      'dimmer',
      'nightlight',
    ],
    adjectives: [
      'dimmable',
      'smart',
      'warm-white',
      'energy-saving',
      'vintage',
      'rechargeable',
      'solar',
      'modern',
    ],
  },
}
const brands =
  `Acme Zenith Nordic Helios Orbit Crux Vela Lumen Boreal Kestrel Marlow Quill Tundra Sable Aurora
  Ferro Halcyon Indigo Juniper Larch Maple Nimbus Onyx Pallas Quartz Rowan Sorrel Talon Umber Vireo Willow
  Xylo Yarrow Zephyr Alder Birch Cedar Dune Ember Fjord`.split(/\s+/)

/** Filler words of descriptions: a few thousand made-up words, drawn with a Zipf-like skew. */
function fillerWords(count: number, rng: () => number): string[] {
  const syllables = 'ka lo mi ne ru sa ti vo ze ba de fi go hu ja ke li mo nu pa re si to vu'.split(' ')
  const words = new Set<string>()
  while (words.size < count) {
    const length = 2 + Math.floor(rng() * 3)
    words.add(Array.from({ length }, () => syllables[Math.floor(rng() * syllables.length)]).join(''))
  }
  return [...words]
}

export function generateCatalog(products: number): Catalog {
  const rng = random(2026)
  const pick = <T>(items: T[]) => items[Math.floor(rng() * items.length)]
  const categories = Object.keys(departments)
  const filler = fillerWords(3_000, rng)
  const zipf = () => filler[Math.floor(filler.length * rng() ** 3)]
  const offsets = new Map<string, number>()
  const t0 = Date.parse('2026-01-01T00:00:00.000Z')
  const events: ViewEvent[] = []
  const add = (type: string, key: string, data: Record<string, unknown>, atMs: number) => {
    const topic = type.startsWith('product.') ? 'products' : 'inventory'
    const partition = partitionForKey(key, 8)
    const offset = offsets.get(`${topic}/${partition}`) ?? 0
    offsets.set(`${topic}/${partition}`, offset + 1)
    events.push({
      event: createEvent({
        id: `${topic}-${partition}-${offset}`,
        type,
        subject: key,
        source: 'bench',
        data,
        time: new Date(atMs),
      }),
      position: { topic, partition, offset },
      timestampMs: atMs,
    })
  }
  const skus: string[] = []
  for (let i = 0; i < products; i++) {
    const sku = `SKU-${String(i).padStart(6, '0')}`
    skus.push(sku)
    // Some departments hold more than others.
    const category = categories[Math.floor(categories.length * rng() ** 1.5)]
    const { nouns, adjectives } = departments[category]
    const noun = pick(nouns)
    const adjective = pick(adjectives)
    const brand = pick(brands)
    const name = `${brand} ${adjective} ${noun} ${String.fromCharCode(65 + Math.floor(rng() * 26))}${Math.floor(rng() * 1000)}`
    const sentences = [`A ${adjective} ${noun} by ${brand}.`]
    const words = Array.from({ length: 10 + Math.floor(rng() * 40) }, zipf)
    sentences.push(`${words.join(' ')}.`)
    if (rng() < 0.3) sentences.push(`${pick(adjectives)} and easy to clean.`)
    if (rng() < 0.2) sentences.push(`Pairs well with a ${pick(departments[pick(categories)].nouns)}.`)
    // Prices from 1.00 to 2,000.00, log-uniform, in whole 0.50 steps.
    const priceMinor = Math.round((100 * 2000 ** rng()) / 50) * 50 + 49
    const at = t0 + Math.floor(rng() * 365 * 86_400_000)
    add(
      'product.upserted',
      sku,
      { sku, name, description: sentences.join(' '), category, priceMinor, currency: 'EUR' },
      at,
    )
    if (rng() < 0.85) {
      const delta = 1 + Math.floor(rng() * 200)
      add(
        'inventory.adjusted',
        sku,
        { sku, delta, reason: 'restock', onHand: delta, available: delta },
        at + 1000,
      )
    }
  }
  return { events, skus, categories }
}

/** A query as the bench runs it: what kind of query, and whether its second page is timed. */
export interface ShopperQuery {
  /** What the shopper typed: one word, one prefix, two words, brand + word, browse. */
  kind: string
  query: CatalogQuery
  /** Time the page after the first (the first is asked just before, untimed). */
  secondPage: boolean
}

/**
 * A mix of what shoppers type: a noun, a noun half typed (4 letters or more), an
 * adjective or a brand with a noun (the noun half typed now and then: the shopper is still
 * typing), a brand or an adjective alone, or no words at all (browsing a department); with
 * a department, in-stock or price filter now and then, now and then another sort than the
 * default, and one in ten the second page of the result.
 */
export function typicalQueries(catalog: Catalog, count: number): ShopperQuery[] {
  const rng = random(7)
  const pick = <T>(items: T[]) => items[Math.floor(rng() * items.length)]
  const typed = (word: string) => word.slice(0, Math.min(word.length, 4 + Math.floor(rng() * 3)))
  const queries: ShopperQuery[] = []
  for (let i = 0; i < count; i++) {
    const department = departments[pick(catalog.categories)]
    const noun = pick(department.nouns).split(' ')[0]
    const r = rng()
    let q: string | undefined
    let kind: string
    if (r < 0.35) [q, kind] = [noun, 'one word']
    else if (r < 0.5) [q, kind] = [typed(noun), 'one prefix']
    else if (r < 0.7) {
      const half = rng() < 0.4
      q = `${pick(department.adjectives)} ${half ? typed(noun) : noun}`
      kind = 'two words'
    } else if (r < 0.8) [q, kind] = [`${pick(brands)} ${noun}`, 'brand + word']
    else if (r < 0.9) [q, kind] = [rng() < 0.5 ? pick(brands) : pick(department.adjectives), 'one word']
    else kind = 'browse' // no words
    const query: CatalogQuery = { q, limit: 20 }
    if (q === undefined || rng() < 0.2) query.category = pick(catalog.categories)
    if (rng() < 0.25) query.inStock = true
    if (rng() < 0.2) {
      query.minPrice = 1_000 * Math.floor(rng() * 10)
      query.maxPrice = query.minPrice + 5_000 + 1_000 * Math.floor(rng() * 20)
    }
    const s = rng()
    if (s < 0.1) query.sort = 'price-asc'
    else if (s < 0.2) query.sort = 'price-desc'
    else if (s < 0.25) query.sort = 'newest'
    queries.push({ kind, query, secondPage: rng() < 0.1 })
  }
  return queries
}
