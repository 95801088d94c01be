#!/usr/bin/env node
// mercato: one program, many roles.
//   mercato start [--target a,b]      run components (default: all) on one port
//   mercato replay --view V           rebuild a view beside the live one, then switch to it
//   mercato replay --group G --topic T (--offset N | --time ISO | --earliest | --latest)
//   mercato dlq list --topic T        what waits on a topic's dead-letter topic (--all: replayed too)
//   mercato dlq replay --topic T      put the dead letters not replayed yet back on their topic
//   mercato keys rotate               add a signing key; the old one verifies until its tokens expire
//   mercato load --orders N --rate R  place orders as clients would, and summarize
import { existsSync } from 'node:fs'
import { Command, Option } from 'commander'
import { eventRegistry } from './contracts/registry.ts'
import { deadRecordOf } from './engines/stream/event-stream.ts'
import { ConfigError, errorMessage } from './platform/errors.ts'
import { KeyRing } from './platform/identity/key-ring.ts'
import { createLogger, type Logger } from './platform/logger.ts'
import { Metrics } from './platform/metrics.ts'
import { rebuildView } from './read/projector.ts'
import { type ViewName, viewNames } from './read/view.ts'
import { openViews } from './read/views.ts'
import { App } from './runtime/app.ts'
import { type Config, intSettings, loadConfig, settingsHelp, unknownSettings } from './runtime/config.ts'
import { demoCustomers, demoProducts } from './runtime/demo-data.ts'
import { openEventStream, storeOpener, viewsRedisOf } from './runtime/engines.ts'
import { type LoadSummary, OrderWatcher, runLoad } from './runtime/load.ts'
import { parseLogins, signIn } from './runtime/sign-in.ts'

const program = new Command('mercato').description('An event-driven commerce backend.').showHelpAfterError()

/** Engine and limit flags shared by every command; each maps to its MERCATO_* variable. */
function withEngineFlags(command: Command): Command {
  return command
    .option('--data-dir <dir>', 'data directory of the embedded engines (MERCATO_DATA_DIR)')
    .option('--stream <url>', 'event stream URL (MERCATO_STREAM)')
    .option('--store <url>', 'store URL (MERCATO_STORE)')
    .option('--cache <url>', 'cache URL (MERCATO_CACHE)')
}

function configFrom(options: Record<string, string | undefined>): Config {
  return loadConfig(process.env, {
    MERCATO_TARGET: options.target,
    MERCATO_PORT: options.port,
    MERCATO_DATA_DIR: options.dataDir,
    MERCATO_STREAM: options.stream,
    MERCATO_STORE: options.store,
    MERCATO_CACHE: options.cache,
  })
}

/**
 * A command writing a store beside a running shop waits up to a minute for the store, not
 * the bound a request has: a busy shop commits to a SQLite file one transaction after
 * another, and a second process only gets its write lock in a gap between them.
 */
function patient(config: Config): Config {
  return { ...config, storeAcquireTimeoutMs: Math.max(config.storeAcquireTimeoutMs, 60_000) }
}

function wholeNumber(flag: string, raw: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max)
    throw new ConfigError(flag, `must be a whole number from ${min} to ${max}, got "${raw}"`)
  return Number(raw)
}

/** `--rate`: orders per second, a fraction for a gentle run (0.5: one every two seconds). */
function ordersPerSecond(raw: string): number {
  const max = 1_000_000
  if (!/^\d+(\.\d+)?$/.test(raw) || Number(raw) > max)
    throw new ConfigError(
      '--rate',
      `must be a number of orders per second from 0 (as fast as --concurrency allows) to ${max}, got "${raw}"`,
    )
  return Number(raw)
}

/**
 * The stream of a Mercato that exists: an operator's tool must not make an empty embedded
 * log where a mistyped --data-dir points, and then report on nothing as if all were well.
 */
async function openExistingStream(config: Config, log: Logger, metrics: Metrics, why: string) {
  if (config.stream.kind === 'embedded' && !existsSync(config.stream.path)) {
    throw new ConfigError(
      '--data-dir',
      `no event stream at ${config.stream.path}: give the data directory (or --stream) of the Mercato ${why}`,
    )
  }
  return openEventStream(config, log, metrics)
}

