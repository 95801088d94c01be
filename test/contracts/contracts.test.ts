import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { breakingChanges } from '../../src/contracts/compatibility.ts'
import { createEvent, decodeEvent, encodeEvent } from '../../src/contracts/envelope.ts'
import { eventSchemas, upcasters } from '../../src/contracts/events.ts'
import { eventRegistry } from '../../src/contracts/registry.ts'
import { InvalidEventError } from '../../src/platform/errors.ts'

const published: Record<string, Record<string, unknown>> = JSON.parse(
  readFileSync(new URL('../../src/contracts/published-schemas.json', import.meta.url), 'utf8'),
)
const limits = { eventBytesMax: 65_536 }

describe('contracts', () => {
  it('round-trips an event through the Kafka binary binding: ce_ headers, JSON value, key = partition key', () => {
    const event = createEvent({
      type: 'order.confirmed',
      source: 'order',
      subject: 'o-1',
      data: { orderId: 'o-1' },
      cause: { id: 'cause-1', correlationid: 'corr-1' },
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    })
    const record = encodeEvent(event, limits)
    assert.equal(record.topic, 'orders')
    assert.equal(record.key, 'o-1')
    assert.equal(record.headers.ce_specversion, '1.0')
    assert.equal(record.headers.ce_correlationid, 'corr-1')
    assert.equal(record.headers.ce_causationid, 'cause-1')
    assert.equal(record.headers['content-type'], 'application/json')
    assert.deepEqual(JSON.parse(record.value.toString()), { orderId: 'o-1' })
    assert.deepEqual(decodeEvent(record.headers, record.value), event)
  })

  it('reads an older version through its upcaster: customer.registered v1 arrives as v2', () => {
    const v1 = createEvent({
      type: 'customer.registered',
      dataversion: 1,
      source: 'user',
      subject: 'c-1',
      data: { customerId: 'c-1', email: 'ada@example.com', name: 'Ada King Lovelace' },
    })
    const read = decodeEvent(encodeEvent(v1, limits).headers, encodeEvent(v1, limits).value)
    assert.equal(read.dataversion, 2)
    assert.deepEqual(read.data, {
      customerId: 'c-1',
      email: 'ada@example.com',
      givenName: 'Ada',
      familyName: 'King Lovelace',
    })
  })

  it('every version below the latest of a type has an upcaster', () => {
    for (const [type, versions] of Object.entries(eventSchemas)) {
      const latest = Math.max(...Object.keys(versions).map(Number))
      for (let v = 1; v < latest; v++) assert.ok(upcasters[type]?.[v], `${type} v${v} has no upcaster`)
    }
  })

  it('every schema version is recorded as published (run npm run contracts:publish after adding one)', () => {
    for (const [type, versions] of Object.entries(eventSchemas)) {
      for (const version of Object.keys(versions))
        assert.ok(published[`${type}@${version}`], `${type}@${version}`)
    }
  })

  it('no published schema has changed incompatibly: a breaking change needs a new version', () => {
    for (const [key, schema] of Object.entries(published)) {
      const [type, version] = key.split('@')
      const current = eventSchemas[type]?.[Number(version)]
      assert.ok(current, `${key} was published and must not be removed`)
      assert.deepEqual(breakingChanges(schema, JSON.parse(JSON.stringify(current))), [], key)
    }
  })

  it('the compatibility check tells a safe change from a breaking one', () => {
    const v1 = { type: 'object', properties: { a: { type: 'string', maxLength: 10 } }, required: ['a'] }
    assert.deepEqual(
      breakingChanges(v1, { ...v1, properties: { ...v1.properties, b: { type: 'string' } } }),
      [],
    )
    assert.deepEqual(breakingChanges(v1, { ...v1, properties: { a: { type: 'string', maxLength: 20 } } }), [])
    assert.match(breakingChanges(v1, { ...v1, required: ['a', 'b'] }).join(), /newly required/)
    assert.match(
      breakingChanges(v1, { ...v1, properties: { a: { type: 'integer' } } }).join(),
      /type changed/,
    )
    assert.match(
      breakingChanges(v1, { ...v1, properties: { a: { type: 'string', maxLength: 5 } } }).join(),
      /tightened/,
    )
    const union = {
      anyOf: [
        { const: 'x', type: 'string' },
        { const: 'y', type: 'string' },
      ],
    }
    assert.match(breakingChanges(union, { anyOf: [union.anyOf[0]] }).join(), /removed/)
  })

  it('decoding anything at all either gives a valid event or a clear InvalidEventError, never a crash', () => {
    const header = fc.constantFrom(
      'ce_specversion',
      'ce_id',
      'ce_source',
      'ce_type',
      'ce_time',
      'ce_subject',
      'ce_dataversion',
      'ce_partitionkey',
      'ce_traceparent',
      'x',
    )
    const good = encodeEvent(
      createEvent({ type: 'order.confirmed', source: 'order', subject: 'o-9', data: { orderId: 'o-9' } }),
      limits,
    )
    fc.assert(
      fc.property(
        fc.dictionary(
          header,
          fc.oneof(fc.string(), fc.constantFrom('1.0', '1', '2', 'order.confirmed', 'o-9')),
        ),
        fc.oneof(fc.string(), fc.json(), fc.constant(good.value.toString())),
        fc.boolean(),
        (headers, value, startFromGood) => {
          const merged = startFromGood ? { ...good.headers, ...headers } : headers
          try {
            const event = decodeEvent(merged, Buffer.from(value))
            eventRegistry.assertValid(event)
          } catch (error) {
            assert.ok(error instanceof InvalidEventError, String(error))
          }
        },
      ),
      { numRuns: 2_000 },
    )
  })
})
