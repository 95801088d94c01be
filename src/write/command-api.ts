// The write path: validate (statelessly), make idempotent, append one event, answer 202
// with the id, its Location and a consistency token naming the stream position.
import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify'
import {
  Accepted,
  AdjustInventory,
  CancelOrder,
  FlagKeyParam,
  IdParam,
  NoQuery,
  PlaceOrder,
  RegisterCustomer,
  RegisterWebhook,
  SetFlag,
  SkuParam,
  UpsertProduct,
} from '../contracts/commands.ts'
import { encodeConsistencyToken } from '../contracts/consistency.ts'
import { type CloudEvent, createEvent, type NewEvent } from '../contracts/envelope.ts'
import { eventTypeMatches, webhookEventTypes } from '../contracts/events.ts'
import type { Store, Tx } from '../engines/store/port.ts'
import type { EventStream } from '../engines/stream/event-stream.ts'
import { errorMessage, MercatoError } from '../platform/errors.ts'
import { customerContext, type FlagReader, validateFlagDefinition } from '../platform/flags.ts'
import {
  authorize,
  clientAddressOf,
  type Identity,
  principalOf,
  requireVerifiedCaller,
} from '../platform/identity/guard.ts'
import { isStaff } from '../platform/identity/tokens.ts'
import { uuidv7 } from '../platform/ids.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'
import { privateAddressReason } from '../platform/outbound-url.ts'
import { hashPassword } from '../platform/passwords.ts'
import { problemDocs } from '../platform/problem-docs.ts'
import { currentTraceparent, inSpan, SpanKind } from '../platform/tracing.ts'
import { type FieldIssue, headerCount, invalidRequest, reportWithValidation } from '../runtime/http.ts'
import { bodyOptional } from '../runtime/openapi.ts'
import { fingerprintOf, IdempotencyKeys, idempotencyMigrations, type KeyClaim } from './idempotency.ts'
import { SagaBacklog } from './saga-backlog.ts'

export interface CommandApiOptions {
  http: FastifyInstance
  stream: EventStream
  store: Store
  flags: FlagReader
  log: Logger
  metrics: Metrics
  idempotencyKeyTtlMs: number
  idempotencyLockMs: number
  orderLinesMax: number
  /** Events the order saga may have waiting before new orders are refused (0: never). */
  orderBacklogMax: number
  /** Expected wait in the saga's backlog past which new orders are refused (0: never). */
  orderWaitMaxMs: number
  identity: Identity
  /** Webhook URLs may name loopback, link-local or private hosts (a test or a closed network). */
  webhookAllowPrivateHosts: boolean
}

const source = 'mercato/command-api'
const keyPattern = /^[\x21-\x7e]{1,255}$/

/** Per request, what its command's rules found (asked once, before validation). */
const ruleIssues = new WeakMap<FastifyRequest, FieldIssue[]>()

/** Which customer each order accepted here belongs to: cancellation is authorized against it. */
const orderOwnerMigrations = [
  {
    id: 'command-api-0001-order-owners',
    sql: `CREATE TABLE IF NOT EXISTS command_order_owners (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL)`,
  },
]

interface CommandSpec {
  /** Throws unless the caller may send this command (the data policy, asked here again). */
  authorize: (request: FastifyRequest) => Promise<void> | void
  /** Creating commands require an Idempotency-Key; others honour one when it is sent. */
  keyRequired: boolean
  /** Throws OverloadedError when the command cannot be taken now (a replay of one taken is still answered). */
  admit?: () => void
  /** Runs in the transaction that claims the Idempotency-Key (no second transaction per request). */
  onClaimed?: (tx: Tx, id: string, request: FastifyRequest) => Promise<void>
  newId: () => string
  /**
   * The resource the command acts on, when it is not one the command creates: the answer's
   * `id` (a cancel's is its order's). The command's own id stays the event's.
   */
  resourceOf?: (request: FastifyRequest) => string
  /**
   * What the schema cannot say about a body (duplicate lines, a delta's sign, a webhook URL).
   * Asked before validation, so a body refused for its shape names these fields too: it
   * must take any body, and look only at the fields that have the right type.
   */
  rules?: (body: unknown, request: FastifyRequest) => Promise<FieldIssue[]> | FieldIssue[]
  events: (id: string, request: FastifyRequest) => Promise<Array<Omit<NewEvent, 'source'>>>
  location?: (id: string, request: FastifyRequest) => string
  extraBody?: (id: string, events: CloudEvent[]) => Record<string, unknown>
}

