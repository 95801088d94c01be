// The HTTP base every process serves: /healthz, /readyz, /metrics, RFC 9457 errors, a body
// limit, and load shedding: past `httpInFlightMax` requests in flight, a request is answered
// 503 with Retry-After at once. Health and metrics are never shed and never wait on a pool.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify'
import helmet from 'helmet'
import { schemaAnnotations } from '../contracts/commands.ts'
import {
  errorMessage,
  isOutage,
  MercatoError,
  OverloadedError,
  RetryLaterError,
  toProblem,
} from '../platform/errors.ts'
import { withTimeout } from '../platform/limits.ts'
import { LazyChildLogger, type Logger } from '../platform/logger.ts'
import { latencyBucketsSeconds, type Metrics } from '../platform/metrics.ts'
import type { Config } from './config.ts'

const unshed = new Set(['/healthz', '/readyz', '/metrics'])

/**
 * Routes a process calls on itself in the all-in-one mode (payment to its provider stand-in,
 * the gateway's sign-in to the user service): still served while it drains, since the work
 * in flight may need them to finish.
 */
const selfCalledPrefixes = ['/provider/', '/internal/']

/** Per server: whether it drains, and how to learn that the last outside request has ended. */
const drains = new WeakMap<FastifyInstance, { start(): void; idle(): Promise<void> }>()

/**
 * Stops taking requests from outside (each new one, on a connection kept alive, is a 503 with
 * `Connection: close`; readiness says so) and resolves once those in flight have ended, or
 * after `waitMs`. Calls the process makes to itself go on being served.
 */
export async function drainHttp(app: FastifyInstance, waitMs: number): Promise<void> {
  const drain = drains.get(app)
  if (!drain) return
  drain.start()
  let timer: NodeJS.Timeout | undefined
  await Promise.race([drain.idle(), new Promise((resolve) => (timer = setTimeout(resolve, waitMs)))])
  clearTimeout(timer)
}

/** On a 503: its problem type, so a gateway tells a refusal by choice from a failure. */
export const problemTypeHeader = 'mercato-problem-type'

export interface ReadinessCheck {
  name: string
  check: () => Promise<void>
}

const requestIdPattern = /^[A-Za-z0-9._:-]{1,128}$/

/** The path and query of a request target given in absolute form; any other form as it is. */
export function originForm(target: string): string {
  if (target.startsWith('/')) return target
  const scheme = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i.exec(target)
  if (!scheme) return target
  const rest = target.slice(scheme[0].length)
  return rest.startsWith('/') ? rest : `/${rest}`
}

