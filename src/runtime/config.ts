// One typed configuration, from environment variables and command-line flags (flags win).
// Every setting has a name with its unit, a default, a bound and a line of help; a bad
// value stops start-up with a message that names the setting and what is wrong.
import { resolve } from 'node:path'
import { ConfigError } from '../platform/errors.ts'

export type StreamConfig =
  | { kind: 'embedded'; path: string; synchronous: 'normal' | 'full' }
  | { kind: 'kafka'; brokers: string[]; replicationFactor: number }
export type StoreConfig = { kind: 'sqlite'; dataDir: string } | { kind: 'postgres'; url: string }
export type CacheConfig = { kind: 'memory' } | { kind: 'redis'; url: string }

export interface Config {
  targets: string[]
  host: string
  port: number
  dataDir: string
  logLevel: string
  stream: StreamConfig
  store: StoreConfig
  cache: CacheConfig
  streamPartitions: number
  streamTopicPrefix: string
  eventBytesMax: number
  consumerBatchSizeMax: number
  handlerAttemptsMax: number
  handlerBackoffBaseMs: number
  handlerBackoffMaxMs: number
  publishQueueLengthMax: number
  storePoolSizeMax: number
  storeQueueLengthMax: number
  storeAcquireTimeoutMs: number
  storeStatementTimeoutMs: number
  cacheEntriesMax: number
  cacheCommandTimeoutMs: number
  httpInFlightMax: number
  httpBodyBytesMax: number
  httpRequestTimeoutMs: number
  connectTimeoutMs: number
  shutdownTimeoutMs: number
  idempotencyKeyTtlMs: number
  idempotencyLockMs: number
  inboxRetentionMs: number
  orderLinesMax: number
  orderBacklogMax: number
  orderWaitMaxMs: number
  sagaStepTimeoutMs: number
  reservationTtlMs: number
  paymentProviderUrl: string | undefined
  /** The secret the payment provider's API asks for as a bearer token; unset: callers on this machine only. */
  paymentProviderApiKey: string | undefined
  paymentProviderTimeoutMs: number
  paymentProviderAttemptsMax: number
  paymentProviderInFlightWaitMs: number
  paymentProviderConcurrencyMax: number
  carrierStepMs: number
  readWaitMs: number
  queryCacheTtlMs: number
  viewSampleMs: number
  smtpUrl: string | undefined
  seedDemoData: boolean
  storeSchemaPrefix: string
  accessTokenTtlSeconds: number
  refreshTokenTtlSeconds: number
  serviceTokenTtlSeconds: number
  keyActivationDelayMs: number
  rateLimitPrincipalPerMinute: number
  rateLimitAddressPerMinute: number
  rateLimitLoginPerMinute: number
  rateLimitRegisterPerMinute: number
  upstreamTimeoutMs: number
  upstreamConcurrencyMax: number
  breakerFailures: number
  breakerHalfOpenMs: number
  auth: AuthConfig
  gateway: GatewayConfig
  webhookAllowPrivateHosts: boolean
}

export interface AuthConfig {
  issuer: string
  audience: string
  policyDir: string | undefined
  external: { issuer: string; jwksUrl: string; audience: string; algorithms: string[] } | undefined
  staff: {
    admin: { email: string; password?: string }
    support: { email: string; password?: string }
  }
}

export interface GatewayConfig {
  /** Instances of the command API and query API, when they do not run in this process. */
  commandApiUrls: string[]
  queryApiUrls: string[]
  /** The user service, when it does not run in this process. */
  userUrl: string | undefined
  /** Origins allowed by CORS; empty: none. `*` allows any. */
  corsOrigins: string[]
}

type Source = Record<string, string | undefined>

interface IntSetting {
  env: string
  help: string
  default: number
  min: number
  max: number
}