withEngineFlags(program.command('start'))
  .description('run components; all of them, on embedded engines, by default')
  .option('--target <components>', 'components to run, comma-separated (MERCATO_TARGET)')
  .addOption(new Option('--port <port>', `HTTP port (${intSettings.port.env})`))
  .addHelpText('after', `\nSettings (environment; the flags above override):\n${settingsHelp()}`)
  .action(async (options) => {
    const config = configFrom(options)
    const log = createLogger({ level: config.logLevel })
    for (const { name, nearest } of unknownSettings(process.env))
      log.warn(
        { setting: name, ...(nearest ? { nearest } : {}) },
        nearest
          ? `unknown setting ${name}: did you mean ${nearest}?`
          : `unknown setting ${name}: no setting has this name; it is ignored`,
      )
    const app = new App(config, log)
    let signalled = false
    const shutdown = async (signal: string) => {
      if (signalled) return
      signalled = true
      log.info({ signal, timeoutMs: config.shutdownTimeoutMs }, 'draining')
      const timer = setTimeout(() => {
        log.error({ timeoutMs: config.shutdownTimeoutMs }, 'drain took too long; exiting')
        process.exit(1)
      }, config.shutdownTimeoutMs)
      timer.unref()
      await app.stop()
      log.info('stopped')
      process.exit(0)
    }
    process.on('SIGTERM', () => shutdown('SIGTERM'))
    process.on('SIGINT', () => shutdown('SIGINT'))
    try {
      await app.start()
    } catch (error) {
      // Where to listen is the setting at fault when listening fails: say which.
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'EADDRINUSE' || code === 'EACCES')
        throw new ConfigError(
          'MERCATO_PORT',
          `cannot listen on ${config.host}:${config.port}: ${errorMessage(error)}`,
        )
      if (code === 'ENOTFOUND' || code === 'EADDRNOTAVAIL' || code === 'EAI_AGAIN')
        throw new ConfigError('MERCATO_HOST', `cannot listen on ${config.host}: ${errorMessage(error)}`)
      throw error
    }
  })

withEngineFlags(program.command('replay'))
  .description(
    "rebuild a view from the start of the stream (--view), or move a consumer group's position on a topic so it handles events again (--group, --topic; stop the group first)",
  )
  .option('--view <name>', `rebuild a view beside the live one, then switch to it: ${viewNames.join(', ')}`)
  .option('--group <group>', 'consumer group')
  .option('--topic <topic>', 'topic')
  .option('--offset <offset>', 'from this offset on every partition')
  .option('--time <iso>', 'from the first event at or after this time')
  .option('--earliest', 'from the start of the topic')
  .option('--latest', 'skip to the end of the topic')
  .option('--new-group', 'the group has never read the topic: give it a position all the same')
  .action(async (options) => {
    if (options.view !== undefined) {
      // A rebuild always reads the whole stream: a group's flag with it would be dropped unsaid.
      const groupFlags = {
        group: '--group',
        topic: '--topic',
        offset: '--offset',
        time: '--time',
        earliest: '--earliest',
        latest: '--latest',
        newGroup: '--new-group',
      }
      const mixed = Object.entries(groupFlags).filter(([option]) => options[option] !== undefined)
      if (mixed.length > 0)
        throw new ConfigError(
          'replay',
          `--view rebuilds from the start of the stream and takes none of ${mixed.map(([, flag]) => flag).join(', ')}`,
        )
      return replayView(options)
    }
    if (!options.group || !options.topic)
      throw new ConfigError('replay', 'give --view, or --group and --topic')
    knownTopic(options.topic)
    const targets = [
      options.offset !== undefined,
      options.time !== undefined,
      !!options.earliest,
      !!options.latest,
    ]
    if (targets.filter(Boolean).length !== 1) {
      throw new ConfigError('replay', 'give exactly one of --offset, --time, --earliest, --latest')
    }
    let target: Parameters<typeof stream.engine.seek>[2]
    if (options.offset !== undefined) {
      if (!/^\d+$/.test(options.offset))
        throw new ConfigError('--offset', `must be a whole number, got "${options.offset}"`)
      target = { offset: Number(options.offset) }
    } else if (options.time !== undefined) {
      const timestampMs = Date.parse(options.time)
      if (Number.isNaN(timestampMs))
        throw new ConfigError('--time', `is not a date and time: "${options.time}"`)
      target = { timestampMs }
    } else target = options.earliest ? 'earliest' : 'latest'
    const config = configFrom(options)
    const log = createLogger({ level: 'warn' })
    const stream = await openExistingStream(config, log, new Metrics(), 'whose group to move')
    try {
      // A group that has read nothing of the topic is most likely a mistyped name: moving it
      // would make a group no one runs, and report success.
      const before = await stream.engine.lag(stream.group(options.group), [stream.topic(options.topic)])
      if (!options.newGroup && before.some((p) => p.end > 0) && !before.some((p) => p.hasCommitted))
        throw new ConfigError(
          '--group',
          `"${options.group}" has read nothing of ${options.topic}, so no group of that name consumes it (--new-group to give it a position anyway)`,
        )
      await stream.engine.seek(stream.group(options.group), stream.topic(options.topic), target)
      const lag = await stream.engine.lag(stream.group(options.group), [stream.topic(options.topic)])
      console.table(lag)
    } finally {
      await stream.close()
    }
  })

