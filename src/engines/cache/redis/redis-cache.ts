import { Redis } from 'ioredis'
import { UnreachableError } from '../../../platform/errors.ts'
import { withTimeout } from '../../../platform/limits.ts'
import { assertValueSize, type Cache, type CacheLimits } from '../port.ts'

// Compare-and-set in one server-side step: no other command runs between the read and the write.
const compareAndSetScript = `
local current = redis.call('GET', KEYS[1])
local expected = ARGV[1]
if (ARGV[3] == '1' and current ~= false) or (ARGV[3] == '0' and current ~= expected) then return 0 end
if tonumber(ARGV[4]) > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1`

const incrementScript = `
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 and value == tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value`

/** The commands defineCommand adds, which ioredis cannot type. */
type ScriptedRedis = Redis & {
  mercatoCas(...args: (string | number)[]): Promise<number>
  mercatoIncr(...args: (string | number)[]): Promise<number>
}

/** Redis, with a key prefix per deployment, bounded command time and no offline queue: a down server fails fast. */
export class RedisCache implements Cache {
  readonly kind = 'redis' as const
  readonly #redis: Redis
  readonly #prefix: string
  readonly #limits: CacheLimits
  readonly #url: string

  constructor(url: string, limits: CacheLimits, prefix = 'mercato:') {
    this.#url = url
    this.#limits = limits
    this.#prefix = prefix
    this.#redis = new Redis(url, {
      lazyConnect: true,
      // Commands issued in the same turn of the event loop go out in one write.
      enableAutoPipelining: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: limits.commandTimeoutMs * 5,
      commandTimeout: limits.commandTimeoutMs,
    })
    this.#redis.on('error', () => {})
    this.#redis.defineCommand('mercatoCas', { numberOfKeys: 1, lua: compareAndSetScript })
    this.#redis.defineCommand('mercatoIncr', { numberOfKeys: 1, lua: incrementScript })
  }

  async connect(): Promise<void> {
    try {
      await withTimeout('redis connect', this.#limits.commandTimeoutMs * 5, this.#redis.connect())
    } catch (error) {
      this.#redis.disconnect()
      throw new UnreachableError('Redis', this.#url, error)
    }
  }

  async get(key: string): Promise<string | undefined> {
    return (await this.#redis.get(this.#prefix + key)) ?? undefined
  }

  async set(key: string, value: string, options: { ttlMs?: number } = {}): Promise<void> {
    assertValueSize(key, value, this.#limits.valueBytesMax)
    if (options.ttlMs) await this.#redis.set(this.#prefix + key, value, 'PX', options.ttlMs)
    else await this.#redis.set(this.#prefix + key, value)
  }

  async setIfAbsent(key: string, value: string, options: { ttlMs?: number } = {}): Promise<boolean> {
    assertValueSize(key, value, this.#limits.valueBytesMax)
    const result = options.ttlMs
      ? await this.#redis.set(this.#prefix + key, value, 'PX', options.ttlMs, 'NX')
      : await this.#redis.set(this.#prefix + key, value, 'NX')
    return result === 'OK'
  }

  async delete(key: string): Promise<boolean> {
    return (await this.#redis.del(this.#prefix + key)) > 0
  }

  async compareAndSet(
    key: string,
    expected: string | undefined,
    next: string,
    options: { ttlMs?: number } = {},
  ): Promise<boolean> {
    assertValueSize(key, next, this.#limits.valueBytesMax)
    const absent = expected === undefined ? '1' : '0'
    const result = await (this.#redis as ScriptedRedis).mercatoCas(
      this.#prefix + key,
      expected ?? '',
      next,
      absent,
      options.ttlMs ?? 0,
    )
    return result === 1
  }

  async increment(key: string, options: { by?: number; ttlMs?: number } = {}): Promise<number> {
    return Number(
      await (this.#redis as ScriptedRedis).mercatoIncr(
        this.#prefix + key,
        options.by ?? 1,
        options.ttlMs ?? 0,
      ),
    )
  }

  async ping(): Promise<void> {
    await this.#redis.ping()
  }

  async close(): Promise<void> {
    await this.#redis.quit().catch(() => this.#redis.disconnect())
  }
}
