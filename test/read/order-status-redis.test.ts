// The order-status view in Redis when two consumers apply one partition: one that lost the
// partition (a rebalance's overlap) writes a batch it read before the new owner applied it
// and the next. Its write must change nothing: no position moved back, no request left
// pending that the new owner settled.
import assert from 'node:assert/strict'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { after, before, describe, test } from 'node:test'
import { Redis } from 'ioredis'
import { type CloudEvent, createEvent } from '../../src/contracts/envelope.ts'
import { partitionForKey } from '../../src/engines/stream/port.ts'
import { RedisOrderStatusView, writeIfAt } from '../../src/read/order-status/order-status-view.ts'
import type { ViewEvent } from '../../src/read/view.ts'
import { serverUrls, skipUnlessReachable } from '../support/servers.ts'
import { uniqueName, waitFor } from '../support/wait.ts'

const skip = await skipUnlessReachable('order-status view on Redis', 'redis')

/**
 * A TCP proxy to Redis that holds back what its client sends once `hold` is set and a chunk
 * contains one of its words, until `release`.
 */
class HoldingProxy {
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  readonly #held: (() => void)[] = []
  hold: string[] = []

  constructor(target: URL) {
    this.#server = createServer((client) => {
      const upstream = createConnection({ host: target.hostname, port: Number(target.port) })
      for (const socket of [client, upstream]) {
        this.#sockets.add(socket)
        socket.on('error', () => {})
      }
      upstream.on('data', (chunk) => client.write(chunk))
      client.on('data', (chunk) => {
        const text = chunk.toString('latin1').toUpperCase()
        if (this.hold.some((word) => text.includes(word))) this.#held.push(() => upstream.write(chunk))
        else if (this.#held.length > 0) this.#held.push(() => upstream.write(chunk))
        else upstream.write(chunk)
      })
    })
  }

  get holding(): number {
    return this.#held.length
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve))
    const { port } = this.#server.address() as { port: number }
    return `redis://127.0.0.1:${port}`
  }

  release(): void {
    this.hold = []
    for (const send of this.#held.splice(0)) send()
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise((resolve) => this.#server.close(resolve))
  }
}

describe('order-status view in Redis, two writers on one partition', { skip }, () => {
  const prefix = `mercato-test:${uniqueName('order-status').toLowerCase()}:`
  const proxy = new HoldingProxy(new URL(serverUrls.redis))
  let redis: Redis
  let owner: RedisOrderStatusView
  let zombie: RedisOrderStatusView

  before(async () => {
    redis = new Redis(serverUrls.redis)
    owner = new RedisOrderStatusView(serverUrls.redis, prefix, 1_000)
    zombie = new RedisOrderStatusView(await proxy.listen(), prefix, 1_000)
    await owner.connect()
    await zombie.connect()
  })

  after(async () => {
    await owner.drop(1)
    await owner.close()
    await zombie.close()
    await proxy.close()
    assert.deepEqual(await redis.keys(`${prefix}*`), [])
    redis.disconnect()
  })

  test('a batch written after the new owner applied it and more changes nothing', async () => {
    const partition = partitionForKey('ord_1', 4)
    const at = (event: CloudEvent, offset: number): ViewEvent => ({
      event,
      position: { topic: 'orders', partition, offset },
      timestampMs: 1_000 + offset,
    })
    const source = 'mercato/test'
    const placed = at(
      createEvent({
        type: 'order.requested',
        subject: 'ord_1',
        source,
        data: {
          orderId: 'ord_1',
          customerId: 'cus_1',
          lines: [{ sku: 'LAMP-1', quantity: 1 }],
          shippingAddress: { name: 'A', line1: '1 St', city: 'C', postalCode: '1', country: 'GB' },
          paymentMethodToken: 'tok_visa',
        },
      }),
      0,
    )
    const cancel = at(
      createEvent({
        type: 'order.cancel-requested',
        subject: 'ord_1',
        source,
        data: { orderId: 'ord_1', requestedBy: 'cus_1' },
      }),
      1,
    )
    const cancelled = at(
      createEvent({
        type: 'order.cancelled',
        subject: 'ord_1',
        source,
        data: { orderId: 'ord_1', reason: 'customer-cancelled' },
        cause: cancel.event,
      }),
      2,
    )
    // The zombie reads the view as it was, then its write is held until the owner is done.
    proxy.hold = ['EVAL', 'EXEC']
    const late = zombie.apply(1, [placed, cancel])
    await waitFor('the zombie to send its write', () => proxy.holding > 0)
    await owner.apply(1, [placed, cancel, cancelled])
    proxy.release()
    await late
    const [position] = await owner.positions(1)
    assert.equal(position.nextOffset, 3, 'the position is not moved back')
    assert.equal(await owner.pending(1, cancel.position), false, 'the settled cancel is not pending again')
    assert.equal((await owner.order(1, 'ord_1'))?.status, 'CANCELLED')
  })

  test('writeIfAt writes only while every expected field holds its value', async () => {
    const key = `${prefix}check`
    const target = `${prefix}target`
    await redis.hset(key, 'a', '1')
    const write = (expected: [string, string][], value: string) =>
      writeIfAt(redis, key, new Map(expected), [['SET', target, value]])
    assert.equal(await write([['a', '2']], 'moved'), false)
    assert.equal(await write([['b', 'x']], 'absent'), false)
    assert.equal(await redis.get(target), null, 'nothing written when a field differs')
    assert.equal(
      await write(
        [
          ['a', '1'],
          ['b', ''],
        ],
        'same',
      ),
      true,
    )
    assert.equal(await redis.get(target), 'same')
    await redis.del(key, target)
  })
})
