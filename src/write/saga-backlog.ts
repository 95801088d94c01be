// Admission control for new orders. When the order saga's consumers fall behind, an order
// accepted now waits in their backlog, misses its step deadlines and is cancelled: work
// done for nothing, which makes the backlog worse (congestion collapse). So the command
// API watches the events the saga's consumer groups have yet to handle, on every topic
// they read, and refuses new orders with 503 and Retry-After, which a client can honour,
// when an order accepted now would wait too long:
// - the expected wait: each group's backlog divided by the rate at which it has been
//   handling events while it had a backlog (a group that keeps up says nothing of its
//   capacity), summed over the steps an order waits for; past `waitMaxMs`, refused;
// - the backlog itself, past `eventsMax` events: the bound before any rate is known, and
//   while a group is down.
import { sagaConsumers } from '../contracts/events.ts'
import type { EventStream } from '../engines/stream/event-stream.ts'
import { errorMessage, OverloadedError } from '../platform/errors.ts'
import type { Logger } from '../platform/logger.ts'
import type { Metrics } from '../platform/metrics.ts'

export interface SagaBacklogOptions {
  /** Events waiting past which new orders are refused; 0 turns admission control off. */
  eventsMax: number
  /** Expected wait of a new order past which it is refused; 0 refuses on events alone. */
  waitMaxMs: number
  intervalMs: number
}

interface GroupSample {
  atMs: number
  waiting: number
  handled: number
  /** Events handled a second while the group had a backlog (smoothed); undefined until seen. */
  ratePerSecond?: number
}

type SagaGroup = keyof typeof sagaConsumers

/**
 * How often an order waits in each group's backlog on its way to CONFIRMED: the order
 * group handles order.requested, inventory.reserved, payment.authorized and
 * shipment.scheduled; the others one step each.
 */
const waitsPerOrder: Record<SagaGroup, number> = { order: 4, inventory: 1, payment: 1, shipping: 1 }

/** Events a group must have waiting, at both ends of an interval, for the interval to measure its rate. */
const behindFromEvents = 100

/** Weight of the newest rate measurement in the smoothed rate. */
const rateSmoothing = 0.3
/** The longest Retry-After a refused order is given, however far behind the saga is. */
const retryAfterMaxSeconds = 30

export class SagaBacklog {
  readonly #stream: EventStream
  readonly #options: SagaBacklogOptions
  readonly #log: Logger
  readonly #eventsGauge
  readonly #waitGauge
  readonly #samples = new Map<string, GroupSample>()
  #events = 0
  #waitMs = 0
  #timer: NodeJS.Timeout | undefined
  #measuring = false

  constructor(stream: EventStream, options: SagaBacklogOptions, log: Logger, metrics: Metrics) {
    this.#stream = stream
    this.#options = options
    this.#log = log
    this.#eventsGauge = metrics.gauge(
      'mercato_order_saga_backlog_events',
      'Events the order saga consumer groups have yet to handle, on every topic they read.',
    )
    this.#waitGauge = metrics.gauge(
      'mercato_order_saga_wait_seconds',
      'Expected wait of a new order in the backlog of the saga consumers: each group backlog over its rate, summed over the steps an order waits for.',
    )
  }

  start(): void {
    if (this.#options.eventsMax === 0) return
    this.#timer = setInterval(() => void this.#measure(), this.#options.intervalMs)
    this.#timer.unref()
  }

  /** Throws OverloadedError (503) while an order accepted now would wait too long. */
  admit(): void {
    const { eventsMax, waitMaxMs } = this.#options
    if (eventsMax === 0) return
    if (this.#events > eventsMax) {
      throw new OverloadedError(
        'the order saga',
        `${this.#events} events wait for its consumers, more than ${eventsMax}; try again shortly`,
      )
    }
    if (waitMaxMs > 0 && this.#waitMs > waitMaxMs) {
      // Come back when the backlog should be down to the bound again, not sooner.
      const retryAfterSeconds = Math.min(retryAfterMaxSeconds, Math.ceil((this.#waitMs - waitMaxMs) / 1000))
      throw new OverloadedError(
        'the order saga',
        `its consumers are ${(this.#waitMs / 1000).toFixed(1)} s behind (${this.#events} events wait), more than ${waitMaxMs / 1000} s; try again in ${retryAfterSeconds} s`,
        retryAfterSeconds,
      )
    }
  }

  async #measure(): Promise<void> {
    if (this.#measuring) return
    this.#measuring = true
    try {
      let events = 0
      let waitMs = 0
      for (const group of Object.keys(sagaConsumers) as SagaGroup[]) {
        const lags = await this.#stream.engine.lag(
          this.#stream.group(group),
          sagaConsumers[group].map((topic) => this.#stream.topic(topic)),
        )
        const sample = this.#sample(group, lags)
        events += sample.waiting
        if (sample.waiting > 0 && sample.ratePerSecond !== undefined)
          waitMs += waitsPerOrder[group] * (sample.waiting / sample.ratePerSecond) * 1000
      }
      this.#events = events
      this.#waitMs = waitMs
      this.#eventsGauge.set(events)
      this.#waitGauge.set(waitMs / 1000)
    } catch (error) {
      // Not measured: keep the last figures rather than refuse or admit on a guess.
      this.#log.debug({ err: errorMessage(error) }, 'saga backlog not measured')
    } finally {
      this.#measuring = false
    }
  }

  #sample(group: string, lags: { committed: number; lag: number }[]): GroupSample {
    const now = Date.now()
    const next: GroupSample = {
      atMs: now,
      waiting: lags.reduce((sum, lag) => sum + lag.lag, 0),
      handled: lags.reduce((sum, lag) => sum + lag.committed, 0),
    }
    const last = this.#samples.get(group)
    next.ratePerSecond = last?.ratePerSecond
    // Only an interval the group spent behind measures how fast it can go: with a handful
    // of events waiting it handles what arrives, which says nothing of its capacity. One in
    // which it handled nothing (it is down, or restarting) leaves the rate as it was: an
    // outage is not a capacity, and the event bound refuses orders when one lasts.
    const handled = last ? next.handled - last.handled : 0
    const behind = (sample: GroupSample) => sample.waiting >= behindFromEvents
    if (last && behind(last) && behind(next) && handled > 0 && now > last.atMs) {
      const measured = (handled * 1000) / (now - last.atMs)
      next.ratePerSecond =
        last.ratePerSecond === undefined
          ? measured
          : last.ratePerSecond + rateSmoothing * (measured - last.ratePerSecond)
    }
    this.#samples.set(group, next)
    return next
  }

  stop(): void {
    clearInterval(this.#timer)
  }
}
