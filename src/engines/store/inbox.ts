import type { Store, Tx } from './port.ts'

/**
 * Runs `work` at most once per (consumer, event id): the id is recorded in the same
 * transaction as the state change, so a redelivered event has no second effect.
 * Resolves false when the event had been handled already.
 */
export async function handleOnce(
  store: Store,
  consumer: string,
  eventId: string,
  work: (tx: Tx) => Promise<void>,
): Promise<boolean> {
  return store.transaction(async (tx) => {
    if (!(await recordHandled(tx, consumer, eventId))) return false
    await work(tx)
    return true
  })
}

/** Records in `tx` that `consumer` handles `eventId`; resolves false when it had been already. */
export async function recordHandled(tx: Tx, consumer: string, eventId: string): Promise<boolean> {
  const inserted = await tx.execute(
    'INSERT INTO mercato_inbox (consumer, event_id, handled_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
    [consumer, eventId, new Date().toISOString()],
  )
  return inserted > 0
}

/**
 * Records in `tx` that `consumer` handles each of `eventIds` (one statement for all); resolves
 * with those it had not handled before. An id given twice is recorded once.
 */
export async function recordAllHandled(tx: Tx, consumer: string, eventIds: string[]): Promise<Set<string>> {
  const rows = await tx.query<{ event_id: string }>(
    `INSERT INTO mercato_inbox (consumer, event_id, handled_at)
     VALUES ${eventIds.map((_, i) => `($1, $${i + 3}, $2)`).join(', ')}
     ON CONFLICT DO NOTHING RETURNING event_id`,
    [consumer, new Date().toISOString(), ...eventIds],
  )
  return new Set(rows.map((row) => row.event_id))
}

/** Whether `consumer` has handled `eventId` already (its effects, if any, are done). */
export async function wasHandled(store: Store, consumer: string, eventId: string): Promise<boolean> {
  const rows = await store.query('SELECT 1 FROM mercato_inbox WHERE consumer = $1 AND event_id = $2', [
    consumer,
    eventId,
  ])
  return rows.length > 0
}

/**
 * Records that `consumer` handled `eventId` without a state change (the handler found
 * nothing to do): a redelivery must find nothing to do either, even when the state has
 * moved on since.
 */
export async function markHandled(store: Store, consumer: string, eventId: string): Promise<void> {
  await store.execute(
    'INSERT INTO mercato_inbox (consumer, event_id, handled_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
    [consumer, eventId, new Date().toISOString()],
  )
}

/** Rows one prune statement deletes at most: a prune never holds the store for long. */
const pruneBatchSize = 1_000

/**
 * Forgets the events handled before `before`, a batch at a time; resolves with how many.
 * A redelivery of an event older than that would have its effect again: the retention must
 * outlast any redelivery the stream can make (Kafka keeps a record 7 days by default, and
 * up to 7 more until its segment rolls).
 */
export async function pruneInbox(store: Store, before: Date, signal?: AbortSignal): Promise<number> {
  return deleteInBatches(store, 'handled_at < $1', [before.toISOString()], signal)
}

/** Forgets every event `consumer` handled (a consumer that is gone), a batch at a time. */
export async function forgetConsumer(store: Store, consumer: string, signal?: AbortSignal): Promise<number> {
  return deleteInBatches(store, 'consumer = $1', [consumer], signal)
}

async function deleteInBatches(
  store: Store,
  where: string,
  params: string[],
  signal: AbortSignal | undefined,
): Promise<number> {
  let deleted = 0
  while (!signal?.aborted) {
    const batch = await store.execute(
      `DELETE FROM mercato_inbox WHERE (consumer, event_id) IN
         (SELECT consumer, event_id FROM mercato_inbox WHERE ${where} LIMIT ${pruneBatchSize})`,
      params,
    )
    deleted += batch
    if (batch < pruneBatchSize) break
  }
  return deleted
}