/** Integer settings: name (with unit), default and bound. `mercato start --help` lists them. */
export const intSettings = {
  port: { env: 'MERCATO_PORT', help: 'HTTP port of this process', default: 8080, min: 0, max: 65_535 },
  streamPartitions: {
    env: 'MERCATO_STREAM_PARTITIONS',
    help: 'partitions of each topic when it is created',
    default: 8,
    min: 1,
    max: 256,
  },
  eventBytesMax: {
    env: 'MERCATO_EVENT_BYTES_MAX',
    help: 'largest event (data and attributes), in bytes',
    default: 65_536,
    min: 1_024,
    max: 1_000_000,
  },
  consumerBatchSizeMax: {
    env: 'MERCATO_CONSUMER_BATCH_SIZE_MAX',
    help: 'records handed to a consumer at once, per partition',
    default: 500,
    min: 1,
    max: 10_000,
  },
  handlerAttemptsMax: {
    env: 'MERCATO_HANDLER_ATTEMPTS_MAX',
    help: 'attempts at handling one event before it goes to the dead-letter topic',
    default: 5,
    min: 1,
    max: 50,
  },
  handlerBackoffBaseMs: {
    env: 'MERCATO_HANDLER_BACKOFF_BASE_MS',
    help: 'first retry delay; doubles each attempt, with jitter',
    default: 100,
    min: 1,
    max: 60_000,
  },
  handlerBackoffMaxMs: {
    env: 'MERCATO_HANDLER_BACKOFF_MAX_MS',
    help: 'longest retry delay',
    default: 5_000,
    min: 1,
    max: 600_000,
  },
  publishQueueLengthMax: {
    env: 'MERCATO_PUBLISH_QUEUE_LENGTH_MAX',
    help: 'events waiting to be appended before publishers are refused',
    default: 100_000,
    min: 100,
    max: 10_000_000,
  },
  storePoolSizeMax: {
    env: 'MERCATO_STORE_POOL_SIZE_MAX',
    help: 'PostgreSQL connections per service store',
    default: 10,
    min: 1,
    max: 500,
  },
  storeQueueLengthMax: {
    env: 'MERCATO_STORE_QUEUE_LENGTH_MAX',
    help: 'callers that may wait for a store connection',
    default: 200,
    min: 0,
    max: 100_000,
  },
  storeAcquireTimeoutMs: {
    env: 'MERCATO_STORE_ACQUIRE_TIMEOUT_MS',
    help: 'longest wait for a store connection',
    default: 2_000,
    min: 1,
    max: 60_000,
  },
  storeStatementTimeoutMs: {
    env: 'MERCATO_STORE_STATEMENT_TIMEOUT_MS',
    help: 'longest run of one SQL statement (PostgreSQL)',
    default: 5_000,
    min: 10,
    max: 600_000,
  },
  cacheEntriesMax: {
    env: 'MERCATO_CACHE_ENTRIES_MAX',
    help: 'entries the in-process cache keeps',
    default: 100_000,
    min: 1,
    max: 100_000_000,
  },
  cacheCommandTimeoutMs: {
    env: 'MERCATO_CACHE_COMMAND_TIMEOUT_MS',
    help: 'longest wait for one Redis command',
    default: 1_000,
    min: 1,
    max: 60_000,
  },
  httpInFlightMax: {
    env: 'MERCATO_HTTP_IN_FLIGHT_MAX',
    help: 'requests handled at once; more are answered 503 with Retry-After',
    default: 1_024,
    min: 1,
    max: 100_000,
  },
  httpBodyBytesMax: {
    env: 'MERCATO_HTTP_BODY_BYTES_MAX',
    help: 'largest request body, in bytes',
    default: 65_536,
    min: 1_024,
    max: 10_485_760,
  },
  httpRequestTimeoutMs: {
    env: 'MERCATO_HTTP_REQUEST_TIMEOUT_MS',
    help: 'longest time to receive a request',
    default: 10_000,
    min: 100,
    max: 600_000,
  },
  connectTimeoutMs: {
    env: 'MERCATO_CONNECT_TIMEOUT_MS',
    help: 'longest wait for a server at start-up before it is reported unreachable',
    default: 10_000,
    min: 100,
    max: 600_000,
  },
  shutdownTimeoutMs: {
    env: 'MERCATO_SHUTDOWN_TIMEOUT_MS',
    help: 'longest drain on SIGTERM before the process gives up',
    default: 15_000,
    min: 100,
    max: 600_000,
  },
  idempotencyKeyTtlMs: {
    env: 'MERCATO_IDEMPOTENCY_KEY_TTL_MS',
    help: 'how long an Idempotency-Key and its stored answer are kept',
    default: 86_400_000,
    min: 1_000,
    max: 2_592_000_000,
  },
  idempotencyLockMs: {
    env: 'MERCATO_IDEMPOTENCY_LOCK_MS',
    help: 'how long a request in flight holds its key before a retry may take it over',
    default: 30_000,
    min: 100,
    max: 600_000,
  },
  inboxRetentionMs: {
    env: 'MERCATO_INBOX_RETENTION_MS',
    help: 'how long a service remembers an event it handled, so a redelivery has no second effect (longer than the stream keeps events: Kafka, by default, 7 days and up to 7 more until the segment rolls)',
    default: 1_209_600_000,
    min: 60_000,
    max: 31_536_000_000,
  },
  orderBacklogMax: {
    env: 'MERCATO_ORDER_BACKLOG_MAX',
    help: 'events the saga consumers may have waiting before new orders get 503 (0: no admission control)',
    default: 10_000,
    min: 0,
    max: 10_000_000,
  },
  orderWaitMaxMs: {
    env: 'MERCATO_ORDER_WAIT_MAX_MS',
    help: 'expected wait of a new order in the backlog of the saga consumers past which it gets 503 (0: never)',
    default: 2_000,
    min: 0,
    max: 600_000,
  },
  orderLinesMax: {
    env: 'MERCATO_ORDER_LINES_MAX',
    help: 'most lines in one order (the flag max-lines-per-order may lower it)',
    default: 100,
    min: 1,
    max: 100,
  },
  sagaStepTimeoutMs: {
    env: 'MERCATO_SAGA_STEP_TIMEOUT_MS',
    help: 'deadline of each order saga step; a passed deadline cancels and compensates',
    default: 30_000,
    min: 50,
    max: 86_400_000,
  },
  reservationTtlMs: {
    env: 'MERCATO_RESERVATION_TTL_MS',
    help: 'how long a stock reservation lives unless the order is confirmed',
    default: 600_000,
    min: 100,
    max: 86_400_000,
  },
  paymentProviderTimeoutMs: {
    env: 'MERCATO_PAYMENT_PROVIDER_TIMEOUT_MS',
    help: 'longest wait for one call to the payment provider',
    default: 2_000,
    min: 10,
    max: 120_000,
  },
  paymentProviderAttemptsMax: {
    env: 'MERCATO_PAYMENT_PROVIDER_ATTEMPTS_MAX',
    help: 'attempts at one payment provider call before the step fails',
    default: 4,
    min: 1,
    max: 20,
  },
  paymentProviderInFlightWaitMs: {
    env: 'MERCATO_PAYMENT_PROVIDER_IN_FLIGHT_WAIT_MS',
    help: 'how long a payment provider call waits, asking once a second, for an idempotency key the provider says it still holds (an earlier attempt cut short by a timeout or a crash), from the first time it says so, before the step fails',
    default: 15_000,
    min: 0,
    max: 600_000,
  },
  paymentProviderConcurrencyMax: {
    env: 'MERCATO_PAYMENT_PROVIDER_CONCURRENCY_MAX',
    help: 'payment provider calls in flight at once (bulkhead)',
    default: 64,
    min: 1,
    max: 10_000,
  },
  carrierStepMs: {
    env: 'MERCATO_CARRIER_STEP_MS',
    help: 'simulated carrier clock: time from scheduled to shipped, and from shipped to delivered',
    default: 5_000,
    min: 10,
    max: 86_400_000,
  },
  readWaitMs: {
    env: 'MERCATO_READ_WAIT_MS',
    help: 'how long a query with a consistency token waits for its view to reach it, before answering stale',
    default: 2_000,
    min: 0,
    max: 30_000,
  },
  queryCacheTtlMs: {
    env: 'MERCATO_QUERY_CACHE_TTL_MS',
    help: 'lifetime of a cached query answer (events invalidate it sooner)',
    default: 60_000,
    min: 1,
    max: 86_400_000,
  },
  viewSampleMs: {
    env: 'MERCATO_VIEW_SAMPLE_MS',
    help: 'how often the query API measures how far each view is behind the stream',
    default: 100,
    min: 10,
    max: 60_000,
  },
  accessTokenTtlSeconds: {
    env: 'MERCATO_ACCESS_TOKEN_TTL_SECONDS',
    help: 'lifetime of an access token',
    default: 300,
    min: 10,
    max: 86_400,
  },
  refreshTokenTtlSeconds: {
    env: 'MERCATO_REFRESH_TOKEN_TTL_SECONDS',
    help: 'lifetime of a refresh token (each refresh rotates it)',
    default: 2_592_000,
    min: 60,
    max: 31_536_000,
  },
  serviceTokenTtlSeconds: {
    env: 'MERCATO_SERVICE_TOKEN_TTL_SECONDS',
    help: 'lifetime of a token one component presents to another',
    default: 60,
    min: 10,
    max: 3_600,
  },
  keyActivationDelayMs: {
    env: 'MERCATO_KEY_ACTIVATION_DELAY_MS',
    help: 'how long a rotated-in signing key is published before it signs',
    default: 60_000,
    min: 0,
    max: 86_400_000,
  },
  rateLimitPrincipalPerMinute: {
    env: 'MERCATO_RATE_LIMIT_PRINCIPAL_PER_MINUTE',
    help: 'requests a signed-in user may make per minute',
    default: 600,
    min: 1,
    max: 100_000_000,
  },
  rateLimitAddressPerMinute: {
    env: 'MERCATO_RATE_LIMIT_ADDRESS_PER_MINUTE',
    help: 'requests one client address may make per minute',
    default: 1_200,
    min: 1,
    max: 100_000_000,
  },
  rateLimitLoginPerMinute: {
    env: 'MERCATO_RATE_LIMIT_LOGIN_PER_MINUTE',
    help: 'password and refresh grants one client address may try per minute',
    default: 20,
    min: 1,
    max: 100_000,
  },
  rateLimitRegisterPerMinute: {
    env: 'MERCATO_RATE_LIMIT_REGISTER_PER_MINUTE',
    help: 'registrations not sent by staff that one client address may send per minute',
    default: 10,
    min: 1,
    max: 100_000_000,
  },
  upstreamTimeoutMs: {
    env: 'MERCATO_UPSTREAM_TIMEOUT_MS',
    help: 'longest wait of the gateway for the command or query API',
    default: 5_000,
    min: 10,
    max: 120_000,
  },
  upstreamConcurrencyMax: {
    env: 'MERCATO_UPSTREAM_CONCURRENCY_MAX',
    help: 'requests in flight to each upstream (command API, query API) before more are refused',
    default: 512,
    min: 1,
    max: 100_000,
  },
  breakerFailures: {
    env: 'MERCATO_BREAKER_FAILURES',
    help: 'consecutive failures of an upstream that open its circuit',
    default: 5,
    min: 1,
    max: 1_000,
  },
  breakerHalfOpenMs: {
    env: 'MERCATO_BREAKER_HALF_OPEN_MS',
    help: 'how long an open circuit refuses before it lets one request try',
    default: 5_000,
    min: 10,
    max: 600_000,
  },
} satisfies Record<string, IntSetting>

