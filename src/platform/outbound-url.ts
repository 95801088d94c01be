// The guard against server-side request forgery for URLs Mercato calls on a user's behalf
// (webhooks): http or https only, and no loopback, link-local or private address unless
// allowed, checked on every address the host resolves to.
import { lookup } from 'node:dns/promises'
import { BlockList, isIP } from 'node:net'

/** Addresses an outbound call may not reach unless private hosts are allowed. */
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
  ['::', 96], // unspecified, loopback, IPv4-compatible (deprecated)
  ['::ffff:0:0:0', 96], // IPv4-translated
  ['2002::', 16], // 6to4: an IPv4 address inside
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
