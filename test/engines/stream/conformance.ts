// One conformance suite for the event stream port, run against every engine.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { type CloudEvent, createEvent } from '../../../src/contracts/envelope.ts'
import { handleOnce } from '../../../src/engines/store/inbox.ts'
import { storeLimitDefaults } from '../../../src/engines/store/port.ts'
import { SqliteStore } from '../../../src/engines/store/sqlite/sqlite-store.ts'
import { type DeadLetter, EventStream } from '../../../src/engines/stream/event-stream.ts'
import type { StreamEngine } from '../../../src/engines/stream/port.ts'
import { InvalidEventError, OverloadedError } from '../../../src/platform/errors.ts'
import { silentLogger } from '../../../src/platform/logger.ts'
import { Metrics } from '../../../src/platform/metrics.ts'
import { deleteKafkaTopics } from '../../support/servers.ts'
import { tempDir, uniqueName, waitFor } from '../../support/wait.ts'

export interface EngineFixture {
  engine: StreamEngine
  /** How long a member that crashed may keep its partitions before others take over. */
  takeoverTimeoutMs: number
}

export function productEvent(sku: string, seq: number, extra: Partial<CloudEvent> = {}): CloudEvent {
  return {
    ...createEvent({
      type: 'product.upserted',
      source: 'test',
      subject: sku,
      data: {
        sku,
        name: `v${seq}`,
        description: '',
        category: 'test',
        priceMinor: 100 + seq,
        currency: 'EUR',
      },
    }),
    ...extra,
  }
}

const seqOf = (event: CloudEvent) => Number(String(event.data.name).slice(1))