export const urlSettings = {
  stream: {
    env: 'MERCATO_STREAM',
    help: 'event stream: unset for the embedded log, or kafka://host:port[,host:port]',
  },
  store: {
    env: 'MERCATO_STORE',
    help: 'service stores: unset for SQLite files, or postgres://user@host:port/db',
  },
  cache: { env: 'MERCATO_CACHE', help: 'cache and key-value: unset for in-process, or redis://host:port' },
}

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/**
 * Reads the configuration. `env` is the environment; `flags` are command-line values by
 * environment name (so `--port 9000` arrives as MERCATO_PORT) and take precedence.
 */
export function loadConfig(env: Source = process.env, flags: Source = {}): Config {
  const given = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined))
  // A flag given with no value is a mistake, not a wish for the default (`--port ""`).
  for (const [setting, value] of Object.entries(given))
    if (value === '') throw new ConfigError(setting, 'is empty', flagOf(setting))
  try {
    return readConfig({ ...env, ...given })
  } catch (error) {
    // A bad value that came from a flag names the flag too: MERCATO_DATA_DIR is --data-dir.
    if (error instanceof ConfigError && Object.hasOwn(given, error.setting)) {
      throw new ConfigError(error.setting, error.problem, flagOf(error.setting))
    }
    throw error
  }
}

