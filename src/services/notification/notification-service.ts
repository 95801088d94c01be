// The notification service: tells the customer about every step (e-mail over real SMTP)
// and calls the shop's webhooks. Handling an event only records what is to be sent, in
// the event's inbox transaction; background delivery loops do the network I/O outside
// any transaction, with retries and backoff, and record the outcome:
//   pending → sending (claimed, attempts + 1) → sent | pending (retry later) | dead
// A notification's id is derived from the event id, the channel and the template (or the
// endpoint), so a redelivered event records nothing new; what is marked sent is never sent
// again. A crash between sending and marking sends once more (at least once).
import { createHash } from 'node:crypto'
import nodemailer, { type Transporter } from 'nodemailer'
import type { CloudEvent } from '../../contracts/envelope.ts'
import {
  eventSchemas,
  eventTypeMatches,
  webhookDeliveryTopics,
  webhookEventTypes,
} from '../../contracts/events.ts'
import { eventRegistry } from '../../contracts/registry.ts'
import type { Migration, Tx } from '../../engines/store/port.ts'
import { errorMessage, redactUrl, TimeoutError } from '../../platform/errors.ts'
import { backoffMs, sleep, withTimeout } from '../../platform/limits.ts'
import { RefusedUrlError, resolveWebhookTarget } from '../../platform/outbound-url.ts'
import type { Handler, HandlerTools, Service } from '../../platform/service.ts'
import { type MailSink, startMailSink } from './mail-sink.ts'
import { renderEmail, templateOf } from './templates.ts'
import { postWebhook, signatureHeader, signWebhook } from './webhooks.ts'

export type { MailSink, SinkMessage } from './mail-sink.ts'
export { signWebhook, verifyWebhookSignature } from './webhooks.ts'

export interface NotificationOptions {
  /** smtp:// or smtps:// URL of the mail server; without it, an in-process sink on 127.0.0.1 receives the mail. */
  smtpUrl?: string
  from: string
  webhookTimeoutMs: number
  webhookAttemptsMax: number
  allowPrivateWebhookHosts: boolean
  emailAttemptsMax?: number
  /** First retry waits about this long, then twice as long each time (with jitter), up to `backoffMaxMs`. */
  backoffBaseMs?: number
  backoffMaxMs?: number
  /** How often the delivery loops look for due work. */
  pollIntervalMs?: number
  /** Deliveries handled at once by each loop. */
  concurrencyMax?: number
  /** Messages the local sink keeps. */
  sinkMessagesMax?: number
  /** Where the local sink writes each message it receives, as an .eml file. */
  sinkDirectory?: string
}

export interface RunningNotification {
  stop(): Promise<void>
  ready(): Promise<void>
  /** The local mail sink, when no SMTP URL was given. */
  sink?: MailSink
}

/**
 * What webhooks deliver, the webhooks topic itself for the endpoints, and the products, whose
 * names an order's e-mail lists.
 */
export const notificationTopics = [...webhookDeliveryTopics, 'webhooks', 'products']

export const notificationMigrations: Migration[] = [
  {
    id: 'notification-0001-tables',
    sql: `CREATE TABLE IF NOT EXISTS notification_customers (
        customer_id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        given_name TEXT NOT NULL,
        family_name TEXT NOT NULL,
        updated_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS notification_orders (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        placed_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS notification_emails (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        template TEXT NOT NULL,
        customer_id TEXT,
        order_id TEXT,
        recipient TEXT,
        vars TEXT NOT NULL,
        cause TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        sent_at TEXT);
      CREATE INDEX IF NOT EXISTS notification_emails_due ON notification_emails (status, next_attempt_at);
      CREATE INDEX IF NOT EXISTS notification_emails_customer ON notification_emails (customer_id, status);
      CREATE INDEX IF NOT EXISTS notification_emails_order ON notification_emails (order_id);
      CREATE TABLE IF NOT EXISTS notification_webhook_endpoints (
        endpoint_id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        events TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        updated_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS notification_webhook_deliveries (
        id TEXT PRIMARY KEY,
        endpoint_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        customer_id TEXT,
        order_id TEXT,
        payload TEXT NOT NULL,
        cause TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        last_status_code INTEGER,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        delivered_at TEXT);
      CREATE INDEX IF NOT EXISTS notification_webhook_deliveries_due
        ON notification_webhook_deliveries (status, next_attempt_at);
      CREATE INDEX IF NOT EXISTS notification_webhook_deliveries_endpoint
        ON notification_webhook_deliveries (endpoint_id, status)`,
  },
  {
    // The recipient sweep reads the last minutes of e-mails still waiting for an address.
    id: 'notification-0002-emails-created',
    sql: 'CREATE INDEX IF NOT EXISTS notification_emails_created ON notification_emails (status, created_at)',
  },
  {
    // An order's e-mails go out in the order of their events; a shipping notice names the
    // carrier and tracking number of the order's shipment.
    id: 'notification-0003-email-order-and-shipments',
    sql: `ALTER TABLE notification_emails ADD COLUMN send_order TEXT;
      CREATE TABLE IF NOT EXISTS notification_shipments (
        order_id TEXT PRIMARY KEY,
        carrier TEXT NOT NULL,
        tracking_number TEXT NOT NULL)`,
  },
  {
    // An order's e-mail names its products, not their SKUs.
    id: 'notification-0004-product-names',
    sql: 'CREATE TABLE IF NOT EXISTS notification_products (sku TEXT PRIMARY KEY, name TEXT NOT NULL)',
  },
  {
    // The due e-mails are read in (next_attempt_at, id) order: with the id in the index,
    // a backlog of 20,000 e-mails is read in 0.2 ms, not 14 ms, at every poll.
    id: 'notification-0005-emails-due-by-id',
    sql: `CREATE INDEX IF NOT EXISTS notification_emails_due_in_order
        ON notification_emails (status, next_attempt_at, id);
      DROP INDEX IF EXISTS notification_emails_due`,
  },
  {
    // The address a registration asked for, until the user service has decided: a refusal
    // is written to that address (the registrant has no account to read it from).
    id: 'notification-0006-registrations',
    sql: `CREATE TABLE IF NOT EXISTS notification_registrations (
        customer_id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        requested_at TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS notification_registrations_requested
        ON notification_registrations (requested_at);
      CREATE TABLE IF NOT EXISTS notification_refusals (
        email_key TEXT PRIMARY KEY,
        told_at TEXT NOT NULL)`,
  },
]

