import { type ChildLoggerOptions, type Logger, pino } from 'pino'
import { currentCorrelationId, currentTraceId } from './tracing.ts'

export type { Logger }

/** JSON logs; every line written inside a span carries its trace id, and the correlation id of its work. */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino({
    name: options.name ?? 'mercato',
    level: options.level ?? process.env.MERCATO_LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    mixin() {
      const traceId = currentTraceId()
      const correlationId = currentCorrelationId()
      return {
        ...(traceId ? { trace_id: traceId } : {}),
        ...(correlationId ? { correlation_id: correlationId } : {}),
      }
    },
  })
}

/** A logger that writes nothing, for tests and benchmarks. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'

/**
 * A child logger made only when a line is written at an enabled level: an HTTP server makes
 * one per request, most requests write nothing, and a pino child costs a serialization of its
 * bindings.
 */
export class LazyChildLogger {
  readonly #parent: Logger
  readonly #bindings: Record<string, unknown>
  /** A child's own options (a route's log level, say), as pino's child takes them. */
  readonly #options: ChildLoggerOptions
  #child: Logger | undefined

  constructor(parent: Logger, bindings: Record<string, unknown>, options: ChildLoggerOptions = {}) {
    this.#parent = parent
    this.#bindings = bindings
    this.#options = options
  }

  get level(): string {
    return this.#options.level ?? this.#parent.level
  }

  child(bindings: Record<string, unknown>): Logger {
    return this.#logger().child(bindings)
  }

  fatal(...args: unknown[]): void {
    this.#write('fatal', args)
  }
  error(...args: unknown[]): void {
    this.#write('error', args)
  }
  warn(...args: unknown[]): void {
    this.#write('warn', args)
  }
  info(...args: unknown[]): void {
    this.#write('info', args)
  }
  debug(...args: unknown[]): void {
    this.#write('debug', args)
  }
  trace(...args: unknown[]): void {
    this.#write('trace', args)
  }
  silent(): void {}

  #write(level: Level, args: unknown[]): void {
    const values = this.#parent.levels.values
    if (values[level] < (values[this.level] ?? Number.POSITIVE_INFINITY)) return
    ;(this.#logger()[level] as (...a: unknown[]) => void)(...args)
  }

  #logger(): Logger {
    this.#child ??= this.#parent.child(this.#bindings, this.#options)
    return this.#child
  }
}
