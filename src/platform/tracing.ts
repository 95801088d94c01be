import { AsyncLocalStorage } from 'node:async_hooks'
import {
  type Context,
  context,
  propagation,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base'
import { errorMessage } from './errors.ts'

let installed = false

/** Installs the OpenTelemetry SDK once per process: real trace and span ids, W3C propagation. */
export function installTracing(): void {
  if (installed) return
  installed = true
  const contextManager = new AsyncLocalStorageContextManager()
  contextManager.enable()
  context.setGlobalContextManager(contextManager)
  propagation.setGlobalPropagator(new W3CTraceContextPropagator())
  trace.setGlobalTracerProvider(new BasicTracerProvider())
}

const tracer = () => trace.getTracer('mercato')

/** The W3C traceparent of the active span, to put into an event or an outgoing call. */
export function currentTraceparent(): string | undefined {
  const carrier: Record<string, string> = {}
  propagation.inject(context.active(), carrier)
  return carrier.traceparent
}

export function currentTraceId(): string | undefined {
  const spanContext = trace.getSpan(context.active())?.spanContext()
  return spanContext && trace.isSpanContextValid(spanContext) ? spanContext.traceId : undefined
}

/** The correlation id of the work in progress (the order's, for every step of its saga). */
const correlation = new AsyncLocalStorage<string>()

export function currentCorrelationId(): string | undefined {
  return correlation.getStore()
}

function parentFrom(traceparent: string | undefined): Context {
  if (!traceparent) return context.active()
  return propagation.extract(context.active(), { traceparent })
}

/**
 * Runs `work` in a new span, child of `traceparent` when given (a consumed event continues its
 * producer's trace), under `correlationId` when given (logs written in it carry it).
 */
export async function inSpan<T>(
  name: string,
  options: {
    traceparent?: string
    kind?: SpanKind
    attributes?: Record<string, string | number>
    correlationId?: string
  },
  work: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = parentFrom(options.traceparent)
  const span = tracer().startSpan(
    name,
    { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes },
    parent,
  )
  try {
    const run = () => context.with(trace.setSpan(parent, span), () => work(span))
    return await (options.correlationId ? correlation.run(options.correlationId, run) : run())
  } catch (error) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(error) })
    throw error
  } finally {
    span.end()
  }
}

export { SpanKind }