/**
 * An order's e-mails go out one at a time, in the order of their events: sent side by side,
 * "confirmed" could reach a customer before "received". One still to send (pending, also
 * while it waits for a retry, or being sent) holds back every later one of its order.
 */
const firstUnsentOfItsOrder = `NOT EXISTS (SELECT 1 FROM notification_emails earlier
  WHERE earlier.order_id = notification_emails.order_id AND earlier.status IN ('pending', 'sending')
    AND (COALESCE(earlier.send_order, earlier.created_at), earlier.id)
      < (COALESCE(notification_emails.send_order, notification_emails.created_at), notification_emails.id))`

/**
 * An e-mail's place among its order's: its event's time, then, for events of the same
 * millisecond, the order they were handled in (an order's steps come in order on its
 * partition). The counter starts from the clock, so it grows across restarts too.
 */
let handledSeq = 0
function sendOrderOf(event: CloudEvent): string {
  handledSeq = Math.max(handledSeq + 1, Date.now() * 1_000)
  return `${event.time}/${handledSeq}`
}

const deliverable = new Set(webhookEventTypes)
/** Data fields removed from every webhook payload. */
const redactedFields = new Set(['passwordHash', 'secret', 'paymentMethodToken'])
/** How long a customer's undeliverable e-mails wait for their address to become known. */
const noRecipientRetentionMs = 7 * 24 * 3_600_000
/** nodemailer's codes for a server it could not reach or talk to at all. */
const smtpConnectionCodes = new Set(['ECONNECTION', 'ESOCKET', 'ETIMEDOUT', 'EDNS', 'ECONNREFUSED'])
/** At most one refused registration's e-mail to an address in this long. */
const refusalMailGapMs = 24 * 3_600_000
/** A registration the user service never decided on (a repeated id) is forgotten after this. */
const registrationKeepMs = 7 * 24 * 3_600_000
/**
 * How far before its last complete run the recipient sweep looks again: an e-mail written
 * in a transaction under way then has committed by now.
 */
const recipientSweepOverlapMs = 60_000

export function notificationId(eventId: string, channel: 'email' | 'webhook', name: string): string {
  const digest = createHash('sha256').update(`${eventId}\u0000${channel}\u0000${name}`).digest('base64url')
  return `ntf_${digest.slice(0, 26)}`
}

/** Whether an endpoint subscribed to `events` receives an event of `type`: exact type, `prefix.*` or `*`. */
export function endpointWants(events: string[], type: string): boolean {
  return events.some((pattern) => eventTypeMatches(pattern, type))
}

interface Cause {
  id: string
  correlationid: string
  traceparent?: string
}

interface DueRow {
  id: string
  status: string
  attempts: number
  /** Deliveries of one lane (a webhook's endpoint) share its slots: '' for e-mails, which have one. */
  lane: string
}

const nowIso = () => new Date().toISOString()
const isoIn = (ms: number) => new Date(Date.now() + ms).toISOString()
const text = (value: unknown) => (typeof value === 'string' && value.length > 0 ? value : undefined)

/** Deliveries one run of a delivery loop starts at most, in slots' worth. */
const drainStartsMax = 20