export async function startCommandApi(options: CommandApiOptions): Promise<{ stop(): Promise<void> }> {
  const { http, stream, store, flags, log, metrics, identity } = options
  await store.migrate([...idempotencyMigrations, ...orderOwnerMigrations])
  const onRequest = requireVerifiedCaller(identity, 'command-api')
  const may = (action: string, type: string, id: string) => (request: FastifyRequest) =>
    authorize(identity, request, action, { type, id })
  const keys = new IdempotencyKeys(store, {
    ttlMs: options.idempotencyKeyTtlMs,
    lockMs: options.idempotencyLockMs,
  })
  const backlog = new SagaBacklog(
    stream,
    { eventsMax: options.orderBacklogMax, waitMaxMs: options.orderWaitMaxMs, intervalMs: 250 },
    log,
    metrics,
  )
  backlog.start()
  const accepted = metrics.counter('mercato_commands_total', 'Commands answered, by type and outcome.', [
    'command',
    'outcome',
  ])

  async function handle(name: string, spec: CommandSpec, request: FastifyRequest, reply: FastifyReply) {
    await spec.authorize(request)
    const scope = scopeOf(request)
    const keyError = keyErrorOf(request, spec.keyRequired)
    if (keyError) throw keyError
    const header = request.headers['idempotency-key'] as string | undefined
    const key = header === undefined ? undefined : keyOf(header)
    if (key === undefined) spec.admit?.()
    let id = spec.newId()
    if (key !== undefined) {
      const fingerprint = fingerprintOf(request.method, request.url, request.body)
      // Admission refuses only a request that would start work: a replay is still answered.
      // Refused now, the key is only looked at (one read); admitted, it is claimed, and a
      // refusal in the claim's transaction (the backlog grew meanwhile) leaves it unclaimed.
      const refusal = refusalOf(spec)
      let claim: KeyClaim
      if (refusal) {
        const taken = await keys.peek(scope, key, fingerprint)
        if (!taken) throw refusal
        claim = taken
      } else {
        claim = await keys.claim(
          scope,
          key,
          fingerprint,
          () => id,
          async (tx, resourceId) => {
            spec.admit?.()
            await spec.onClaimed?.(tx, resourceId, request)
          },
        )
      }
      if (claim.kind === 'other-request') {
        accepted.inc({ command: name, outcome: 'key-reused' })
        throw new MercatoError(
          'idempotency-key-reused',
          422,
          'this Idempotency-Key was used for another request; use a new key for a new request',
        )
      }
      if (claim.kind === 'in-flight') {
        accepted.inc({ command: name, outcome: 'key-in-flight' })
        reply.header('retry-after', '1')
        throw new MercatoError(
          'idempotency-key-in-flight',
          409,
          'a request with this Idempotency-Key is in progress',
        )
      }
      if (claim.kind === 'replay') {
        accepted.inc({ command: name, outcome: 'replayed' })
        reply.headers({ ...claim.headers, 'idempotent-replayed': 'true' })
        return reply.code(claim.status).send(claim.body)
      }
      id = claim.resourceId
    }
    let answer: { status: number; body: Record<string, unknown>; headers: Record<string, string> }
    try {
      // Refused after the key was looked at, so that a retry of a request taken before
      // (the lines flag lowered since) still gets its stored answer; the key is let go.
      // Said as a schema refusal says it: every bad field, in the same words.
      const broken = ruleIssues.get(request) ?? []
      if (broken.length > 0) throw invalidRequest([], broken)
      // The command's span continues the caller's trace (a W3C traceparent header) or starts
      // one; its events carry it, so one trace follows the order from the request on.
      const header = request.headers.traceparent
      const { events, position } = await inSpan(
        `${request.method} ${request.routeOptions.url}`,
        {
          traceparent: typeof header === 'string' ? header : undefined,
          kind: SpanKind.SERVER,
          correlationId: request.id,
        },
        async () => {
          const traceparent = currentTraceparent()
          const events = (await spec.events(id, request)).map((event, i) =>
            createEvent({
              ...event,
              source,
              // The first event's id is the command's id, so a retried command is the same event.
              id: i === 0 ? id : `${id}:${i}`,
              cause: { requestId: request.id },
              ...(traceparent ? { traceparent } : {}),
            }),
          )
          const [position] = await stream.publish(events)
          return { events, position }
        },
      )
      const token = encodeConsistencyToken(position)
      const headers: Record<string, string> = { 'mercato-consistency-token': token }
      if (spec.location) headers.location = spec.location(id, request)
      answer = {
        status: 202,
        body: {
          id: spec.resourceOf?.(request) ?? id,
          status: 'accepted',
          consistencyToken: token,
          ...spec.extraBody?.(id, events),
        },
        headers,
      }
    } catch (error) {
      if (key !== undefined) await keys.release(scope, key).catch(() => {})
      accepted.inc({ command: name, outcome: 'failed' })
      throw error
    }
    if (key !== undefined) {
      await keys.complete(scope, key, answer.status, answer.body, answer.headers).catch((error) => {
        // The event is appended; a retry after the lock time takes the key over with the same id.
        log.warn({ err: errorMessage(error), command: name }, 'idempotency answer not stored')
      })
    }
    accepted.inc({ command: name, outcome: 'accepted' })
    reply.headers(answer.headers)
    return reply.code(answer.status).send(answer.body)
  }

  const idempotencyHeader = {
    type: 'object',
    properties: {
      'idempotency-key': { type: 'string', description: 'unique per request; see the IETF draft' },
    },
  }
  const responses = (extra: Record<string, unknown> = {}) => ({
    202: { ...Accepted, properties: { ...Accepted.properties, ...extra } },
  })
  const problems = [400, 401, 403, 409, 415, 422, 429, 503]

  /** A command route: its schema, documented with the problems it may answer and the key when it is required. */
  function command(
    method: 'POST' | 'PUT' | 'DELETE',
    url: string,
    { notFound, ...schema }: FastifySchema & { summary: string; tags: string[]; notFound?: true },
    name: string,
    spec: CommandSpec,
  ) {
    http.route({
      method,
      url,
      onRequest,
      schema: {
        // No command takes query parameters: one sent is a mistake, said as for a body's field.
        querystring: NoQuery,
        ...schema,
        headers: idempotencyHeader,
        // A body that requires nothing may be left out (see preValidation): said in the document.
        ...((schema.body as { required?: string[] } | undefined)?.required?.length
          ? {}
          : { [bodyOptional]: true }),
      },
      // No body at all is read as an empty one: validation then names what is missing (and a
      // cancel, whose every field is optional, needs none). A bad Idempotency-Key is named
      // with the body's bad fields when the body is refused first.
      preValidation: async (request) => {
        // (`null` is a body, and not an object: validation says so.)
        if (request.body === undefined) request.body = {}
        // No command takes a query parameter: one is named beside the body's bad fields, not
        // only once the body is right (fastify stops at the first part that fails).
        for (const name of Object.keys(request.query as Record<string, unknown>))
          reportWithValidation(request, {
            in: 'querystring',
            field: `/${name}`,
            message: 'is not a known field',
          })
        const keyError = keyErrorOf(request, spec.keyRequired)
        for (const issue of (keyError?.extensions?.errors as FieldIssue[] | undefined) ?? [])
          reportWithValidation(request, issue)
        const broken = spec.rules ? await spec.rules(request.body, request) : []
        ruleIssues.set(request, broken)
        for (const issue of broken) reportWithValidation(request, issue)
      },
      config: problemDocs(
        notFound ? [...problems, 404].sort((a, b) => a - b) : problems,
        spec.keyRequired ? ['idempotency-key'] : [],
        {},
        {
          ...(spec.location
            ? { location: { type: 'string', description: 'where the resource will be read' } }
            : {}),
          'mercato-consistency-token': {
            type: 'string',
            description: 'the stream position of this write: send it with a read to see the write',
          },
          'idempotent-replayed': {
            type: 'string',
            description: '"true" when this is the stored answer of an earlier request with the same key',
          },
        },
      ),
      handler: (request, reply) => handle(name, spec, request, reply),
    })
  }

  command(
    'POST',
    '/v1/orders',
    {
      operationId: 'placeOrder',
      summary: 'Place an order',
      tags: ['orders'],
      body: PlaceOrder,
      response: responses(),
    },
    'place-order',
    {
      authorize: (request) => {
        const customerId = customerIdOf(request)
        authorize(identity, request, 'order.place', {
          type: 'Customer',
          id: customerId,
          attrs: { customerId },
        })
        const claimed = (request.body as PlaceOrder).customerId
        if (claimed !== undefined && claimed !== customerId) {
          // Who the order is for comes from the token, never from the body.
          throw new MercatoError('forbidden-field', 403, 'customerId must be your own customer id', {
            errors: [{ in: 'body', field: '/customerId', message: 'is not the signed-in customer' }],
          })
        }
      },
      keyRequired: true,
      admit: () => backlog.admit(),
      // An order refused after this (its lines) leaves an owner row and no order: a cancel
      // of it by its owner is accepted and finds nothing to cancel.
      onClaimed: (tx, orderId, request) =>
        tx
          .execute(
            'INSERT INTO command_order_owners (order_id, customer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING',
            [orderId, customerIdOf(request)],
          )
          .then(() => undefined),
      newId: () => `ord_${uuidv7()}`,
      location: (id) => `/v1/orders/${id}`,
      rules: (body, request) => lineIssues(body, flags, options.orderLinesMax, customerIdOf(request)),
      events: async (orderId, request) => {
        const body = request.body as PlaceOrder
        const customerId = customerIdOf(request)
        return [
          {
            type: 'order.requested',
            subject: orderId,
            data: {
              orderId,
              customerId,
              lines: body.lines,
              shippingAddress: body.shippingAddress,
              paymentMethodToken: body.paymentMethodToken,
              ...(body.express !== undefined ? { express: body.express } : {}),
            },
          },
        ]
      },
    },
  )

  command(
    'POST',
    '/v1/orders/:id/cancel',
    {
      operationId: 'cancelOrder',
      summary:
        'Ask to cancel an order: granted until it ships, else refused (order.cancel-refused in its status)',
      tags: ['orders'],
      notFound: true,
      params: IdParam,
      body: CancelOrder,
      response: responses(),
    },
    'cancel-order',
    {
      authorize: async (request) => {
        const orderId = (request.params as { id: string }).id
        const [owner] = await store.query<{ customer_id: string }>(
          'SELECT customer_id FROM command_order_owners WHERE order_id = $1',
          [orderId],
        )
        const notFound = { hideExistence: true, notFoundDetail: `no order ${orderId}` }
        if (!owner) throw new MercatoError('not-found', 404, notFound.notFoundDetail)
        const order = { type: 'Order', id: orderId, attrs: { customerId: owner.customer_id } }
        // Who may not see the order learns nothing of it; who may see it but not cancel it is told so.
        authorize(identity, request, 'order.read', order, notFound)
        authorize(identity, request, 'order.cancel', order)
      },
      keyRequired: false,
      newId: () => `cxl_${uuidv7()}`,
      resourceOf: (request) => (request.params as { id: string }).id,
      location: (_id, request) => `/v1/orders/${(request.params as { id: string }).id}`,
      events: async (_id, request) => {
        const orderId = (request.params as { id: string }).id
        const reason = (request.body as { reason?: string } | undefined)?.reason?.trim()
        return [
          {
            type: 'order.cancel-requested',
            subject: orderId,
            data: { orderId, requestedBy: subjectOf(request), ...(reason ? { reason } : {}) },
          },
        ]
      },
    },
  )

  command(
    'POST',
    '/v1/customers',
    {
      operationId: 'registerCustomer',
      summary: 'Register a customer',
      tags: ['customers'],
      body: RegisterCustomer,
      response: responses(),
    },
    'register-customer',
    {
      authorize: may('customer.register', 'Customer', 'new'),
      keyRequired: true,
      // An account registered without a password could never be used, unless staff register
      // a customer who signs in elsewhere.
      rules: (body, request) =>
        !isStaff(principalOf(request)) && (body as { password?: unknown } | undefined)?.password === undefined
          ? [{ in: 'body', field: '/password', message: 'is required unless staff register the customer' }]
          : [],
      newId: () => `cus_${uuidv7()}`,
      location: (id) => `/v1/customers/${id}/360`,
      events: async (customerId, request) => {
        const body = request.body as {
          email: string
          givenName: string
          familyName: string
          password?: string
          addresses?: unknown[]
        }
        return [
          {
            type: 'customer.registration-requested',
            subject: customerId,
            data: {
              customerId,
              email: body.email,
              givenName: body.givenName,
              familyName: body.familyName,
              ...(body.password ? { passwordHash: await hashPassword(body.password) } : {}),
              ...(body.addresses ? { addresses: body.addresses } : {}),
            },
          },
        ]
      },
    },
  )

  command(
    'PUT',
    '/v1/products/:sku',
    {
      operationId: 'putProduct',
      summary: 'Create or replace a catalog product',
      tags: ['catalog'],
      params: SkuParam,
      body: UpsertProduct,
      response: responses(),
    },
    'upsert-product',
    {
      authorize: may('catalog.write', 'Catalog', 'catalog'),
      keyRequired: false,
      newId: () => `prd_${uuidv7()}`,
      resourceOf: (request) => (request.params as { sku: string }).sku,
      location: (_id, request) => `/v1/products/${(request.params as { sku: string }).sku}`,
      events: async (_id, request) => {
        const { sku } = request.params as { sku: string }
        return [
          {
            type: 'product.upserted',
            subject: sku,
            data: { sku, ...(request.body as Record<string, unknown>) },
          },
        ]
      },
    },
  )

  command(
    'POST',
    '/v1/inventory/:sku/adjustments',
    {
      operationId: 'adjustStock',
      summary: 'Restock or write off stock of a product',
      tags: ['inventory'],
      params: SkuParam,
      body: AdjustInventory,
      response: responses(),
    },
    'adjust-inventory',
    {
      authorize: may('stock.adjust', 'Catalog', 'catalog'),
      keyRequired: true,
      newId: () => `adj_${uuidv7()}`,
      // The adjustment with its outcome (applied, or refused and why); the product shows the stock.
      location: (id, request) => `/v1/inventory/${(request.params as { sku: string }).sku}/adjustments/${id}`,
      // A restock adds stock (delta > 0); a write-off removes it.
      rules: (body) => {
        const { delta, reason } = (body ?? {}) as { delta?: unknown; reason?: unknown }
        // Zero has no sign: the schema refuses it.
        if (typeof delta !== 'number' || delta === 0 || (reason !== 'restock' && reason !== 'write-off'))
          return []
        return (reason === 'restock') === delta > 0
          ? []
          : [{ in: 'body', field: '/delta', message: `has the wrong sign for ${reason}` }]
      },
      events: async (_id, request) => {
        const { sku } = request.params as { sku: string }
        const body = request.body as { delta: number; reason: string }
        return [{ type: 'inventory.adjustment-requested', subject: sku, data: { sku, ...body } }]
      },
    },
  )

  command(
    'PUT',
    '/v1/flags/:key',
    {
      operationId: 'putFlag',
      summary: 'Set a feature flag (flagd flag definition)',
      tags: ['flags'],
      params: FlagKeyParam,
      body: SetFlag,
      response: responses(),
    },
    'set-flag',
    {
      authorize: may('flag.write', 'Flags', 'flags'),
      keyRequired: false,
      newId: () => `flg_${uuidv7()}`,
      resourceOf: (request) => (request.params as { key: string }).key,
      location: (_id, request) => `/v1/flags/${(request.params as { key: string }).key}`,
      events: async (_id, request) => {
        const { key } = request.params as { key: string }
        const definition = request.body as Record<string, unknown>
        // The flags service applies only what passes this same check; refuse the rest here.
        const invalid = validateFlagDefinition(definition, key)
        if (invalid) {
          throw new MercatoError(
            'invalid-request',
            400,
            `the flag definition is invalid: ${invalid.reason}`,
            {
              errors: [{ in: 'body', field: invalid.field, message: invalid.reason }],
            },
          )
        }
        return [{ type: 'flag.changed', subject: key, data: { key, definition } }]
      },
    },
  )

  command(
    'POST',
    '/v1/webhooks',
    {
      operationId: 'registerWebhook',
      summary: 'Register a webhook endpoint; the answer carries its signing secret, shown once',
      tags: ['webhooks'],
      body: RegisterWebhook,
      response: responses({ secret: { type: 'string' } }),
    },
    'register-webhook',
    {
      authorize: may('webhook.register', 'Webhooks', 'webhooks'),
      keyRequired: true,
      newId: () => `whe_${uuidv7()}`,
      location: (id) => `/v1/webhooks/${id}`,
      rules: (body) => {
        const { url, events } = (body ?? {}) as { url?: unknown; events?: unknown }
        return [
          ...(typeof url === 'string' ? webhookUrlIssues(url, options.webhookAllowPrivateHosts) : []),
          ...(Array.isArray(events) ? webhookEventIssues(events) : []),
        ]
      },
      events: async (endpointId, request) => {
        const body = request.body as { url: string; events: string[]; enabled?: boolean }
        const secret = `whsec_${randomBytes(24).toString('base64url')}`
        return [
          {
            type: 'webhook.endpoint-set',
            subject: endpointId,
            data: {
              endpointId,
              url: body.url,
              secret,
              events: body.events,
              enabled: body.enabled ?? true,
            },
          },
        ]
      },
      extraBody: (_id, events) => ({ secret: (events[0].data as { secret: string }).secret }),
    },
  )

  command(
    'DELETE',
    '/v1/webhooks/:id',
    {
      operationId: 'removeWebhook',
      summary:
        'Remove a webhook endpoint: nothing more is delivered to it, retries included (an unknown id changes nothing)',
      tags: ['webhooks'],
      params: IdParam,
      response: responses(),
    },
    'remove-webhook',
    {
      authorize: may('webhook.remove', 'Webhooks', 'webhooks'),
      keyRequired: false,
      newId: () => `whr_${uuidv7()}`,
      resourceOf: (request) => (request.params as { id: string }).id,
      location: (_id, request) => `/v1/webhooks/${(request.params as { id: string }).id}`,
      events: async (_id, request) => {
        const { id } = request.params as { id: string }
        return [{ type: 'webhook.endpoint-removed', subject: id, data: { endpointId: id } }]
      },
    },
  )

  const pruning = setInterval(() => {
    keys.prune().catch((error) => log.warn({ err: errorMessage(error) }, 'idempotency keys not pruned'))
  }, 60_000)
  pruning.unref()
  return {
    stop: async () => {
      clearInterval(pruning)
      backlog.stop()
    },
  }
}

