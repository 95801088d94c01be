// The edge. Every public request enters here: its client address and its user are rate
// limited, its bearer token verified, and the route checked against the gateway policy
// before any component sees it. In the all-in-one mode the components serve the routes in
// this process and the gateway's hook runs in front of them; otherwise the gateway
// forwards them over pooled HTTP to the upstream instances, with a service token, a
// timeout, a circuit breaker and a bulkhead per upstream.
import cors from '@fastify/cors'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Cache } from '../engines/cache/port.ts'
import type { Store } from '../engines/store/port.ts'
import { MercatoError, OverloadedError, UnavailableError } from '../platform/errors.ts'
import {
  authenticateUser,
  clientAddressHeader,
  type Identity,
  principalEntity,
  serviceTokenHeader,
  setCaller,
} from '../platform/identity/guard.ts'
import type { KeyRing } from '../platform/identity/key-ring.ts'
import { anonymous, isStaff, type Principal } from '../platform/identity/tokens.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'
import { problemDocs } from '../platform/problem-docs.ts'
import type { GatewayConfig } from '../runtime/config.ts'
import {
  badBody,
  charsetRefusal,
  invalidRequest,
  securityHeaders,
  utf8Text,
  type ValidationIssue,
} from '../runtime/http.ts'
import { addOpenApiFinisher, addOpenApiSource, type OpenApiDocument } from '../runtime/openapi.ts'
import type { RateLimiter, RateRule, RateVerdict } from './rate-limit.ts'
import { RefreshTokens } from './refresh-tokens.ts'
import { openApiPath, type UpstreamName, upstreamRoutes } from './routes.ts'
import { Upstream } from './upstream.ts'

export interface GatewayOptions {
  http: FastifyInstance
  identity: Identity & { ring: KeyRing }
  store: Store
  cache: Cache
  limiter: RateLimiter
  log: Logger
  metrics: Metrics
  config: GatewayConfig
  /** Components that run in this process (their routes are served here, not forwarded). */
  running: string[]
  /** Where the user service answers: this process's URL in the all-in-one mode. */
  userUrl: () => string | Promise<string>
  limits: {
    principalPerMinute: number
    addressPerMinute: number
    loginPerMinute: number
    registerPerMinute: number
    refreshTokenTtlSeconds: number
    upstreamTimeoutMs: number
    upstreamConcurrencyMax: number
    breakerFailures: number
    breakerHalfOpenMs: number
    /** How long the JWKS may be cached (see jwksMaxAgeSeconds). */
    jwksMaxAgeSeconds: number
  }
}

const minute = 60_000

/** Headers a client may send on to a component; anything else (a service token above all) stays here. */
const forwardedHeaders = [
  'authorization',
  'content-type',
  'accept',
  'idempotency-key',
  'if-none-match',
  'mercato-consistency-token',
  'x-request-id',
  'traceparent',
]

