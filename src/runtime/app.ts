// Starts the components of the configured targets on one HTTP server, and stops them:
// SIGTERM stops taking requests, lets in-flight work finish, commits offsets, closes
// stores, all within `shutdownTimeoutMs`.
import type { AddressInfo } from 'node:net'
import { errorMessage } from '../platform/errors.ts'
import type { Logger } from '../platform/logger.ts'
import { Metrics } from '../platform/metrics.ts'
import { installTracing } from '../platform/tracing.ts'
import { type Component, type Context, components, type Running, resolveTargets } from './components.ts'
import type { Config } from './config.ts'
import { createHttpServer, drainHttp } from './http.ts'
import { registerOpenApi } from './openapi.ts'

export class App {
  readonly context: Context
  readonly names: string[]
  readonly #table: Record<string, Component>
  readonly #running: { name: string; running: Running }[] = []
  #stopping: Promise<void> | undefined
  /** Resolves with this process's URL once it listens. */
  readonly #listening = Promise.withResolvers<string>()

  constructor(config: Config, log: Logger, table: Record<string, Component> = components) {
    installTracing()
    this.#table = table
    this.names = resolveTargets(config.targets, table)
    const metrics = new Metrics({ defaultMetrics: true })
    const http = createHttpServer(config, log, metrics, () =>
      this.#running.map(({ name, running }) => ({ name, check: running.ready ?? (async () => {}) })),
    )
    this.context = {
      config,
      log,
      metrics,
      http,
      running: this.names,
      selfUrl: () => this.#listening.promise,
    }
    // A component may ask before the process listens (a consumer calling this process's own
    // payment provider right after a restart): it waits, and is refused if the process stops first.
    this.#listening.promise.catch(() => {})
  }

  /** Starts every component in dependency order, then listens. Resolves with the address. */
  async start(): Promise<string> {
    const { log, config, http } = this.context
    await registerOpenApi(http)
    for (const name of this.names) {
      const started = performance.now()
      try {
        const running = await this.#table[name].start(this.context)
        this.#running.push({ name, running })
      } catch (error) {
        await this.stop()
        throw error
      }
      log.info({ component: name, ms: Math.round(performance.now() - started) }, 'component started')
    }
    const address = await http.listen({ host: config.host, port: config.port })
    this.#listening.resolve(urlOf(http.server.address()))
    log.info({ address, components: this.names }, 'mercato is up')
    return address
  }

  stop(): Promise<void> {
    this.#listening.reject(new Error('this process stopped before it listened'))
    this.#stopping ??= this.#stop()
    return this.#stopping
  }

  async #stop(): Promise<void> {
    const { log, http, config } = this.context
    // New requests from outside are refused first, and those in flight finish (half the
    // shutdown's time at most) while every component still runs: on stores already closed
    // they would fail with a 500.
    await drainHttp(http, config.shutdownTimeoutMs / 2)
    // Components stop next, in reverse order, while the HTTP server still answers: an
    // in-flight handler may need a route of this process (the payment provider stand-in
    // in the all-in-one mode) to finish. The server closes last.
    for (const { name, running } of [...this.#running].reverse()) {
      try {
        await running.stop?.()
        log.info({ component: name }, 'component stopped')
      } catch (error) {
        log.error({ component: name, err: errorMessage(error) }, 'component did not stop cleanly')
      }
    }
    await http.close()
    this.#running.length = 0
  }
}

/** The URL this process answers at, for calls to itself. */
function urlOf(address: AddressInfo | string | null): string {
  if (!address || typeof address === 'string') throw new Error('the HTTP server has no TCP address')
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${address.port}`
}
