import { type Logger, pino } from 'pino'
import { currentTraceId } from './tracing.ts'

export type { Logger }

/** JSON logs; every line written inside a span carries its trace id. */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino({
    name: options.name ?? 'mercato',
    level: options.level ?? process.env.MERCATO_LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    mixin() {
      const traceId = currentTraceId()
      return traceId ? { trace_id: traceId } : {}
    },
  })
}

/** A logger that writes nothing, for tests and benchmarks. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}
