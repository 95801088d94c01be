import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { LruCache } from '../../../src/engines/cache/memory/lru-cache.ts'
import { cacheLimitDefaults } from '../../../src/engines/cache/port.ts'
import {
  flagDefinitionsKey,
  readFlagDefinitions,
  validateFlagDefinition,
} from '../../../src/platform/flags.ts'
import { silentLogger } from '../../../src/platform/logger.ts'
import { startFlags, writeFlagDefinition } from '../../../src/services/flags/flags.ts'
import { waitFor } from '../../support/wait.ts'
import { type Harness, openHarness } from '../notification/harness.ts'

const express = (defaultVariant: 'on' | 'off') => ({
  state: 'ENABLED',
  variants: { on: true, off: false },
  defaultVariant,
})

describe('validateFlagDefinition', () => {
  it('accepts flagd definitions, with or without targeting', () => {
    assert.equal(validateFlagDefinition(express('on')), undefined)
    assert.equal(
      validateFlagDefinition({
        ...express('off'),
        targeting: { if: [{ ends_with: [{ var: 'email' }, '@mercato.dev'] }, 'on', 'off'] },
      }),
      undefined,
    )
    assert.equal(
      validateFlagDefinition({ state: 'DISABLED', variants: { a: 'x', b: 'y' }, defaultVariant: 'b' }),
      undefined,
    )
  })

  it('gives the reason a definition is invalid, and the field it is about', () => {
    const problems = [
      validateFlagDefinition({ state: 'ENABLED', variants: { on: true }, defaultVariant: 'missing' }),
      validateFlagDefinition({ state: 'ON', variants: { on: true }, defaultVariant: 'on' }),
      validateFlagDefinition({ state: 'ENABLED', variants: { on: true, n: 1 }, defaultVariant: 'on' }),
      validateFlagDefinition({ state: 'ENABLED', variants: {}, defaultVariant: 'on' }),
      validateFlagDefinition({ ...express('on'), targeting: { 'no-such-operator': [1, 2] } }),
      validateFlagDefinition({ ...express('on'), targeting: { if: [{ var: 'vip' }, 'turbo', 'off'] } }),
      validateFlagDefinition({
        ...express('on'),
        targeting: {
          if: [
            { var: 'vip' },
            'on',
            {
              fractional: [
                ['off', 50],
                ['maybe', 50],
              ],
            },
          ],
        },
      }),
      validateFlagDefinition([]),
      validateFlagDefinition('on'),
    ]
    for (const problem of problems) assert.equal(typeof problem?.reason, 'string', JSON.stringify(problem))
    assert.deepEqual(
      problems.map((problem) => problem?.field),
      [
        '/defaultVariant',
        '/state',
        '/variants',
        '/variants',
        '/targeting',
        '/targeting',
        '/targeting',
        '/',
        '/',
      ],
    )
    assert.match(problems[0]!.reason, /defaultVariant/)
    assert.match(problems[5]!.reason, /"turbo"/)
    assert.match(problems[6]!.reason, /"maybe"/)
  })
})

