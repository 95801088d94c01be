import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { uuidv7 } from '../../src/platform/ids.ts'

const uuidV7Pattern = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

describe('uuidv7', () => {
  it('is a version 7, RFC 9562 variant UUID whose first 48 bits are the time in milliseconds', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 48 - 1 }), (timeMs) => {
        const id = uuidv7(timeMs)
        assert.match(id, uuidV7Pattern)
        assert.equal(Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16), timeMs)
      }),
    )
  })

  it('sorts by creation time, as text', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 48 - 2 }),
        fc.integer({ min: 1, max: 2 ** 20 }),
        (t, later) => {
          const second = Math.min(t + later, 2 ** 48 - 1)
          assert.ok(uuidv7(t) < uuidv7(second))
        },
      ),
    )
  })

  it('does not repeat within one millisecond', () => {
    const ids = new Set(Array.from({ length: 100_000 }, () => uuidv7(1_700_000_000_000)))
    assert.equal(ids.size, 100_000)
  })
})
