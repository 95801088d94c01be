// Ids that sort by creation time: UUID version 7 (RFC 9562), a 48-bit Unix time in
// milliseconds followed by 74 random bits. New rows keyed by them land at the right edge
// of a B-tree index instead of on a random page, so a commit writes a few pages, not one
// page per row (SQLite's WAL, PostgreSQL's indexes and WAL alike).
import { randomFillSync } from 'node:crypto'

const hex = Array.from({ length: 256 }, (_, byte) => byte.toString(16).padStart(2, '0'))
const pool = new Uint8Array(10 * 256)
let poolAt = pool.length

export function uuidv7(at = Date.now()): string {
  const timeMs = Math.trunc(at)
  if (poolAt === pool.length) {
    randomFillSync(pool)
    poolAt = 0
  }
  const r = pool.subarray(poolAt, poolAt + 10)
  poolAt += 10
  const high = Math.floor(timeMs / 2 ** 16)
  const low = timeMs % 2 ** 16
  return (
    high.toString(16).padStart(8, '0') +
    '-' +
    low.toString(16).padStart(4, '0') +
    '-' +
    hex[0x70 | (r[0] & 0x0f)] +
    hex[r[1]] +
    '-' +
    hex[0x80 | (r[2] & 0x3f)] +
    hex[r[3]] +
    '-' +
    hex[r[4]] +
    hex[r[5]] +
    hex[r[6]] +
    hex[r[7]] +
    hex[r[8]] +
    hex[r[9]]
  )
}