export function createHttpServer(
  config: Config,
  log: Logger,
  metrics: Metrics,
  readiness: () => ReadinessCheck[],
): FastifyInstance {
  // Every answer carries them, those the server writes before a request exists included.
  const security = securityHeaders()
  const securityHeaderLines = Object.entries(security)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('')
  const app = Fastify({
    loggerInstance: log.child({ component: 'http' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    childLoggerFactory: (logger, bindings, options) =>
      new LazyChildLogger(logger as Logger, bindings, options) as unknown as FastifyBaseLogger,
    bodyLimit: config.httpBodyBytesMax,
    // A request keeps the id its caller gave it (the gateway's, a client's) when it looks
    // like one; otherwise it gets a new one. Logs carry it, and so does the answer.
    requestIdHeader: false,
    genReqId: (request) => {
      const given = request.headers['x-request-id']
      return typeof given === 'string' && requestIdPattern.test(given) ? given : randomUUID()
    },
    // A request line may name its target in absolute form (`GET http://host/v1/orders`,
    // RFC 9112 §3.2.2), which a server must accept: it is routed, checked and forwarded by
    // its path alone, as any other request is.
    rewriteUrl: (request) => originForm(request.url ?? '/'),
    requestTimeout: config.httpRequestTimeoutMs,
    // A client that goes quiet mid-request (half a body, then nothing) is cut off after the
    // same time: Node checks requestTimeout only every 30 s, and such a request would hold
    // its in-flight slot, and a drain, for as long as the client likes.
    connectionTimeout: config.httpRequestTimeoutMs,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Validation refuses what it does not know rather than quietly dropping or coercing it,
    // and reports every bad field at once.
    // (verbose: an error carries the schema it failed, so a `not` can say what is not allowed;
    // unicode off: lengths count UTF-16 code units, as the event schemas do, so a string the
    // API accepts is never too long for the event it becomes).
    ajv: {
      customOptions: {
        removeAdditional: false,
        coerceTypes: false,
        allErrors: true,
        verbose: true,
        unicode: false,
        // An annotation: what a value failing its pattern is told (see patternSays).
        keywords: schemaAnnotations,
        // ajv calls `unicode: false` deprecated, and says so at every start: that one line is
        // left out; its other warnings go to the log.
        logger: {
          log: () => {},
          warn: (...args: unknown[]) => {
            const message = args.map(String).join(' ')
            if (!message.startsWith('DEPRECATED: option unicode')) log.warn({ component: 'ajv' }, message)
          },
          error: (...args: unknown[]) => log.error({ component: 'ajv' }, args.map(String).join(' ')),
        },
      },
    },
    // The router's own refusals (a path parameter too long, a malformed URL, bad
    // content type) are problem details too, without echoing the request.
    frameworkErrors: (error, request, reply) => {
      const status = (error as { statusCode?: number }).statusCode ?? 400
      const problem = blankProblem(
        status,
        status === 414 ? 'a path parameter is too long' : 'the request line or its headers are malformed',
        instanceOf(request.url).slice(0, 200),
      )
      ;(reply as FastifyReply)
        .code(status)
        .headers(security)
        .header('x-request-id', request.id)
        .type('application/problem+json')
        .send(problem)
    },
    // What Node's parser refuses before a request exists (headers too large, a malformed
    // request line, a client too slow) is answered as problem details too, then closed.
    clientErrorHandler: (error, socket) => {
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'ECONNRESET' || socket.destroyed) return
      const [status, detail] =
        code === 'HPE_HEADER_OVERFLOW'
          ? [431, 'the request headers are larger than this server accepts']
          : code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? [408, 'the request did not arrive in time']
            : [400, 'the request is not valid HTTP']
      const body = JSON.stringify(blankProblem(status, detail))
      if (socket.writable) {
        socket.write(
          `HTTP/1.1 ${status} ${titleFor(status)}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n` +
            `Content-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${randomUUID()}\r\n${securityHeaderLines}\r\n${body}`,
        )
      }
      socket.destroy(error)
    },
  })
  // An Expect other than 100-continue, the only one HTTP defines (RFC 9110 §10.1.1), is
  // refused by Node before a request exists: as problem details here too.
  app.server.on('checkExpectation', (_request: IncomingMessage, response: ServerResponse) => {
    const body = JSON.stringify(blankProblem(417, 'the only Expect this server meets is 100-continue'))
    response.writeHead(417, {
      ...security,
      'content-type': 'application/problem+json',
      'content-length': Buffer.byteLength(body),
      'x-request-id': randomUUID(),
    })
    response.end(body)
  })
  // Every route's methods by path pattern, to answer 405 (with Allow) and OPTIONS on a path
  // that exists for other methods.
  const routes: { pattern: RegExp; methods: string[] }[] = []
  app.addHook('onRoute', (route) => {
    const methods = ([] as string[]).concat(route.method)
    // CORS's preflight route (OPTIONS on every path) says nothing of what a path answers.
    if (methods.every((method) => method === 'OPTIONS')) return
    const pattern = new RegExp(
      `^${route.url
        .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
        .replace(/:[^/]+/g, '[^/]+')
        .replace(/\*/g, '.*')}$`,
    )
    routes.push({ pattern, methods: methods.includes('GET') ? [...methods, 'HEAD'] : methods })
  })
  const allowedMethods = (path: string): string[] => {
    const methods = new Set<string>()
    for (const route of routes) if (route.pattern.test(path)) for (const m of route.methods) methods.add(m)
    return [...methods].sort()
  }
  // Bodies are JSON (or what a component adds, such as the token route's form): a text/plain
  // body is refused with 415 rather than parsed into a string that fails validation.
  app.removeContentTypeParser('text/plain')
  // fastify's JSON parser refuses a "__proto__" or "constructor" key as invalid JSON; say why.
  // A body that is no JSON, or nests deeper than any route takes, is a bad field like any other.
  const parseJson = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    // JSON between systems is UTF-8 (RFC 8259 §8.1): another charset is refused, and bytes
    // that are not UTF-8 are a bad body, not text quietly patched with U+FFFD.
    const otherCharset = charsetRefusal(request, 'a JSON body')
    if (otherCharset) return done(otherCharset)
    const text = utf8Text(body as Buffer)
    if (text === undefined) return done(badBody('is not valid UTF-8'))
    parseJson(request, text, (error, value) => {
      if (error)
        return done(isJson(text) ? poisonedBody() : badBody(text === '' ? 'is empty' : 'is not valid JSON'))
      if (nestsDeeperThan(value, jsonDepthMax))
        return done(badBody(`nests arrays and objects deeper than ${jsonDepthMax} levels`), undefined)
      done(null, value)
    })
  })

  let inFlight = 0
  /** Requests in flight from outside (not calls of this process to itself). */
  let outsideInFlight = 0
  let draining = false
  let whenIdle: (() => void) | undefined
  drains.set(app, {
    start: () => {
      draining = true
    },
    idle: () =>
      outsideInFlight === 0
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            whenIdle = resolve
          }),
  })
  const shed = metrics.counter(
    'mercato_http_shed_total',
    'Requests refused with 503 because the process was full.',
  )
  metrics.gauge('mercato_http_in_flight', 'Requests being handled.', [], () => inFlight)
  // By route template (never the raw path: ids would make a series per order), method and
  // status; a path no route matches counts as "unmatched".
  const answered = metrics.counter('mercato_http_requests_total', 'HTTP requests answered.', [
    'method',
    'route',
    'status',
  ])
  const duration = metrics.histogram(
    'mercato_http_request_duration_seconds',
    'Time from a request to the end of its answer, by route and status class.',
    ['method', 'route', 'status_class'],
    latencyBucketsSeconds,
  )
  // The hooks every request passes are callback-style: no promise, no extra turn of the
  // microtask queue for work that never waits.
  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched'
    const status = reply.statusCode
    answered.inc({ method: request.method, route, status })
    duration.observe(
      { method: request.method, route, status_class: `${Math.floor(status / 100)}xx` },
      reply.elapsedTime / 1000,
    )
    done()
  })

  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-request-id', request.id)
    // No route decodes a compressed body: one would fail as "not valid JSON", or (br, say,
    // over plain text) be taken as it is. RFC 9110 §15.5.16: 415, naming what is accepted.
    const coding = request.headers['content-encoding']?.trim().toLowerCase()
    const hasBody =
      request.headers['transfer-encoding'] !== undefined || Number(request.headers['content-length'] ?? 0) > 0
    if (hasBody && coding && coding !== 'identity') {
      reply.header('accept-encoding', 'identity')
      return done(
        new MercatoError(
          'unsupported-content-encoding',
          415,
          `a body in Content-Encoding ${request.headers['content-encoding']} is not accepted: send it uncompressed`,
        ),
      )
    }
    // Node keeps the first of two Content-Types and drops the other without a word: which
    // one the sender meant is anyone's guess, so neither is read (RFC 9110 §5.3).
    if (hasBody && headerCount(request.raw.rawHeaders, 'content-type') > 1)
      return done(
        new MercatoError('invalid-request', 400, 'the request has more than one Content-Type header', {
          errors: [{ in: 'header', field: 'Content-Type', message: 'is given more than once' }],
        }),
      )
    const path = request.url.split('?')[0]
    if (unshed.has(path)) return done()
    const outside = !selfCalledPrefixes.some((prefix) => path.startsWith(prefix))
    if (draining && outside) {
      // Not on a store that is closing: the client sends it again, to another instance or
      // to this one once it is back.
      reply.header('connection', 'close')
      return done(
        new MercatoError(
          'draining',
          503,
          'shutting down',
          {},
          'this server is shutting down; send the request again',
        ),
      )
    }
    if (inFlight >= config.httpInFlightMax) {
      shed.inc()
      const problem = new OverloadedError('http', `${inFlight} requests in flight, the limit`)
      reply.header('retry-after', String(problem.retryAfterSeconds))
      reply.header(problemTypeHeader, toProblem(problem).type)
      // Answered here: the request goes no further (fastify wants no done() after a send).
      reply
        .code(503)
        .type('application/problem+json')
        .send(toProblem(problem, instanceOf(request.url)))
      return
    }
    inFlight++
    if (outside) outsideInFlight++
    // An answer's end and a client that goes away both close the response, once.
    reply.raw.once('close', () => {
      inFlight--
      if (outside && --outsideInFlight === 0) whenIdle?.()
    })
    done()
  })

  app.setErrorHandler((error, request, reply) => {
    const status =
      error instanceof MercatoError ? error.status : (error as { statusCode?: number }).statusCode
    let problem: ReturnType<typeof toProblem>
    const validation = (error as { validation?: ValidationIssue[]; validationContext?: string }).validation
    if (validation) {
      const part = (error as { validationContext?: string }).validationContext ?? 'body'
      const { issues, repeated } =
        part === 'querystring'
          ? repeatedParameters(validation, request.query)
          : { issues: validation, repeated: [] }
      problem = validationProblem(issues, part, instanceOf(request.url), [
        ...repeated,
        ...(laterIssues.get(request) ?? []),
      ])
    } else if ((error as { code?: string }).code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      // A 400 naming the body, as for any other bad field: nothing of it was read past the limit.
      problem = validationProblem([], 'body', instanceOf(request.url), [
        { in: 'body', field: '/', message: `is larger than the limit of ${config.httpBodyBytesMax} bytes` },
      ])
    } else if (error instanceof MercatoError) {
      // A refusal whose words for the caller leave out what is inside: the log keeps them.
      if (error.shownDetail !== undefined) request.log.debug({ err: error.message }, 'request refused')
      problem = toProblem(error, instanceOf(request.url))
    } else if (status === 415) {
      // The same type as a charset refused, naming what this route takes.
      const takes = (request.routeOptions.schema as { consumes?: string[] } | undefined)?.consumes ?? [
        'application/json',
      ]
      problem = toProblem(
        new MercatoError('unsupported-media-type', 415, `send the body as ${takes.join(' or ')}`),
        instanceOf(request.url),
      )
    } else if (status && status >= 400 && status < 500) {
      // fastify's own client errors (bad JSON, a bad Content-Length, …): their message is safe to show.
      problem = blankProblem(status, (error as Error).message, instanceOf(request.url))
    } else if (isOutage(error)) {
      // A store or the cache down for now: the client may come back, as for any 503.
      request.log.warn({ err: errorMessage(error) }, 'request failed: a dependency is down')
      problem = toProblem(
        new MercatoError('unavailable', 503, 'a store or the cache is unreachable for now; retry later'),
        instanceOf(request.url),
      )
    } else {
      request.log.error({ err: error }, 'request failed')
      problem = toProblem(error, instanceOf(request.url))
    }
    if (error instanceof RetryLaterError) reply.header('retry-after', String(error.retryAfterSeconds))
    // Every 503 is for now (overload, a dependency down, a view not built yet): say when to come back.
    else if (problem.status === 503 && !reply.hasHeader('retry-after')) reply.header('retry-after', '1')
    // Which 503 it is, for a gateway in front, also when there is no body to read (HEAD).
    if (problem.status === 503) reply.header(problemTypeHeader, problem.type)
    // RFC 6750: a 401 says how to authenticate, and why a token was refused.
    if (problem.status === 401 && !reply.hasHeader('www-authenticate')) {
      const invalid = error instanceof MercatoError && error.code === 'invalid-token'
      reply.header(
        'www-authenticate',
        invalid ? 'Bearer realm="mercato", error="invalid_token"' : 'Bearer realm="mercato"',
      )
    }
    reply.code(problem.status).type('application/problem+json').send(problem)
  })

  app.setNotFoundHandler((request, reply) => {
    const path = instanceOf(request.url)
    const allowed = allowedMethods(path)
    if (allowed.length > 0) {
      const allow = [...allowed, 'OPTIONS'].join(', ')
      if (request.method === 'OPTIONS') return reply.code(204).header('allow', allow).send()
      return reply
        .code(405)
        .header('allow', allow)
        .type('application/problem+json')
        .send(blankProblem(405, `${path} answers ${allow}, not ${request.method}`, path))
    }
    reply
      .code(404)
      .type('application/problem+json')
      .send(blankProblem(404, `no route ${request.method} ${path}`, path))
  })

  app.get('/healthz', async () => ({ status: 'ok' }))

  app.get('/readyz', async (_request, reply) => {
    if (draining) {
      reply.code(503)
      return { status: 'draining', checks: [] }
    }
    const results = await Promise.all(
      readiness().map(async ({ name, check }) => {
        try {
          await withTimeout(`readiness of ${name}`, 2_000, check())
          return { name, ready: true }
        } catch (error) {
          return { name, ready: false, reason: (error as Error).message }
        }
      }),
    )
    const ready = results.length > 0 && results.every((r) => r.ready)
    reply.code(ready ? 200 : 503)
    return { status: ready ? 'ready' : 'not ready', checks: results }
  })

  app.get('/metrics', async (_request, reply) => {
    reply.type(metrics.contentType)
    return metrics.text()
  })

  return app
}