/** What admission would throw now, if it refuses. */
function refusalOf(spec: CommandSpec): unknown {
  try {
    spec.admit?.()
  } catch (error) {
    return error
  }
  return undefined
}

/**
 * Whose keys a request's key is among: a signed-in user's own, or, for a caller without a
 * token (a registration), those sent from its address.
 */
function scopeOf(request: FastifyRequest): string {
  const principal = principalOf(request)
  return principal.kind === 'user' ? principal.subject : `anonymous:${clientAddressOf(request)}`
}

/** Who asked, for an event to name: the signed-in user (never an address). */
function subjectOf(request: FastifyRequest): string {
  const principal = principalOf(request)
  return principal.kind === 'user' ? principal.subject : 'anonymous'
}

/** The signed-in customer; the policy has already refused anyone else an order. */
function customerIdOf(request: FastifyRequest): string {
  const principal = principalOf(request)
  return principal.kind === 'user' ? (principal.customerId ?? '') : ''
}

/**
 * What makes a webhook URL one Mercato must not call: not http(s), or naming a loopback,
 * link-local or private host. Delivery checks again every address the name resolves to.
 */
function webhookUrlIssues(raw: string, allowPrivate: boolean): FieldIssue[] {
  const issue = (message: string) => [{ in: 'body', field: '/url', message }]
  const url = URL.parse(raw)
  if (!url) return issue('is not a URL')
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return issue('must be http or https')
  if (url.username || url.password) return issue('must not carry credentials')
  if (allowPrivate) return []
  // A name's trailing dot (`localhost.`) names the same host.
  const host = url.hostname
    .replace(/^\[|\]$/g, '')
    .toLowerCase()
    .replace(/\.+$/, '')
  if (host === 'localhost' || host.endsWith('.localhost')) return issue('must not name this machine')
  const reason = privateAddressReason(host)
  if (reason && !reason.endsWith('is not an IP address'))
    return issue(`must not name a loopback, link-local or private address (${host} is one)`)
  // A public host has a domain; one label alone is a name of this machine or its network.
  if (!isIP(host) && !host.includes('.')) return issue('must name a public host (a name with a domain)')
  return []
}

