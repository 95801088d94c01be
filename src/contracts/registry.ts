import { Type as T, type TSchema } from '@sinclair/typebox'
import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler'
import { InvalidEventError } from '../platform/errors.ts'
import type { CloudEvent } from './envelope.ts'
import { eventSchemas, topicOf, upcasters } from './events.ts'

const Envelope = T.Object({
  specversion: T.Literal('1.0'),
  id: T.String({ minLength: 1, maxLength: 128 }),
  source: T.String({ minLength: 1, maxLength: 256 }),
  type: T.String({ minLength: 1, maxLength: 128 }),
  time: T.String({ format: 'date-time' }),
  subject: T.String({ minLength: 1, maxLength: 128 }),
  datacontenttype: T.Literal('application/json'),
  dataversion: T.Integer({ minimum: 1 }),
  partitionkey: T.String({ minLength: 1, maxLength: 128 }),
  correlationid: T.String({ minLength: 1, maxLength: 128 }),
  causationid: T.String({ minLength: 1, maxLength: 128 }),
  traceparent: T.Optional(T.String({ pattern: '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' })),
  data: T.Unknown(),
})

// TypeBox's compiler checks `format` only for formats registered with it.
import { FormatRegistry } from '@sinclair/typebox'

FormatRegistry.Set(
  'date-time',
  (value) => !Number.isNaN(Date.parse(value)) && /^\d{4}-\d{2}-\d{2}T/.test(value),
)
FormatRegistry.Set('email', (value) => /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(value))

class EventRegistry {
  readonly #envelope = TypeCompiler.Compile(Envelope)
  readonly #checks = new Map<string, TypeCheck<TSchema>>()
  /** Every event is asked for its type's latest version, often twice: known once here. */
  readonly #latest = new Map<string, number>()

  constructor() {
    for (const [type, versions] of Object.entries(eventSchemas)) {
      for (const [version, schema] of Object.entries(versions)) {
        this.#checks.set(`${type}@${version}`, TypeCompiler.Compile(schema))
      }
      this.#latest.set(type, Math.max(...Object.keys(versions).map(Number)))
      if (!topicOf[type.split('.')[0]]) throw new Error(`event type ${type} has no topic`)
    }
  }

  types(): string[] {
    return Object.keys(eventSchemas)
  }

  topics(): string[] {
    return [...new Set(Object.values(topicOf))]
  }

  latestVersion(type: string): number {
    const latest = this.#latest.get(type)
    if (latest === undefined) throw new InvalidEventError(`unknown event type ${type}`, { eventType: type })
    return latest
  }

  topicOf(type: string): string {
    const topic = topicOf[type.split('.')[0]]
    if (!topic || !eventSchemas[type])
      throw new InvalidEventError(`unknown event type ${type}`, { eventType: type })
    return topic
  }

  /** Throws InvalidEventError naming what is wrong: the envelope, the type, the version or the data. */
  assertValid(event: CloudEvent): void {
    if (!this.#envelope.Check(event)) {
      const first = this.#envelope.Errors(event).First()
      throw new InvalidEventError(`invalid envelope: ${first?.path || '/'} ${first?.message}`)
    }
    const latest = this.latestVersion(event.type)
    const check = this.#checks.get(`${event.type}@${event.dataversion}`)
    if (!check) {
      throw new InvalidEventError(
        `version ${event.dataversion} of ${event.type} is not known here (latest known: ${latest})`,
        { eventType: event.type, dataversion: event.dataversion },
      )
    }
    if (!check.Check(event.data)) {
      const errors = [...check.Errors(event.data)].slice(0, 5).map((e) => `${e.path || '/'} ${e.message}`)
      throw new InvalidEventError(`invalid ${event.type} v${event.dataversion} data: ${errors.join('; ')}`, {
        eventType: event.type,
      })
    }
  }

  /** Lifts an event to the latest version of its type through the upcasters. */
  upcast(event: CloudEvent): CloudEvent {
    const latest = this.latestVersion(event.type)
    let { data, dataversion } = event
    while (dataversion < latest) {
      const up = upcasters[event.type]?.[dataversion]
      if (!up) throw new Error(`no upcaster for ${event.type} v${dataversion}`)
      data = up(data)
      dataversion++
    }
    return dataversion === event.dataversion ? event : { ...event, data, dataversion }
  }
}

export const eventRegistry = new EventRegistry()
