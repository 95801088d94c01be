// A stand-in for an external payment provider, under /provider/v1: authorizations,
// captures, voids and refunds, each behind an Idempotency-Key, with a durable record of
// every charge and operation (the witness tests use) and dials for latency, errors and
// lost answers. Its routes are hidden from Mercato's OpenAPI document. Like a real
// provider it asks for its API key (a bearer token) when one is set; without one it
// answers callers on this machine only, so a shop listening on a public address does not
// hand anyone its refunds and dials.
import { createHash, timingSafeEqual } from 'node:crypto'
import type {} from '@fastify/swagger'
import { Type as T } from '@sinclair/typebox'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { currencies } from '../contracts/commands.ts'
import type { Store, Tx } from '../engines/store/port.ts'
import { MercatoError } from '../platform/errors.ts'
import { sleep } from '../platform/limits.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'
import {
  type AuthorizationRequest,
  authorize,
  capture,
  chargeMigrations,
  chargesByReference,
  getCharge,
  refund,
  voidCharge,
} from './charges.ts'
import { type Dials, DialsChangeSchema, declineReasonOf, defaultDials } from './dials.ts'
import { type Answer, complete, idempotencyMigrations, release, requestHash, reserve } from './idempotency.ts'

const prefix = '/provider/v1'
/** How long a lost answer is held back: far past any caller's timeout. */
const holdMs = 30_000
/**
 * A reservation older than this, still unanswered, belongs to a process that died: longer
 * than any request takes (the dialled latency, plus a margin), and no longer, so a crash
 * holds a key only for a moment.
 */
const leaseMsFor = (dials: Dials) => dials.latencyMs + 15_000

const IdempotencyHeaders = T.Object({ 'idempotency-key': T.String({ minLength: 1, maxLength: 255 }) })
const ChargeParams = T.Object({ id: T.String({ minLength: 1, maxLength: 64 }) })
const AuthorizationBody = T.Object(
  {
    amountMinor: T.Integer({ minimum: 0, maximum: 1_000_000_000_000 }),
    currency: T.String({ enum: currencies, description: 'ISO 4217 currency code' }),
    paymentMethodToken: T.String({ minLength: 1, maxLength: 128 }),
    reference: T.String({ minLength: 1, maxLength: 128 }),
  },
  { additionalProperties: false },
)
const NoBody = T.Object({}, { additionalProperties: false })
/** No body at all is read as an empty one, which validation then judges. */
const bodyOptional = async (request: FastifyRequest) => {
  request.body ??= {}
}
const RefundBody = T.Object(
  { amountMinor: T.Optional(T.Integer({ minimum: 1, maximum: 1_000_000_000_000 })) },
  { additionalProperties: false },
)

export interface PaymentProviderOptions {
  http: FastifyInstance
  store: Store
  log: Logger
  metrics: Metrics
  apiKey?: string
}