function flagOf(setting: string): string {
  return `--${setting
    .replace(/^MERCATO_/, '')
    .toLowerCase()
    .replaceAll('_', '-')}`
}

/**
 * Every MERCATO_* setting the configuration reads. readConfig reads each one whatever else is
 * set (no read behind a condition), so reading it once with nothing set finds them all.
 */
export function knownSettings(): string[] {
  const read = new Set<string>()
  readConfig(
    new Proxy({} as Source, {
      get(_target, name) {
        if (typeof name === 'string') read.add(name)
        return undefined
      },
    }),
  )
  return [...read].filter((name) => name.startsWith('MERCATO_')).sort()
}

/**
 * The MERCATO_* variables of `env` that no setting reads (most likely misspelled), each with
 * the known setting nearest to it when one is close. MERCATO_TEST_* and MERCATO_BENCH_*
 * belong to the tests and benchmarks.
 */
export function unknownSettings(env: Source): { name: string; nearest?: string }[] {
  const known = knownSettings()
  return Object.keys(env)
    .filter(
      (name) => name.startsWith('MERCATO_') && !known.includes(name) && !/^MERCATO_(TEST|BENCH)_/.test(name),
    )
    .map((name) => {
      const [nearest] = known
        .map((setting) => ({ setting, distance: editDistance(name, setting) }))
        .filter(({ distance }) => distance <= 3)
        .sort((a, b) => a.distance - b.distance)
      return nearest ? { name, nearest: nearest.setting } : { name }
    })
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++)
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      )
    previous = current
  }
  return previous[b.length]
}

