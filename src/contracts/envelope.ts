// The CloudEvents 1.0 envelope, and its Kafka binary binding (attributes as `ce_` headers,
// data as the record value). Both stream engines use the same binding.
import { InvalidEventError } from '../platform/errors.ts'
import { uuidv7 } from '../platform/ids.ts'
import { eventRegistry } from './registry.ts'

export interface CloudEvent<Data = Record<string, unknown>> {
  specversion: '1.0'
  id: string
  source: string
  type: string
  time: string
  subject: string
  datacontenttype: 'application/json'
  /** Version of the data schema for `type`; carried as the `dataversion` extension. */
  dataversion: number
  partitionkey: string
  correlationid: string
  causationid: string
  traceparent?: string
  data: Data
}

export interface EncodedEvent {
  topic: string
  key: string
  headers: Record<string, string>
  value: Buffer
}

export interface NewEvent<Data = Record<string, unknown>> {
  type: string
  subject: string
  data: Data
  source: string
  /** Defaults to the latest version of the type. */
  dataversion?: number
  partitionkey?: string
  /** The event (or request) that caused this one: its correlation id is carried on. */
  cause?: Pick<CloudEvent, 'id' | 'correlationid'> | { requestId: string }
  traceparent?: string
  id?: string
  time?: Date
}

export function createEvent<Data extends Record<string, unknown>>(input: NewEvent<Data>): CloudEvent<Data> {
  const id = input.id ?? uuidv7()
  const cause = input.cause
  const causationid = !cause ? id : 'requestId' in cause ? cause.requestId : cause.id
  const correlationid = !cause ? id : 'requestId' in cause ? cause.requestId : cause.correlationid
  return {
    specversion: '1.0',
    id,
    source: input.source,
    type: input.type,
    time: (input.time ?? new Date()).toISOString(),
    subject: input.subject,
    datacontenttype: 'application/json',
    dataversion: input.dataversion ?? eventRegistry.latestVersion(input.type),
    partitionkey: input.partitionkey ?? input.subject,
    correlationid,
    causationid,
    ...(input.traceparent ? { traceparent: input.traceparent } : {}),
    data: input.data,
  }
}

const attributeHeaders = [
  'id',
  'source',
  'type',
  'time',
  'subject',
  'dataversion',
  'partitionkey',
  'correlationid',
  'causationid',
  'traceparent',
] as const

/** Validates the event and maps it to a record: `ce_*` headers, JSON value, key = partition key. */
export function encodeEvent(event: CloudEvent, options: { eventBytesMax: number }): EncodedEvent {
  eventRegistry.assertValid(event)
  const headers: Record<string, string> = { ce_specversion: '1.0', 'content-type': event.datacontenttype }
  for (const name of attributeHeaders) {
    const value = event[name]
    if (value !== undefined) headers[`ce_${name}`] = String(value)
  }
  const value = Buffer.from(JSON.stringify(event.data))
  const size = value.length + Object.entries(headers).reduce((sum, [k, v]) => sum + k.length + v.length, 0)
  if (size > options.eventBytesMax) {
    throw new InvalidEventError(
      `event ${event.type} is ${size} bytes, over the limit of ${options.eventBytesMax}`,
      {
        eventBytes: size,
        eventBytesMax: options.eventBytesMax,
      },
    )
  }
  return { topic: eventRegistry.topicOf(event.type), key: event.partitionkey, headers, value }
}

/**
 * Reads a record back into an event: checks the envelope, parses and validates the data
 * against its version's schema, and upcasts it to the latest version. Throws
 * InvalidEventError with the reason; such a record belongs on the dead-letter topic.
 */
export function decodeEvent(headers: Record<string, string>, value: Buffer | null): CloudEvent {
  if (headers.ce_specversion !== '1.0') {
    throw new InvalidEventError(
      `not a CloudEvents 1.0 record (ce_specversion is ${headers.ce_specversion ?? 'missing'})`,
    )
  }
  for (const name of ['id', 'source', 'type', 'time', 'subject', 'dataversion', 'partitionkey'] as const) {
    if (!headers[`ce_${name}`]) throw new InvalidEventError(`missing attribute ${name}`)
  }
  const dataversion = Number(headers.ce_dataversion)
  let data: unknown
  try {
    data = JSON.parse(value?.toString('utf8') ?? 'null')
  } catch (error) {
    throw new InvalidEventError(`data is not JSON: ${(error as Error).message}`)
  }
  const event = {
    specversion: '1.0',
    id: headers.ce_id,
    source: headers.ce_source,
    type: headers.ce_type,
    time: headers.ce_time,
    subject: headers.ce_subject,
    datacontenttype: 'application/json',
    dataversion,
    partitionkey: headers.ce_partitionkey,
    correlationid: headers.ce_correlationid ?? headers.ce_id,
    causationid: headers.ce_causationid ?? headers.ce_id,
    ...(headers.ce_traceparent ? { traceparent: headers.ce_traceparent } : {}),
    data,
  } as CloudEvent
  eventRegistry.assertValid(event)
  return eventRegistry.upcast(event)
}
