// Search cursors: opaque to the shopper, base64url of JSON [version, fingerprint, key, sku]:
// the last row's sort key and SKU (the next page starts strictly after them), and a
// fingerprint of the query they belong to, so a cursor is refused on another query.
import { createHash } from 'node:crypto'
import { MercatoError } from '../../platform/errors.ts'

const version = 1

/** The sort key a cursor carries: an integer (relevance score, price) or text (name key, time). */
export type CursorKey = number | string

export interface After {
  key: CursorKey
  sku: string
}

/** A short hash of what decides a result's rows and order (never the page size). */
export function fingerprintOf(parts: unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('base64url').slice(0, 16)
}

export function encodeCursor(fingerprint: string, after: After): string {
  return Buffer.from(JSON.stringify([version, fingerprint, after.key, after.sku])).toString('base64url')
}

/** The position `cursor` holds; a cursor of another query, or not one we wrote, is a 400. */
export function decodeCursor(cursor: string, fingerprint: string, keyType: 'number' | 'string'): After {
  let parsed: unknown
  try {
    if (/^[A-Za-z0-9_-]{1,1000}$/.test(cursor))
      parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString())
  } catch {}
  if (
    Array.isArray(parsed) &&
    parsed.length === 4 &&
    parsed[0] === version &&
    parsed[1] === fingerprint &&
    typeof parsed[2] === keyType &&
    (keyType === 'string' ? !parsed[2].includes('\0') : Number.isSafeInteger(parsed[2])) &&
    typeof parsed[3] === 'string' &&
    /^[A-Za-z0-9._-]{1,64}$/.test(parsed[3])
  ) {
    return { key: parsed[2], sku: parsed[3] }
  }
  throw new MercatoError('invalid-cursor', 400, 'cursor is not one this API gave for this query', {
    errors: [
      { in: 'querystring', field: '/cursor', message: 'is not a cursor this API gave for this query' },
    ],
  })
}