export async function startGateway(options: GatewayOptions): Promise<{ stop(): Promise<void> }> {
  const { http, identity, limiter, limits, metrics } = options
  const refreshTokens = new RefreshTokens(options.store, limits.refreshTokenTtlSeconds * 1000)
  await refreshTokens.migrate()
  const refused = metrics.counter(
    'mercato_gateway_refused_total',
    'Requests the gateway refused, by reason.',
    ['reason'],
  )

  const security = securityHeaders()
  http.addHook('onRequest', (_request, reply, done) => {
    reply.headers(security)
    done()
  })
  if (options.config.corsOrigins.length > 0) {
    const origins = options.config.corsOrigins
    await http.register(cors, {
      origin: origins.includes('*') ? '*' : origins,
      methods: ['GET', 'POST', 'PUT', 'DELETE', 'OPTIONS'],
      allowedHeaders: [
        'authorization',
        'content-type',
        'idempotency-key',
        'if-none-match',
        'mercato-consistency-token',
        // A browser's own request id and trace context, which every answer and span carries on.
        'x-request-id',
        'traceparent',
      ],
      exposedHeaders: [
        'location',
        'etag',
        'retry-after',
        'mercato-consistency-token',
        'mercato-position',
        'mercato-staleness-ms',
        'mercato-stale',
        'mercato-cache',
        'idempotent-replayed',
        'ratelimit-limit',
        'ratelimit-remaining',
        'ratelimit-reset',
        'ratelimit-policy',
        'x-request-id',
      ],
      maxAge: 600,
    })
  }
  // The token routes: OAuth 2.0 clients send them a form (every other route takes JSON only),
  // and the grant in it is what counts, not a bearer token sent along.
  const tokenRoutes = new Set(['/v1/auth/token', '/v1/auth/refresh'])
  http.addContentTypeParser(
    'application/x-www-form-urlencoded',
    { parseAs: 'buffer' },
    (request, body, done) => {
      if (!tokenRoutes.has(request.routeOptions.url ?? ''))
        return done(Object.assign(new Error('unsupported media type'), { statusCode: 415 }))
      const otherCharset = charsetRefusal(request, 'a form')
      if (otherCharset) return done(otherCharset)
      const text = utf8Text(body as Buffer)
      const pairs = text === undefined ? undefined : formPairs(text)
      if (pairs === undefined) return done(badBody('is not valid UTF-8', { error: 'invalid_request' }))
      const params: Record<string, string> = {}
      for (const [key, value] of pairs) {
        // RFC 6749 §3.2: a parameter is never sent twice.
        if (Object.hasOwn(params, key))
          return done(
            new MercatoError('invalid-request', 400, `the body gives ${key} more than once`, {
              error: 'invalid_request',
              errors: [{ in: 'body', field: `/${key}`, message: 'is given more than once' }],
            }),
          )
        params[key] = value
      }
      done(null, params)
    },
  )

  const rule = (perMinute: number): RateRule => ({ limit: perMinute, windowMs: minute })
  interface Quota {
    key: string
    perMinute: number
    reason: string
  }
  /**
   * Counts one request against each quota. Refused by one, it is taken back from the others
   * (a refused request counts against none) and refused with 429 and that quota's headers.
   */
  async function throttle(quotas: Quota[], reply: FastifyReply, now = Date.now()): Promise<RateVerdict[]> {
    const verdicts = await Promise.all(quotas.map((q) => limiter.take(q.key, rule(q.perMinute), now)))
    const refusedBy = verdicts.findIndex((v) => !v.allowed)
    if (refusedBy < 0) return verdicts
    await Promise.all(
      quotas.map((q, i) =>
        verdicts[i].allowed ? limiter.giveBack(q.key, rule(q.perMinute), now) : undefined,
      ),
    )
    const verdict = verdicts[refusedBy]
    const { reason, key } = quotas[refusedBy]
    // The label names the quota by its key's kind (address, user, login, register).
    refused.inc({ reason: `rate-limited-${key.slice(0, key.indexOf(':'))}` })
    showQuota(reply, verdict)
    reply.header('retry-after', String(verdict.retryAfterSeconds))
    throw new MercatoError(
      'rate-limited',
      429,
      `too many requests: at most ${verdict.limit} a minute ${reason}`,
      {
        retryAfterSeconds: verdict.retryAfterSeconds,
      },
    )
  }
  /** The sign-in routes' own quota, per address, shown in place of the guard's. */
  async function throttleSignIn(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const quota = {
      key: `login:${request.ip}`,
      perMinute: limits.loginPerMinute,
      reason: 'to sign in from one address',
    }
    showQuota(reply, (await throttle([quota], reply))[0])
  }
  function showQuota(reply: FastifyReply, verdict: RateVerdict): void {
    reply.header('ratelimit-limit', String(verdict.limit))
    reply.header('ratelimit-remaining', String(verdict.remaining))
    reply.header('ratelimit-reset', String(verdict.resetSeconds))
    reply.header('ratelimit-policy', `${verdict.limit};w=${minute / 1000}`)
  }

  // Queries and commands each get their own share of this process, so a slow query path
  // cannot take every slot from commands.
  const inFlight: Record<UpstreamName, number> = { 'command-api': 0, 'query-api': 0 }
  const groupOf = new Map(upstreamRoutes.map((r) => [`${r.method} ${r.url}`, r.upstream]))

  /** Whether the policy would let this user call `route` for their own customer: then a refusal is about the resource. */
  function allowedForOwnCustomer(principal: Principal, route: string): boolean {
    if (principal.kind !== 'user' || !principal.customerId) return false
    return identity.policy.isAllowed({
      principal: principalEntity(principal),
      action: 'call',
      resource: { type: 'Route', id: route, attrs: { route, customerId: principal.customerId } },
    }).allowed
  }

  async function guard(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const url = request.routeOptions.url
    if (url === undefined || !isPublicApi(url)) return
    const now = Date.now()
    // The address's quota first: a flood of bad tokens is refused before their signatures
    // are checked.
    const byAddress: Quota = {
      key: `address:${request.ip}`,
      perMinute: limits.addressPerMinute,
      reason: 'from one address',
    }
    const [addressVerdict] = await throttle([byAddress], reply, now)
    // Shown on a refusal from here on too (a bad token's 401), until a closer quota replaces it.
    showQuota(reply, addressVerdict)
    // A client may send its expired access token along to the refresh that renews it.
    const principal = tokenRoutes.has(url)
      ? anonymous
      : await authenticateUser(identity.tokens, request).catch((error) => {
          if (error instanceof MercatoError && error.code === 'invalid-token')
            refused.inc({ reason: 'invalid-token' })
          throw error
        })
    const more: Quota[] = []
    // A registration hashes a password (scrypt, a third of a second of CPU), as a sign-in
    // does: unless staff send it, it has a quota of its own.
    if (!isStaff(principal) && request.method === 'POST' && url === '/v1/customers')
      more.push({
        key: `register:${request.ip}`,
        perMinute: limits.registerPerMinute,
        reason: 'to register from one address',
      })
    if (principal.kind === 'user')
      more.push({
        key: `user:${principal.subject}`,
        perMinute: limits.principalPerMinute,
        reason: 'for one user',
      })
    let verdicts = [addressVerdict]
    if (more.length > 0) {
      try {
        verdicts = [addressVerdict, ...(await throttle(more, reply, now))]
      } catch (error) {
        await limiter.giveBack(byAddress.key, rule(byAddress.perMinute), now)
        throw error
      }
    }
    // The quota closest to running out is the one a client should pace itself by.
    showQuota(
      reply,
      verdicts.reduce((closest, v) => (v.remaining < closest.remaining ? v : closest)),
    )
    // HEAD is GET without the body (RFC 9110): the same route, the same rules.
    const method = request.method === 'HEAD' ? 'GET' : request.method
    const route = `${method} ${openApiPath(url)}`
    const customerId = customerIdOf(url, request.params as Record<string, string>)
    const decision = identity.policy.isAllowed({
      principal: principalEntity(principal),
      action: 'call',
      resource: { type: 'Route', id: route, attrs: { route, ...(customerId ? { customerId } : {}) } },
    })
    if (!decision.allowed) {
      refused.inc({ reason: principal.kind === 'anonymous' ? 'unauthenticated' : 'forbidden' })
      if (principal.kind === 'anonymous')
        throw new MercatoError('unauthenticated', 401, 'sign in first: this route needs a bearer token')
      throw new MercatoError(
        'forbidden',
        403,
        customerId && allowedForOwnCustomer(principal, route)
          ? 'you may call this route for your own customer only, not for another customer'
          : 'your role may not call this route',
      )
    }
    setCaller(request, { principal })
    const group = groupOf.get(`${method} ${url}`)
    if (group && options.running.includes(group)) {
      if (inFlight[group] >= limits.upstreamConcurrencyMax) {
        refused.inc({ reason: 'bulkhead' })
        throw new OverloadedError(group, 'too many requests in flight')
      }
      inFlight[group]++
      // An answer's end and a client that goes away both close the response, once.
      reply.raw.once('close', () => {
        inFlight[group]--
      })
    }
  }
  http.addHook('onRequest', guard)

  // The routes of components that run elsewhere: forwarded to their instances.
  const upstreams = new Map<UpstreamName, Upstream>()
  for (const name of ['command-api', 'query-api'] as const) {
    if (options.running.includes(name)) continue
    const urls = name === 'command-api' ? options.config.commandApiUrls : options.config.queryApiUrls
    if (urls.length === 0) continue
    upstreams.set(
      name,
      new Upstream({
        name,
        urls,
        timeoutMs: limits.upstreamTimeoutMs,
        concurrencyMax: limits.upstreamConcurrencyMax,
        queueMax: 0,
        breaker: { consecutiveFailures: limits.breakerFailures, halfOpenAfterMs: limits.breakerHalfOpenMs },
        metrics,
      }),
    )
  }
  // Each operation says whether it needs a bearer token: what the policy lets an anonymous caller do.
  addOpenApiFinisher(options.http, (document) => {
    for (const [path, operations] of Object.entries(document.paths ?? {})) {
      if (!isPublicApi(path)) continue
      for (const [method, operation] of Object.entries(operations) as [string, Record<string, unknown>][]) {
        const route = `${method === 'head' ? 'GET' : method.toUpperCase()} ${path}`
        const open = identity.policy.isAllowed({
          principal: principalEntity(anonymous),
          action: 'call',
          resource: { type: 'Route', id: route, attrs: { route } },
        }).allowed
        operation.security = open ? [{ bearerAuth: [] }, {}] : [{ bearerAuth: [] }]
      }
    }
  })
  for (const [name, upstream] of upstreams) {
    // Of an upstream's document, the operations the gateway forwards to it: the upstream's
    // process may serve more (an internal route, another component's) that are not the API.
    const forwarded = new Set(
      upstreamRoutes
        .filter((r) => r.upstream === name)
        .map((r) => `${r.method.toLowerCase()} ${openApiPath(r.url)}`),
    )
    let cached: { document: OpenApiDocument; until: number } | undefined
    addOpenApiSource(options.http, async () => {
      if (cached && cached.until > Date.now()) return cached.document
      const answer = await upstream.forward({ method: 'GET', path: '/v1/openapi.json', headers: {} })
      if (answer.status !== 200) return undefined
      const document = JSON.parse(answer.body.toString('utf8')) as OpenApiDocument
      const paths: NonNullable<OpenApiDocument['paths']> = {}
      for (const [path, operations] of Object.entries(document.paths ?? {})) {
        const kept = Object.entries(operations).filter(([method]) => forwarded.has(`${method} ${path}`))
        if (kept.length > 0) paths[path] = Object.fromEntries(kept)
      }
      cached = { document: { ...document, paths }, until: Date.now() + 60_000 }
      return cached.document
    })
  }
  for (const route of upstreamRoutes) {
    const upstream = upstreams.get(route.upstream)
    if (!upstream) continue
    http.route({
      method: route.method,
      url: route.url,
      schema: { hide: true },
      handler: async (request, reply) => {
        const headers: Record<string, string> = {}
        for (const name of forwardedHeaders) {
          const value = request.headers[name]
          if (typeof value === 'string') headers[name] = value
        }
        headers['x-request-id'] = request.id
        headers[clientAddressHeader] = request.ip
        headers[serviceTokenHeader] = await identity.tokens.issueService('gateway', route.upstream)
        const body =
          request.body === undefined
            ? undefined
            : typeof request.body === 'string'
              ? request.body
              : JSON.stringify(request.body)
        if (body !== undefined) headers['content-type'] = 'application/json'
        const answer = await upstream.forward({ method: request.method, path: request.url, headers, body })
        for (const [name, value] of Object.entries(answer.headers)) {
          if (name === 'content-length' || name === 'date' || name.startsWith('x-ratelimit')) continue
          reply.header(name, value)
        }
        return reply.code(answer.status).send(answer.body)
      },
    })
  }

  http.get(
    '/.well-known/jwks.json',
    {
      schema: {
        operationId: 'getJwks',
        summary: 'The public keys that verify access tokens',
        tags: ['auth'],
      },
    },
    async (_request, reply) => {
      reply.header('cache-control', `public, max-age=${limits.jwksMaxAgeSeconds}`)
      return identity.ring.jwks()
    },
  )

  // A wrong password or refresh token is a 400 invalid_grant (RFC 6749 §5.2 keeps 401 for a
  // client's own authentication, which this public client has none of); the user service
  // down, a 503.
  const signInProblems = [400, 415, 429, 503]
  const tokenResponse = {
    200: {
      description: 'An access token and the refresh token that renews it (RFC 6749 §5.1)',
      type: 'object',
      required: ['access_token', 'token_type', 'expires_in', 'refresh_token'],
      additionalProperties: false,
      properties: {
        access_token: { type: 'string' },
        token_type: { type: 'string', enum: ['Bearer'] },
        expires_in: { type: 'integer', description: 'seconds the access token is valid' },
        refresh_token: { type: 'string' },
      },
    },
  }
  const tokenAnswer = async (principal: Principal & { kind: 'user' }, refreshToken: string) => {
    const access = await identity.tokens.issueAccess(principal)
    return {
      access_token: access.token,
      token_type: 'Bearer',
      expires_in: access.expiresIn,
      refresh_token: refreshToken,
    }
  }

  http.post(
    '/v1/auth/token',
    {
      config: problemDocs(signInProblems),
      attachValidation: true,
      preSerialization: oauthErrorCode,
      schema: {
        operationId: 'signIn',
        summary:
          'Sign in: a password grant answers an access token and a refresh token; a refresh_token grant renews them, as /v1/auth/refresh does',
        tags: ['auth'],
        consumes: ['application/json', 'application/x-www-form-urlencoded'],
        response: tokenResponse,
        body: {
          type: 'object',
          required: ['grant_type'],
          // RFC 6749 §3.2: parameters the server does not know (client_id …) are ignored.
          additionalProperties: true,
          properties: {
            grant_type: { type: 'string', enum: ['password', 'refresh_token'] },
            // Required, and not blank, by the grant that uses it (see the handler): the
            // other grant's are ignored, as any parameter the server does not use.
            username: { type: 'string', maxLength: 320, description: 'password grant' },
            password: { type: 'string', maxLength: 1024, description: 'password grant' },
            refresh_token: { type: 'string', maxLength: 256, description: 'refresh_token grant' },
            scope: { type: 'string', maxLength: 256 },
          },
        },
      },
    },
    async (request, reply) => {
      await throttleSignIn(request, reply)
      refuseInvalidTokenRequest(request, ['password', 'refresh_token'])
      const body = request.body as {
        grant_type: string
        username?: string
        password?: string
        refresh_token?: string
      }
      // RFC 6749 §6: a client renews its tokens at the token endpoint too.
      const needs = body.grant_type === 'refresh_token' ? ['refresh_token'] : ['username', 'password']
      const missing = needs.filter((name) => !body[name as keyof typeof body])
      if (missing.length > 0)
        throw invalidRequest(
          [],
          missing.map((name) => ({
            in: 'body',
            field: `/${name}`,
            message: `is required by the ${body.grant_type} grant, and not blank`,
          })),
          { error: 'invalid_request' },
        )
      if (body.grant_type === 'refresh_token') return refreshGrant(body.refresh_token as string, reply)
      const { username, password } = body as { username: string; password: string }
      const verified = await fetch(`${await options.userUrl()}/internal/v1/credentials/verify`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          [serviceTokenHeader]: await identity.tokens.issueService('gateway', 'user'),
          'x-request-id': request.id,
        },
        body: JSON.stringify({ username, password }),
        signal: AbortSignal.timeout(limits.upstreamTimeoutMs),
      }).catch(() => {
        throw new UnavailableError('user', 'the user service did not answer')
      })
      if (verified.status === 401 || verified.status === 400) {
        await verified.body?.cancel()
        throw invalidGrant('the username or password is wrong')
      }
      if (verified.status !== 200) {
        await verified.body?.cancel()
        options.log.warn({ status: verified.status }, 'credential check failed')
        throw new UnavailableError('user', 'the user service could not check the credentials')
      }
      const subject = (await verified.json()) as {
        subject: string
        role: 'customer' | 'admin' | 'support'
        customerId?: string
      }
      const principal = { kind: 'user' as const, ...subject }
      reply.header('cache-control', 'no-store')
      return tokenAnswer(principal, await refreshTokens.issue(principal))
    },
  )

  http.post(
    '/v1/auth/refresh',
    {
      config: problemDocs(signInProblems),
      attachValidation: true,
      preSerialization: oauthErrorCode,
      schema: {
        operationId: 'refreshToken',
        summary: 'Trade a refresh token for a new access token and the next refresh token',
        description: 'Each refresh token works once; using one twice revokes every token of its sign-in.',
        tags: ['auth'],
        consumes: ['application/json', 'application/x-www-form-urlencoded'],
        response: tokenResponse,
        body: {
          type: 'object',
          required: ['refresh_token'],
          additionalProperties: true,
          properties: {
            grant_type: { type: 'string', enum: ['refresh_token'] },
            refresh_token: { type: 'string', minLength: 1, maxLength: 256 },
          },
        },
      },
    },
    async (request, reply) => {
      await throttleSignIn(request, reply)
      refuseInvalidTokenRequest(request, ['refresh_token'])
      return refreshGrant((request.body as { refresh_token: string }).refresh_token, reply)
    },
  )

  async function refreshGrant(token: string, reply: FastifyReply) {
    const outcome = await refreshTokens.rotate(token)
    if (!outcome.ok) {
      const reasons = {
        unknown: 'the refresh token is not known',
        expired: 'the refresh token has expired',
        revoked: 'the refresh token was revoked',
        reused: 'the refresh token was already used: every token of this sign-in is revoked',
      }
      throw invalidGrant(reasons[outcome.reason])
    }
    reply.header('cache-control', 'no-store')
    return tokenAnswer(outcome.principal, outcome.token)
  }

  await http.register(swaggerUi, {
    routePrefix: '/docs',
    // swagger-ui's own policy without `upgrade-insecure-requests`: Mercato speaks plain HTTP
    // (TLS, where there is any, ends at a proxy in front), and a browser told to upgrade asked
    // for the page's scripts over https, so /docs was blank on any address but loopback.
    staticCSP:
      "default-src 'self'; base-uri 'self'; font-src 'self' data:; frame-ancestors 'self'; img-src 'self' data:; " +
      "object-src 'none'; script-src 'self'; script-src-attr 'none'; style-src 'self'",
    // The page loads ./json, swagger's document of this process alone: it is sent to the one
    // API document instead, merged from the upstreams when they run elsewhere.
    uiHooks: {
      onRequest: async (request, reply) => {
        if (request.routeOptions.url === '/docs/json') return reply.redirect('/v1/openapi.json')
      },
    },
  })

  const pruning = setInterval(() => refreshTokens.prune().catch(() => {}), 3_600_000)
  pruning.unref()
  return {
    stop: async () => {
      clearInterval(pruning)
      await Promise.all([...upstreams.values()].map((u) => u.close()))
    },
  }
}

