import { type Logger, pino } from 'pino'
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
