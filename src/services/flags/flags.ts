// Feature flags: definitions in flagd's JSON format, kept in the key-value port as one
// document (`flags:definitions`), evaluated in process through the OpenFeature server SDK
// with a small provider on flagd-core. A `flag.changed` event updates the document and
// this process's evaluator at once; every few seconds the document is read again, so a
// change applied by another process takes effect here too. No restart, ever.
import { randomUUID } from 'node:crypto'
import { FlagdCore } from '@openfeature/flagd-core'
import {
  type EvaluationContext,
  type JsonValue,
  OpenFeature,
  OpenFeatureEventEmitter,
  type Logger as OpenFeatureLogger,
  type Provider,
  ProviderEvents,
  type ResolutionDetails,
} from '@openfeature/server-sdk'
import type { CloudEvent } from '../../contracts/envelope.ts'
import type { Cache } from '../../engines/cache/port.ts'
import type { EventStream, Subscription } from '../../engines/stream/event-stream.ts'
import { errorMessage } from '../../platform/errors.ts'
import {
  defaultFlagDefinitions,
  documentOf,
  type FlagDefinitions,
  type FlagReader,
  flagDefinitionsKey,
  parseDocument,
  validateFlagDefinition,
} from '../../platform/flags.ts'
import type { Logger } from '../../platform/logger.ts'

const flagKeyPattern = /^[a-z0-9][a-z0-9._-]{0,63}$/

export interface FlagsOptions {
  stream: EventStream
  cache: Cache
  log: Logger
  group: string
  /** How often the document is read again from the key-value port (another process may have changed it). */
  refreshIntervalMs?: number
}

export interface RunningFlags {
  flags: FlagReader
  /** Throws while the key-value port cannot be reached. */
  ready(): Promise<void>
  stop(): Promise<void>
}

function openFeatureLogger(log: Logger): OpenFeatureLogger {
  const text = (args: unknown[]) =>
    args.map((arg) => (typeof arg === 'string' ? arg : errorMessage(arg))).join(' ')
  return {
    error: (...args) => log.warn({ component: 'flags' }, text(args)),
    warn: (...args) => log.warn({ component: 'flags' }, text(args)),
    info: (...args) => log.debug({ component: 'flags' }, text(args)),
    debug: (...args) => log.debug({ component: 'flags' }, text(args)),
  }
}

/**
 * Sets one flag's definition in the key-value document, atomically (compare and set: many
 * writers, none lost). Throws when the definition is invalid.
 */
export async function writeFlagDefinition(cache: Cache, key: string, definition: Record<string, unknown>) {
  if (!flagKeyPattern.test(key)) throw new Error(`invalid flag key ${JSON.stringify(key)}`)
  const invalid = validateFlagDefinition(definition, key)
  if (invalid) throw new Error(`invalid definition of flag ${key}: ${invalid.reason}`)
  for (let attempt = 0; attempt < 100; attempt++) {
    const current = await cache.get(flagDefinitionsKey)
    let flags: FlagDefinitions = { ...defaultFlagDefinitions }
    if (current !== undefined) {
      try {
        flags = parseDocument(current).flags
      } catch {
        // A document that does not parse is replaced; each flag in it is lost only if unreadable.
      }
    }
    const next = documentOf({ ...flags, [key]: definition })
    if (next === current) return
    if (await cache.compareAndSet(flagDefinitionsKey, current, next)) return
  }
  throw new Error(`flag ${key}: the definitions document kept changing; not written`)
}

/** An OpenFeature provider over flagd-core's in-process evaluator. */
class FlagdCoreProvider implements Provider {
  readonly metadata = { name: 'mercato-flagd-in-process' } as const
  readonly runsOn = 'server' as const
  readonly events = new OpenFeatureEventEmitter()
  readonly #core: FlagdCore

  constructor(core: FlagdCore) {
    this.#core = core
  }

  changed(flagsChanged: string[]): void {
    this.events.emit(ProviderEvents.ConfigurationChanged, { flagsChanged })
  }

  async resolveBooleanEvaluation(
    key: string,
    fallback: boolean,
    context: EvaluationContext,
    logger: OpenFeatureLogger,
  ): Promise<ResolutionDetails<boolean>> {
    return this.#core.resolveBooleanEvaluation(key, fallback, context, logger)
  }

  async resolveStringEvaluation(
    key: string,
    fallback: string,
    context: EvaluationContext,
    logger: OpenFeatureLogger,
  ): Promise<ResolutionDetails<string>> {
    return this.#core.resolveStringEvaluation(key, fallback, context, logger)
  }

  async resolveNumberEvaluation(
    key: string,
    fallback: number,
    context: EvaluationContext,
    logger: OpenFeatureLogger,
  ): Promise<ResolutionDetails<number>> {
    return this.#core.resolveNumberEvaluation(key, fallback, context, logger)
  }

  async resolveObjectEvaluation<T extends JsonValue>(
    key: string,
    fallback: T,
    context: EvaluationContext,
    logger: OpenFeatureLogger,
  ): Promise<ResolutionDetails<T>> {
    return this.#core.resolveObjectEvaluation(key, fallback, context, logger)
  }
}

