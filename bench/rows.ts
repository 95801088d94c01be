// The row every benchmark writes: one measured figure beside its baseline from the same run.
export interface Row {
  scenario: string
  engine: string
  /** `answers`: how many requests got one kind of answer (its unit says which), beside the orders offered. */
  metric: 'throughput' | 'p50' | 'p99' | 'cpu' | 'answers'
  value: number
  unit: string
  baseline: number
  /** value / baseline; null when the baseline is 0 (a lag the baseline did not measure, say). */
  ratio: number | null
}

const round = (n: number) => Math.round(n * 1000) / 1000

export function row(
  scenario: string,
  engine: string,
  metric: Row['metric'],
  value: number,
  unit: string,
  baseline: number,
): Row {
  return {
    scenario,
    engine,
    metric,
    value: round(value),
    unit,
    baseline: round(baseline),
    ratio: round(baseline) === 0 ? null : round(value / baseline),
  }
}

export function percentile(values: number[], q: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

/** A one-line progress counter on stderr for long loops. */
export function progress(label: string, total: number): (done: number) => void {
  let last = -1
  return (done) => {
    const percent = Math.min(100, Math.floor((done / total) * 100))
    if (percent === last || !process.stderr.isTTY) return
    last = percent
    process.stderr.write(`\r${label}: ${percent}%${percent === 100 ? '\n' : ''}`)
  }
}