/** The types a webhook receives by their prefixes: `order.*, payment.*, …`, `*` for all. */
const webhookTypePrefixes = [
  ...new Set(webhookEventTypes.map((type) => `${type.slice(0, type.indexOf('.'))}.*`)),
  '*',
].join(', ')

/** Webhook subscriptions that can never receive an event: each entry must match a known type. */
function webhookEventIssues(events: unknown[]): FieldIssue[] {
  return events.flatMap((pattern, i) =>
    typeof pattern !== 'string' || webhookEventTypes.some((type) => eventTypeMatches(pattern, type))
      ? []
      : [
          {
            in: 'body',
            field: `/events/${i}`,
            message: `${JSON.stringify(pattern)} names no event type a webhook receives (${webhookTypePrefixes} or one of their types, such as order.placed)`,
          },
        ],
  )
}

/** What is wrong with a request's Idempotency-Key header, as the error to answer; undefined when nothing is. */
function keyErrorOf(request: FastifyRequest, required: boolean): MercatoError | undefined {
  const key = request.headers['idempotency-key']
  // Node joins repeated headers with a comma, as a proxy may: two keys are not one, and a
  // comma outside quotes is taken for such a join.
  const repeated = headerCount(request.raw.rawHeaders, 'idempotency-key') > 1
  const joined = typeof key === 'string' && !quotedKey.test(key) && key.includes(',')
  if (Array.isArray(key) || repeated || joined)
    return new MercatoError('invalid-idempotency-key', 400, 'send one Idempotency-Key', {
      errors: [
        {
          in: 'header',
          field: 'Idempotency-Key',
          message: repeated
            ? 'is sent more than once'
            : 'holds a comma, as two keys joined do: send one key (quoted, "…", when it holds a comma)',
        },
      ],
    })
  if (key === undefined && required)
    return new MercatoError('idempotency-key-required', 400, 'this request needs an Idempotency-Key header', {
      errors: [{ in: 'header', field: 'Idempotency-Key', message: 'is required' }],
    })
  if (key !== undefined && !keyPattern.test(keyOf(key)))
    return new MercatoError(
      'invalid-idempotency-key',
      400,
      'Idempotency-Key must be 1 to 255 visible ASCII characters',
      { errors: [{ in: 'header', field: 'Idempotency-Key', message: 'is invalid' }] },
    )
  return undefined
}

