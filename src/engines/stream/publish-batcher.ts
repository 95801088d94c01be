import { OverloadedError } from '../../platform/errors.ts'
import type { OutgoingRecord, RecordPosition } from './port.ts'

interface Pending {
  records: OutgoingRecord[]
  resolve: (positions: RecordPosition[]) => void
  reject: (error: unknown) => void
}

/**
 * Group commit for publishes: callers that publish at the same time share one write, and
 * each is acknowledged when that write is durable. One write is in flight at a time, so
 * records keep the order in which they were published. Bounded: past `queueLengthMax`
 * waiting records a publish is refused at once.
 */
export class PublishBatcher {
  readonly #write: (records: OutgoingRecord[]) => Promise<RecordPosition[]>
  readonly #batchSizeMax: number
  readonly #queueLengthMax: number
  #pending: Pending[] = []
  #pendingCount = 0
  #writing: Promise<void> | undefined

  constructor(
    write: (records: OutgoingRecord[]) => Promise<RecordPosition[]>,
    options: { batchSizeMax: number; queueLengthMax: number },
  ) {
    this.#write = write
    this.#batchSizeMax = options.batchSizeMax
    this.#queueLengthMax = options.queueLengthMax
  }

  get waiting(): number {
    return this.#pendingCount
  }

  publish(records: OutgoingRecord[]): Promise<RecordPosition[]> {
    if (records.length === 0) return Promise.resolve([])
    if (this.#pendingCount + records.length > this.#queueLengthMax) {
      return Promise.reject(
        new OverloadedError('stream.publish', `${this.#pendingCount} records already waiting to be written`),
      )
    }
    return new Promise((resolve, reject) => {
      this.#pending.push({ records, resolve, reject })
      this.#pendingCount += records.length
      if (!this.#writing) this.#writing = this.#drain()
    })
  }

  /** Resolves when everything published so far has been written (or refused). */
  async flushed(): Promise<void> {
    while (this.#writing) await this.#writing
  }

  async #drain(): Promise<void> {
    // Let the callers of this tick join the first batch.
    await new Promise((resolve) => setImmediate(resolve))
    while (this.#pending.length > 0) {
      const batch = this.#take()
      const records = batch.flatMap((pending) => pending.records)
      try {
        const positions = await this.#write(records)
        let start = 0
        for (const pending of batch) {
          pending.resolve(positions.slice(start, start + pending.records.length))
          start += pending.records.length
        }
      } catch (error) {
        for (const pending of batch) pending.reject(error)
      }
    }
    this.#writing = undefined
  }

  #take(): Pending[] {
    const batch: Pending[] = []
    let count = 0
    while (
      this.#pending.length > 0 &&
      (count === 0 || count + this.#pending[0].records.length <= this.#batchSizeMax)
    ) {
      const next = this.#pending.shift()!
      count += next.records.length
      batch.push(next)
    }
    this.#pendingCount -= count
    return batch
  }
}
