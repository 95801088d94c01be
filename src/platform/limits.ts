import { OverloadedError, TimeoutError } from './errors.ts'

/**
 * A counting semaphore with a bounded wait queue and a bounded wait: the one way Mercato
 * guards a scarce resource. A caller past the queue bound, or waiting longer than
 * `acquireTimeoutMs`, gets an OverloadedError at once instead of waiting without end.
 */
export class Semaphore {
  readonly name: string
  readonly permitsMax: number
  readonly queueLengthMax: number
  readonly acquireTimeoutMs: number
  #inUse = 0
  #waiters: { grant: () => void; timer: NodeJS.Timeout }[] = []

  constructor(
    name: string,
    options: { permitsMax: number; queueLengthMax: number; acquireTimeoutMs: number },
  ) {
    assertPositive(`${name}.permitsMax`, options.permitsMax)
    this.name = name
    this.permitsMax = options.permitsMax
    this.queueLengthMax = options.queueLengthMax
    this.acquireTimeoutMs = options.acquireTimeoutMs
  }

  get inUse(): number {
    return this.#inUse
  }

  get waiting(): number {
    return this.#waiters.length
  }

  acquire(): Promise<void> {
    if (this.#inUse < this.permitsMax && this.#waiters.length === 0) {
      this.#inUse++
      return Promise.resolve()
    }
    if (this.#waiters.length >= this.queueLengthMax) {
      return Promise.reject(
        new OverloadedError(
          this.name,
          `all ${this.permitsMax} permits busy and ${this.queueLengthMax} callers waiting`,
        ),
      )
    }
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        grant: () => {
          clearTimeout(waiter.timer)
          resolve()
        },
        timer: setTimeout(() => {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1)
          reject(new OverloadedError(this.name, `no permit free within ${this.acquireTimeoutMs} ms`))
        }, this.acquireTimeoutMs),
      }
      this.#waiters.push(waiter)
    })
  }

  release(): void {
    if (this.#inUse <= 0) throw new Error(`${this.name}: release without acquire`)
    const next = this.#waiters.shift()
    if (next) next.grant()
    else this.#inUse--
  }

  async run<T>(work: () => Promise<T>): Promise<T> {
    await this.acquire()
    try {
      return await work()
    } finally {
      this.release()
    }
  }
}

export async function withTimeout<T>(
  operation: string,
  timeoutMs: number,
  work: Promise<T>,
  /** Gives up at once when it aborts, with its reason. */
  signal?: AbortSignal,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(operation, timeoutMs)), timeoutMs)
    onAbort = () => reject(signal?.reason)
    if (signal?.aborted) onAbort()
    else signal?.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([work, timeout])
  } finally {
    clearTimeout(timer)
    if (onAbort) signal?.removeEventListener('abort', onAbort)
  }
}

/** Exponential backoff with full jitter, capped: attempt 1 waits up to baseMs, then 2×, 4× … maxMs. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** (attempt - 1))
  return Math.round(ceiling / 2 + (random() * ceiling) / 2)
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const timer = setTimeout(done, ms)
    function done() {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    signal?.addEventListener('abort', done, { once: true })
  })
}

export function assertPositive(name: string, value: number): void {
  if (!Number.isFinite(value) || value <= 0)
    throw new Error(`${name} must be a positive number, got ${value}`)
}

export function invariant(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`invariant violated: ${message}`)
}
