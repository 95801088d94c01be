// Events on top of any stream engine: every event is validated and encoded (CloudEvents
// binary binding) when published, decoded, validated and upcast when consumed. A handler
// that throws is retried with exponential backoff and jitter, a bounded number of times;
// then the record is parked on `<topic>.dlq` with the error, the attempt count and its
// original position, and the group moves on. A record that cannot be decoded goes to
// the DLQ at once: it never reaches a handler.
import { type CloudEvent, decodeEvent, encodeEvent } from '../../contracts/envelope.ts'
import { eventRegistry } from '../../contracts/registry.ts'
import { errorMessage, InvalidEventError, isOutage } from '../../platform/errors.ts'
import { backoffMs, sleep } from '../../platform/limits.ts'
import type { Logger } from '../../platform/logger.ts'
import { latencyBucketsSeconds, type Metrics } from '../../platform/metrics.ts'
import { currentTraceparent, inSpan, SpanKind } from '../../platform/tracing.ts'
import {
  dlqTopicOf,
  type OutgoingRecord,
  type RecordPosition,
  type StreamEngine,
  type StreamRecord,
} from './port.ts'

export interface RetryPolicy {
  attemptsMax: number
  backoffBaseMs: number
  backoffMaxMs: number
}

export interface EventStreamOptions {
  /** Put before every topic name, so several deployments (or test runs) can share one cluster. */
  topicPrefix: string
  partitions: number
  eventBytesMax: number
  batchSizeMax: number
  retry: RetryPolicy
  lagIntervalMs: number
  /**
   * Says why a consumer must refuse an event from its producer (its `source`), or undefined
   * when the producer may emit it. A refused event goes to the DLQ, never into a handler.
   */
  refuseProducer?: (event: CloudEvent) => string | undefined
}

/** An event with where it sits in the stream and when it was appended. */
export interface PositionedEvent {
  event: CloudEvent
  position: RecordPosition
  timestampMs: number
}

export interface SubscribeOptions {
  group: string
  topics: string[]
  startAt?: 'earliest' | 'latest'
  /** Handles one event; retried, then dead-lettered, on its own. */
  handle?: (event: CloudEvent, position: RecordPosition) => Promise<void>
  /**
   * Instead of `handle`: handles a partition's events together (one transaction for many).
   * When a batch keeps failing, its events are handed over one at a time, so only the bad
   * one is dead-lettered.
   */
  handleBatch?: (events: PositionedEvent[]) => Promise<void>
  /**
   * Only events of these types reach the handler; the others are passed over without being
   * decoded (their type is a header). Unset: every event.
   */
  types?: string[]
  retry?: Partial<RetryPolicy>
}

export interface Subscription {
  readonly group: string
  assignment(): string[]
  stop(): Promise<void>
  abort(): Promise<void>
}

export interface DeadLetter {
  position: RecordPosition
  original: RecordPosition & { group: string }
  error: string
  attempts: number
  failedAt: string
  /** Put back on its topic by an earlier replay. */
  replayed: boolean
  record: StreamRecord
}

export class EventStream {
  readonly engine: StreamEngine
  readonly options: EventStreamOptions
  readonly #log: Logger
  readonly #metrics: Metrics
  readonly #subscriptions = new Set<Subscription>()

  constructor(engine: StreamEngine, options: EventStreamOptions, log: Logger, metrics: Metrics) {
    this.engine = engine
    this.options = options
    this.#log = log
    this.#metrics = metrics
  }

  /** Creates every topic of the contracts, and its dead-letter topic. */
  async ensureTopics(topics: string[] = eventRegistry.topics()): Promise<void> {
    const names = topics.map((topic) => this.topic(topic))
    await this.engine.ensureTopics([...names, ...names.map(dlqTopicOf)], this.options.partitions)
  }

  /** The engine's name for a contracts topic. */
  topic(name: string): string {
    return this.options.topicPrefix + name
  }

  /**
   * The engine's name for a consumer group: prefixed like the topics, so deployments that
   * share one Kafka cluster under different prefixes never share a group (and never
   * rebalance each other).
   */
  group(name: string): string {
    return this.options.topicPrefix + name
  }

