#!/usr/bin/env node
// mercato: one program, many roles.
//   mercato start [--target a,b]      run components (default: all) on one port
//   mercato replay --group G --topic T (--offset N | --time ISO | --earliest | --latest)
//   mercato dlq list --topic T        what a topic's dead-letter topic holds
//   mercato dlq replay --topic T      put dead letters back on their topic
import { Command, Option } from 'commander'
import { ConfigError, errorMessage } from './platform/errors.ts'
import { createLogger } from './platform/logger.ts'
import { Metrics } from './platform/metrics.ts'
import { App } from './runtime/app.ts'
import { type Config, intSettings, loadConfig, settingsHelp } from './runtime/config.ts'
import { openEventStream } from './runtime/engines.ts'

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

withEngineFlags(program.command('start'))
  .description('run components; all of them, on embedded engines, by default')
  .option('--target <components>', 'components to run, comma-separated (MERCATO_TARGET)')
  .addOption(new Option('--port <port>', `HTTP port (${intSettings.port.env})`))
  .addHelpText('after', `\nSettings (environment; the flags above override):\n${settingsHelp()}`)
  .action(async (options) => {
    const config = configFrom(options)
    const log = createLogger({ level: config.logLevel })
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
    await app.start()
  })

withEngineFlags(program.command('replay'))
  .description(
    "move a consumer group's position on a topic, so it handles events again (stop the group first)",
  )
  .requiredOption('--group <group>', 'consumer group')
  .requiredOption('--topic <topic>', 'topic')
  .option('--offset <offset>', 'from this offset on every partition')
  .option('--time <iso>', 'from the first event at or after this time')
  .option('--earliest', 'from the start of the topic')
  .option('--latest', 'skip to the end of the topic')
  .action(async (options) => {
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
    const stream = await openEventStream(config, log, new Metrics())
    try {
      await stream.engine.seek(options.group, options.topic, target)
      const lag = await stream.engine.lag(options.group, [options.topic])
      console.table(lag)
    } finally {
      await stream.close()
    }
  })

const dlq = program.command('dlq').description('inspect and replay dead-letter topics')

withEngineFlags(dlq.command('list'))
  .description("list the records on a topic's dead-letter topic")
  .requiredOption('--topic <topic>', 'the original topic (its DLQ is <topic>.dlq)')
  .option('--limit <n>', 'records to show', '100')
  .option('--json', 'one JSON object per line')
  .action(async (options) => {
    const config = configFrom(options)
    const stream = await openEventStream(config, createLogger({ level: 'warn' }), new Metrics())
    try {
      const letters = await stream.deadLetters(options.topic, Number(options.limit))
      for (const letter of letters) {
        const row = {
          dlqOffset: `${letter.position.partition}/${letter.position.offset}`,
          original: `${letter.original.topic}/${letter.original.partition}/${letter.original.offset}`,
          group: letter.original.group,
          type: letter.record.headers.ce_type ?? '?',
          id: letter.record.headers.ce_id ?? '?',
          attempts: letter.attempts,
          error: letter.error,
        }
        console.log(options.json ? JSON.stringify(row) : Object.values(row).join('  '))
      }
      if (!options.json) console.log(`${letters.length} dead letter(s) for ${options.topic}`)
    } finally {
      await stream.close()
    }
  })

withEngineFlags(dlq.command('replay'))
  .description('publish dead letters again on their original topic (fix the cause first)')
  .requiredOption('--topic <topic>', 'the original topic')
  .option('--limit <n>', 'records to replay', '1000')
  .action(async (options) => {
    const config = configFrom(options)
    const stream = await openEventStream(config, createLogger({ level: 'warn' }), new Metrics())
    try {
      const letters = await stream.deadLetters(options.topic, Number(options.limit))
      const positions = await stream.replayDeadLetters(letters)
      console.log(`replayed ${positions.length} record(s) onto ${options.topic}`)
    } finally {
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