export async function startPaymentProvider(
  options: PaymentProviderOptions,
): Promise<{ stop(): Promise<void>; ready(): Promise<void> }> {
  const { http, store, metrics } = options
  const log = options.log.child({ component: 'payment-provider' })
  await store.migrate([...chargeMigrations, ...idempotencyMigrations])
  let dials: Dials = defaultDials()
  const closing = new AbortController()
  const requests = metrics.counter(
    'mercato_provider_requests_total',
    'Requests to the payment provider stand-in.',
    ['operation', 'outcome'],
  )

  http.addHook('preClose', async () => closing.abort())
  // By the route matched, not the URL as sent: the router decodes %XX escapes (/%70rovider/…);
  // a path under the prefix that matches no route is checked too, or its 405 would list them.
  http.addHook('onRequest', async (request) => {
    if ((request.routeOptions.url ?? decodedPath(request.url)).startsWith(`${prefix}/`))
      checkCaller(request, options.apiKey)
  })

  /** Runs one operation under its Idempotency-Key, with the dialled failures. */
  async function operate(
    request: FastifyRequest,
    reply: FastifyReply,
    operation: string,
    target: string,
    body: Record<string, unknown>,
    work: (tx: Tx, key: string) => Promise<Answer>,
  ): Promise<FastifyReply> {
    const key = (request.headers as Record<string, string>)['idempotency-key']
    const current = dials
    if (Math.random() < current.errorRate) {
      requests.inc({ operation, outcome: 'injected-error' })
      throw new MercatoError('provider-injected-error', 500, 'an error dialled into the provider stand-in')
    }
    let reservation: Awaited<ReturnType<typeof reserve>>
    try {
      reservation = await reserve(store, key, requestHash(operation, target, body), leaseMsFor(current))
    } catch (error) {
      if (error instanceof MercatoError) requests.inc({ operation, outcome: error.code })
      throw error
    }
    if (reservation.kind === 'replay') {
      requests.inc({ operation, outcome: 'replayed' })
      reply.header('idempotent-replayed', 'true')
      return send(reply, reservation.answer)
    }
    const { lease } = reservation
    let answer: Answer
    try {
      if (current.latencyMs > 0) await sleep(current.latencyMs, closing.signal)
      answer = await store.transaction(async (tx) => {
        const result = await work(tx, key)
        await complete(tx, key, lease, result)
        return result
      })
    } catch (error) {
      await release(store, key, lease).catch(() => {})
      if (error instanceof MercatoError) requests.inc({ operation, outcome: error.code })
      throw error
    }
    if (Math.random() < current.timeoutRate) {
      requests.inc({ operation, outcome: 'held' })
      // Done and recorded, but the answer comes too late (or never): a retry with the same key gets it.
      await sleep(holdMs, closing.signal)
      if (closing.signal.aborted) {
        reply.hijack()
        reply.raw.destroy()
        return reply
      }
    } else {
      requests.inc({ operation, outcome: outcomeOf(answer.status) })
    }
    return send(reply, answer)
  }

  http.post(
    `${prefix}/authorizations`,
    { schema: { hide: true, headers: IdempotencyHeaders, body: AuthorizationBody } },
    async (request, reply) => {
      const body = request.body as AuthorizationRequest
      return operate(request, reply, 'authorize', '', { ...body }, (tx, key) =>
        authorize(tx, body, key, declineReasonOf(body.paymentMethodToken, dials)),
      )
    },
  )

  const chargeOperation = (name: 'capture' | 'void') =>
    http.post(
      `${prefix}/charges/:id/${name}`,
      {
        // The whole authorized amount, always: an amount sent (say, more than was authorized)
        // is refused as a field this operation does not know, not ignored.
        schema: { hide: true, headers: IdempotencyHeaders, params: ChargeParams, body: NoBody },
        preValidation: bodyOptional,
      },
      async (request, reply) => {
        const { id } = request.params as { id: string }
        return operate(request, reply, name, id, {}, (tx, key) =>
          name === 'capture' ? capture(tx, id, key, request.url) : voidCharge(tx, id, key, request.url),
        )
      },
    )
  chargeOperation('capture')
  chargeOperation('void')

  http.post(
    `${prefix}/charges/:id/refund`,
    {
      schema: { hide: true, headers: IdempotencyHeaders, params: ChargeParams, body: RefundBody },
      // A refund of everything that is left may come without a body.
      preValidation: bodyOptional,
    },
    async (request, reply) => {
      const { id } = request.params as { id: string }
      const body = request.body as { amountMinor?: number }
      return operate(request, reply, 'refund', id, { ...body }, (tx, key) =>
        refund(tx, id, body.amountMinor, key, request.url),
      )
    },
  )

  http.get(`${prefix}/charges/:id`, { schema: { hide: true, params: ChargeParams } }, async (request) => {
    const { id } = request.params as { id: string }
    const charge = await getCharge(store, id)
    if (!charge) throw new MercatoError('charge-not-found', 404, `no charge ${id}`, { chargeId: id })
    return charge
  })

  http.get(
    `${prefix}/charges`,
    {
      schema: {
        hide: true,
        querystring: T.Object({ reference: T.String({ minLength: 1, maxLength: 128 }) }),
      },
    },
    async (request) => {
      const { reference } = request.query as { reference: string }
      return { charges: await chargesByReference(store, reference) }
    },
  )

  http.get(`${prefix}/dials`, { schema: { hide: true } }, async () => dials)

  http.put(`${prefix}/dials`, { schema: { hide: true, body: DialsChangeSchema } }, async (request) => {
    // PUT replaces: a dial not given is back to its default, so one PUT says the whole state.
    dials = { ...defaultDials(), ...(request.body as Partial<Dials>) }
    log.info({ dials }, 'dials changed')
    return dials
  })

  return {
    ready: () => store.ping(),
    stop: async () => {
      closing.abort()
    },
  }
}

function outcomeOf(status: number): string {
  return status < 300 ? 'ok' : status === 402 ? 'declined' : String(status)
}

function send(reply: FastifyReply, answer: Answer): FastifyReply {
  const problem = answer.status >= 400 && answer.status !== 402
  return reply
    .code(answer.status)
    .type(problem ? 'application/problem+json' : 'application/json')
    .send(answer.body)
}

function checkCaller(request: FastifyRequest, apiKey: string | undefined): void {
  if (apiKey !== undefined) {
    const given = /^Bearer (\S+)$/.exec(request.headers.authorization ?? '')?.[1]
    if (given !== undefined && sameSecret(given, apiKey)) return
    throw new MercatoError(
      'unauthenticated',
      401,
      'the payment provider asks for its API key as a bearer token',
    )
  }
  if (isLoopback(request.socket.remoteAddress)) return
  throw new MercatoError(
    'forbidden',
    403,
    'the payment-provider stand-in answers callers on this machine only (set MERCATO_PAYMENT_PROVIDER_API_KEY to let callers with that key in)',
  )
}

function decodedPath(url: string): string {
  const path = url.split('?')[0]
  try {
    return decodeURIComponent(path)
  } catch {
    return path
  }
}

function sameSecret(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest()
  const b = createHash('sha256').update(expected).digest()
  return timingSafeEqual(a, b)
}

function isLoopback(address: string | undefined): boolean {
  return address !== undefined && (address === '::1' || /^(::ffff:)?127\./.test(address))
}