  /** Validates, encodes and appends events; resolves once they are durable. */
  async publish(events: CloudEvent[]): Promise<RecordPosition[]> {
    const traceparent = currentTraceparent()
    const records = events.map((event) => {
      const record = encodeEvent(event.traceparent || !traceparent ? event : { ...event, traceparent }, {
        eventBytesMax: this.options.eventBytesMax,
      })
      return { ...record, topic: this.topic(record.topic) }
    })
    const positions = await this.engine.publish(records)
    this.#metrics
      .counter('mercato_stream_published_total', 'Events appended to the stream.', ['engine'])
      .inc({ engine: this.engine.kind }, records.length)
    return positions
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    const retry = { ...this.options.retry, ...options.retry }
    const handled = this.#metrics.counter('mercato_stream_handled_total', 'Events handled, by outcome.', [
      'group',
      'outcome',
    ])
    const duration = this.#metrics.histogram(
      'mercato_stream_handler_seconds',
      'Time a handler took for one event, retries included.',
      ['group'],
      latencyBucketsSeconds,
    )
    const delivered = this.#metrics.histogram(
      'mercato_stream_publish_to_handle_seconds',
      'Time from append to the start of handling.',
      ['group'],
      latencyBucketsSeconds,
    )
    const stopped = new AbortController()
    const types = options.types && new Set(options.types)
    const handle = await this.engine.consume({
      group: this.group(options.group),
      topics: options.topics.map((topic) => this.topic(topic)),
      startAt: options.startAt ?? 'earliest',
      batchSizeMax: this.options.batchSizeMax,
      onBatch: async (batch) => {
        const records = types ? batch.records.filter((r) => types.has(r.headers.ce_type)) : batch.records
        let skip: Set<number> | undefined
        if (options.handleBatch && records.length > 1) {
          const started = performance.now()
          const outcome = await this.#handleWhole(options, retry, records, stopped.signal)
          if (!('skip' in outcome)) {
            const seconds = (performance.now() - started) / 1000 / records.length
            for (const record of records) {
              delivered.observe({ group: options.group }, Math.max(0, Date.now() - record.timestampMs) / 1000)
              duration.observe({ group: options.group }, seconds)
            }
            handled.inc({ group: options.group, outcome: 'ok' }, outcome.handled)
            if (outcome.invalid > 0)
              handled.inc({ group: options.group, outcome: 'invalid' }, outcome.invalid)
            return
          }
          skip = outcome.skip
        }
        for (const record of records) {
          if (skip?.has(record.offset)) continue
          if (stopped.signal.aborted) throw new Error('subscription stopped')
          delivered.observe({ group: options.group }, Math.max(0, Date.now() - record.timestampMs) / 1000)
          const started = performance.now()
          const outcome = await this.#handleRecord(options, retry, record, stopped.signal)
          duration.observe({ group: options.group }, (performance.now() - started) / 1000)
          handled.inc({ group: options.group, outcome })
        }
      },
    })
    const lagTimer = this.#watchLag(
      this.group(options.group),
      options.topics.map((topic) => this.topic(topic)),
    )
    const subscription: Subscription = {
      group: options.group,
      assignment: () => handle.assignment(),
      stop: async () => {
        // A handler running ends its run; no retry or outage wait starts again (the records
        // left uncommitted come again to the next member), so a stop is not held by a
        // dependency that is down.
        stopped.abort()
        this.#forget(subscription, lagTimer)
        await handle.stop()
      },
      abort: async () => {
        stopped.abort()
        this.#forget(subscription, lagTimer)
        await handle.abort()
      },
    }
    this.#subscriptions.add(subscription)
    return subscription
  }

  /**
   * Decodes every record (dead-lettering those that cannot be), then hands the rest to
   * `handleBatch` with retries. When the batch kept failing, resolves with the offsets
   * already dead-lettered, for the caller to go through the rest event by event.
   */
  async #handleWhole(
    options: SubscribeOptions,
    retry: RetryPolicy,
    records: StreamRecord[],
    stopped: AbortSignal,
  ): Promise<{ handled: number; invalid: number } | { skip: Set<number> }> {
    const events: PositionedEvent[] = []
    const skip = new Set<number>()
    for (const record of records) {
      try {
        events.push({
          event: this.#decode(record),
          position: { topic: record.topic, partition: record.partition, offset: record.offset },
          timestampMs: record.timestampMs,
        })
      } catch (error) {
        await this.#deadLetter(options.group, record, error, 0)
        skip.add(record.offset)
      }
    }
    const invalid = skip.size
    if (events.length === 0) return { handled: 0, invalid }
    for (let attempt = 1, outages = 0; attempt <= retry.attemptsMax; attempt++) {
      try {
        await inSpan(
          `${options.group} handle ${events.length} events`,
          { kind: SpanKind.CONSUMER, attributes: { 'messaging.consumer.group.name': options.group } },
          () => options.handleBatch!(events),
        )
        return { handled: events.length, invalid }
      } catch (error) {
        if (stopped.aborted) throw error
        if (isOutage(error)) {
          await this.#waitOutOutage(options.group, error, ++outages, retry, stopped)
          attempt--
          continue
        }
        this.#log.debug({ group: options.group, attempt, err: errorMessage(error) }, 'retrying a batch')
        if (attempt < retry.attemptsMax)
          await sleep(backoffMs(attempt, retry.backoffBaseMs, retry.backoffMaxMs), stopped)
      }
    }
    this.#log.warn(
      { group: options.group, events: events.length },
      'a batch kept failing: handling it event by event',
    )
    return { skip }
  }

  /** Decodes, then handles with retries; returns the outcome. Throws only to leave the batch uncommitted. */
  async #handleRecord(
    options: SubscribeOptions,
    retry: RetryPolicy,
    record: StreamRecord,
    stopped: AbortSignal,
  ): Promise<'ok' | 'invalid' | 'dead-lettered'> {
    let event: CloudEvent
    try {
      event = this.#decode(record)
    } catch (error) {
      await this.#deadLetter(options.group, record, error, 0)
      return 'invalid'
    }
    const position = { topic: record.topic, partition: record.partition, offset: record.offset }
    let outages = 0
    for (let attempt = 1; ; attempt++) {
      try {
        await inSpan(
          `${options.group} handle ${event.type}`,
          {
            traceparent: event.traceparent,
            kind: SpanKind.CONSUMER,
            attributes: { 'messaging.consumer.group.name': options.group, 'cloudevents.event_id': event.id },
            correlationId: event.correlationid,
          },
          () =>
            options.handleBatch
              ? options.handleBatch([{ event, position, timestampMs: record.timestampMs }])
              : options.handle!(event, position),
        )
        return 'ok'
      } catch (error) {
        if (stopped.aborted) throw error
        if (isOutage(error)) {
          await this.#waitOutOutage(options.group, error, ++outages, retry, stopped)
          attempt--
          continue
        }
        if (attempt >= retry.attemptsMax) {
          this.#log.warn(
            { group: options.group, eventId: event.id, type: event.type, attempt, err: errorMessage(error) },
            'handler failed for the last time: dead-lettered',
          )
          await this.#deadLetter(options.group, record, error, attempt)
          return 'dead-lettered'
        }
        this.#log.debug(
          { group: options.group, eventId: event.id, attempt, err: errorMessage(error) },
          'retrying',
        )
        await sleep(backoffMs(attempt, retry.backoffBaseMs, retry.backoffMaxMs), stopped)
      }
    }
  }

  /**
   * A dependency is down (the cache, a store): not the event's fault, so no attempt is
   * spent and nothing is dead-lettered; the group waits, backing off to a few seconds, and
   * says so now and then, until the dependency is back or the group stops.
   */
  async #waitOutOutage(
    group: string,
    error: unknown,
    outages: number,
    retry: RetryPolicy,
    stopped: AbortSignal,
  ): Promise<void> {
    if (outages === 1 || outages % 20 === 0)
      this.#log.warn({ group, outages, err: errorMessage(error) }, 'a dependency is down: waiting it out')
    this.#metrics
      .counter('mercato_stream_outage_waits_total', 'Handler runs put off because a dependency was down.', [
        'group',
      ])
      .inc({ group })
    const baseMs = Math.max(retry.backoffBaseMs, 100)
    await sleep(backoffMs(Math.min(outages, 10), baseMs, Math.max(retry.backoffMaxMs, 5_000)), stopped)
  }

  /** Decodes a record into an event its producer may emit; throws InvalidEventError otherwise. */
  #decode(record: StreamRecord): CloudEvent {
    const event = decodeEvent(record.headers, record.value)
    const refused = this.options.refuseProducer?.(event)
    if (refused !== undefined) throw new InvalidEventError(refused)
    return event
  }

  async #deadLetter(group: string, record: StreamRecord, error: unknown, attempts: number): Promise<void> {
    const reason =
      error instanceof InvalidEventError ? `invalid event: ${error.message}` : errorMessage(error)
    const dead: OutgoingRecord = {
      topic: dlqTopicOf(record.topic),
      key: record.key,
      value: record.value,
      headers: {
        ...record.headers,
        mercato_dlq_error: reason.slice(0, 2000),
        mercato_dlq_attempts: String(attempts),
        mercato_dlq_group: group,
        mercato_dlq_topic: record.topic,
        mercato_dlq_partition: String(record.partition),
        mercato_dlq_offset: String(record.offset),
        mercato_dlq_failed_at: new Date().toISOString(),
      },
    }
    await this.engine.publish([dead])
    this.#metrics
      .counter('mercato_stream_dead_lettered_total', 'Records parked on a dead-letter topic.', [
        'group',
        'topic',
      ])
      .inc({ group, topic: record.topic })
  }

  /**
   * The consumer group whose committed offset on each partition of a dead-letter topic is
   * where `replayDeadLetters` has got to: the letters before it were replayed, the rest wait.
   * It never consumes; only the replay commits its offsets.
   */
  get deadLetterReplayGroup(): string {
    return this.group('mercato-dlq-replay')
  }

  /**
   * Lists what a topic's dead-letter topic holds, each letter marked replayed or not; with
   * `waitingOnly`, only those not yet replayed.
   */
  async deadLetters(
    topic: string,
    countMax = 100,
    options: { waitingOnly?: boolean } = {},
  ): Promise<DeadLetter[]> {
    const dlq = dlqTopicOf(this.topic(topic))
    const letters: DeadLetter[] = []
    for (const { partition, committed } of await this.engine.lag(this.deadLetterReplayGroup, [dlq])) {
      if (letters.length >= countMax) break
      const from = options.waitingOnly ? committed : 0
      for (const record of await this.engine.read(dlq, partition, from, countMax - letters.length)) {
        letters.push(toDeadLetter(record, record.offset < committed))
      }
    }
    return letters
  }

  /** How many dead letters of a topic wait for a replay, and how many were replayed. */
  async deadLetterCounts(topic: string): Promise<{ waiting: number; replayed: number }> {
    const partitions = await this.engine.lag(this.deadLetterReplayGroup, [dlqTopicOf(this.topic(topic))])
    return {
      waiting: partitions.reduce((sum, p) => sum + p.lag, 0),
      replayed: partitions.reduce((sum, p) => sum + p.committed, 0),
    }
  }

  /**
   * Re-publishes the dead letters of a topic not replayed yet (at most `countMax`) to their
   * original topic, the `mercato_dlq_*` headers removed, then records how far it got in the
   * replay group's offsets. A record that several groups dead-lettered goes back once: every
   * group reads it again from the topic, and one copy per letter would come back to each
   * group as many times. Recording comes after publishing: a crash in between replays those
   * letters again next time (consumers are idempotent) rather than losing them.
   */
  async replayDeadLetters(topic: string, countMax: number): Promise<DeadLetter[]> {
    const letters = await this.deadLetters(topic, countMax, { waitingOnly: true })
    if (letters.length === 0) return []
    const records = new Map<string, DeadLetter>()
    for (const letter of letters) records.set(deadRecordOf(letter), letter)
    await this.engine.publish(
      [...records.values()].map(({ record, original }) => ({
        topic: original.topic,
        key: record.key,
        value: record.value,
        headers: Object.fromEntries(
          Object.entries(record.headers).filter(([name]) => !name.startsWith('mercato_dlq_')),
        ),
      })),
    )
    // Each partition's letters come in offset order: the last one sets where the next replay starts.
    const next = new Map<number, RecordPosition>()
    for (const { position } of letters)
      next.set(position.partition, { ...position, offset: position.offset + 1 })
    await this.engine.commitOffsets(this.deadLetterReplayGroup, [...next.values()])
    return letters
  }

  #watchLag(group: string, topics: string[]): NodeJS.Timeout {
    const gauge = this.#metrics.gauge('mercato_stream_consumer_lag', 'Records not yet handled by a group.', [
      'group',
      'topic',
      'partition',
    ])
    const timer = setInterval(async () => {
      try {
        for (const lag of await this.engine.lag(group, topics)) {
          gauge.set({ group, topic: lag.topic, partition: String(lag.partition) }, lag.lag)
        }
      } catch (error) {
        this.#log.debug({ group, err: errorMessage(error) }, 'lag not measured')
      }
    }, this.options.lagIntervalMs)
    timer.unref()
    return timer
  }

  #forget(subscription: Subscription, lagTimer: NodeJS.Timeout): void {
    clearInterval(lagTimer)
    this.#subscriptions.delete(subscription)
  }

  /** Stops every subscription (in-flight handlers finish, offsets are committed), then the engine. */
  async close(): Promise<void> {
    await Promise.all([...this.#subscriptions].map((subscription) => subscription.stop()))
    await this.engine.close()
  }
}

/**
 * The record a dead letter is of: its original position (several groups' letters may share
 * it), or the letter itself when it names none.
 */
export function deadRecordOf({ original, position }: DeadLetter): string {
  return original.offset < 0
    ? `letter ${position.partition}/${position.offset}`
    : `${original.topic}/${original.partition}/${original.offset}`
}

function toDeadLetter(record: StreamRecord, replayed: boolean): DeadLetter {
  const h = record.headers
  return {
    position: { topic: record.topic, partition: record.partition, offset: record.offset },
    original: {
      group: h.mercato_dlq_group ?? '',
      topic: h.mercato_dlq_topic ?? record.topic.replace(/\.dlq$/, ''),
      partition: Number(h.mercato_dlq_partition ?? -1),
      offset: Number(h.mercato_dlq_offset ?? -1),
    },
    error: h.mercato_dlq_error ?? '',
    attempts: Number(h.mercato_dlq_attempts ?? 0),
    failedAt: h.mercato_dlq_failed_at ?? '',
    replayed,
    record,
  }
}
