// Admission control for new orders. When the order saga's consumers fall behind, an order
// accepted now waits in their backlog, misses its step deadlines and is cancelled: work
// done for nothing, which makes the backlog worse (congestion collapse). So the command
// API watches how many events on the orders topic the saga's consumer groups have yet to
// handle, and past a bound it refuses new orders with 503 and Retry-After, which a client
// can honour, instead of accepting orders it cannot carry through.
import { sagaGroups } from '../contracts/events.ts'
import type { EventStream } from '../engines/stream/event-stream.ts'
import { errorMessage, OverloadedError } from '../platform/errors.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'

export interface SagaBacklogOptions {
  /** Events waiting past which new orders are refused; 0 never refuses. */
  eventsMax: number
  intervalMs: number
}

export class SagaBacklog {
  readonly #stream: EventStream
  readonly #options: SagaBacklogOptions
  readonly #log: Logger
  readonly #gauge
  #events = 0
  #timer: NodeJS.Timeout | undefined
  #measuring = false

  constructor(stream: EventStream, options: SagaBacklogOptions, log: Logger, metrics: Metrics) {
    this.#stream = stream
    this.#options = options
    this.#log = log
    this.#gauge = metrics.gauge(
      'mercato_order_saga_backlog_events',
      'Events on the orders topic that the saga consumer groups have yet to handle.',
    )
  }

  start(): void {
    if (this.#options.eventsMax === 0) return
    this.#timer = setInterval(() => void this.#measure(), this.#options.intervalMs)
    this.#timer.unref()
  }

  /** Throws OverloadedError (503) while the backlog is past its bound. */
  admit(): void {
    if (this.#options.eventsMax === 0 || this.#events <= this.#options.eventsMax) return
    throw new OverloadedError(
      'the order saga',
      `${this.#events} events wait for its consumers, more than ${this.#options.eventsMax}; try again shortly`,
    )
  }

  async #measure(): Promise<void> {
    if (this.#measuring) return
    this.#measuring = true
    try {
      const topic = this.#stream.topic('orders')
      let events = 0
      for (const group of sagaGroups) {
        for (const lag of await this.#stream.engine.lag(this.#stream.group(group), [topic])) events += lag.lag
      }
      this.#events = events
      this.#gauge.set(events)
    } catch (error) {
      // Not measured: keep the last figure rather than refuse or admit on a guess.
      this.#log.debug({ err: errorMessage(error) }, 'saga backlog not measured')
    } finally {
      this.#measuring = false
    }
  }

  stop(): void {
    clearInterval(this.#timer)
  }
}
