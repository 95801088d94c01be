// Commands that ask a service for an outcome. The service answers each with one of these
// events, emitted with the request as its cause (`causationid`). A view whose documents the
// outcome changes keeps such a request pending until the outcome arrives, so a reader
// waiting on the request's consistency token sees what the request came to, not only that
// it was made. The answer goes on the request's topic with the request's key, so on its
// partition, after it: a reader's wait compares positions on that partition alone.
export const requestOutcomes: Readonly<Record<string, readonly string[]>> = {
  'order.cancel-requested': ['order.cancelled', 'order.cancel-refused'],
  'inventory.adjustment-requested': ['inventory.adjusted', 'inventory.adjustment-rejected'],
  'customer.registration-requested': ['customer.registered', 'customer.registration-rejected'],
}

/** What a view does with an event of a request it awaits: `request` (it is pending now), `outcome` of `requestId`, or nothing. */
export function requestRole(
  awaits: ReadonlySet<string>,
  event: { id: string; type: string; causationid: string },
): { kind: 'request' } | { kind: 'outcome'; requestId: string } | undefined {
  if (awaits.has(event.type)) return { kind: 'request' }
  if (event.causationid === event.id) return undefined
  for (const request of awaits)
    if (requestOutcomes[request]?.includes(event.type))
      return { kind: 'outcome', requestId: event.causationid }
  return undefined
}