/**
 * The key an Idempotency-Key header names. The IETF draft sends it as a structured-field
 * string (in quotes, with \" and \\ escaped); Stripe's clients send it bare: both forms of
 * one key are the same key.
 */
/** The draft's form of a key: a structured-field string, in quotes, with `\"` and `\\` escaped. */
const quotedKey = /^"((?:[^"\\]|\\["\\])*)"$/

function keyOf(header: string): string {
  const quoted = quotedKey.exec(header)
  return quoted ? quoted[1].replace(/\\(["\\])/g, '$1') : header
}

/** Lines past the limit (the flag's, for this customer) and lines that repeat a SKU. */
async function lineIssues(
  body: unknown,
  flags: FlagReader,
  linesMax: number,
  customerId: string,
): Promise<FieldIssue[]> {
  const lines = (body as { lines?: unknown } | null)?.lines
  if (!Array.isArray(lines)) return []
  const issues: FieldIssue[] = []
  const flagMax = await flags.number('max-lines-per-order', linesMax, customerContext(customerId))
  const max = Math.min(linesMax, flagMax)
  // Past the schema's own bound, the schema says so.
  const schemaMax = PlaceOrder.properties.lines.maxItems ?? Number.POSITIVE_INFINITY
  if (lines.length > max && lines.length <= schemaMax)
    issues.push({
      in: 'body',
      field: '/lines',
      message: `must have at most ${max} ${max === 1 ? 'line' : 'lines'}`,
    })
  const seen = new Set<string>()
  lines.forEach((line, i) => {
    const sku = (line as { sku?: unknown } | null)?.sku
    if (typeof sku !== 'string') return
    if (seen.has(sku))
      issues.push({ in: 'body', field: `/lines/${i}/sku`, message: 'appears on another line' })
    seen.add(sku)
  })
  return issues
}
