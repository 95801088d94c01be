// The read path: answers come from the views (never a service's store), through a cache,
// each saying what stream position it reflects and how stale its view is. A request that
// carries a write's consistency token waits (bounded) until the view has reached it.
import { Type as T } from '@sinclair/typebox'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { FlagKeyParam, IdParam, NoQuery, patternSays, SkuParam } from '../contracts/commands.ts'
import { decodeConsistencyToken } from '../contracts/consistency.ts'
import type { Cache } from '../engines/cache/port.ts'
import type { RecordPosition } from '../engines/stream/port.ts'
import { MercatoError } from '../platform/errors.ts'
import { defaultFlagDefinitions, documentOf, readFlagDefinitions } from '../platform/flags.ts'
import { authorize, type Identity, requireVerifiedCaller } from '../platform/identity/guard.ts'
import type { Metrics } from '../platform/metrics.ts'
import { problemDocs } from '../platform/problem-docs.ts'
import { answerSchemas, readAnswers } from './answer-docs.ts'
import { adjustmentCacheKey, getAdjustment } from './catalog/adjustments.ts'
import { type CatalogQuery, getProduct, productCacheKey, searchCatalog } from './catalog/catalog-view.ts'
import { distinctWordsOf, queryWordsMax } from './catalog/text.ts'
import {
  customer360CacheKey,
  readCustomer360,
  registrationRejection,
} from './customer-360/customer-360-view.ts'
import type { Freshness } from './freshness.ts'
import { customerOrdersCacheKey, orderCacheKey } from './order-status/order-document.ts'
import { type CachedAnswer, etagOf, type QueryCache, queryCacheKey } from './query-cache.ts'
import { partitionKey, type ViewName } from './view.ts'
import type { Views } from './views.ts'
import { readWebhook, readWebhooks, webhookCacheKey, webhooksListCacheKey } from './webhooks/webhooks-view.ts'

export interface QueryApiOptions {
  identity: Identity
  http: FastifyInstance
  views: Views
  freshness: Freshness
  queryCache: QueryCache
  /** The key-value port, where the flags component keeps the flag definitions. */
  keyValue: Cache
  metrics: Metrics
  /** Longest wait for a consistency token. */
  readWaitMs: number
  /**
   * Whether every change to `generation` of `view` invalidates its entries in this process's
   * cache (a shared cache, or this process's projector applying all of it). When not, a cached answer
   * is served only while the view has not moved past it.
   */
  invalidatedHere: (view: ViewName, generation: number) => boolean
}

const strict = { additionalProperties: false }
const whole = (max: number) =>
  T.String({ pattern: `^\\d{1,${max}}$`, ...patternSays(`must be a whole number of at most ${max} digits`) })
const pageLimit = T.String({
  pattern: '^(100|[1-9][0-9]?)$',
  description: '1 to 100, default 20',
  ...patternSays('must be a whole number from 1 to 100'),
})
const SearchQuery = T.Object(
  {
    q: T.Optional(T.String({ maxLength: 200 })),
    // No category is blank (PUT /v1/products refuses one): a blank filter is a mistake.
    category: T.Optional(
      T.String({ minLength: 1, maxLength: 100, pattern: '\\S', ...patternSays('must not be blank') }),
    ),
    minPrice: T.Optional(whole(13)),
    maxPrice: T.Optional(whole(13)),
    currency: T.Optional(
      T.String({
        pattern: '^[A-Z]{3}$',
        ...patternSays('must be a currency code of three capital letters, such as USD'),
        description:
          'only products priced in this currency (ISO 4217), so that a price range or sort compares like with like',
      }),
    ),
    inStock: T.Optional(T.Union([T.Literal('true'), T.Literal('false')])),
    sort: T.Optional(
      T.Union(['relevance', 'price-asc', 'price-desc', 'name', 'newest'].map((s) => T.Literal(s))),
    ),
    cursor: T.Optional(T.String({ minLength: 1, maxLength: 1000 })),
    limit: T.Optional(pageLimit),
  },
  strict,
)
const PageQuery = T.Object(
  {
    cursor: T.Optional(T.String({ minLength: 1, maxLength: 500 })),
    limit: T.Optional(pageLimit),
  },
  strict,
)
const tokenHeader = T.Object({
  'mercato-consistency-token': T.Optional(
    T.String({
      maxLength: 200,
      description: 'A write answer’s consistency token: wait until the view reflects that write',
    }),
  ),
  // No bound of its own: a list of many tags is valid, and the server bounds header sizes.
  'if-none-match': T.Optional(T.String()),
})