/**
 * A problem's `instance`: the path without its query, which may carry what must not be
 * echoed (a token someone put in the URL).
 */
function instanceOf(url: string): string {
  return url.split('?')[0]
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text)
    return true
  } catch {
    return false
  }
}

function poisonedBody(): MercatoError {
  return badBody('has a "__proto__" key, or a "constructor" key holding a "prototype", which is not allowed')
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false })

/** How many times a header comes in `rawHeaders` (names and values in turn, names as sent). */
export function headerCount(rawHeaders: string[], name: string): number {
  let count = 0
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i].toLowerCase() === name) count++
  return count
}

/** A 415 for a body whose Content-Type names a charset other than UTF-8, the only one read. */
export function charsetRefusal(request: FastifyRequest, what: string): MercatoError | undefined {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(request.headers['content-type'] ?? '')?.[1]
  if (charset === undefined || /^utf-?8$/i.test(charset)) return undefined
  return new MercatoError('unsupported-media-type', 415, `${what} is UTF-8, not ${charset}: send it as UTF-8`)
}

/** A body's text, or undefined when its bytes are not UTF-8. */
export function utf8Text(body: Buffer): string | undefined {
  try {
    return utf8.decode(body)
  } catch {
    return undefined
  }
}

/** A refusal of the whole body, with `extensions` (an OAuth error code, say) besides its errors. */
export function badBody(message: string, extensions: Record<string, unknown> = {}): MercatoError {
  return new MercatoError('invalid-request', 400, `the body ${message}`, {
    errors: [{ in: 'body', field: '/', message }],
    ...extensions,
  })
}

