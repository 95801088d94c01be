// Webhook delivery: the signature (as Stripe signs its webhooks), the guard against
// server-side request forgery, and one HTTP POST with a time limit.
import { createHmac, timingSafeEqual } from 'node:crypto'
import { lookup } from 'node:dns/promises'
import http from 'node:http'
import https from 'node:https'
import { BlockList, isIP, type LookupFunction } from 'node:net'
import { redactUrl } from '../../platform/errors.ts'

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

/** Addresses a webhook may not reach unless private hosts are allowed. */
const blocked = new BlockList()
for (const [network, prefix] of [
  ['0.0.0.0', 8], // "this" network
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local (cloud metadata services live here)
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // documentation
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // documentation
  ['203.0.113.0', 24], // documentation
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
] as const)
  blocked.addSubnet(network, prefix, 'ipv4')
for (const [network, prefix] of [
  ['::', 128], // unspecified
  ['::1', 128], // loopback
  ['64:ff9b:1::', 48], // local-use NAT64
  ['100::', 64], // discard
  ['2001:db8::', 32], // documentation
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated)
  ['ff00::', 8], // multicast
] as const)
  blocked.addSubnet(network, prefix, 'ipv6')

/** The IPv4 address an IPv6 address carries (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d), if any. */
function embeddedIpv4(address: string): string | undefined {
  const lower = address.toLowerCase()
  const dotted = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower)
  if (dotted) return dotted[1]
  const hex = /^(?:::ffff:|64:ff9b::)([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(lower)
  if (!hex) return undefined
  const high = Number.parseInt(hex[1], 16)
  const low = Number.parseInt(hex[2], 16)
  return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`
}

/** Why `address` may not be reached (loopback, private, link-local …), or undefined when it is public. */
export function privateAddressReason(address: string): string | undefined {
  const family = isIP(address)
  if (family === 0) return `${address} is not an IP address`
  if (family === 6) {
    const v4 = embeddedIpv4(address)
    if (v4) return privateAddressReason(v4)
    return blocked.check(address, 'ipv6')
      ? `${address} is a loopback, link-local or private address`
      : undefined
  }
  return blocked.check(address, 'ipv4')
    ? `${address} is a loopback, link-local or private address`
    : undefined
}

export interface ResolvedTarget {
  url: URL
  /** The addresses checked; the request connects only to these (no second lookup to rebind). */
  addresses: { address: string; family: number }[] | undefined
}

/** A URL the guard refuses: never retried, never called. */
export class RefusedUrlError extends Error {
  constructor(reason: string) {
    super(reason)
    this.name = 'RefusedUrlError'
  }
}

/**
 * Checks a webhook URL: http or https only; unless `allowPrivate`, every address its host
 * resolves to must be public. Throws RefusedUrlError for a URL that must not be called, and
 * the lookup's error (retryable) when the name does not resolve.
 */
export async function resolveWebhookTarget(rawUrl: string, allowPrivate: boolean): Promise<ResolvedTarget> {
  let url: URL
  try {
    url = new URL(rawUrl)
  } catch {
    throw new RefusedUrlError('not a valid URL')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new RefusedUrlError(`only http and https URLs are called, not ${url.protocol.replace(/:$/, '')}`)
  if (allowPrivate) return { url, addresses: undefined }
  const host = url.hostname.replace(/^\[|\]$/g, '')
  if (isIP(host)) {
    const reason = privateAddressReason(host)
    if (reason) throw new RefusedUrlError(`refused: ${reason}`)
    return { url, addresses: [{ address: host, family: isIP(host) }] }
  }
  const addresses = await lookup(host, { all: true, verbatim: true })
  if (addresses.length === 0) throw new Error(`${host} does not resolve`)
  for (const { address } of addresses) {
    const reason = privateAddressReason(address)
    if (reason) throw new RefusedUrlError(`refused: ${host} resolves to ${reason}`)
  }
  return { url, addresses }
}

export interface WebhookResponse {
  status: number
  /** The start of the response body, for the delivery record. */
  bodyStart: string
}

/** POSTs `body` to the target once; resolves with the response, rejects on a network error or the time limit. */
export function postWebhook(
  target: ResolvedTarget,
  body: string,
  headers: Record<string, string>,
  timeoutMs: number,
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
    const signal = AbortSignal.timeout(timeoutMs)
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
        signal.aborted
          ? new Error(`no response from ${redactUrl(url.toString())} within ${timeoutMs} ms`)
          : error,
      )
    })
    request.end(body)
  })
}