/** Rebuilds a view into a new generation with progress on stderr; the live one answers until the switch. */
async function replayView(options: Record<string, string | undefined>): Promise<void> {
  const view = options.view as ViewName
  if (!viewNames.includes(view))
    throw new ConfigError('--view', `must be one of ${viewNames.join(', ')}, got "${options.view}"`)
  const config = configFrom(options)
  const log = createLogger({ level: 'warn' })
  const metrics = new Metrics()
  const stream = await openExistingStream(config, log, metrics, 'whose view to rebuild')
  const store = await storeOpener(patient(config))('views')
  const views = await openViews({
    store,
    redis: viewsRedisOf(config),
  })
  const started = Date.now()
  try {
    const generation = await rebuildView({ views, stream, metrics }, view, {
      onProgress: ({ generation, applied, total }) => {
        const seconds = (Date.now() - started) / 1000
        process.stderr.write(
          `  ${view} generation ${generation}: ${applied} of ${total} events (${total === 0 ? 100 : Math.floor((applied * 100) / total)}%), ${Math.round(applied / Math.max(seconds, 0.001))} events/s\n`,
        )
      },
    })
    console.log(
      `${view}: generation ${generation} rebuilt in ${((Date.now() - started) / 1000).toFixed(1)} s and now live; the previous generation is dropped after a minute`,
    )
  } finally {
    await views.close()
    await store.close()
    await stream.close()
  }
}

const dlq = program.command('dlq').description('inspect and replay dead-letter topics')

/** Throws unless `topic` is one of the contracts' topics (a typo must not read as "no dead letters"). */
function knownTopic(topic: string): void {
  const topics = eventRegistry.topics()
  if (!topics.includes(topic))
    throw new ConfigError('--topic', `no topic "${topic}"; the topics are ${topics.join(', ')}`)
}

/** The stream of the Mercato whose dead letters of `--topic` a dlq command reads. */
function openDeadLetters(options: Record<string, string | undefined> & { topic: string }) {
  const config = configFrom(options)
  knownTopic(options.topic)
  return openExistingStream(
    config,
    createLogger({ level: 'warn' }),
    new Metrics(),
    'whose dead letters to read',
  )
}

withEngineFlags(dlq.command('list'))
  .description(
    "list the records on a topic's dead-letter topic that wait for a replay (--all: the replayed ones too)",
  )
  .requiredOption('--topic <topic>', 'the original topic (its DLQ is <topic>.dlq)')
  .option('--limit <n>', 'records to show', '100')
  .option('--all', 'list the dead letters already replayed too')
  .option('--json', 'one JSON object per line')
  .action(async (options) => {
    const limit = wholeNumber('--limit', options.limit, 1)
    const stream = await openDeadLetters(options)
    try {
      const letters = await stream.deadLetters(options.topic, limit, { waitingOnly: !options.all })
      for (const letter of letters) {
        const row = {
          dlqOffset: `${letter.position.partition}/${letter.position.offset}`,
          state: letter.replayed ? 'replayed' : 'waiting',
          original: `${letter.original.topic}/${letter.original.partition}/${letter.original.offset}`,
          group: letter.original.group,
          type: letter.record.headers.ce_type ?? '?',
          id: letter.record.headers.ce_id ?? '?',
          attempts: letter.attempts,
          error: letter.error,
        }
        console.log(options.json ? JSON.stringify(row) : Object.values(row).join('  '))
      }
      if (!options.json) {
        const { waiting, replayed } = await stream.deadLetterCounts(options.topic)
        console.log(
          `${waiting} dead letter(s) of ${options.topic} wait for a replay; ${replayed} were replayed${options.all || replayed === 0 ? '' : ' (--all lists them too)'}`,
        )
      }
    } finally {
      await stream.close()
    }
  })