function readConfig(source: Source): Config {
  const ints = Object.fromEntries(
    Object.entries(intSettings).map(([key, setting]) => [key, readInt(source, setting)]),
  ) as Record<keyof typeof intSettings, number>
  const dataDir = resolve(source.MERCATO_DATA_DIR || './data')
  const logLevel = source.MERCATO_LOG_LEVEL || 'info'
  if (!logLevels.includes(logLevel)) {
    throw new ConfigError('MERCATO_LOG_LEVEL', `must be one of ${logLevels.join(', ')}, got "${logLevel}"`)
  }
  if (ints.handlerBackoffMaxMs < ints.handlerBackoffBaseMs) {
    throw new ConfigError(
      'MERCATO_HANDLER_BACKOFF_MAX_MS',
      'must not be below MERCATO_HANDLER_BACKOFF_BASE_MS',
    )
  }
  return {
    targets: parseTargets(source.MERCATO_TARGET),
    host: source.MERCATO_HOST || '127.0.0.1',
    dataDir,
    logLevel,
    stream: parseStream(source.MERCATO_STREAM, dataDir, source.MERCATO_STREAM_SYNC),
    store: parseStore(source.MERCATO_STORE, dataDir),
    cache: parseCache(source.MERCATO_CACHE),
    paymentProviderUrl: parseHttpUrl('MERCATO_PAYMENT_PROVIDER_URL', source.MERCATO_PAYMENT_PROVIDER_URL),
    paymentProviderApiKey: parseSecret(
      'MERCATO_PAYMENT_PROVIDER_API_KEY',
      source.MERCATO_PAYMENT_PROVIDER_API_KEY,
    ),
    smtpUrl: parseSmtpUrl(source.MERCATO_SMTP_URL),
    seedDemoData: parseBoolean('MERCATO_SEED', source.MERCATO_SEED, true),
    storeSchemaPrefix: parseSchemaPrefix(source.MERCATO_STORE_SCHEMA_PREFIX),
    streamTopicPrefix: parseTopicPrefix(source.MERCATO_STREAM_TOPIC_PREFIX),
    auth: parseAuth(source),
    gateway: {
      commandApiUrls: parseUrlList('MERCATO_COMMAND_API_URLS', source.MERCATO_COMMAND_API_URLS),
      queryApiUrls: parseUrlList('MERCATO_QUERY_API_URLS', source.MERCATO_QUERY_API_URLS),
      userUrl: parseHttpUrl('MERCATO_USER_URL', source.MERCATO_USER_URL),
      corsOrigins: parseOrigins(source.MERCATO_CORS_ORIGINS),
    },
    webhookAllowPrivateHosts: parseBoolean(
      'MERCATO_WEBHOOK_ALLOW_PRIVATE_HOSTS',
      source.MERCATO_WEBHOOK_ALLOW_PRIVATE_HOSTS,
      false,
    ),
    ...ints,
  }
}

