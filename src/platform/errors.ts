// Every error a caller can see is created here once, with a code and an HTTP status,
// and rendered as RFC 9457 problem details.

export interface ProblemDetails {
  type: string
  title: string
  status: number
  detail?: string
  instance?: string
  [extension: string]: unknown
}

export class MercatoError extends Error {
  readonly code: string
  readonly status: number
  readonly extensions: Record<string, unknown>
  /**
   * What a caller reads instead of the message, when the message names what is inside
   * (a component, a limit, a timeout): the message is for the log.
   */
  readonly shownDetail: string | undefined
  constructor(
    code: string,
    status: number,
    message: string,
    extensions: Record<string, unknown> = {},
    shownDetail?: string,
  ) {
    super(message)
    this.name = 'MercatoError'
    this.code = code
    this.status = status
    this.extensions = extensions
    this.shownDetail = shownDetail
  }
}

/**
 * A 503 a caller should send again after `retryAfterSeconds` (its Retry-After). The message
 * names what refused, for the log; the caller reads only what to do.
 */
export class RetryLaterError extends MercatoError {
  readonly retryAfterSeconds: number
  constructor(code: string, resource: string, detail: string, shown: string, retryAfterSeconds: number) {
    super(
      code,
      503,
      `${resource}: ${detail}`,
      {},
      `${shown}; send it again after the seconds Retry-After gives`,
    )
    this.retryAfterSeconds = retryAfterSeconds
  }
}

/** A bounded resource (pool, queue, in-flight limit) is full: shed, never wait without end. */
export class OverloadedError extends RetryLaterError {
  constructor(resource: string, detail: string, retryAfterSeconds = 1) {
    super('overloaded', resource, detail, 'too busy to take this request now', retryAfterSeconds)
    this.name = 'OverloadedError'
  }
}

/** A component this one depends on cannot be reached, or its circuit is open: not a choice to shed. */
export class UnavailableError extends RetryLaterError {
  constructor(resource: string, detail: string, retryAfterSeconds = 1) {
    super(
      'unavailable',
      resource,
      detail,
      'a part of the service this request needs cannot be reached now',
      retryAfterSeconds,
    )
    this.name = 'UnavailableError'
  }
}

export class TimeoutError extends MercatoError {
  constructor(operation: string, timeoutMs: number) {
    super(
      'timeout',
      503,
      `${operation} did not finish within ${timeoutMs} ms`,
      {},
      'a part of the service this request needs did not answer in time; send it again shortly',
    )
    this.name = 'TimeoutError'
  }
}

export class InvalidEventError extends MercatoError {
  constructor(reason: string, extensions: Record<string, unknown> = {}) {
    super('invalid-event', 400, reason, extensions)
    this.name = 'InvalidEventError'
  }
}

export class ConfigError extends MercatoError {
  readonly setting: string
  readonly problem: string
  /** `flag`: the command-line flag the value came from, named beside the setting. */
  constructor(setting: string, problem: string, flag?: string) {
    super('invalid-configuration', 500, `${setting}${flag ? ` (${flag})` : ''}: ${problem}`, { setting })
    this.name = 'ConfigError'
    this.setting = setting
    this.problem = problem
  }
}

export class UnreachableError extends MercatoError {
  constructor(what: string, url: string, cause: unknown) {
    super(
      'unreachable',
      503,
      `${what} at ${redactUrl(url)} is unreachable: ${errorMessage(cause)}`,
      {},
      'a part of the service this request needs cannot be reached now; send it again shortly',
    )
    this.name = 'UnreachableError'
  }
}

/** Codes of a connection that failed or was refused: the other side is down or away. */
const connectionCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
])

/**
 * Whether `error` says a dependency (a store, the cache, the stream) is down or full for
 * now, rather than anything about the work at hand: worth waiting out, never a reason to
 * give the work up (a dead letter, a 500).
 */
export function isOutage(error: unknown): boolean {
  if (error instanceof RetryLaterError || error instanceof TimeoutError || error instanceof UnreachableError)
    return true
  const code = (error as { code?: unknown } | undefined)?.code
  if (typeof code === 'string' && connectionCodes.has(code)) return true
  const message = errorMessage(error)
  // ioredis while the connection is down; pg when the server goes away mid-query; SQLite
  // when another process holds the file past the busy timeout (node:sqlite says so only in words).
  return /Stream isn't writeable|Connection is closed|Connection terminated|database is locked/.test(message)
}

export function toProblem(error: unknown, instance?: string): ProblemDetails {
  if (error instanceof MercatoError) {
    return {
      type: `https://mercato.dev/problems/${error.code}`,
      title: titleOf(error.code),
      status: error.status,
      detail: error.shownDetail ?? error.message,
      ...(instance ? { instance } : {}),
      ...error.extensions,
    }
  }
  // Unknown errors never leak their message or stack to a caller.
  return {
    type: 'about:blank',
    title: 'Internal Server Error',
    status: 500,
    ...(instance ? { instance } : {}),
  }
}

function titleOf(code: string): string {
  const words = code.replaceAll('-', ' ')
  return words.charAt(0).toUpperCase() + words.slice(1)
}

export function errorMessage(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return errorMessage(error.errors[0])
  if (error instanceof Error) return error.message || error.name
  return String(error)
}

/** Drops the password from a URL before it is logged or shown. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password) parsed.password = '***'
    return parsed.toString()
  } catch {
    return url
  }
}