export function defineStreamConformance(
  name: string,
  skip: string | undefined,
  open: (options: { queueLengthMax?: number }) => Promise<EngineFixture>,
): void {
  describe(`stream port conformance: ${name}`, { skip, concurrency: false }, () => {
    let fixture: EngineFixture
    let stream: EventStream
    const dir = tempDir()

    const prefixes: string[] = []
    const newStream = (prefix = uniqueName('t')) => {
      prefixes.push(prefix)
      return new EventStream(
        fixture.engine,
        {
          topicPrefix: `${prefix}.`,
          partitions: 4,
          eventBytesMax: 16_384,
          batchSizeMax: 50,
          retry: { attemptsMax: 3, backoffBaseMs: 1, backoffMaxMs: 5 },
          lagIntervalMs: 60_000,
        },
        silentLogger(),
        new Metrics(),
      )
    }

    before(async () => {
      fixture = await open({})
    })
    after(async () => {
      await fixture.engine.close()
      dir.remove()
      if (fixture.engine.kind === 'kafka')
        for (const prefix of prefixes) await deleteKafkaTopics(`${prefix}.`)
    })

    async function freshStream(): Promise<EventStream> {
      stream = newStream()
      await stream.ensureTopics(['products'])
      return stream
    }

    it('keeps order per key, and every group sees every event', async () => {
      const stream = await freshStream()
      const keys = Array.from({ length: 12 }, (_, i) => `sku-${i}`)
      for (let batch = 0; batch < 5; batch++) {
        await stream.publish(keys.flatMap((key) => [0, 1, 2, 3].map((i) => productEvent(key, batch * 4 + i))))
      }
      const total = keys.length * 20
      const seen = [new Map<string, number[]>(), new Map<string, number[]>()]
      const subscriptions = await Promise.all(
        seen.map((map, g) =>
          stream.subscribe({
            group: `order-${g}`,
            topics: ['products'],
            handle: async (event) => {
              const list = map.get(event.subject) ?? []
              list.push(seqOf(event))
              map.set(event.subject, list)
            },
          }),
        ),
      )
      const count = (map: Map<string, number[]>) =>
        [...map.values()].reduce((sum, list) => sum + list.length, 0)
      await waitFor('both groups to see every event', () => seen.every((map) => count(map) >= total), 30_000)
      for (const map of seen) {
        for (const key of keys)
          assert.deepEqual(
            map.get(key),
            Array.from({ length: 20 }, (_, i) => i),
            key,
          )
      }
      await Promise.all(subscriptions.map((s) => s.stop()))
    })

    it('acknowledges a publish with positions in input order, a key always on one partition', async () => {
      const stream = await freshStream()
      const positions = await stream.publish([
        productEvent('a', 0),
        productEvent('b', 0),
        productEvent('a', 1),
      ])
      assert.equal(positions.length, 3)
      assert.equal(positions[0].partition, positions[2].partition)
      assert.equal(positions[2].offset, positions[0].offset + 1)
      const [record] = await fixture.engine.read(
        positions[0].topic,
        positions[0].partition,
        positions[0].offset,
        1,
      )
      assert.equal(record.headers.ce_type, 'product.upserted')
      assert.equal(record.headers.ce_specversion, '1.0')
      assert.equal(record.key, 'a')
    })

    it('splits partitions between two members of a group, and the survivor takes over when one leaves', async () => {
      const stream = await freshStream()
      const handledBy = new Map<string, string>()
      const member = (label: string) =>
        stream.subscribe({
          group: 'split',
          topics: ['products'],
          handle: async (event) => {
            handledBy.set(event.id, label)
          },
        })
      const a = await member('a')
      await waitFor('a to own every partition', () => a.assignment().length === 4, 30_000)
      const b = await member('b')
      await waitFor(
        'the partitions to be split',
        () =>
          a.assignment().length > 0 &&
          b.assignment().length > 0 &&
          a.assignment().length + b.assignment().length === 4,
        30_000,
      )
      assert.equal(new Set([...a.assignment(), ...b.assignment()]).size, 4, 'no partition owned twice')
      const first = Array.from({ length: 40 }, (_, i) => productEvent(`k${i}`, 0))
      await stream.publish(first)
      await waitFor('the first events to be handled', () => first.every((e) => handledBy.has(e.id)), 30_000)
      assert.deepEqual(new Set(first.map((e) => handledBy.get(e.id))), new Set(['a', 'b']))
      await a.stop()
      await waitFor('b to own every partition', () => b.assignment().length === 4, 30_000)
      const second = Array.from({ length: 40 }, (_, i) => productEvent(`k${i}`, 1))
      await stream.publish(second)
      await waitFor(
        'b to handle everything after a left',
        () => second.every((e) => handledBy.get(e.id) === 'b'),
        30_000,
      )
      await b.stop()
    })

    it('loses nothing when a consumer is killed mid-batch: redelivered, and handled once thanks to the inbox', async () => {
      const stream = await freshStream()
      const store = new SqliteStore(dir.path, uniqueName('inbox'), storeLimitDefaults)
      await store.migrate([
        { id: '1-effects', sql: 'CREATE TABLE effects (event_id TEXT NOT NULL, member TEXT NOT NULL)' },
      ])
      const events = Array.from({ length: 60 }, (_, i) => productEvent(`key-${i % 10}`, i))
      await stream.publish(events)
      let deliveries = 0
      let releaseStuck: () => void = () => {}
      const stuck = new Promise<void>((resolve) => {
        releaseStuck = resolve
      })
      const effect = (member: string) => async (event: CloudEvent) => {
        deliveries++
        await handleOnce(store, 'crash-test', event.id, async (tx) => {
          await tx.execute('INSERT INTO effects (event_id, member) VALUES ($1, $2)', [event.id, member])
        })
        // The first member dies in the middle of its batches: its later handlers never return.
        if (member === 'doomed' && deliveries >= 25) await stuck
      }
      const doomed = await stream.subscribe({
        group: 'crash',
        topics: ['products'],
        handle: effect('doomed'),
      })
      await waitFor('the doomed member to be mid-batch', () => deliveries >= 25, 30_000)
      await doomed.abort()
      releaseStuck()
      const survivor = await stream.subscribe({
        group: 'crash',
        topics: ['products'],
        handle: effect('survivor'),
      })
      const handledIds = async () =>
        new Set(
          (await store.query<{ event_id: string }>('SELECT event_id FROM effects')).map((r) => r.event_id),
        )
      await waitFor(
        'every event to be handled after the crash',
        async () => (await handledIds()).size === events.length,
        fixture.takeoverTimeoutMs + 30_000,
      )
      const rows = await store.query<{ n: number }>('SELECT COUNT(*) AS n FROM effects')
      assert.equal(Number(rows[0].n), events.length, 'each event had its effect exactly once')
      assert.ok(deliveries > events.length - 1, 'some events were delivered again')
      await survivor.stop()
      await store.close()
    })

    it('retries a failing handler with backoff, then parks the event on <topic>.dlq and moves on', async () => {
      const stream = await freshStream()
      const poison = productEvent('poison', 0)
      const fine = [productEvent('fine', 0), productEvent('fine', 1)]
      let attempts = 0
      const handled: string[] = []
      const subscription = await stream.subscribe({
        group: 'dlq',
        topics: ['products'],
        handle: async (event) => {
          if (event.id === poison.id) {
            attempts++
            throw new Error('warehouse says no')
          }
          handled.push(event.id)
        },
      })
      const [position] = await stream.publish([poison, ...fine])
      await waitFor('the good events to be handled', () => handled.length === 2, 30_000)
      await waitFor(
        'the dead letter',
        async () => (await stream.deadLetters('products')).length === 1,
        30_000,
      )
      const [letter] = await stream.deadLetters('products')
      assert.equal(attempts, 3)
      assert.equal(letter.attempts, 3)
      assert.equal(letter.error, 'warehouse says no')
      assert.equal(letter.original.group, 'dlq')
      assert.deepEqual(
        {
          topic: letter.original.topic,
          partition: letter.original.partition,
          offset: letter.original.offset,
        },
        position,
      )
      assert.equal(letter.record.headers.ce_id, poison.id)
      await subscription.stop()
    })

    /** Dead-letters `events` through groups whose handlers refuse them, then stops the groups. */
    async function deadLetter(
      stream: EventStream,
      events: CloudEvent[],
      groups = ['refuses'],
    ): Promise<void> {
      const refused = new Set(events.map((e) => e.id))
      const subscriptions = await Promise.all(
        groups.map((group) =>
          stream.subscribe({
            group,
            topics: ['products'],
            handle: async (event) => {
              if (refused.has(event.id)) throw new Error('warehouse says no')
            },
          }),
        ),
      )
      const before = (await stream.deadLetters('products', 1_000)).length
      await stream.publish(events)
      await waitFor(
        'the dead letters',
        async () =>
          (await stream.deadLetters('products', 1_000)).length === before + events.length * groups.length,
        30_000,
      )
      await Promise.all(subscriptions.map((subscription) => subscription.stop()))
    }

    /** How often each event id appears on the products topic. */
    async function copiesOnTopic(stream: EventStream): Promise<Map<string, number>> {
      const topic = stream.topic('products')
      const copies = new Map<string, number>()
      for (let p = 0; p < (await stream.engine.partitionsOf(topic)); p++)
        for (const record of await stream.engine.read(topic, p, 0, 1_000))
          copies.set(record.headers.ce_id, (copies.get(record.headers.ce_id) ?? 0) + 1)
      return copies
    }

    const idsOf = (letters: DeadLetter[]) => letters.map((l) => l.record.headers.ce_id).sort()

    it('replays a dead letter once: a later replay skips it, and the listing tells waiting from replayed', async () => {
      const stream = await freshStream()
      const first = [productEvent('poison-a', 0), productEvent('poison-b', 0)]
      await deadLetter(stream, first)

      assert.deepEqual(
        idsOf(await stream.replayDeadLetters('products', 1_000)),
        first.map((e) => e.id).sort(),
      )
      assert.deepEqual(await stream.deadLetters('products', 1_000, { waitingOnly: true }), [])
      const listed = await stream.deadLetters('products', 1_000)
      assert.deepEqual(
        listed.map((l) => l.replayed),
        [true, true],
      )
      assert.deepEqual(await stream.deadLetterCounts('products'), { waiting: 0, replayed: 2 })
      assert.deepEqual(await stream.replayDeadLetters('products', 1_000), [], 'nothing is replayed twice')

      const later = productEvent('poison-c', 0)
      await deadLetter(stream, [later])
      assert.deepEqual(idsOf(await stream.deadLetters('products', 1_000, { waitingOnly: true })), [later.id])
      assert.deepEqual(await stream.deadLetterCounts('products'), { waiting: 1, replayed: 2 })
      assert.deepEqual(idsOf(await stream.replayDeadLetters('products', 1_000)), [later.id])

      const copies = await copiesOnTopic(stream)
      for (const event of [...first, later])
        assert.equal(copies.get(event.id), 2, 'the original and one replayed copy')
    })

    it('puts a record that several groups dead-lettered back once, not once per letter', async () => {
      const stream = await freshStream()
      const poison = productEvent('poison-shared', 0)
      await deadLetter(stream, [poison], ['refuses', 'refuses-too'])
      assert.deepEqual(idsOf(await stream.replayDeadLetters('products', 1_000)), [poison.id, poison.id])
      assert.equal((await copiesOnTopic(stream)).get(poison.id), 2, 'the original and one replayed copy')
    })

    it('replays the dead letters again when recording the replay failed, rather than losing them', async () => {
      const stream = await freshStream()
      const poison = productEvent('poison-crash', 0)
      await deadLetter(stream, [poison])
      // As if the process died after publishing and before recording what it replayed.
      const engine = fixture.engine
      const crashing = new Proxy(engine, {
        get(target, name) {
          if (name === 'commitOffsets') return async () => Promise.reject(new Error('killed'))
          const value = Reflect.get(target, name, target)
          return typeof value === 'function' ? value.bind(target) : value
        },
      })
      const crashed = new EventStream(crashing, stream.options, silentLogger(), new Metrics())
      await assert.rejects(crashed.replayDeadLetters('products', 1_000), /killed/)
      assert.deepEqual(idsOf(await stream.deadLetters('products', 1_000, { waitingOnly: true })), [poison.id])
      assert.deepEqual(idsOf(await stream.replayDeadLetters('products', 1_000)), [poison.id])
      assert.deepEqual(await stream.replayDeadLetters('products', 1_000), [])
      assert.equal((await copiesOnTopic(stream)).get(poison.id), 3, 'the original and two replayed copies')
    })

    it('waits out a dependency that is down, however many tries it takes, and dead-letters nothing', async () => {
      const stream = await freshStream()
      const events = [productEvent('outage', 0), productEvent('outage', 1)]
      let refusals = 0
      const handled: string[] = []
      const subscription = await stream.subscribe({
        group: 'outage',
        topics: ['products'],
        handle: async (event) => {
          // More refusals than the retry policy's attempts: the cache or a store, down a while.
          if (refusals < 6) {
            refusals++
            throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED' })
          }
          handled.push(event.id)
        },
      })
      await stream.publish(events)
      await waitFor('both events handled once the dependency is back', () => handled.length === 2, 30_000)
      assert.deepEqual(
        handled,
        events.map((e) => e.id),
      )
      assert.deepEqual(await stream.deadLetters('products'), [])
      await subscription.stop()
    })

    it('replays a group from an offset and from a time', async () => {
      const stream = await freshStream()
      const events = Array.from({ length: 10 }, (_, i) => productEvent('replay', i))
      await stream.publish(events)
      const seen: number[] = []
      const handle = async (event: CloudEvent) => {
        seen.push(seqOf(event))
      }
      let subscription = await stream.subscribe({ group: 'replay', topics: ['products'], handle })
      await waitFor('the first pass', () => seen.length === 10, 30_000)
      await subscription.stop()
      const topic = stream.topic('products')
      // A group with a position is told from one that never had any.
      assert.ok((await fixture.engine.lag(stream.group('replay'), [topic])).some((p) => p.hasCommitted))
      assert.ok((await fixture.engine.lag(stream.group('never-ran'), [topic])).every((p) => !p.hasCommitted))
      await fixture.engine.seek(stream.group('replay'), topic, { offset: 6 })
      seen.length = 0
      subscription = await stream.subscribe({ group: 'replay', topics: ['products'], handle })
      await waitFor('the replay from offset 6', () => seen.length === 4, 30_000)
      assert.deepEqual(seen, [6, 7, 8, 9])
      // Not while a member consumes as it: its next commit would undo them.
      await assert.rejects(
        fixture.engine.commitOffsets(stream.group('replay'), [{ topic, partition: 0, offset: 0 }]),
        /has members connected/,
      )
      await assert.rejects(
        fixture.engine.seek(stream.group('replay'), topic, 'earliest'),
        /has members connected/,
      )
      await subscription.stop()
      await fixture.engine.seek(stream.group('replay'), topic, { timestampMs: Date.now() - 60_000 })
      seen.length = 0
      subscription = await stream.subscribe({ group: 'replay', topics: ['products'], handle })
      await waitFor('the replay from a time', () => seen.length === 10, 30_000)
      await subscription.stop()
    })

    it('deletes a stopped group: it starts again as a new group would; an unknown group is no error', async () => {
      const stream = await freshStream()
      await stream.publish(Array.from({ length: 5 }, (_, i) => productEvent('forget', i)))
      const seen: number[] = []
      const handle = async (event: CloudEvent) => {
        seen.push(seqOf(event))
      }
      const subscribe = () =>
        stream.subscribe({ group: 'forget', topics: ['products'], startAt: 'earliest', handle })
      let subscription = await subscribe()
      await waitFor('the first pass', () => seen.length === 5, 30_000)
      const group = stream.group('forget')
      // Not while a member consumes as it.
      await assert.rejects(fixture.engine.deleteGroup(group), /has members connected/)
      await subscription.stop()
      assert.deepEqual(
        (await fixture.engine.lag(group, [stream.topic('products')])).reduce(
          (sum, p) => sum + p.committed,
          0,
        ),
        5,
      )
      await fixture.engine.deleteGroup(group)
      // Its offsets are gone: the group reads from the start again, as a new one would.
      subscription = await subscribe()
      await waitFor('the second pass', () => seen.length === 10, 30_000)
      await subscription.stop()
      assert.deepEqual(seen.sort(), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
      await fixture.engine.deleteGroup(group)
      await fixture.engine.deleteGroup(stream.group('never-was'))
    })

    it('refuses an oversize or invalid event at publish, appending nothing', async () => {
      const stream = await freshStream()
      const ends = async () =>
        (await fixture.engine.lag('nobody', [stream.topic('products')])).map((p) => p.end)
      const before = await ends()
      const small = new EventStream(
        fixture.engine,
        { ...stream.options, eventBytesMax: 2_048 },
        silentLogger(),
        new Metrics(),
      )
      const big = productEvent('huge', 0)
      big.data.description = 'x'.repeat(4_000)
      await assert.rejects(small.publish([big]), (error: Error) => {
        assert.ok(error instanceof InvalidEventError)
        assert.match(error.message, /over the limit of 2048/)
        return true
      })
      const bad = productEvent('bad', 0)
      await assert.rejects(stream.publish([{ ...bad, data: { ...bad.data, priceMinor: -1 } }]), /priceMinor/)
      await assert.rejects(stream.publish([{ ...bad, type: 'product.exploded' }]), /unknown event type/)
      await assert.rejects(stream.publish([productEvent('ok', 1), { ...bad, id: '' }]), /invalid envelope/)
      assert.deepEqual(await ends(), before)
    })

    it('sends a malformed record or an unknown version to the DLQ with the reason, never to the handler', async () => {
      const stream = await freshStream()
      const topic = stream.topic('products')
      const good = productEvent('ok', 0)
      const headers = {
        ce_specversion: '1.0',
        ce_id: 'x1',
        ce_source: 'test',
        ce_type: 'product.upserted',
        ce_time: new Date().toISOString(),
        ce_subject: 'm',
        ce_dataversion: '1',
        ce_partitionkey: 'm',
      }
      await fixture.engine.publish([
        { topic, key: 'm', headers, value: Buffer.from('{not json') },
        {
          topic,
          key: 'm',
          headers: { ...headers, ce_id: 'x2', ce_dataversion: '99' },
          value: Buffer.from('{}'),
        },
        { topic, key: 'm', headers: { 'content-type': 'text/plain' }, value: Buffer.from('hello') },
      ])
      await stream.publish([good])
      const handled: string[] = []
      const subscription = await stream.subscribe({
        group: 'malformed',
        topics: ['products'],
        handle: async (event) => {
          handled.push(event.id)
        },
      })
      await waitFor('the good event', () => handled.includes(good.id), 30_000)
      await waitFor(
        'three dead letters',
        async () => (await stream.deadLetters('products')).length === 3,
        30_000,
      )
      const reasons = (await stream.deadLetters('products')).map((l) => l.error).sort()
      assert.match(reasons.join('\n'), /data is not JSON/)
      assert.match(reasons.join('\n'), /version 99 of product.upserted is not known here/)
      assert.match(reasons.join('\n'), /not a CloudEvents 1.0 record/)
      assert.deepEqual(handled, [good.id])
      await subscription.stop()
    })

    it('reports lag per group and partition, over several topics at once', async () => {
      const stream = await freshStream()
      await stream.ensureTopics(['customers'])
      await stream.publish(Array.from({ length: 20 }, (_, i) => productEvent(`lag-${i}`, i)))
      await stream.publish(
        Array.from({ length: 3 }, (_, i) =>
          createEvent({
            type: 'customer.registration-rejected',
            source: 'test',
            subject: `cus_lag_${i}`,
            data: { customerId: `cus_lag_${i}`, reason: 'test' },
          }),
        ),
      )
      const topics = [stream.topic('products'), stream.topic('customers')]
      const lag = await fixture.engine.lag(stream.group('lagging'), topics)
      assert.equal(lag.length, 8)
      const waiting = (topic: string) =>
        lag.filter((p) => p.topic === topic).reduce((sum, p) => sum + p.lag, 0)
      assert.deepEqual([waiting(topics[0]), waiting(topics[1])], [20, 3])
      assert.ok(lag.every((p) => p.committed === 0 && p.end === p.lag))
      assert.deepEqual(
        await fixture.engine.ends(topics),
        lag.map(({ topic, partition, end }) => ({ topic, partition, end })),
      )
    })

    it('reports the end of every partition: one past its last record, 0 when empty', async () => {
      const stream = await freshStream()
      await stream.ensureTopics(['customers'])
      const positions = await stream.publish(Array.from({ length: 7 }, (_, i) => productEvent(`end-${i}`, i)))
      const products = stream.topic('products')
      const expected = new Map<number, number>()
      for (const p of positions)
        expected.set(p.partition, Math.max(expected.get(p.partition) ?? 0, p.offset + 1))
      const ends = await fixture.engine.ends([products, stream.topic('customers')])
      assert.equal(ends.length, 8)
      for (const { topic, partition, end } of ends)
        assert.equal(end, topic === products ? (expected.get(partition) ?? 0) : 0, `${topic}/${partition}`)
    })

    it('refuses a publish at once when the publish queue is at its bound', async () => {
      const bounded = await open({ queueLengthMax: 10 })
      try {
        const small = new EventStream(bounded.engine, newStream().options, silentLogger(), new Metrics())
        await small.ensureTopics(['products'])
        const first = small.publish(Array.from({ length: 8 }, (_, i) => productEvent('q', i)))
        await assert.rejects(
          small.publish(Array.from({ length: 8 }, (_, i) => productEvent('q', i + 8))),
          OverloadedError,
        )
        assert.equal((await first).length, 8)
      } finally {
        await bounded.engine.close()
      }
    })
  })
}
