import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'

/** One registry per process; every component registers its metrics here. */
export class Metrics {
  readonly registry = new Registry()
  readonly #created = new Map<string, Counter | Gauge | Histogram>()

  constructor(options: { defaultMetrics?: boolean } = {}) {
    if (options.defaultMetrics) {
      collectDefaultMetrics({ register: this.registry, prefix: 'mercato_' })
      // prom-client names these gauges `_total`, a counter's suffix (promtool check metrics
      // refuses them); the same counts by type stay, under names without it.
      for (const kind of ['handles', 'requests', 'resources'])
        this.registry.removeSingleMetric(`mercato_nodejs_active_${kind}_total`)
    }
  }

  counter(name: string, help: string, labelNames: string[] = []): Counter {
    return this.#once(
      name,
      () => new Counter({ name, help, labelNames, registers: [this.registry] }),
    ) as Counter
  }

  /** With `read`, the gauge is read when scraped rather than set as its value changes. */
  gauge(name: string, help: string, labelNames: string[] = [], read?: () => number): Gauge {
    return this.#once(
      name,
      () =>
        new Gauge({
          name,
          help,
          labelNames,
          registers: [this.registry],
          ...(read
            ? {
                collect() {
                  this.set(read())
                },
              }
            : {}),
        }),
    ) as Gauge
  }

  histogram(name: string, help: string, labelNames: string[] = [], buckets?: number[]): Histogram {
    return this.#once(
      name,
      () =>
        new Histogram({
          name,
          help,
          labelNames,
          registers: [this.registry],
          ...(buckets ? { buckets } : {}),
        }),
    ) as Histogram
  }

  text(): Promise<string> {
    return this.registry.metrics()
  }

  get contentType(): string {
    return this.registry.contentType
  }

  #once(name: string, create: () => Counter | Gauge | Histogram) {
    let metric = this.#created.get(name)
    if (!metric) {
      metric = create()
      this.#created.set(name, metric)
    }
    return metric
  }
}

export const latencyBucketsSeconds = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]