export async function startNotificationService(
  service: Service,
  options: NotificationOptions,
): Promise<RunningNotification> {
  const { store, log, metrics } = service
  const emailAttemptsMax = options.emailAttemptsMax ?? 8
  const backoffBaseMs = options.backoffBaseMs ?? 2_000
  const backoffMaxMs = options.backoffMaxMs ?? 3_600_000
  const pollIntervalMs = options.pollIntervalMs ?? 250
  const concurrencyMax = options.concurrencyMax ?? 16
  const smtpTimeoutMs = 30_000
  const notifications = metrics.counter(
    'mercato_notifications_total',
    'Notifications, by channel and outcome.',
    ['channel', 'outcome'],
  )
  const count = (channel: 'email' | 'webhook', outcome: string) => notifications.inc({ channel, outcome })

  const sink = options.smtpUrl
    ? undefined
    : await startMailSink({ messagesMax: options.sinkMessagesMax, directory: options.sinkDirectory })
  if (sink)
    log.info(
      { smtp: `${sink.host}:${sink.port}`, directory: options.sinkDirectory },
      'no SMTP URL: e-mails go to the local mail sink, which keeps them as .eml files',
    )
  const transport: Transporter = options.smtpUrl
    ? nodemailer.createTransport({
        url: options.smtpUrl,
        pool: true,
        maxConnections: 5,
        connectionTimeout: 10_000,
        greetingTimeout: 10_000,
        socketTimeout: smtpTimeoutMs,
      } as Parameters<typeof nodemailer.createTransport>[0])
    : nodemailer.createTransport({
        host: sink!.host,
        port: sink!.port,
        secure: false,
        ignoreTLS: true,
        pool: true,
        // The sink is this process's own: a connection for each e-mail sent at once. (Five, as
        // for a relay, held a shop under load to about 70 e-mails a second, one SMTP exchange
        // at a time on each.)
        maxConnections: concurrencyMax,
        connectionTimeout: 10_000,
        greetingTimeout: 10_000,
        socketTimeout: smtpTimeoutMs,
      })

  try {
    await service.start(notificationMigrations)
  } catch (error) {
    transport.close()
    await sink?.close()
    throw error
  }

  // ---- handling events: record what is to be sent, in the event's inbox transaction ----

  async function customerOfOrder(tx: Tx, orderId: string | undefined): Promise<string | undefined> {
    if (!orderId) return undefined
    const rows = await tx.query<{ customer_id: string }>(
      'SELECT customer_id FROM notification_orders WHERE order_id = $1',
      [orderId],
    )
    return rows[0]?.customer_id
  }

  async function emailOf(tx: Tx, customerId: string | undefined): Promise<string | undefined> {
    if (!customerId) return undefined
    const rows = await tx.query<{ email: string }>(
      'SELECT email FROM notification_customers WHERE customer_id = $1',
      [customerId],
    )
    return rows[0]?.email
  }

  /**
   * The address a refused registration asked for, forgotten as it is read: the refusal goes
   * to whoever holds that address (who may not be who asked), and says only what they can
   * already know, that the address has an account.
   */
  async function takeRegistrant(tx: Tx, customerId: string | undefined): Promise<string | undefined> {
    if (!customerId) return undefined
    const [row] = await tx.query<{ email: string }>(
      'DELETE FROM notification_registrations WHERE customer_id = $1 RETURNING email',
      [customerId],
    )
    return row?.email
  }

  /** E-mails that waited for the customer's address: due now that it is known. */
  async function releaseWaiting(tx: Tx, customerId: string): Promise<void> {
    const email = await emailOf(tx, customerId)
    if (!email) return
    await tx.execute(
      `UPDATE notification_emails SET status = 'pending', recipient = $1, next_attempt_at = $2, updated_at = $2
        WHERE customer_id = $3 AND status = 'no-recipient' AND created_at >= $4`,
      [email, nowIso(), customerId, new Date(Date.now() - noRecipientRetentionMs).toISOString()],
    )
  }

  async function applyState(tx: Tx, event: CloudEvent): Promise<void> {
    const data = event.data
    const now = nowIso()
    switch (event.type) {
      case 'customer.registration-requested':
        await tx.execute(
          `INSERT INTO notification_registrations (customer_id, email, requested_at) VALUES ($1, $2, $3)
           ON CONFLICT (customer_id) DO NOTHING`,
          [String(data.customerId), String(data.email), now],
        )
        return
      case 'customer.registered':
        await tx.execute('DELETE FROM notification_registrations WHERE customer_id = $1', [
          String(data.customerId),
        ])
        await tx.execute(
          `INSERT INTO notification_customers (customer_id, email, given_name, family_name, updated_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (customer_id) DO UPDATE SET email = excluded.email, given_name = excluded.given_name,
             family_name = excluded.family_name, updated_at = excluded.updated_at`,
          [
            String(data.customerId),
            String(data.email),
            String(data.givenName),
            String(data.familyName ?? ''),
            now,
          ],
        )
        await releaseWaiting(tx, String(data.customerId))
        return
      case 'product.upserted':
        await tx.execute(
          `INSERT INTO notification_products (sku, name) VALUES ($1, $2)
           ON CONFLICT (sku) DO UPDATE SET name = excluded.name`,
          [String(data.sku), String(data.name)],
        )
        return
      case 'order.placed': {
        const orderId = String(data.orderId)
        const customerId = String(data.customerId)
        await tx.execute(
          `INSERT INTO notification_orders (order_id, customer_id, placed_at) VALUES ($1, $2, $3)
           ON CONFLICT (order_id) DO NOTHING`,
          [orderId, customerId, now],
        )
        // Events of this order recorded before its customer was known.
        await tx.execute(
          'UPDATE notification_emails SET customer_id = $1 WHERE order_id = $2 AND customer_id IS NULL',
          [customerId, orderId],
        )
        await releaseWaiting(tx, customerId)
        return
      }
      case 'shipment.scheduled':
        await tx.execute(
          `INSERT INTO notification_shipments (order_id, carrier, tracking_number) VALUES ($1, $2, $3)
           ON CONFLICT (order_id) DO NOTHING`,
          [String(data.orderId), String(data.carrier), String(data.trackingNumber)],
        )
        return
      case 'webhook.endpoint-removed':
        // Kept, disabled: a delivery still due finds it so and is cancelled, not sent.
        await tx.execute(
          'UPDATE notification_webhook_endpoints SET enabled = 0, updated_at = $1 WHERE endpoint_id = $2',
          [now, String(data.endpointId)],
        )
        endpointsOfTx.delete(tx)
        return
      case 'webhook.endpoint-set':
        await tx.execute(
          `INSERT INTO notification_webhook_endpoints (endpoint_id, url, secret, events, enabled, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (endpoint_id) DO UPDATE SET url = excluded.url, secret = excluded.secret,
             events = excluded.events, enabled = excluded.enabled, updated_at = excluded.updated_at`,
          [
            String(data.endpointId),
            String(data.url),
            String(data.secret),
            JSON.stringify(data.events ?? []),
            data.enabled ? 1 : 0,
            now,
          ],
        )
        endpointsOfTx.delete(tx)
        return
    }
  }

  function causeOf(event: CloudEvent): string {
    const cause: Cause = { id: event.id, correlationid: event.correlationid }
    if (event.traceparent) cause.traceparent = event.traceparent
    return JSON.stringify(cause)
  }

  async function recordEmail(tx: Tx, event: CloudEvent, template: string): Promise<void> {
    if (event.type === 'customer.registration-rejected') return recordRefusal(tx, event, template)
    const orderId = text(event.data.orderId)
    const customerId = text(event.data.customerId) ?? (await customerOfOrder(tx, orderId))
    await insertEmail(tx, event, template, { customerId, orderId, recipient: await emailOf(tx, customerId) })
  }

  /**
   * A refused registration, written to the address it named. Under no customer: the id was
   * never a customer's, and its 360 must go on answering 404. At most one a day to an
   * address: registering with someone's address must not fill their mailbox.
   */
  async function recordRefusal(tx: Tx, event: CloudEvent, template: string): Promise<void> {
    const recipient = await takeRegistrant(tx, text(event.data.customerId))
    if (!recipient) return
    // One statement, so two refusals to one address committed side by side send one e-mail.
    const toldNow = await tx.query(
      `INSERT INTO notification_refusals (email_key, told_at) VALUES ($1, $2)
       ON CONFLICT (email_key) DO UPDATE SET told_at = excluded.told_at
         WHERE notification_refusals.told_at <= $3
       RETURNING 1`,
      [recipient.trim().toLowerCase(), nowIso(), new Date(Date.now() - refusalMailGapMs).toISOString()],
    )
    if (toldNow.length === 0) return
    await insertEmail(tx, event, template, { recipient })
  }

  async function insertEmail(
    tx: Tx,
    event: CloudEvent,
    template: string,
    to: { customerId?: string; orderId?: string; recipient?: string },
  ): Promise<void> {
    const { customerId, orderId, recipient } = to
    const now = nowIso()
    const status = recipient ? 'pending' : 'no-recipient'
    const inserted = await tx.execute(
      `INSERT INTO notification_emails (id, event_id, event_type, template, customer_id, order_id, recipient,
         vars, cause, status, attempts, next_attempt_at, created_at, updated_at, send_order)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $11, $11, $12)
       ON CONFLICT (id) DO NOTHING`,
      [
        notificationId(event.id, 'email', template),
        event.id,
        event.type,
        template,
        customerId ?? null,
        orderId ?? null,
        recipient ?? null,
        JSON.stringify(event.data),
        causeOf(event),
        status,
        now,
        sendOrderOf(event),
      ],
    )
    if (inserted > 0 && !recipient) {
      tx.afterCommit(() => {
        count('email', 'no-recipient')
        log.info(
          { eventId: event.id, type: event.type, customerId, orderId },
          'no e-mail address known yet for this notification; recorded as no-recipient',
        )
      })
    }
  }

  function webhookPayload(event: CloudEvent): string {
    const data = Object.fromEntries(Object.entries(event.data).filter(([key]) => !redactedFields.has(key)))
    return JSON.stringify({ ...event, data })
  }

  /**
   * The enabled endpoints, read once per transaction: a batch's events share it, and an
   * endpoint set in the batch is seen by the events after it.
   */
  const endpointsOfTx = new WeakMap<Tx, { endpoint_id: string; events: string[] }[]>()
  async function enabledEndpoints(tx: Tx): Promise<{ endpoint_id: string; events: string[] }[]> {
    let endpoints = endpointsOfTx.get(tx)
    if (!endpoints) {
      const rows = await tx.query<{ endpoint_id: string; events: string }>(
        'SELECT endpoint_id, events FROM notification_webhook_endpoints WHERE enabled = 1',
      )
      endpoints = rows.map((row) => ({ endpoint_id: row.endpoint_id, events: JSON.parse(row.events) }))
      endpointsOfTx.set(tx, endpoints)
    }
    return endpoints
  }

  async function recordWebhooks(tx: Tx, event: CloudEvent): Promise<void> {
    if (!deliverable.has(event.type)) return
    const wanting = (await enabledEndpoints(tx)).filter((endpoint) =>
      endpointWants(endpoint.events, event.type),
    )
    if (wanting.length === 0) return
    const orderId = text(event.data.orderId)
    const customerId = text(event.data.customerId) ?? (await customerOfOrder(tx, orderId))
    const payload = webhookPayload(event)
    const now = nowIso()
    for (const endpoint of wanting) {
      await tx.execute(
        `INSERT INTO notification_webhook_deliveries (id, endpoint_id, event_id, event_type, customer_id, order_id,
           payload, cause, status, attempts, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9, $9)
         ON CONFLICT (id) DO NOTHING`,
        [
          notificationId(event.id, 'webhook', endpoint.endpoint_id),
          endpoint.endpoint_id,
          event.id,
          event.type,
          customerId ?? null,
          orderId ?? null,
          payload,
          causeOf(event),
          now,
        ],
      )
    }
  }

  const handle: Handler = async (event: CloudEvent, tools: HandlerTools) => {
    await tools.transact(async (tx) => {
      await applyState(tx, event)
      const template = templateOf[event.type]
      if (template) await recordEmail(tx, event, template)
      await recordWebhooks(tx, event)
    })
  }
  const handlers: Record<string, Handler> = {}
  for (const type of Object.keys(eventSchemas)) {
    if (notificationTopics.includes(eventRegistry.topicOf(type))) handlers[type] = handle
  }

  // ---- delivery loops: network I/O outside any transaction ----

  /**
   * Due rows of `table`: pending, or claimed by a sender whose lease ran out (it crashed or
   * stopped). With `laneColumn`, each lane's oldest first, then each lane's second, and so
   * on: a lane with a long backlog does not fill the page.
   */
  async function due(
    table: string,
    limit: number,
    laneColumn?: string,
    condition?: string,
  ): Promise<DueRow[]> {
    const pending = `status IN ('pending', 'sending') AND next_attempt_at <= $1${condition ? ` AND ${condition}` : ''}`
    const rows = await store.query<DueRow>(
      laneColumn
        ? `SELECT id, status, attempts, lane FROM (
             SELECT id, status, attempts, ${laneColumn} AS lane, next_attempt_at,
               ROW_NUMBER() OVER (PARTITION BY ${laneColumn} ORDER BY next_attempt_at, id) AS turn
             FROM ${table} WHERE ${pending}
           ) AS due ORDER BY turn, next_attempt_at, id LIMIT $2`
        : `SELECT id, status, attempts, '' AS lane FROM ${table} WHERE ${pending}
           ORDER BY next_attempt_at, id LIMIT $2`,
      [nowIso(), limit],
    )
    return rows.map((row) => ({
      id: row.id,
      status: row.status,
      attempts: Number(row.attempts),
      lane: String(row.lane),
    }))
  }

  /**
   * Claims a row for one attempt (many senders, one winner); the lease covers the attempt.
   * Resolves with the `returning` columns of the claimed row, undefined when another won.
   */
  async function claim<Row>(
    table: string,
    row: DueRow,
    leaseMs: number,
    returning: string,
  ): Promise<Row | undefined> {
    const now = nowIso()
    const [claimed] = await store.executeReturning<Row>(
      `UPDATE ${table} SET status = 'sending', attempts = attempts + 1, next_attempt_at = $1, updated_at = $2
          WHERE id = $3 AND status = $4 AND attempts = $5 AND next_attempt_at <= $2
        RETURNING ${returning}`,
      [isoIn(leaseMs), now, row.id, row.status, row.attempts],
    )
    return claimed
  }

  /** After a failed attempt: try again later, or give up (dead) once the attempts are spent. */
  async function failed(
    table: string,
    channel: 'email' | 'webhook',
    id: string,
    attempt: number,
    attemptsMax: number,
    error: string,
    statusCode: number | null = null,
  ): Promise<void> {
    const dead = attempt >= attemptsMax
    const statusColumn = table === 'notification_webhook_deliveries' ? ', last_status_code = $6' : ''
    await store.execute(
      `UPDATE ${table} SET status = $1, next_attempt_at = $2, last_error = $3, updated_at = $4${statusColumn}
          WHERE id = $5 AND status = 'sending'`,
      [
        dead ? 'dead' : 'pending',
        dead ? nowIso() : isoIn(backoffMs(attempt, backoffBaseMs, backoffMaxMs)),
        error.slice(0, 2_000),
        nowIso(),
        id,
        ...(statusColumn ? [statusCode] : []),
      ],
    )
    count(channel, dead ? 'dead' : 'retry')
    if (dead)
      log.warn({ channel, notificationId: id, attempt, err: error }, 'notification is dead: attempts spent')
    else
      log.debug(
        { channel, notificationId: id, attempt, err: error },
        'notification attempt failed; will retry',
      )
  }

  /** The names of the products an order's lines name, by SKU, as now known. */
  async function productNamesOf(lines: unknown): Promise<Record<string, string>> {
    if (!Array.isArray(lines) || lines.length === 0) return {}
    const skus = lines.map((line) => String((line as { sku?: unknown }).sku))
    const rows = await store.query<{ sku: string; name: string }>(
      `SELECT sku, name FROM notification_products WHERE sku IN (${skus.map((_, i) => `$${i + 1}`).join(', ')})`,
      skus,
    )
    return Object.fromEntries(rows.map((row) => [row.sku, row.name]))
  }

  /**
   * The mail server's reachability, said in the log when it changes: a retry of each e-mail
   * is only a debug line, and a server that cannot be reached would go unseen while e-mails
   * pile up.
   */
  const smtpHealth = (() => {
    let unreachableSince: number | undefined
    return {
      /** Whether `error` says the server could not be reached (or did not answer in time). */
      failed(error: unknown): boolean {
        const code = (error as { code?: string }).code ?? ''
        const unreachable = smtpConnectionCodes.has(code) || error instanceof TimeoutError
        if (unreachableSince !== undefined || !unreachable) return unreachable
        unreachableSince = Date.now()
        log.warn(
          { err: errorMessage(error), code },
          'the SMTP server cannot be reached: e-mails wait, and are tried again with backoff until it answers',
        )
        return true
      },
      answered() {
        if (unreachableSince === undefined) return
        log.info({ unreachableMs: Date.now() - unreachableSince }, 'the SMTP server answers again')
        unreachableSince = undefined
      },
    }
  })()

  async function sendEmail(row: DueRow): Promise<void> {
    // The claim reads the e-mail and the customer's name back in the same statement.
    const email = await claim<{
      template: string
      customer_id: string | null
      order_id: string | null
      recipient: string | null
      vars: string
      cause: string
      given_name: string | null
      family_name: string | null
      carrier: string | null
      tracking_number: string | null
    }>(
      'notification_emails',
      row,
      smtpTimeoutMs * 3,
      `template, customer_id, order_id, recipient, vars, cause,
       (SELECT given_name FROM notification_customers c WHERE c.customer_id = notification_emails.customer_id) AS given_name,
       (SELECT family_name FROM notification_customers c WHERE c.customer_id = notification_emails.customer_id) AS family_name,
       (SELECT carrier FROM notification_shipments s WHERE s.order_id = notification_emails.order_id) AS carrier,
       (SELECT tracking_number FROM notification_shipments s WHERE s.order_id = notification_emails.order_id) AS tracking_number`,
    )
    if (!email) return
    const attempt = row.attempts + 1
    if (!email.recipient) {
      await failed('notification_emails', 'email', row.id, emailAttemptsMax, emailAttemptsMax, 'no recipient')
      return
    }
    try {
      const shipment = email.tracking_number
        ? { carrier: email.carrier, trackingNumber: email.tracking_number }
        : {}
      const vars = JSON.parse(email.vars) as Record<string, unknown>
      const rendered = renderEmail(
        email.template,
        { ...vars, ...shipment, productNames: await productNamesOf(vars.lines) },
        {
          givenName: email.given_name ?? undefined,
          familyName: email.family_name ?? undefined,
        },
      )
      await withTimeout(
        'sending an e-mail',
        smtpTimeoutMs * 2,
        transport.sendMail({
          from: options.from,
          to: email.recipient,
          subject: rendered.subject,
          text: rendered.text,
          // The same id on a resend lets mail systems recognise the duplicate.
          messageId: `<${row.id}@mercato.notification>`,
          headers: { 'X-Mercato-Template': email.template },
        }),
      )
    } catch (error) {
      // A server that cannot be reached is no fault of the e-mail's: it spends no attempt,
      // and the e-mail waits (backing off) for as long as the server is away.
      const unreachable = smtpHealth.failed(error)
      const attemptsMax = unreachable ? Number.POSITIVE_INFINITY : emailAttemptsMax
      await failed('notification_emails', 'email', row.id, attempt, attemptsMax, errorMessage(error))
      return
    }
    smtpHealth.answered()
    const cause = JSON.parse(email.cause) as Cause
    await service.transact(async (tx, emit) => {
      const marked = await tx.execute(
        `UPDATE notification_emails SET status = 'sent', sent_at = $1, updated_at = $1, last_error = NULL
          WHERE id = $2 AND status = 'sending'`,
        [nowIso(), row.id],
      )
      if (marked === 0 || !email.customer_id) return
      emit({
        type: 'notification.sent',
        subject: email.customer_id,
        data: {
          notificationId: row.id,
          customerId: email.customer_id,
          channel: 'email',
          template: email.template,
          ...(email.order_id ? { orderId: email.order_id } : {}),
        },
      })
    }, cause)
    count('email', 'sent')
  }

  async function callWebhook(row: DueRow, stopping: AbortSignal): Promise<void> {
    if (stopping.aborted) return
    const lookupTimeoutMs = Math.max(1_000, options.webhookTimeoutMs)
    const table = 'notification_webhook_deliveries'
    const delivery = await claim<{
      endpoint_id: string
      event_id: string
      event_type: string
      customer_id: string | null
      order_id: string | null
      payload: string
      cause: string
    }>(
      table,
      row,
      lookupTimeoutMs + options.webhookTimeoutMs + 30_000,
      'endpoint_id, event_id, event_type, customer_id, order_id, payload, cause',
    )
    if (!delivery) return
    const attempt = row.attempts + 1
    const [endpoint] = await store.query<{ url: string; secret: string; enabled: number }>(
      'SELECT url, secret, enabled FROM notification_webhook_endpoints WHERE endpoint_id = $1',
      [delivery.endpoint_id],
    )
    const finish = async (status: string, error: string | null, statusCode: number | null) => {
      await store.execute(
        `UPDATE ${table} SET status = $1, last_error = $2, last_status_code = $3, updated_at = $4
            WHERE id = $5 AND status = 'sending'`,
        [status, error, statusCode, nowIso(), row.id],
      )
    }
    if (!endpoint || Number(endpoint.enabled) !== 1) {
      await finish('cancelled', 'the endpoint was disabled or removed before delivery', null)
      count('webhook', 'cancelled')
      return
    }
    let response: Awaited<ReturnType<typeof postWebhook>>
    try {
      const target = await withTimeout(
        'resolving the webhook host',
        lookupTimeoutMs,
        resolveWebhookTarget(endpoint.url, options.allowPrivateWebhookHosts),
        stopping,
      )
      const timestamp = Math.floor(Date.now() / 1000)
      response = await postWebhook(
        target,
        delivery.payload,
        {
          'Content-Type': 'application/json',
          'User-Agent': 'Mercato-Webhooks/1',
          [signatureHeader]: signWebhook(endpoint.secret, delivery.payload, timestamp),
          'Mercato-Event-Id': delivery.event_id,
          'Mercato-Event-Type': delivery.event_type,
          'Mercato-Delivery-Id': row.id,
        },
        options.webhookTimeoutMs,
        stopping,
      )
    } catch (error) {
      // Cut off by a stop: the row stays claimed, and is due again when its lease ends, as
      // after a crash. A stop need not wait out a host that does not answer.
      if (stopping.aborted) return
      if (error instanceof RefusedUrlError) {
        await finish('failed', error.message, null)
        count('webhook', 'refused')
        log.warn(
          { endpointId: delivery.endpoint_id, url: redactUrl(endpoint.url), reason: error.message },
          'webhook URL refused; not called',
        )
        return
      }
      await failed(table, 'webhook', row.id, attempt, options.webhookAttemptsMax, errorMessage(error))
      return
    }
    if (response.status < 200 || response.status >= 300) {
      const reason =
        response.status >= 300 && response.status < 400
          ? `answered ${response.status} (redirects are not followed)`
          : `answered ${response.status}${response.bodyStart ? `: ${response.bodyStart.slice(0, 200)}` : ''}`
      await failed(table, 'webhook', row.id, attempt, options.webhookAttemptsMax, reason, response.status)
      return
    }
    const cause = JSON.parse(delivery.cause) as Cause
    await service.transact(async (tx, emit) => {
      const now = nowIso()
      const marked = await tx.execute(
        `UPDATE ${table} SET status = 'sent', delivered_at = $1, updated_at = $1, last_status_code = $2,
           last_error = NULL WHERE id = $3 AND status = 'sending'`,
        [now, response.status, row.id],
      )
      if (marked === 0 || !delivery.customer_id) return
      emit({
        type: 'notification.sent',
        subject: delivery.customer_id,
        data: {
          notificationId: row.id,
          customerId: delivery.customer_id,
          channel: 'webhook',
          template: delivery.event_type,
          ...(delivery.order_id ? { orderId: delivery.order_id } : {}),
        },
      })
    }, cause)
    count('webhook', 'sent')
  }

  /**
   * One run of a loop: due rows, `concurrencyMax` at a time, more started once half the slots
   * are free or every `pollIntervalMs`, until none is left or the run has started its share
   * (so a stop is prompt). One lane holds at most a quarter of the slots: a webhook endpoint
   * that does not answer delays its own deliveries, not every other endpoint's.
   */
  const drain =
    (
      table: string,
      deliver: (row: DueRow, stopping: AbortSignal) => Promise<void>,
      laneColumn?: string,
      condition?: string,
    ) =>
    async (stopping: AbortSignal) => {
      const laneSlotsMax = laneColumn ? Math.max(1, Math.floor(concurrencyMax / 4)) : concurrencyMax
      const refillAt = Math.max(1, Math.floor(concurrencyMax / 2))
      const running = new Map<string, { lane: string; done: Promise<void> }>()
      const inLane = (lane: string) => [...running.values()].filter((r) => r.lane === lane).length
      let started = 0
      while (started < drainStartsMax * concurrencyMax) {
        const rows = await due(table, concurrencyMax + running.size, laneColumn, condition)
        if (stopping.aborted) break
        const next: DueRow[] = []
        for (const row of rows) {
          if (running.size + next.length === concurrencyMax) break
          const taken = inLane(row.lane) + next.filter((n) => n.lane === row.lane).length
          if (!running.has(row.id) && taken < laneSlotsMax) next.push(row)
        }
        for (const row of next) {
          started++
          const done = deliver(row, stopping)
            .catch((error) =>
              log.warn({ table, err: errorMessage(error) }, 'delivery attempt failed to record; will retry'),
            )
            .finally(() => running.delete(row.id))
          running.set(row.id, { lane: row.lane, done })
        }
        if (running.size === 0) return
        // Look again once half the slots are free, or after the poll interval, when rows of
        // other lanes may have come due while a slow lane's calls still run.
        const tick = new AbortController()
        let ticked = false
        const interval = sleep(pollIntervalMs, AbortSignal.any([stopping, tick.signal])).then(() => {
          ticked = true
        })
        do await Promise.race([interval, ...[...running.values()].map((r) => r.done)])
        while (running.size > concurrencyMax - refillAt && !ticked && !stopping.aborted)
        tick.abort()
        if (stopping.aborted) break
      }
      await Promise.all([...running.values()].map((r) => r.done))
    }

  /**
   * On PostgreSQL a customer's registration and an e-mail for them may commit side by side,
   * each unseen by the other: the e-mail stays no-recipient though the address is known. A
   * sweep catches what releaseWaiting, at registration, could not see. It reads the e-mails
   * written since a while before its last complete run (the whole retention at start), not
   * the whole retention every time: that grew with every order of a customer never
   * registered.
   */
  let sweptUpTo = Date.now() - noRecipientRetentionMs
  async function releaseKnownRecipients(): Promise<void> {
    const startedAt = Date.now()
    const waiting = await store.query<{ customer_id: string }>(
      `SELECT DISTINCT e.customer_id FROM notification_emails e
         JOIN notification_customers c ON c.customer_id = e.customer_id
        WHERE e.status = 'no-recipient' AND e.created_at >= $1 LIMIT 100`,
      [new Date(Math.max(sweptUpTo, startedAt - noRecipientRetentionMs)).toISOString()],
    )
    for (const { customer_id } of waiting) await service.transact((tx) => releaseWaiting(tx, customer_id))
    // A full page may have left some behind: the next run reads the same stretch again.
    if (waiting.length < 100) sweptUpTo = startedAt - recipientSweepOverlapMs
  }

  await service.consume(notificationTopics, handlers)
  service.every(
    'notification-emails',
    pollIntervalMs,
    drain('notification_emails', sendEmail, undefined, firstUnsentOfItsOrder),
  )
  service.every('notification-recipients', 1_000, releaseKnownRecipients)
  // Addresses are kept no longer than they serve.
  service.every('notification-registrations', 3_600_000, async () => {
    await service.store.execute('DELETE FROM notification_registrations WHERE requested_at < $1', [
      new Date(Date.now() - registrationKeepMs).toISOString(),
    ])
    await service.store.execute('DELETE FROM notification_refusals WHERE told_at < $1', [
      new Date(Date.now() - refusalMailGapMs).toISOString(),
    ])
  })
  service.every(
    'notification-webhooks',
    pollIntervalMs,
    drain('notification_webhook_deliveries', callWebhook, 'endpoint_id'),
  )

  return {
    sink,
    ready: async () => {
      await store.ping()
    },
    stop: async () => {
      await service.stop()
      transport.close()
      await sink?.close()
    },
  }
}