describe('flags', { concurrency: false }, () => {
  let harness: Harness
  let cache: LruCache
  let running: Awaited<ReturnType<typeof startFlags>>

  before(async () => {
    harness = await openHarness()
    cache = new LruCache(cacheLimitDefaults)
    running = await startFlags({
      stream: harness.stream,
      cache,
      log: silentLogger(),
      group: 'flags-test',
      refreshIntervalMs: 50,
    })
    await running.ready()
  })
  after(async () => {
    await running.stop()
    await harness.close()
  })

  it('seeds the key-value store with the default definitions and evaluates them', async () => {
    const stored = await readFlagDefinitions(cache)
    assert.deepEqual(Object.keys(stored ?? {}).sort(), [
      'capture-on',
      'express-shipping',
      'max-lines-per-order',
    ])
    const { flags } = running
    assert.equal(await flags.boolean('express-shipping', false), true)
    assert.equal(await flags.number('max-lines-per-order', 1), 100)
    assert.equal(await flags.string('capture-on', 'shipment'), 'confirmation')
  })

  it('returns the fallback for an unknown flag or one of another type', async () => {
    const { flags } = running
    assert.equal(await flags.boolean('no-such-flag', true), true)
    assert.equal(await flags.number('no-such-flag', 7), 7)
    assert.equal(await flags.string('max-lines-per-order', 'fallback'), 'fallback')
    assert.equal(await flags.number('express-shipping', 3), 3)
  })

  it('applies a flag.changed event without a restart', async () => {
    await harness.publish('flag.changed', 'express-shipping', {
      key: 'express-shipping',
      definition: express('off'),
    })
    await waitFor(
      'express-shipping off',
      async () => (await running.flags.boolean('express-shipping', true)) === false,
    )
    assert.deepEqual((await readFlagDefinitions(cache))?.['express-shipping'], express('off'))
  })

  it('skips a flag.changed event with an invalid definition, and goes on', async () => {
    await harness.publish('flag.changed', 'max-lines-per-order', {
      key: 'max-lines-per-order',
      definition: { state: 'ENABLED', variants: { default: 100, small: 10 }, defaultVariant: 'tiny' },
    })
    // A valid change on the same key (same partition) after it: once it shows, the invalid one was handled.
    await harness.publish('flag.changed', 'max-lines-per-order', {
      key: 'max-lines-per-order',
      definition: { state: 'ENABLED', variants: { default: 100, small: 10 }, defaultVariant: 'small' },
    })
    await waitFor(
      'max-lines-per-order small',
      async () => (await running.flags.number('max-lines-per-order', 0)) === 10,
    )
    const stored = await readFlagDefinitions(cache)
    assert.equal(stored?.['max-lines-per-order'].defaultVariant, 'small')
    assert.deepEqual(
      await harness.stream.deadLetters('flags'),
      [],
      'the invalid event was skipped, not dead-lettered',
    )
  })

  it('evaluates targeting rules with the given context', async () => {
    await harness.publish('flag.changed', 'beta-checkout', {
      key: 'beta-checkout',
      definition: {
        ...express('off'),
        targeting: { if: [{ ends_with: [{ var: 'email' }, '@mercato.dev'] }, 'on', 'off'] },
      },
    })
    await waitFor(
      'beta-checkout known',
      async () => (await running.flags.boolean('beta-checkout', true)) === false,
    )
    assert.equal(await running.flags.boolean('beta-checkout', false, { email: 'ada@mercato.dev' }), true)
    assert.equal(await running.flags.boolean('beta-checkout', true, { email: 'bob@example.com' }), false)
  })

  it('picks up a change another process made in the key-value store', async () => {
    await writeFlagDefinition(cache, 'capture-on', {
      state: 'ENABLED',
      variants: { confirmation: 'confirmation', shipment: 'shipment' },
      defaultVariant: 'shipment',
    })
    await waitFor(
      'capture-on shipment',
      async () => (await running.flags.string('capture-on', '')) === 'shipment',
    )
  })

  it('writes back what it knows when the key-value store lost the document', async () => {
    await cache.delete(flagDefinitionsKey)
    await waitFor('document restored', async () => (await cache.get(flagDefinitionsKey)) !== undefined)
    const stored = await readFlagDefinitions(cache)
    assert.equal(
      stored?.['capture-on'].defaultVariant,
      'shipment',
      'the last applied definitions, not the defaults',
    )
    assert.equal(await running.flags.string('capture-on', ''), 'shipment')
  })

  it('deletes its consumer group when it stops, so starts do not pile groups up', async () => {
    const group = 'flags-stopping'
    const other = await startFlags({ stream: harness.stream, cache, log: silentLogger(), group })
    await other.ready()
    const committed = async () =>
      (await harness.stream.engine.lag(harness.stream.group(group), [harness.stream.topic('flags')])).reduce(
        (sum, p) => sum + p.committed,
        0,
      )
    await waitFor('the group to read the flag changes', async () => (await committed()) > 0)
    assert.equal(await other.flags.string('capture-on', 'fallback'), 'shipment', 'evaluated (and remembered)')
    await other.stop()
    assert.equal(await committed(), 0)
    assert.equal(
      await other.flags.string('capture-on', 'fallback'),
      'fallback',
      'stopped, it answers with the fallback, as the unbound SDK does',
    )
  })
})