/** Far more than any route's body has; a deeper one would only exhaust the stack of whatever walks it. */
const jsonDepthMax = 32

/** Walks without recursion, so that the walk itself cannot overflow the stack. */
function nestsDeeperThan(value: unknown, depthMax: number): boolean {
  const stack: [unknown, number][] = [[value, 0]]
  while (stack.length > 0) {
    const [current, depth] = stack.pop() as [unknown, number]
    if (current === null || typeof current !== 'object') continue
    if (depth >= depthMax) return true
    for (const child of Object.values(current)) stack.push([child, depth + 1])
  }
  return false
}

export interface ValidationIssue {
  instancePath: string
  message?: string
  keyword: string
  params: Record<string, unknown>
  /** The failed keyword's value in the schema (ajv's verbose mode). */
  schema?: unknown
  /** The schema holding the failed keyword (ajv's verbose mode). */
  parentSchema?: unknown
}

function messageOf(issue: ValidationIssue): string {
  if (issue.keyword === 'additionalProperties') return 'is not a known field'
  const says = (issue.parentSchema as { 'x-pattern-message'?: string } | undefined)?.['x-pattern-message']
  if (issue.keyword === 'pattern' && says) return says
  const not = issue.keyword === 'not' ? (issue.schema as { const?: unknown } | undefined) : undefined
  if (not && 'const' in not) return `must not be ${not.const === 0 ? 'zero' : JSON.stringify(not.const)}`
  // Lengths count UTF-16 code units (see the ajv options): say so, or 101 emoji would be
  // "more than 200 characters".
  const limit = (issue.params as { limit?: number }).limit
  if (issue.keyword === 'maxLength')
    return `must NOT be longer than ${limit} UTF-16 code units (an emoji counts 2)`
  return issue.message ?? 'is invalid'
}