/**
 * The name-value pairs of a form body; undefined when an escape does not decode to UTF-8
 * (URLSearchParams would quietly make `%FF` a U+FFFD, so `%FE` would be the same password).
 */
function formPairs(text: string): [string, string][] | undefined {
  const decode = (part: string) => decodeURIComponent(part.replaceAll('+', ' '))
  try {
    return text
      .split('&')
      .filter((pair) => pair !== '')
      .map((pair) => {
        const equals = pair.indexOf('=')
        return equals < 0
          ? [decode(pair), '']
          : [decode(pair.slice(0, equals)), decode(pair.slice(equals + 1))]
      })
  } catch {
    return undefined
  }
}

/**
 * RFC 6749 §5.2: a token request the schema refuses is `invalid_request`, or
 * `unsupported_grant_type` when it names another grant; the problem names each bad field.
 */
function refuseInvalidTokenRequest(request: FastifyRequest, grantTypes: string[]): void {
  const refused = request.validationError as (Error & { validation?: ValidationIssue[] }) | undefined
  if (!refused) return
  const given = (request.body as Record<string, unknown> | undefined)?.grant_type
  throw invalidRequest(refused.validation ?? [], [], {
    error:
      typeof given === 'string' && !grantTypes.includes(given) ? 'unsupported_grant_type' : 'invalid_request',
  })
}

/**
 * RFC 6749 §5.2: every refusal of a malformed token request carries `error`, those refused
 * before the route's own checks included (a body that is not JSON, too large, of another
 * content type).
 */
async function oauthErrorCode(_request: FastifyRequest, reply: FastifyReply, payload: unknown) {
  const malformed = reply.statusCode === 400 || reply.statusCode === 413 || reply.statusCode === 415
  if (!malformed || payload === null || typeof payload !== 'object' || 'error' in payload) return payload
  return { ...payload, error: 'invalid_request' }
}

function invalidGrant(detail: string): MercatoError {
  return new MercatoError('invalid-grant', 400, detail, { error: 'invalid_grant' })
}

/** Routes the gateway guards: the API; not health, metrics, the docs page or internal calls. */
function isPublicApi(url: string): boolean {
  return url.startsWith('/v1/') || url.startsWith('/.well-known/')
}

/** The customer a route's path names, for the policy to compare with the caller. */
function customerIdOf(url: string, params: Record<string, string>): string | undefined {
  return url.startsWith('/v1/customers/:id') ? params.id : undefined
}
