// Webhook endpoints as an admin sees them: each registered endpoint with its URL, the
// events it takes and whether it is still in use, folded from the webhooks topic. The
// signing secret never enters the view: it is shown in the registration's answer only (and its replays).
import type { Store } from '../../engines/store/port.ts'
import type { SqlFold } from '../sql-view.ts'

export const webhooksTopics = ['webhooks']

export interface WebhookEndpoint {
  endpointId: string
  url: string
  events: string[]
  enabled: boolean
  registeredAt: string
  /** When an admin removed it; null while it is in use. */
  removedAt: string | null
}

export const webhooksListCacheKey = 'webhooks:list'

export function webhookCacheKey(endpointId: string): string {
  return `webhooks:endpoint:${endpointId}`
}

const endpoints = (g: number) => `webhooks_g${g}_endpoints`

interface EndpointRow {
  endpoint_id: string
  url: string
  events: string
  enabled: number
  registered_at: string
  removed_at: string | null
}

export const webhooksFold: SqlFold = {
  createSql: (_kind, g) => [
    `CREATE TABLE IF NOT EXISTS ${endpoints(g)} (endpoint_id TEXT PRIMARY KEY, url TEXT NOT NULL,
      events TEXT NOT NULL, enabled INTEGER NOT NULL, registered_at TEXT NOT NULL, removed_at TEXT)`,
  ],
  tables: (g) => [endpoints(g)],
  async apply(tx, _kind, g, { event }, changed) {
    const d = event.data as { endpointId: string; url?: string; events?: string[]; enabled?: boolean }
    switch (event.type) {
      // Both events of an endpoint are keyed by its id: they come in order, on one partition.
      case 'webhook.endpoint-set':
        await tx.execute(
          `INSERT INTO ${endpoints(g)} (endpoint_id, url, events, enabled, registered_at) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (endpoint_id) DO UPDATE SET url = excluded.url, events = excluded.events,
             enabled = excluded.enabled`,
          [d.endpointId, d.url ?? '', JSON.stringify(d.events ?? []), d.enabled ? 1 : 0, event.time],
        )
        break
      case 'webhook.endpoint-removed':
        // An id never registered changes nothing.
        await tx.execute(
          `UPDATE ${endpoints(g)} SET enabled = 0, removed_at = COALESCE(removed_at, $1) WHERE endpoint_id = $2`,
          [event.time, d.endpointId],
        )
        break
      default:
        return
    }
    changed.add(webhookCacheKey(d.endpointId))
    changed.add(webhooksListCacheKey)
  },
  async dump(store, g) {
    return readWebhooks(store, g, { removedToo: true })
  },
}

function documentOf(row: EndpointRow): WebhookEndpoint {
  return {
    endpointId: row.endpoint_id,
    url: row.url,
    events: JSON.parse(row.events) as string[],
    enabled: Number(row.enabled) === 1,
    registeredAt: row.registered_at,
    removedAt: row.removed_at ?? null,
  }
}

/** A shop has a handful of endpoints; the list stops at this many. */
export const webhooksListMax = 1_000

/** The endpoints in use, in id order, at most `webhooksListMax` (every one ever registered with `removedToo`). */
export async function readWebhooks(
  store: Store,
  g: number,
  options: { removedToo?: boolean } = {},
): Promise<WebhookEndpoint[]> {
  const rows = await store.query<EndpointRow>(
    options.removedToo
      ? `SELECT * FROM ${endpoints(g)} ORDER BY endpoint_id`
      : `SELECT * FROM ${endpoints(g)} WHERE removed_at IS NULL ORDER BY endpoint_id LIMIT ${webhooksListMax}`,
  )
  return rows.map(documentOf)
}

export async function readWebhook(
  store: Store,
  g: number,
  endpointId: string,
): Promise<WebhookEndpoint | undefined> {
  const [row] = await store.query<EndpointRow>(`SELECT * FROM ${endpoints(g)} WHERE endpoint_id = $1`, [
    endpointId,
  ])
  return row && documentOf(row)
}
