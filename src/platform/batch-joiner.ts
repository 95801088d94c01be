// Joins the batches several partitions hand in into one run. While a run is under way the
// batches that arrive wait, then go together: under load many partitions' events share one
// transaction (one commit, one position write), and at rest a batch runs at once, alone.
// Runs never overlap, so two partitions' transactions never lock each other's rows.
import { isOutage } from './errors.ts'

export interface JoinOptions<T> {
  /** Handles the items of one or more batches, in the order they were handed in. */
  run(items: T[]): Promise<void>
  /**
   * When a joined run fails: handles one batch without the others, so a bad batch fails
   * only its own partition. Unset: `run` with that batch alone.
   */
  runAlone?(batch: T[]): Promise<void>
  /** A run takes whole batches until it holds this many items (a single batch may hold more). */
  itemsMax: number
}

interface Waiting<T> {
  batch: T[]
  resolve(): void
  reject(error: unknown): void
}

/** A `handleBatch` for a subscription: resolves once the batch is handled, in whichever run took it. */
export function joinBatches<T>(options: JoinOptions<T>): (batch: T[]) => Promise<void> {
  let waiting: Waiting<T>[] = []
  let running = false

  const takeRun = (): Waiting<T>[] => {
    let items = 0
    let taken = 0
    while (taken < waiting.length && (taken === 0 || items + waiting[taken].batch.length <= options.itemsMax))
      items += waiting[taken++].batch.length
    const run = waiting.slice(0, taken)
    waiting = waiting.slice(taken)
    return run
  }

  const drain = async () => {
    running = true
    while (waiting.length > 0) {
      const run = takeRun()
      try {
        await options.run(run.flatMap((w) => w.batch))
        for (const w of run) w.resolve()
        continue
      } catch (error) {
        // An outage (the store unreachable, its pool full) is no batch's fault: running the
        // batches again alone would only add to the load. Each partition waits it out.
        if ((run.length === 1 && !options.runAlone) || isOutage(error)) {
          for (const w of run) w.reject(error)
          continue
        }
      }
      for (const w of run) {
        try {
          await (options.runAlone ?? options.run)(w.batch)
          w.resolve()
        } catch (error) {
          w.reject(error)
        }
      }
    }
    running = false
  }

  return (batch) =>
    new Promise<void>((resolve, reject) => {
      waiting.push({ batch, resolve, reject })
      if (!running) void drain()
    })
}