function readInt(source: Source, setting: IntSetting): number {
  const raw = source[setting.env]
  if (raw === undefined || raw === '') return setting.default
  if (!/^-?\d+$/.test(raw.trim())) throw new ConfigError(setting.env, `must be a whole number, got "${raw}"`)
  const value = Number(raw)
  if (value < setting.min || value > setting.max) {
    throw new ConfigError(setting.env, `must be between ${setting.min} and ${setting.max}, got ${value}`)
  }
  return value
}

function parseTopicPrefix(raw: string | undefined): string {
  if (!raw) return ''
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(raw)) {
    throw new ConfigError(
      'MERCATO_STREAM_TOPIC_PREFIX',
      `may hold only letters, digits, ".", "_" and "-" (64 at most), got "${raw}"`,
    )
  }
  return raw
}

function parseTargets(raw: string | undefined): string[] {
  if (!raw) return ['all']
  const targets = raw
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean)
  if (targets.length === 0) throw new ConfigError('MERCATO_TARGET', 'names no component')
  return targets
}

function parseUrl(setting: string, raw: string): URL {
  try {
    return new URL(raw)
  } catch {
    throw new ConfigError(setting, `is not a URL: "${raw}"`)
  }
}

function parseStream(raw: string | undefined, dataDir: string, sync: string | undefined): StreamConfig {
  if (!raw || raw === 'embedded') {
    if (sync && sync !== 'normal' && sync !== 'full') {
      throw new ConfigError('MERCATO_STREAM_SYNC', `must be "normal" or "full", got "${sync}"`)
    }
    return {
      kind: 'embedded',
      path: resolve(dataDir, 'stream.db'),
      synchronous: sync === 'full' ? 'full' : 'normal',
    }
  }
  // kafka://host1:9092,host2:9092?replication=3 — a list of hosts is no WHATWG URL, so read it by hand.
  const match = /^kafka:\/\/([^/?]*)\/?(?:\?(.*))?$/.exec(raw)
  if (!match) {
    throw new ConfigError(
      'MERCATO_STREAM',
      `must be unset, "embedded" or kafka://host:port[,host:port], got "${raw}"`,
    )
  }
  const hosts = match[1].split(',').filter(Boolean)
  if (hosts.length === 0) throw new ConfigError('MERCATO_STREAM', 'names no broker')
  for (const host of hosts) {
    if (!/^[A-Za-z0-9.-]+:\d{1,5}$/.test(host)) {
      throw new ConfigError('MERCATO_STREAM', `broker "${host}" is not host:port`)
    }
  }
  const replication = new URLSearchParams(match[2] ?? '').get('replication') ?? '1'
  if (!/^[1-9]$/.test(replication))
    throw new ConfigError('MERCATO_STREAM', `replication must be 1 to 9, got "${replication}"`)
  return { kind: 'kafka', brokers: hosts, replicationFactor: Number(replication) }
}

function parseStore(raw: string | undefined, dataDir: string): StoreConfig {
  if (!raw || raw === 'sqlite') return { kind: 'sqlite', dataDir: resolve(dataDir, 'stores') }
  const url = parseUrl('MERCATO_STORE', raw)
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
    throw new ConfigError(
      'MERCATO_STORE',
      `must be unset, "sqlite" or postgres://…, got "${url.protocol}//…"`,
    )
  }
  if (!url.hostname) throw new ConfigError('MERCATO_STORE', 'names no host')
  return { kind: 'postgres', url: raw }
}

function parseSchemaPrefix(raw: string | undefined): string {
  if (raw === undefined) return 'mercato_'
  if (!/^([a-z][a-z0-9_]{0,20})?$/.test(raw)) {
    throw new ConfigError(
      'MERCATO_STORE_SCHEMA_PREFIX',
      `may hold only lower-case letters, digits and "_", starting with a letter, got "${raw}"`,
    )
  }
  return raw
}

function parseSecret(setting: string, raw: string | undefined): string | undefined {
  if (!raw) return undefined
  if (raw.length < 16 || !/^[\x21-\x7e]+$/.test(raw))
    throw new ConfigError(setting, 'must be 16 printable characters at least, without spaces')
  return raw
}

function parseHttpUrl(setting: string, raw: string | undefined): string | undefined {
  if (!raw) return undefined
  const url = parseUrl(setting, raw)
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(setting, `must be an http:// or https:// URL, got "${url.protocol}//…"`)
  }
  return raw.replace(/\/+$/, '')
}