export async function startFlags(options: FlagsOptions): Promise<RunningFlags> {
  const { stream, cache, group } = options
  const log = options.log.child({ component: 'flags' })
  const refreshIntervalMs = options.refreshIntervalMs ?? 3_000
  const core = new FlagdCore(undefined, openFeatureLogger(log))
  const provider = new FlagdCoreProvider(core)
  let applied: string | undefined
  // A flag without targeting rules, asked without a context, has one value until the
  // definitions change: the SDK evaluates it once per change, not once per request.
  const fixedValues = new Map<string, unknown>()
  let targeted = new Set<string>()
  let definitionsVersion = 0
  let stopped = false

  /** Loads a document into the evaluator when it differs from the one loaded; invalid flags are dropped. */
  const apply = (text: string) => {
    if (text === applied) return
    const { flags } = parseDocument(text)
    const valid: FlagDefinitions = {}
    for (const [key, definition] of Object.entries(flags)) {
      const invalid = validateFlagDefinition(definition, key)
      if (invalid)
        log.warn(
          { flag: key, reason: invalid.reason },
          'flag definition in the key-value store is invalid; ignored',
        )
      else valid[key] = definition
    }
    const changed = core.setConfigurations(documentOf(valid))
    applied = text
    definitionsVersion++
    fixedValues.clear()
    targeted = new Set(Object.keys(valid).filter((key) => valid[key].targeting !== undefined))
    if (changed.length > 0) {
      log.info({ flags: changed }, 'flag definitions applied')
      provider.changed(changed)
    }
  }

  const refresh = async () => {
    let text = await cache.get(flagDefinitionsKey)
    if (text === undefined) {
      // Absent: a fresh deployment, or the key-value store lost it (an evicted LRU entry, a
      // flushed Redis). Write back what this process knows, or the defaults.
      const known = applied ?? documentOf(defaultFlagDefinitions)
      await cache.setIfAbsent(flagDefinitionsKey, known)
      text = (await cache.get(flagDefinitionsKey)) ?? known
    }
    apply(text)
  }

  await refresh()

  const domain = `mercato.flags.${group}.${randomUUID()}`
  await OpenFeature.setProviderAndWait(domain, provider)
  const client = OpenFeature.getClient(domain)
  client.setLogger(openFeatureLogger(log))

  const handle = async (event: CloudEvent) => {
    if (event.type !== 'flag.changed') return
    const key = String(event.data.key)
    const definition = event.data.definition as Record<string, unknown>
    const invalid = flagKeyPattern.test(key)
      ? validateFlagDefinition(definition, key)?.reason
      : 'invalid flag key'
    if (invalid) {
      log.warn(
        { flag: key, eventId: event.id, reason: invalid },
        'flag.changed with an invalid definition; skipped',
      )
      return
    }
    await writeFlagDefinition(cache, key, definition)
    await refresh()
  }

  const subscription: Subscription = await stream.subscribe({
    group,
    topics: ['flags'],
    startAt: 'earliest',
    handle,
  })

  let refreshing = false
  const timer = setInterval(async () => {
    if (refreshing) return
    refreshing = true
    try {
      await refresh()
    } catch (error) {
      log.warn({ err: errorMessage(error) }, 'flag definitions not refreshed; keeping the ones applied')
    } finally {
      refreshing = false
    }
  }, refreshIntervalMs)
  timer.unref()

  const evaluate = async <T>(
    kind: string,
    key: string,
    fallback: T,
    viaSdk: () => Promise<T>,
  ): Promise<T> => {
    // A flag without targeting is the same for every context: its value is remembered.
    if (stopped || targeted.has(key)) return viaSdk()
    const memoKey = `${kind}\0${key}\0${fallback}`
    if (fixedValues.has(memoKey)) return fixedValues.get(memoKey) as T
    // Remembered only if the definitions did not change while it was evaluated.
    const version = definitionsVersion
    const value = await viaSdk()
    if (version === definitionsVersion) fixedValues.set(memoKey, value)
    return value
  }
  const flags: FlagReader = {
    boolean: (key, fallback, context) =>
      evaluate('boolean', key, fallback, () => client.getBooleanValue(key, fallback, context)),
    number: (key, fallback, context) =>
      evaluate('number', key, fallback, () => client.getNumberValue(key, fallback, context)),
    string: (key, fallback, context) =>
      evaluate('string', key, fallback, () => client.getStringValue(key, fallback, context)),
  }

  return {
    flags,
    ready: () => cache.ping(),
    stop: async () => {
      // Stopped, every evaluation goes to the SDK again, whose provider is then unbound.
      stopped = true
      clearInterval(timer)
      await subscription.stop()
      // The group is this process's own (it reads every flag change from the start at each
      // start): left behind, one more would pile up in the stream with every start.
      await stream.engine.deleteGroup(stream.group(group)).catch((error) => {
        log.warn({ group, err: errorMessage(error) }, 'flags consumer group not deleted')
      })
      // Unbind this domain's provider; the domain name is unique, so nothing else used it.
      await OpenFeature.setProviderAndWait(domain, { ...noopProvider })
    },
  }
}

const noopProvider: Provider = {
  metadata: { name: 'mercato-flags-stopped' },
  resolveBooleanEvaluation: async (_key, value) => ({ value, reason: 'DISABLED' }),
  resolveStringEvaluation: async (_key, value) => ({ value, reason: 'DISABLED' }),
  resolveNumberEvaluation: async (_key, value) => ({ value, reason: 'DISABLED' }),
  resolveObjectEvaluation: async (_key, value) => ({ value, reason: 'DISABLED' }),
}
