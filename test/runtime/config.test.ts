import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { describe, it } from 'node:test'
import { ConfigError } from '../../src/platform/errors.ts'
import { resolveTargets } from '../../src/runtime/components.ts'
import { knownSettings, loadConfig, unknownSettings } from '../../src/runtime/config.ts'

describe('configuration', () => {
  it('runs embedded engines under ./data when nothing is set', () => {
    const config = loadConfig({})
    assert.equal(config.port, 8080)
    assert.equal(config.stream.kind, 'embedded')
    assert.equal(config.store.kind, 'sqlite')
    assert.equal(config.cache.kind, 'memory')
    assert.deepEqual(config.targets, ['all'])
    assert.match(config.dataDir, /data$/)
  })

  it('chooses engines by URL, and flags override the environment', () => {
    const config = loadConfig(
      { MERCATO_STREAM: 'kafka://k1:9092,k2:9093?replication=3', MERCATO_PORT: '9000' },
      {
        MERCATO_PORT: '9100',
        MERCATO_STORE: 'postgres://u@db:5432/shop',
        MERCATO_CACHE: 'redis://cache:6379',
      },
    )
    assert.deepEqual(config.stream, { kind: 'kafka', brokers: ['k1:9092', 'k2:9093'], replicationFactor: 3 })
    assert.equal(config.port, 9100)
    assert.equal(config.store.kind, 'postgres')
    assert.equal(config.cache.kind, 'redis')
  })

  const bad: [Record<string, string>, RegExp][] = [
    [{ MERCATO_PORT: 'eighty' }, /MERCATO_PORT: must be a whole number/],
    [{ MERCATO_PORT: '70000' }, /MERCATO_PORT: must be between 0 and 65535/],
    [{ MERCATO_STREAM: 'amqp://x:1' }, /MERCATO_STREAM: must be unset, "embedded" or kafka/],
    [{ MERCATO_STREAM: 'kafka://' }, /MERCATO_STREAM: names no broker/],
    [{ MERCATO_STREAM: 'kafka://nohost' }, /MERCATO_STREAM: broker "nohost" is not host:port/],
    [{ MERCATO_STORE: 'mysql://x' }, /MERCATO_STORE/],
    [{ MERCATO_CACHE: 'not a url' }, /MERCATO_CACHE: is not a URL/],
    [{ MERCATO_STORE_POOL_SIZE_MAX: '0' }, /MERCATO_STORE_POOL_SIZE_MAX: must be between 1 and 500/],
    [{ MERCATO_LOG_LEVEL: 'loud' }, /MERCATO_LOG_LEVEL/],
    [
      { MERCATO_HANDLER_BACKOFF_BASE_MS: '500', MERCATO_HANDLER_BACKOFF_MAX_MS: '100' },
      /MERCATO_HANDLER_BACKOFF_MAX_MS/,
    ],
    [{ MERCATO_STREAM_TOPIC_PREFIX: 'a b' }, /MERCATO_STREAM_TOPIC_PREFIX/],
    [{ MERCATO_CORS_ORIGINS: 'not a url' }, /MERCATO_CORS_ORIGINS: "not a url" is not an origin/],
    [{ MERCATO_PAYMENT_PROVIDER_API_KEY: 'short' }, /MERCATO_PAYMENT_PROVIDER_API_KEY: must be 16/],
    [
      { MERCATO_CORS_ORIGINS: 'https://shop.example.com, https://shop.example.com/app' },
      /MERCATO_CORS_ORIGINS: "https:\/\/shop.example.com\/app" is not an origin/,
    ],
  ]
  for (const [env, message] of bad) {
    it(`refuses ${JSON.stringify(env)} naming the setting`, () => {
      assert.throws(
        () => loadConfig(env),
        (error: Error) => error instanceof ConfigError && message.test(error.message),
      )
    })
  }

  it('takes CORS origins and *', () => {
    const origins = (raw: string) => loadConfig({ MERCATO_CORS_ORIGINS: raw }).gateway.corsOrigins
    assert.deepEqual(origins('https://shop.example.com, http://localhost:3000'), [
      'https://shop.example.com',
      'http://localhost:3000',
    ])
    assert.deepEqual(origins('*'), ['*'])
    assert.deepEqual(origins(''), [])
  })

  it('names the flag beside the setting when the bad value came from a flag', () => {
    assert.throws(
      () => loadConfig({ MERCATO_PORT: '9000' }, { MERCATO_PORT: 'abc', MERCATO_DATA_DIR: undefined }),
      (error: Error) =>
        error instanceof ConfigError &&
        error.message === 'MERCATO_PORT (--port): must be a whole number, got "abc"',
    )
    assert.throws(() => loadConfig({ MERCATO_PORT: 'abc' }, {}), /^ConfigError: MERCATO_PORT: must/)
  })

  it('mercato start --help lists every setting the code reads', () => {
    const help = spawnSync(process.execPath, ['src/main.ts', 'start', '--help'], { encoding: 'utf8' }).stdout
    // Both ways: a setting read behind a condition would be missing from knownSettings, and
    // mercato start would call it unknown.
    const listed = [...help.matchAll(/^ {2}(MERCATO_[A-Z_]+) /gm)].map((match) => match[1]).sort()
    assert.ok(listed.includes('MERCATO_OIDC_AUDIENCE'))
    assert.deepEqual(listed, knownSettings())
  })

  it('names the MERCATO_ variables no setting reads, with the setting nearest to each', () => {
    assert.deepEqual(
      unknownSettings({
        MERCATO_PROT: '9000',
        MERCATO_DATA_DIR: '/x',
        MERCATO_FROBNICATE: '1',
        MERCATO_TEST_KAFKA: 'k:9092',
        PATH: '/bin',
      }),
      [{ name: 'MERCATO_PROT', nearest: 'MERCATO_PORT' }, { name: 'MERCATO_FROBNICATE' }],
    )
  })

  it('operator commands refuse a data directory with no stream instead of making an empty one', () => {
    const missing = `${tmpdir()}/mercato-no-such-${process.pid}`
    for (const args of [
      ['replay', '--view', 'catalog'],
      ['replay', '--group', 'order', '--topic', 'orders', '--earliest'],
      ['dlq', 'list', '--topic', 'orders'],
      ['load', '--orders', '1'],
    ]) {
      const result = spawnSync(process.execPath, ['src/main.ts', ...args, '--data-dir', missing], {
        encoding: 'utf8',
        timeout: 30_000,
      })
      assert.equal(result.status, 2, args.join(' '))
      assert.match(result.stderr, /--data-dir: no event stream at /, args.join(' '))
      assert.equal(existsSync(missing), false, args.join(' '))
    }
  })

  it('refuses a flag given with an empty value instead of falling back to the default', () => {
    assert.throws(
      () => loadConfig({}, { MERCATO_PORT: '' }),
      (error: Error) => error instanceof ConfigError && error.message === 'MERCATO_PORT (--port): is empty',
    )
  })

  it('resolves targets with their dependencies, and names the known ones for an unknown target', () => {
    const all = resolveTargets(['all'])
    for (const name of ['stream', 'cache', 'stores', 'flags', 'command-api', 'order', 'payment-provider']) {
      assert.ok(all.includes(name), name)
    }
    assert.ok(all.indexOf('stream') < all.indexOf('order'), 'dependencies first')
    assert.deepEqual(resolveTargets(['cache']), ['cache'])
    assert.deepEqual(resolveTargets(['order']), ['policy', 'stream', 'stores', 'cache', 'flags', 'order'])
    assert.throws(
      () => resolveTargets(['warp-drive']),
      /unknown target warp-drive; known: all, policy, stream, cache, stores, identity, flags, gateway/,
    )
  })

  it('mercato start stops at once on bad configuration, with one line that names the setting', () => {
    const result = spawnSync(process.execPath, ['src/main.ts', 'start'], {
      env: { ...process.env, MERCATO_PORT: 'x' },
      encoding: 'utf8',
      timeout: 30_000,
    })
    assert.equal(result.status, 2)
    assert.equal(result.stderr.trim(), 'mercato: MERCATO_PORT: must be a whole number, got "x"')
    const flag = spawnSync(process.execPath, ['src/main.ts', 'start', '--port', 'abc'], {
      encoding: 'utf8',
      timeout: 30_000,
    })
    assert.equal(flag.status, 2)
    assert.equal(flag.stderr.trim(), 'mercato: MERCATO_PORT (--port): must be a whole number, got "abc"')
  })

  it('mercato start reports an unreachable server within the connect timeout instead of hanging', () => {
    const result = spawnSync(process.execPath, ['src/main.ts', 'start'], {
      env: {
        ...process.env,
        MERCATO_STREAM: 'kafka://127.0.0.1:9',
        MERCATO_CONNECT_TIMEOUT_MS: '1000',
        MERCATO_PORT: '0',
      },
      encoding: 'utf8',
      timeout: 30_000,
    })
    assert.equal(result.status, 2)
    assert.match(result.stderr, /event stream \(MERCATO_STREAM\) at kafka:\/\/127\.0\.0\.1:9 is unreachable/)
  })
})