/** Written once per positions object: a cached answer's are shared by all its hits. */
const positionHeaders = new WeakMap<Record<string, number>, string>()

function positionHeader(positions: Record<string, number>): string {
  let header = positionHeaders.get(positions)
  if (header === undefined) {
    header = Object.entries(positions)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([key, next]) => `${key}=${next}`)
      .join(',')
    positionHeaders.set(positions, header)
  }
  return header
}

export async function startQueryApi(options: QueryApiOptions): Promise<void> {
  const { http, views, freshness, queryCache, identity } = options
  // Every route of this component verifies its caller; each handler asks the data policy.
  const onRequest = requireVerifiedCaller(identity, 'query-api')
  const readCatalog = (request: FastifyRequest) =>
    authorize(identity, request, 'catalog.read', { type: 'Catalog', id: 'catalog' })
  const readCustomer = (request: FastifyRequest, customerId: string) =>
    authorize(identity, request, 'customer.read', { type: 'Customer', id: customerId, attrs: { customerId } })
  const served = options.metrics.counter(
    'mercato_query_answers_total',
    'Query answers, by view and cache result.',
    ['view', 'cache'],
  )

  interface Answer {
    view: ViewName
    /** Cached under this key (of the view's generation); uncached when undefined. */
    key?: string
    read: (generation: number) => Promise<unknown | undefined>
    notFound: string
    /** For a document that belongs to a customer: who, and the check that the caller may see it. */
    owned?: { ownerOf: (document: unknown) => string; check: (owner: string) => void }
  }

  async function answer(request: FastifyRequest, reply: FastifyReply, spec: Answer) {
    const token = tokenOf(request)
    const waited = token ? await freshness.waitFor(spec.view, token, options.readWaitMs) : undefined
    const reached = token ? waited !== undefined : undefined
    // The generation the write was seen in: one a rebuild made live meanwhile may not have it yet.
    const generation = waited?.generation ?? freshness.generation(spec.view)
    const cacheKey = spec.key === undefined ? undefined : queryCacheKey(spec.view, generation, spec.key)
    let cached: CachedAnswer | undefined
    let previous: string | undefined
    // Whether every change of this view reaches this process's cache as an invalidation.
    const heard = cacheKey !== undefined && options.invalidatedHere(spec.view, generation)
    if (cacheKey) {
      const found = await queryCache.lookup(cacheKey)
      previous = found.raw
      // An entry read before the token's write is not good enough for this reader; nor one
      // the view has moved past when the change's invalidation may not reach this cache.
      if (
        found.answer &&
        (!token ||
          !waited ||
          (found.answer.positions[partitionKey(token.topic, token.partition)] ?? 0) >= waited.from) &&
        (heard || !freshness.movedPast(spec.view, found.answer.positions))
      )
        cached = found.answer
    }
    const hit = cached !== undefined
    if (!cached) {
      const positions = await freshness.positions(spec.view, generation)
      // A refusal (not found, a registration that was refused) says how fresh it is too.
      const refused = (error: unknown): never => {
        setFreshness(reply, spec.view, positions, reached)
        throw error
      }
      const document = await spec.read(generation).catch(refused)
      if (document === undefined) refused(new MercatoError('not-found', 404, spec.notFound))
      const body = JSON.stringify(document)
      const owner = spec.owned?.ownerOf(document)
      cached = { positions, etag: etagOf(body), body, ...(owner !== undefined ? { owner } : {}) }
      if (cacheKey) await queryCache.fill(cacheKey, previous, cached)
    }
    // Checked on hits and misses alike, before anything of the document leaves; a refusal
    // that hides the document says what a document that does not exist says: the view's
    // current position (a cached answer's would tell the two apart), and no cache verdict.
    if (spec.owned) {
      try {
        spec.owned.check(cached.owner ?? '')
      } catch (error) {
        const positions = hit ? await freshness.positions(spec.view, generation) : cached.positions
        setFreshness(reply, spec.view, positions, reached)
        throw error
      }
    }
    // A hit no invalidation reaches is as fresh as this process's last look at the view.
    const unheard = hit && !heard
    setFreshness(reply, spec.view, cached.positions, reached, unheard)
    const cache = cacheKey === undefined ? 'none' : hit ? 'hit' : 'miss'
    reply.header('mercato-cache', cache)
    served.inc({ view: spec.view, cache })
    reply.header('etag', cached.etag).header('cache-control', 'private, no-cache')
    if (noneMatchHits(request.headers['if-none-match'], cached.etag)) return reply.code(304).send()
    return reply.type('application/json; charset=utf-8').send(cached.body)
  }

  function setFreshness(
    reply: FastifyReply,
    view: ViewName,
    positions: Record<string, number>,
    reached?: boolean,
    unheard = false,
  ) {
    const staleness = freshness.stalenessMs(view)
    reply
      .header('mercato-position', positionHeader(positions))
      .header(
        'mercato-staleness-ms',
        String(Math.round(unheard ? Math.max(staleness, freshness.sinceLookedMs(view)) : staleness)),
      )
      .header('mercato-stale', String(reached === false))
  }

  // Product routes are public: no 403 (a bad token is still a 401).
  const publicRead = [400, 401, 404, 429, 503]
  const ownedRead = [400, 401, 403, 404, 429, 503]
  const docs = (operationId: string, summary: string, tag: string) => ({
    operationId,
    summary,
    tags: [tag],
    headers: tokenHeader,
    description:
      'Every answer says which stream position it reflects and how stale its view is (see its headers). ' +
      'Send Mercato-Consistency-Token to wait for an earlier write, If-None-Match for a 304.',
  })

  http.get(
    '/v1/products',
    {
      onRequest,
      config: problemDocs(
        publicRead,
        [],
        readAnswers(answerSchemas.CatalogPage, 'A page of matching products, with facet counts'),
      ),
      schema: { ...docs('searchProducts', 'Search the catalog', 'catalog'), querystring: SearchQuery },
    },
    (request, reply) => {
      readCatalog(request)
      const query = searchQueryOf(request.query as SearchQueryString)
      return answer(request, reply, {
        view: 'catalog',
        read: (g) => searchCatalog(views.store, g, query),
        notFound: 'no catalog',
      })
    },
  )

  http.get(
    '/v1/products/:sku',
    {
      onRequest,
      config: problemDocs(publicRead, [], readAnswers(answerSchemas.Product, 'The product')),
      schema: {
        ...docs('getProduct', 'One product, with its availability', 'catalog'),
        params: SkuParam,
        querystring: NoQuery,
      },
    },
    (request, reply) => {
      readCatalog(request)
      const { sku } = request.params as { sku: string }
      return answer(request, reply, {
        view: 'catalog',
        key: productCacheKey(sku),
        read: (g) => getProduct(views.store, g, sku),
        notFound: `no product ${sku} in the catalog`,
      })
    },
  )

  http.get(
    '/v1/orders/:id',
    {
      onRequest,
      config: problemDocs(ownedRead, [], readAnswers(answerSchemas.Order, 'The order')),
      schema: {
        ...docs('getOrder', 'An order: status, timeline, lines and totals, payment and shipment', 'orders'),
        params: IdParam,
        querystring: NoQuery,
      },
    },
    (request, reply) => {
      const { id } = request.params as { id: string }
      return answer(request, reply, {
        view: 'order-status',
        key: orderCacheKey(id),
        read: (g) => views.orderStatus.order(g, id),
        notFound: `no order ${id}`,
        // Someone else's order is not found, exactly like an order that does not exist.
        owned: {
          ownerOf: (document) => (document as { customerId: string | null }).customerId ?? '',
          check: (customerId) =>
            authorize(
              identity,
              request,
              'order.read',
              { type: 'Order', id, attrs: { customerId } },
              { hideExistence: true, notFoundDetail: `no order ${id}` },
            ),
        },
      })
    },
  )

  http.get(
    '/v1/customers/:id/orders',
    {
      onRequest,
      config: problemDocs(
        ownedRead,
        [],
        readAnswers(answerSchemas.CustomerOrders, 'A page of the customer’s orders, newest first'),
      ),
      schema: {
        ...docs('listCustomerOrders', "A customer's orders, newest first", 'orders'),
        params: IdParam,
        querystring: PageQuery,
      },
    },
    (request, reply) => {
      const { id } = request.params as { id: string }
      readCustomer(request, id)
      const { cursor, limit } = request.query as { cursor?: string; limit?: string }
      const after = cursor === undefined ? undefined : orderCursorOf(cursor, id)
      const size = limit === undefined ? 20 : Number(limit)
      return answer(request, reply, {
        view: 'order-status',
        // Only the first page of the default size is cached; it is the one shoppers load.
        key: after === undefined && size === 20 ? customerOrdersCacheKey(id) : undefined,
        read: async (g) => {
          const page = await views.orderStatus.customerOrders(g, id, size, after)
          return {
            customerId: id,
            items: page.items,
            // The customer's too: a cursor goes on with the list it came from, and no other.
            nextCursor: page.next
              ? Buffer.from(JSON.stringify({ ...page.next, customerId: id })).toString('base64url')
              : null,
          }
        },
        notFound: `no customer ${id}`,
      })
    },
  )

  http.get(
    '/v1/customers/:id/360',
    {
      onRequest,
      config: problemDocs(
        ownedRead,
        [],
        readAnswers(answerSchemas.Customer360, 'The customer’s 360 document'),
      ),
      schema: {
        ...docs('getCustomer360', 'Everything about one customer, denormalized', 'customers'),
        params: IdParam,
        querystring: NoQuery,
      },
    },
    (request, reply) => {
      const { id } = request.params as { id: string }
      readCustomer(request, id)
      return answer(request, reply, {
        view: 'customer-360',
        key: customer360CacheKey(id),
        read: async (g) => {
          const document = await readCustomer360(views.store, g, id)
          if (document) return document
          // The id of a registration that was refused: say so, not only "no customer".
          const rejected = await registrationRejection(views.store, g, id)
          if (rejected)
            throw new MercatoError(
              'registration-rejected',
              404,
              `the registration of ${id} was refused: ${rejected}`,
            )
          return undefined
        },
        notFound: `no customer ${id}`,
      })
    },
  )

  http.get(
    '/v1/inventory/:sku/adjustments/:id',
    {
      onRequest,
      config: problemDocs(
        [400, 401, 403, 404, 429, 503],
        [],
        readAnswers(answerSchemas.Adjustment, 'The adjustment and what came of it'),
      ),
      schema: {
        ...docs('getAdjustment', 'A stock adjustment: pending, applied, or refused and why', 'inventory'),
        params: T.Object({ ...SkuParam.properties, ...IdParam.properties }, strict),
        querystring: NoQuery,
      },
    },
    (request, reply) => {
      authorize(identity, request, 'stock.adjust', { type: 'Catalog', id: 'catalog' })
      const { sku, id } = request.params as { sku: string; id: string }
      return answer(request, reply, {
        view: 'catalog',
        key: adjustmentCacheKey(sku, id),
        read: async (g) => {
          const adjustment = await getAdjustment(views.store, g, id)
          return adjustment?.sku === sku ? adjustment : undefined
        },
        notFound: `no adjustment ${id} of ${sku}`,
      })
    },
  )

  const readWebhookEndpoints = (request: FastifyRequest) =>
    authorize(identity, request, 'webhook.read', { type: 'Webhooks', id: 'webhooks' })
  http.get(
    '/v1/webhooks',
    {
      onRequest,
      config: problemDocs(
        [400, 401, 403, 429, 503],
        [],
        readAnswers(answerSchemas.WebhookList, 'The webhook endpoints in use'),
      ),
      schema: { ...docs('listWebhooks', 'The webhook endpoints in use', 'webhooks'), querystring: NoQuery },
    },
    (request, reply) => {
      readWebhookEndpoints(request)
      return answer(request, reply, {
        view: 'webhooks',
        key: webhooksListCacheKey,
        read: async (g) => ({ endpoints: await readWebhooks(views.store, g) }),
        notFound: 'no webhooks view',
      })
    },
  )
  http.get(
    '/v1/webhooks/:id',
    {
      onRequest,
      config: problemDocs(
        [400, 401, 403, 404, 429, 503],
        [],
        readAnswers(answerSchemas.WebhookEndpoint, 'The webhook endpoint (never its secret)'),
      ),
      schema: {
        ...docs('getWebhook', 'One webhook endpoint, removed or not (never its secret)', 'webhooks'),
        params: IdParam,
        querystring: NoQuery,
      },
    },
    (request, reply) => {
      readWebhookEndpoints(request)
      const { id } = request.params as { id: string }
      return answer(request, reply, {
        view: 'webhooks',
        key: webhookCacheKey(id),
        read: (g) => readWebhook(views.store, g, id),
        notFound: `no webhook endpoint ${id}`,
      })
    },
  )

  // Flags are no view: the flags component folds every flag.changed into one flagd document in
  // the key-value port, which these read as it is now (a PUT shows within a second; a
  // consistency token is not waited for).
  const readFlags = async (request: FastifyRequest) => {
    authorize(identity, request, 'flag.read', { type: 'Flags', id: 'flags' })
    return (await readFlagDefinitions(options.keyValue)) ?? defaultFlagDefinitions
  }
  const flagDocs = (operationId: string, summary: string) => ({
    operationId,
    summary,
    tags: ['flags'],
    description: 'The definitions in effect, as the flags component keeps them; not a view, so not cached.',
  })
  http.get(
    '/v1/flags',
    {
      onRequest,
      config: problemDocs([400, 401, 403, 429, 503], [], {
        200: { description: 'Every flag, as a flagd flag file', type: 'object' },
      }),
      schema: { ...flagDocs('listFlags', 'Every feature flag (a flagd flag file)'), querystring: NoQuery },
    },
    async (request, reply) => {
      const flags = await readFlags(request)
      reply.header('cache-control', 'no-store').type('application/json')
      return documentOf(flags)
    },
  )
  http.get(
    '/v1/flags/:key',
    {
      onRequest,
      config: problemDocs([400, 401, 403, 404, 429, 503], [], {
        200: { description: 'The flag definition, as PUT takes it', type: 'object' },
      }),
      schema: {
        ...flagDocs('getFlag', 'One feature flag (flagd flag definition)'),
        params: FlagKeyParam,
        querystring: NoQuery,
      },
    },
    async (request, reply) => {
      const { key } = request.params as { key: string }
      const flags = await readFlags(request)
      if (!Object.hasOwn(flags, key)) throw new MercatoError('not-found', 404, `no flag ${key}`)
      const definition = flags[key]
      reply.header('cache-control', 'no-store')
      return definition
    },
  )
}