/**
 * A value that matches none of a union of constants gives an issue per constant (a `const`,
 * or a `type` when it is not even a string, as a repeated query parameter) and an `anyOf`:
 * they become one issue that lists the allowed values.
 */
function withChoicesMerged(issues: ValidationIssue[]): ValidationIssue[] {
  const choices = new Map<string, unknown[]>()
  for (const issue of issues) {
    const branches = issue.keyword === 'anyOf' && Array.isArray(issue.schema) ? issue.schema : []
    if (branches.length > 1 && branches.every((b) => typeof b === 'object' && b !== null && 'const' in b))
      choices.set(
        issue.instancePath,
        branches.map((b) => (b as { const: unknown }).const),
      )
  }
  const merged: ValidationIssue[] = []
  for (const issue of issues) {
    const values = choices.get(issue.instancePath)
    if (!values) merged.push(issue)
    else if (issue.keyword === 'anyOf') {
      const listed = values.map((value) => JSON.stringify(value)).join(', ')
      merged.push({ ...issue, keyword: 'enum', message: `must be one of ${listed}` })
    }
    // The branches' own issues at that path are what the one above says.
  }
  return merged
}

/** A 400 naming each bad field as a JSON pointer into the part of the request it is in. */
/** A bad field of a request, as problem details name it. */
export interface FieldIssue {
  in: string
  field: string
  message: string
}

