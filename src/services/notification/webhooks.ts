// Webhook delivery: the signature (as Stripe signs its webhooks), the guard against
// server-side request forgery, and one HTTP POST with a time limit.
import { createHmac, timingSafeEqual } from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import type { LookupFunction } from 'node:net'
import { redactUrl } from '../../platform/errors.ts'
import type { ResolvedTarget } from '../../platform/outbound-url.ts'

export const signatureHeader = 'Mercato-Signature'

/** The `Mercato-Signature` value for `body` sent at `timestampSeconds`: `t=<seconds>,v1=<hex HMAC-SHA256>`. */
export function signWebhook(secret: string, body: string, timestampSeconds: number): string {
  const t = Math.floor(timestampSeconds)
  const v1 = createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')
  return `t=${t},v1=${v1}`
}

/**
 * Checks a `Mercato-Signature` header as a receiver should: one of its `v1` signatures
 * matches (compared in constant time), and its timestamp is within `toleranceSeconds` of
 * now (a replayed old delivery fails).
 */
export function verifyWebhookSignature(
  secret: string,
  header: string | undefined,
  body: string | Buffer,
  toleranceSeconds: number,
  nowSeconds = Date.now() / 1000,
): boolean {
  if (!header || header.length > 4096) return false
  let timestamp: number | undefined
  const signatures: Buffer[] = []
  for (const item of header.split(',')) {
    const eq = item.indexOf('=')
    if (eq < 0) continue
    const name = item.slice(0, eq).trim()
    const value = item.slice(eq + 1).trim()
    if (name === 't' && /^[0-9]{1,12}$/.test(value)) timestamp = Number(value)
    else if (name === 'v1' && /^[0-9a-f]{64}$/.test(value)) signatures.push(Buffer.from(value, 'hex'))
  }
  if (timestamp === undefined || signatures.length === 0) return false
  if (Math.abs(nowSeconds - timestamp) > toleranceSeconds) return false
  const expected = createHmac('sha256', secret)
    .update(`${timestamp}.`)
    .update(typeof body === 'string' ? Buffer.from(body) : body)
    .digest()
  let matched = false
  for (const signature of signatures) if (timingSafeEqual(signature, expected)) matched = true
  return matched
}

export interface WebhookResponse {
  status: number
  /** The start of the response body, for the delivery record. */
  bodyStart: string
}

/**
 * POSTs `body` to the target once; resolves with the response, rejects on a network error,
 * the time limit, or `stopping`.
 */
export function postWebhook(
  target: ResolvedTarget,
  body: string,
  headers: Record<string, string>,
  timeoutMs: number,
  stopping?: AbortSignal,
): Promise<WebhookResponse> {
  const { url, addresses } = target
  const pinned: LookupFunction | undefined = addresses
    ? (_hostname, options, callback) => {
        if (options.all) (callback as (e: null, a: typeof addresses) => void)(null, addresses)
        else callback(null, addresses[0].address, addresses[0].family)
      }
    : undefined
  const client = url.protocol === 'https:' ? https : http
  return new Promise((resolve, reject) => {
    const timeout = AbortSignal.timeout(timeoutMs)
    const signal = stopping ? AbortSignal.any([timeout, stopping]) : timeout
    const request = client.request(
      url,
      {
        method: 'POST',
        headers: { ...headers, 'Content-Length': String(Buffer.byteLength(body)) },
        signal,
        agent: false,
        ...(pinned ? { lookup: pinned } : {}),
      },
      (response) => {
        const chunks: Buffer[] = []
        let kept = 0
        response.on('data', (chunk: Buffer) => {
          if (kept < 1024) {
            chunks.push(chunk)
            kept += chunk.length
          }
        })
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            bodyStart: Buffer.concat(chunks).subarray(0, 1024).toString('utf8'),
          }),
        )
        response.on('error', reject)
      },
    )
    request.on('error', (error) => {
      reject(
        timeout.aborted
          ? new Error(`no response from ${redactUrl(url.toString())} within ${timeoutMs} ms`)
          : error,
      )
    })
    request.end(body)
  })
}