/**
 * Whether an If-None-Match header matches the current representation's ETag (RFC 9110
 * §13.1.2): `*` matches any, a list matches when one member does, and the comparison is
 * weak (`W/"x"` and `"x"` are the same tag).
 */
export function noneMatchHits(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false
  if (header.trim() === '*') return true
  const opaque = (tag: string) => tag.replace(/^W\//, '')
  // An entity tag may hold a comma, so the list is read tag by tag, not split on commas.
  const tags = header.match(/(?:W\/)?"[^"]*"/g) ?? []
  return tags.some((tag) => opaque(tag) === opaque(etag))
}

function tokenOf(request: FastifyRequest): RecordPosition | undefined {
  const raw = request.headers['mercato-consistency-token']
  if (raw === undefined) return undefined
  const token = typeof raw === 'string' ? decodeConsistencyToken(raw) : undefined
  if (!token) {
    throw new MercatoError(
      'invalid-consistency-token',
      400,
      'Mercato-Consistency-Token is not a token Mercato wrote',
      {
        errors: [{ in: 'header', field: 'mercato-consistency-token', message: 'is not a consistency token' }],
      },
    )
  }
  return token
}

type SearchQueryString = {
  q?: string
  category?: string
  minPrice?: string
  maxPrice?: string
  currency?: string
  inStock?: 'true' | 'false'
  sort?: CatalogQuery['sort']
  cursor?: string
  limit?: string
}

function searchQueryOf(raw: SearchQueryString): CatalogQuery {
  const query: CatalogQuery = {
    q: raw.q,
    category: raw.category,
    minPrice: raw.minPrice === undefined ? undefined : Number(raw.minPrice),
    maxPrice: raw.maxPrice === undefined ? undefined : Number(raw.maxPrice),
    currency: raw.currency,
    inStock: raw.inStock === undefined ? undefined : raw.inStock === 'true',
    sort: raw.sort,
    cursor: raw.cursor,
    limit: raw.limit === undefined ? 20 : Number(raw.limit),
  }
  // Each word is a prefix scan: past the bound a query is refused, not cut short (a cut
  // query would claim matches its later words rule out).
  if (distinctWordsOf(query.q).length > queryWordsMax) {
    throw new MercatoError('invalid-query', 400, `q has more than ${queryWordsMax} different words`, {
      errors: [
        {
          in: 'querystring',
          field: '/q',
          message: `must not have more than ${queryWordsMax} different words`,
        },
      ],
    })
  }
  if (query.minPrice !== undefined && query.maxPrice !== undefined && query.minPrice > query.maxPrice) {
    throw new MercatoError('invalid-query', 400, 'minPrice is above maxPrice', {
      errors: [{ in: 'querystring', field: '/minPrice', message: 'must not be above maxPrice' }],
    })
  }
  return query
}

function orderCursorOf(cursor: string, customerId: string): { placedAt: string; orderId: string } {
  try {
    const parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString())
    // What a page's last order gives: its event's time (RFC 3339), and an id; and whose list it was.
    const {
      placedAt,
      orderId,
      customerId: listed,
    } = parsed as {
      placedAt?: unknown
      orderId?: unknown
      customerId?: unknown
    }
    if (
      listed === customerId &&
      typeof placedAt === 'string' &&
      /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(placedAt) &&
      !Number.isNaN(Date.parse(placedAt)) &&
      typeof orderId === 'string' &&
      /^[A-Za-z0-9._:-]{1,64}$/.test(orderId)
    )
      return { placedAt, orderId }
  } catch {}
  throw new MercatoError('invalid-cursor', 400, 'cursor is not one this API gave for this customer', {
    errors: [
      { in: 'querystring', field: '/cursor', message: 'is not a cursor this API gave for this customer' },
    ],
  })
}