/** Per request, what a route's own checks found before the schema's validation ran. */
const laterIssues = new WeakMap<FastifyRequest, FieldIssue[]>()

/**
 * A query parameter given twice reaches validation as an array, which its schema then calls
 * the wrong type, or no allowed value: it is said as what it is, once per parameter.
 */
function repeatedParameters(
  issues: ValidationIssue[],
  query: unknown,
): { issues: ValidationIssue[]; repeated: FieldIssue[] } {
  const given = (query ?? {}) as Record<string, unknown>
  const isRepeated = (path: string) => {
    const name = path.split('/')[1]
    return name !== undefined && Array.isArray(given[name])
  }
  const names = new Set(
    issues.filter((i) => isRepeated(i.instancePath)).map((i) => i.instancePath.split('/')[1]),
  )
  return {
    issues: issues.filter((i) => !isRepeated(i.instancePath)),
    repeated: [...names].map((name) => ({
      in: 'querystring',
      field: `/${name}`,
      message: 'is given more than once',
    })),
  }
}

/**
 * Records an issue a route's handler will refuse the request for (a header it checks itself),
 * so that a request the schema refuses first names it too: every bad field at once.
 */
export function reportWithValidation(request: FastifyRequest, issue: FieldIssue): void {
  laterIssues.set(request, [...(laterIssues.get(request) ?? []), issue])
}