withEngineFlags(dlq.command('replay'))
  .description(
    'publish the dead letters not replayed yet on their original topic, and record that they were (fix the cause first)',
  )
  .requiredOption('--topic <topic>', 'the original topic')
  .option('--limit <n>', 'dead letters to replay', '1000')
  .action(async (options) => {
    const limit = wholeNumber('--limit', options.limit, 1)
    const stream = await openDeadLetters(options)
    try {
      const letters = await stream.replayDeadLetters(options.topic, limit)
      const { waiting } = await stream.deadLetterCounts(options.topic)
      const records = new Set(letters.map(deadRecordOf)).size
      console.log(
        `replayed ${letters.length} dead letter(s) onto ${options.topic} as ${records} record(s)${waiting > 0 ? `; ${waiting} more wait (run it again)` : ''}`,
      )
    } finally {
      await stream.close()
    }
  })

withEngineFlags(program.command('keys'))
  .description('rotate the signing keys of access and service tokens, without downtime')
  .argument('<action>', 'rotate')
  .action(async (action: string) => {
    if (action !== 'rotate') throw new ConfigError('keys', `the only action is rotate, got "${action}"`)
    const config = configFrom(program.commands.find((c) => c.name() === 'keys')!.opts())
    const store = await storeOpener(patient(config))('identity')
    try {
      const ring = await KeyRing.open(store, {
        tokenTtlMaxMs: Math.max(config.accessTokenTtlSeconds, config.serviceTokenTtlSeconds) * 1000,
        activationDelayMs: config.keyActivationDelayMs,
        refreshEveryMs: 60_000,
      })
      const kid = await ring.rotate()
      ring.close()
      const signsAt = new Date(Date.now() + config.keyActivationDelayMs).toISOString()
      console.log(
        `key ${kid} added: every process publishes it in /.well-known/jwks.json within 30 s and signs with it from ${signsAt}; the key it replaces verifies until its last token expires`,
      )
    } finally {
      await store.close()
    }
  })

/** fetch says only "fetch failed"; what went wrong (refused, no such host) is its cause. */
function unreachable(url: string, error: unknown): unknown {
  if (error instanceof TypeError && error.cause !== undefined)
    return new Error(`cannot reach ${url}: ${errorMessage(error.cause)}`)
  if (error instanceof Error && error.name === 'TimeoutError')
    return new Error(`${url} did not answer in time`)
  return error
}

/** Why a load ended with accepted orders it never saw end. */
function unfinishedLine(summary: LoadSummary, url: string, settleTimeoutS: number): string {
  const counted = `${summary.unfinished} of ${summary.accepted} accepted order(s) did not end within ${settleTimeoutS} s of the last one placed`
  // Not one order seen to end: most likely this is not the stream of the shop at `url`.
  if (summary.unfinished === summary.accepted)
    return `${counted}: none was seen to end, so give the --data-dir (or --stream) of the shop at ${url}, or see whether its saga runs`
  return `${counted}: the shop's saga is behind (raise --settle-timeout, or lower --rate)`
}

