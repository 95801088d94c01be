import assert from 'node:assert/strict'
import { it } from 'node:test'
import fc from 'fast-check'
import { oldestKeys } from '../../src/platform/oldest-keys.ts'

it('yields the same key as a fresh iterator would, whatever sets, deletes and clears came between', () => {
  const operation = fc.oneof(
    fc.record({ op: fc.constant('set' as const), key: fc.integer({ min: 0, max: 20 }) }),
    fc.record({ op: fc.constant('delete' as const), key: fc.integer({ min: 0, max: 20 }) }),
    fc.record({ op: fc.constant('evict' as const) }),
    fc.record({ op: fc.constant('clear' as const) }),
  )
  fc.assert(
    fc.property(fc.array(operation, { maxLength: 300 }), (operations) => {
      const map = new Map<number, true>()
      const oldest = oldestKeys(map)
      for (const step of operations) {
        if (step.op === 'set') {
          // As an LRU's touch does: a key set again goes to the end.
          map.delete(step.key)
          map.set(step.key, true)
        } else if (step.op === 'delete') map.delete(step.key)
        else if (step.op === 'clear') map.clear()
        else {
          const expected = map.keys().next().value
          const key = oldest()
          assert.equal(key, expected)
          if (key !== undefined) map.delete(key)
        }
      }
    }),
  )
})