function parseSmtpUrl(raw: string | undefined): string | undefined {
  if (!raw) return undefined
  const url = parseUrl('MERCATO_SMTP_URL', raw)
  if (url.protocol !== 'smtp:' && url.protocol !== 'smtps:') {
    throw new ConfigError(
      'MERCATO_SMTP_URL',
      `must be smtp://host:port or smtps://…, got "${url.protocol}//…"`,
    )
  }
  return raw
}

function parseBoolean(setting: string, raw: string | undefined, fallback: boolean): boolean {
  if (raw === undefined || raw === '') return fallback
  if (['1', 'true', 'yes', 'on'].includes(raw)) return true
  if (['0', 'false', 'no', 'off'].includes(raw)) return false
  throw new ConfigError(setting, `must be true or false, got "${raw}"`)
}

function parseCache(raw: string | undefined): CacheConfig {
  if (!raw || raw === 'memory') return { kind: 'memory' }
  const url = parseUrl('MERCATO_CACHE', raw)
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new ConfigError(
      'MERCATO_CACHE',
      `must be unset, "memory" or redis://host:port, got "${url.protocol}//…"`,
    )
  }
  if (!url.hostname) throw new ConfigError('MERCATO_CACHE', 'names no host')
  return { kind: 'redis', url: raw }
}

/** The help text of every setting, for `mercato start --help` and the README. */
export function settingsHelp(): string {
  const rows = [
    ['MERCATO_TARGET', 'components to run, comma-separated (default: all)'],
    ['MERCATO_HOST', 'address to listen on (default: 127.0.0.1)'],
    ['MERCATO_DATA_DIR', 'where embedded engines keep their files (default: ./data)'],
    [
      'MERCATO_STREAM_SYNC',
      'embedded log: "normal" survives kill -9, "full" also power loss (default: normal)',
    ],
    ['MERCATO_STREAM_TOPIC_PREFIX', 'put before every topic name, to share a Kafka cluster (default: none)'],
    [
      'MERCATO_PAYMENT_PROVIDER_URL',
      'payment provider base URL (default: the payment-provider component of this process)',
    ],
    [
      'MERCATO_PAYMENT_PROVIDER_API_KEY',
      "the provider API's secret, sent and asked for as a bearer token (default: none; the stand-in then answers callers on this machine only)",
    ],
    ['MERCATO_SMTP_URL', 'SMTP server for e-mail (default: an in-process SMTP sink that keeps messages)'],
    ['MERCATO_STORE_SCHEMA_PREFIX', "PostgreSQL: put before each service's schema name (default: mercato_)"],
    ['MERCATO_SEED', 'seed demo catalog, stock and customers on an empty data directory (default: true)'],
    ['MERCATO_LOG_LEVEL', `one of ${logLevels.join(', ')} (default: info)`],
    [
      'MERCATO_WEBHOOK_ALLOW_PRIVATE_HOSTS',
      'webhook URLs may name loopback, link-local or private hosts: a test or closed network (default: false)',
    ],
    ['MERCATO_POLICY_DIR', "directory of the Cedar policies (default: the project's policies/)"],
    [
      'MERCATO_ADMIN_EMAIL',
      'e-mail of the admin account created on first start (default: admin@mercato.local)',
    ],
    ['MERCATO_ADMIN_PASSWORD', 'its password, 12 characters at least (default: generated and logged once)'],
    ['MERCATO_SUPPORT_EMAIL', 'e-mail of the support account (default: support@mercato.local)'],
    ['MERCATO_SUPPORT_PASSWORD', 'its password, 12 characters at least (default: generated and logged once)'],
    ['MERCATO_TOKEN_ISSUER', '`iss` of the access tokens Mercato signs (default: mercato)'],
    ['MERCATO_TOKEN_AUDIENCE', '`aud` of the access tokens Mercato signs and accepts (default: mercato-api)'],
    [
      'MERCATO_OIDC_ISSUER',
      'an external OpenID Connect issuer whose tokens are accepted too (default: none)',
    ],
    ['MERCATO_OIDC_JWKS_URL', "that issuer's JWKS URL (required with MERCATO_OIDC_ISSUER)"],
    ['MERCATO_OIDC_AUDIENCE', '`aud` its tokens must carry (default: MERCATO_TOKEN_AUDIENCE)'],
    [
      'MERCATO_OIDC_ALGORITHMS',
      'signature algorithms accepted from it, comma-separated (default: RS256,ES256,EdDSA)',
    ],
    [
      'MERCATO_CORS_ORIGINS',
      'browser origins allowed by CORS, comma-separated, e.g. https://shop.example.com; * for any (default: none)',
    ],
    [
      'MERCATO_COMMAND_API_URLS',
      'gateway: command API instances in other processes, comma-separated http(s) URLs (default: none)',
    ],
    ['MERCATO_QUERY_API_URLS', 'gateway: query API instances in other processes, likewise (default: none)'],
    ['MERCATO_USER_URL', 'gateway: the user service in another process, for sign-in (default: none)'],
    ...Object.values(urlSettings).map((s) => [s.env, s.help]),
    ...Object.values(intSettings).map((s: IntSetting) => [
      s.env,
      `${s.help} (default ${s.default}, ${s.min}–${s.max})`,
    ]),
  ]
  const width = Math.max(...rows.map(([name]) => name.length))
  return rows.map(([name, help]) => `  ${name.padEnd(width)} ${help}`).join('\n')
}