withEngineFlags(program.command('load'))
  .description(
    "place orders as real clients would, follow each to its end on the shop's event stream (give its --data-dir or --stream), and summarize; the shop's rate limits (MERCATO_RATE_LIMIT_PRINCIPAL_PER_MINUTE, MERCATO_RATE_LIMIT_ADDRESS_PER_MINUTE) must allow the rate",
  )
  .option('--url <url>', 'where Mercato answers (default: http://127.0.0.1:$MERCATO_PORT, or 8080)')
  .option('--orders <n>', 'orders to place', '1000')
  .option('--rate <r>', 'orders offered per second (0: as fast as --concurrency allows)', '100')
  .option('--concurrency <n>', 'requests in flight at most', '64')
  .option('--retry-share <fraction>', 'share of orders sent twice with the same key', '0.05')
  .option(
    '--logins <pairs>',
    'customers to sign in as, user:password comma-separated (default: the demo customers)',
  )
  .option('--skus <skus>', 'SKUs, comma-separated (default: the demo catalog)')
  .option(
    '--settle-timeout <seconds>',
    'how long to wait, once every order is placed, for the accepted ones to end (one that has not by then makes load exit 1)',
    '60',
  )
  .option('--json', 'print the summary as JSON')
  .action(async (options) => {
    const settleTimeoutS = wholeNumber('--settle-timeout', options.settleTimeout, 1, 86_400)
    const retryShare = Number(options.retryShare)
    if (!(retryShare >= 0 && retryShare <= 1))
      throw new ConfigError('--retry-share', 'must be between 0 and 1')
    const config = configFrom(options)
    // The shop's port as this shell sets it; 0 (any free port) names none to call.
    const port = Number(process.env.MERCATO_PORT) || 8080
    const url = (options.url ?? `http://127.0.0.1:${port}`).replace(/\/+$/, '')
    const logins = options.logins
      ? parseLogins(options.logins)
      : demoCustomers.map((c) => ({ username: c.email, password: c.password }))
    // Orders are followed on the shop's own stream: an embedded one must already be there,
    // or every order would wait for an end it is never seen to reach.
    const stream = await openExistingStream(
      config,
      createLogger({ level: 'warn' }),
      new Metrics(),
      `at ${url}, whose stream load follows each order on`,
    )
    const watcher = new OrderWatcher()
    let last = { answered: 0, ms: 0 }
    try {
      let bearers: string[]
      try {
        bearers = await Promise.all(logins.map((login) => signIn(url, login)))
      } catch (error) {
        throw unreachable(url, error)
      }
      await watcher.start(stream)
      const summary = await runLoad(
        {
          url,
          orders: wholeNumber('--orders', options.orders, 1),
          rate: ordersPerSecond(options.rate),
          concurrency: wholeNumber('--concurrency', options.concurrency, 1),
          retryShare,
          bearers,
          skus: options.skus ? options.skus.split(',') : demoProducts().map((p) => p.sku),
          requestTimeoutMs: 10_000,
          settleTimeoutMs: settleTimeoutS * 1_000,
          onProgress: (p) => {
            // The rate since the last line, not since the start: what the shop does now.
            const answersPerSecond = Math.round(
              ((p.answered - last.answered) * 1000) / (p.elapsedMs - last.ms || 1),
            )
            last = { answered: p.answered, ms: p.elapsedMs }
            process.stderr.write(
              `  ${(p.elapsedMs / 1000).toFixed(0).padStart(4)} s  sent ${p.sent}  answered ${p.answered}  accepted ${p.accepted}  ended ${p.ended}  (${answersPerSecond} answers/s)\n`,
            )
          },
        },
        watcher,
      )
      if (summary.byStatus['429'])
        console.error(
          'some orders were refused 429: the gateway limits each customer (MERCATO_RATE_LIMIT_PRINCIPAL_PER_MINUTE) and each client address (MERCATO_RATE_LIMIT_ADDRESS_PER_MINUTE); raise both on the server for a load test',
        )
      if (options.json) console.log(JSON.stringify(summary))
      else {
        console.log(
          `offered ${summary.offered}, answered by status ${JSON.stringify(summary.byStatus)}, retries replayed ${summary.replayed}`,
        )
        console.log(
          `accepted ${summary.accepted} (${summary.acceptedPerSecond.toFixed(0)}/s); confirmed ${summary.confirmed} (${summary.completedPerSecond.toFixed(0)}/s); cancelled ${JSON.stringify(summary.cancelled)}; unfinished ${summary.unfinished}`,
        )
        // With no order confirmed there is no time to confirmation to show.
        const toConfirmed =
          summary.confirmed === 0
            ? 'none confirmed'
            : `p50 ${summary.confirmMs.p50} p99 ${summary.confirmMs.p99}`
        console.log(
          `POST /v1/orders ms p50 ${summary.requestMs.p50} p99 ${summary.requestMs.p99}; 202 to CONFIRMED ms ${toConfirmed}`,
        )
      }
      if (summary.unfinished > 0) {
        console.error(`mercato: ${unfinishedLine(summary, url, settleTimeoutS)}`)
        process.exitCode = 1
      }
    } finally {
      await watcher.stop()
      await stream.close()
    }
  })

try {
  await program.parseAsync(process.argv)
} catch (error) {
  // A configuration or connection problem is one clear line, not a stack trace.
  console.error(`mercato: ${errorMessage(error)}`)
  process.exit(2)
}
