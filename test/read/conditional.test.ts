import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { noneMatchHits } from '../../src/read/query-api.ts'

describe('If-None-Match (RFC 9110 §13.1.2)', () => {
  const etag = '"abc"'

  it('matches the same tag, weakly, any member of a list, and *', () => {
    for (const header of ['"abc"', 'W/"abc"', '"x", "abc"', '"x",W/"abc" , "y"', '*', ' * ']) {
      assert.equal(noneMatchHits(header, etag), true, header)
    }
    assert.equal(noneMatchHits('"abc"', 'W/"abc"'), true, 'a weak current tag matches its strong form')
  })

  it('does not match another tag, a tag inside another, or no header', () => {
    for (const header of [undefined, '', '"abd"', '"x", "y"', 'abc', '"a,bc"', 'W/"ab"', '"abc', '*, "x"']) {
      assert.equal(noneMatchHits(header, etag), false, String(header))
    }
    assert.equal(noneMatchHits('"a,b"', '"a,b"'), true, 'a comma inside a tag is part of it')
  })
})