function parseOrigins(raw: string | undefined): string[] {
  const origins = (raw ?? '')
    .split(',')
    .map((o) => o.trim())
    .filter(Boolean)
  for (const origin of origins) {
    // A browser's Origin header is scheme://host[:port], nothing more; anything else never matches.
    if (origin !== '*' && URL.parse(origin)?.origin !== origin) {
      throw new ConfigError(
        'MERCATO_CORS_ORIGINS',
        `"${origin}" is not an origin such as https://shop.example.com (scheme, host and port only; * for any)`,
      )
    }
  }
  return origins
}

function parseUrlList(setting: string, raw: string | undefined): string[] {
  if (!raw) return []
  return raw
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => parseHttpUrl(setting, part) as string)
}

function parseAuth(source: Source): AuthConfig {
  const oidcIssuer = source.MERCATO_OIDC_ISSUER || undefined
  const oidcJwks = parseHttpUrl('MERCATO_OIDC_JWKS_URL', source.MERCATO_OIDC_JWKS_URL)
  if ((oidcIssuer === undefined) !== (oidcJwks === undefined)) {
    throw new ConfigError(
      oidcIssuer ? 'MERCATO_OIDC_JWKS_URL' : 'MERCATO_OIDC_ISSUER',
      'is required with the other: an external issuer needs both its name and its JWKS URL',
    )
  }
  const algorithms = (source.MERCATO_OIDC_ALGORITHMS || 'RS256,ES256,EdDSA').split(',').map((a) => a.trim())
  const known = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']
  const unknown = algorithms.filter((a) => !known.includes(a))
  if (unknown.length > 0) {
    throw new ConfigError(
      'MERCATO_OIDC_ALGORITHMS',
      `names algorithms not accepted: ${unknown.join(', ')} (known: ${known.join(', ')})`,
    )
  }
  const account = (role: 'ADMIN' | 'SUPPORT', email: string) => {
    const password = source[`MERCATO_${role}_PASSWORD`] || undefined
    if (password !== undefined && password.length < 12) {
      throw new ConfigError(`MERCATO_${role}_PASSWORD`, 'must be at least 12 characters')
    }
    return { email: source[`MERCATO_${role}_EMAIL`] || email, ...(password ? { password } : {}) }
  }
  const audience = source.MERCATO_TOKEN_AUDIENCE || 'mercato-api'
  const oidcAudience = source.MERCATO_OIDC_AUDIENCE || audience
  return {
    issuer: source.MERCATO_TOKEN_ISSUER || 'mercato',
    audience,
    policyDir: source.MERCATO_POLICY_DIR ? resolve(source.MERCATO_POLICY_DIR) : undefined,
    external:
      oidcIssuer && oidcJwks
        ? {
            issuer: oidcIssuer,
            jwksUrl: oidcJwks,
            audience: oidcAudience,
            algorithms,
          }
        : undefined,
    staff: {
      admin: account('ADMIN', 'admin@mercato.local'),
      support: account('SUPPORT', 'support@mercato.local'),
    },
  }
}
