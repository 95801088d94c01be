// What a read model is made of. A view folds events from a few topics into documents; it
// keeps, in the same write as every change, the stream position it has reached on each
// partition, so a redelivered event is skipped and a restart resumes exactly. A view lives
// in generations: a rebuild fills a new generation beside the live one, then the live
// pointer moves to it in one step.
import type { CloudEvent } from '../contracts/envelope.ts'
import type { RecordPosition } from '../engines/stream/port.ts'

/** An event as a view receives it: where it sits in the stream, and when it was appended. */
export interface ViewEvent {
  event: CloudEvent
  position: RecordPosition
  timestampMs: number
}

/** How far a view has come on one partition: the next offset to apply, and the append time of the last applied event. */
export interface PartitionPosition {
  topic: string
  partition: number
  nextOffset: number
  lastEventMs: number
}

export type ViewName = 'catalog' | 'order-status' | 'customer-360' | 'webhooks'

export const viewNames: ViewName[] = ['catalog', 'order-status', 'customer-360', 'webhooks']

/** A view's storage for one generation: apply events with their positions atomically, read positions, dump, drop. */
export interface ViewStorage {
  /** Creates the generation's tables or keys (idempotent). */
  create(generation: number): Promise<void>
  /**
   * Applies the events not yet applied (their offset below the stored position is skipped),
   * and the new positions, in one atomic write. Resolves with the cache keys whose
   * documents changed (see `cacheKey`).
   */
  apply(generation: number, events: ViewEvent[]): Promise<string[]>
  positions(generation: number): Promise<PartitionPosition[]>
  /**
   * Whether the request event at `position` (one of the requests the view awaits, see
   * contracts/requests.ts) has been applied and its outcome not yet.
   */
  pending(generation: number, position: RecordPosition): Promise<boolean>
  /** Every document of the generation, in a canonical order and form: two equal views dump equal text. */
  dump(generation: number): Promise<string>
  drop(generation: number): Promise<void>
}

export function partitionKey(topic: string, partition: number): string {
  return `${topic}/${partition}`
}

/** Keeps, of `events`, those at or past `positions` (a map of partitionKey → next offset). */
export function unapplied(events: ViewEvent[], positions: Map<string, number>): ViewEvent[] {
  return events.filter(
    ({ position }) =>
      position.offset >= (positions.get(partitionKey(position.topic, position.partition)) ?? 0),
  )
}

/** The position each partition reaches once `events` are applied. */
export function positionsAfter(events: ViewEvent[]): PartitionPosition[] {
  const reached = new Map<string, PartitionPosition>()
  for (const { position, timestampMs } of events) {
    const key = partitionKey(position.topic, position.partition)
    const current = reached.get(key)
    if (!current || position.offset + 1 > current.nextOffset) {
      reached.set(key, {
        topic: position.topic,
        partition: position.partition,
        nextOffset: position.offset + 1,
        lastEventMs: Math.max(timestampMs, current?.lastEventMs ?? 0),
      })
    }
  }
  return [...reached.values()]
}

/** JSON with object keys sorted, so equal documents give equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  )
}

/** One canonical JSON document per line. */
export function dumpText(documents: unknown[]): string {
  return documents.map(canonicalJson).join('\n')
}