export function validationProblem(
  issues: ValidationIssue[],
  part: string,
  instance: string,
  more: FieldIssue[] = [],
) {
  const errors: FieldIssue[] = withChoicesMerged(issues).map((issue) => {
    let pointer = issue.instancePath
    if (issue.keyword === 'required') pointer += `/${String(issue.params.missingProperty)}`
    if (issue.keyword === 'additionalProperties') pointer += `/${String(issue.params.additionalProperty)}`
    return { in: part, field: pointer || '/', message: messageOf(issue) }
  })
  // (A field reported ahead of validation, and by it too, is named once.)
  const named = new Set(errors.map((e) => `${e.in} ${e.field} ${e.message}`))
  errors.push(...more.filter((e) => !named.has(`${e.in} ${e.field} ${e.message}`)))
  // A body of thousands of bad fields gets an answer of bounded size: the first ones.
  const said = errors.slice(0, detailErrorsMax).map((e) => `${e.in} ${e.field}: ${e.message}`)
  if (errors.length > detailErrorsMax) said.push(`and ${errors.length - detailErrorsMax} more`)
  return {
    type: 'https://mercato.dev/problems/invalid-request',
    title: 'Invalid request',
    status: 400,
    detail: said.join('; '),
    instance,
    errors: errors.slice(0, listedErrorsMax),
    ...(errors.length > listedErrorsMax ? { errorCount: errors.length } : {}),
  }
}

/**
 * The error for a request refused outside the schema's own check (a command's rules, a
 * validation a route handles itself), said as validationProblem says it; `extensions`
 * (an OAuth error code, say) go beside its errors.
 */
export function invalidRequest(
  issues: ValidationIssue[],
  more: FieldIssue[],
  extensions: Record<string, unknown> = {},
): MercatoError {
  const { detail, errors, ...counted } = validationProblem(issues, 'body', '', more)
  const errorCount = 'errorCount' in counted ? { errorCount: counted.errorCount } : {}
  return new MercatoError('invalid-request', 400, detail, { errors, ...errorCount, ...extensions })
}

/** Bad fields an invalid-request problem names in its detail, and lists in `errors`. */
const detailErrorsMax = 10
const listedErrorsMax = 50

/** Problem details of HTTP's own kind (RFC 9457 §4.2.1): the status says it all, the detail the rest. */
function blankProblem(status: number, detail: string, instance?: string) {
  return {
    type: 'about:blank',
    title: titleFor(status),
    status,
    detail,
    ...(instance === undefined ? {} : { instance }),
  }
}

function titleFor(status: number): string {
  const titles: Record<number, string> = {
    400: 'Bad Request',
    404: 'Not Found',
    405: 'Method Not Allowed',
    408: 'Request Timeout',
    413: 'Content Too Large',
    414: 'URI Too Long',
    415: 'Unsupported Media Type',
    417: 'Expectation Failed',
    429: 'Too Many Requests',
    431: 'Request Header Fields Too Large',
  }
  return titles[status] ?? 'Client Error'
}

/**
 * Helmet's security headers (without a CSP: the API answers JSON), worked out once. They are
 * the same for every answer, so setting them is all a request pays; running helmet's
 * middleware chain per request cost the cached read path about a quarter of its throughput.
 */
export function securityHeaders(): Record<string, string> {
  const headers: Record<string, string> = {}
  const collect = {
    setHeader: (name: string, value: string) => {
      headers[name.toLowerCase()] = value
    },
    removeHeader: () => {},
  }
  helmet({ contentSecurityPolicy: false })(
    {} as IncomingMessage,
    collect as unknown as ServerResponse,
    () => {},
  )
  return headers
}
