// Which generation of each view is live. A rebuild adds a generation in state `building`;
// the switch retires the live one and makes the new one live in one transaction, so a
// reader sees the old generation or the new one, never a mix.
import type { Store } from '../engines/store/port.ts'
import type { ViewName } from './view.ts'

export interface Generation {
  view: ViewName
  generation: number
  schemaVersion: number
  state: 'building' | 'live' | 'retired'
  switchedAt: string | null
}

export class GenerationRegistry {
  readonly #store: Store

  constructor(store: Store) {
    this.#store = store
  }

  async live(view: ViewName): Promise<Generation | undefined> {
    const [row] = await this.#rows('WHERE view = $1 AND state = $2', [view, 'live'])
    return row
  }

  /** The live generation of every view that has one, in one read. */
  async liveAll(): Promise<Map<ViewName, Generation>> {
    const rows = await this.#rows('WHERE state = $1', ['live'])
    return new Map(rows.map((row) => [row.view, row]))
  }

  async all(view: ViewName): Promise<Generation[]> {
    return this.#rows('WHERE view = $1 ORDER BY generation', [view])
  }

  /** The live generation; on a view never built, generation 1, live from the start. */
  async ensureLive(view: ViewName, schemaVersion: number): Promise<Generation> {
    return this.#store.transaction(async (tx) => {
      const [live] = await tx.query<{ generation: number }>(
        'SELECT generation FROM view_generations WHERE view = $1 AND state = $2',
        [view, 'live'],
      )
      if (!live) {
        await tx.execute(
          `INSERT INTO view_generations (view, generation, schema_version, state, created_at, switched_at)
           VALUES ($1, 1, $2, 'live', $3, $3) ON CONFLICT DO NOTHING`,
          [view, schemaVersion, new Date().toISOString()],
        )
      }
      const [row] = await tx.query<Row>(`${select} WHERE view = $1 AND state = $2`, [view, 'live'])
      return toGeneration(row)
    })
  }

  /** Adds the next generation, in state `building`. */
  async beginBuild(view: ViewName, schemaVersion: number): Promise<Generation> {
    return this.#store.transaction(async (tx) => {
      const [top] = await tx.query<{ top: number | null }>(
        'SELECT MAX(generation) AS top FROM view_generations WHERE view = $1',
        [view],
      )
      const generation = Number(top?.top ?? 0) + 1
      await tx.execute(
        `INSERT INTO view_generations (view, generation, schema_version, state, created_at)
         VALUES ($1, $2, $3, 'building', $4)`,
        [view, generation, schemaVersion, new Date().toISOString()],
      )
      return { view, generation, schemaVersion, state: 'building' as const, switchedAt: null }
    })
  }

  /**
   * Makes `generation` live and retires the one that was. A build that a newer one has
   * overtaken (two rebuilds at once) is retired instead: the newer one began later, so it
   * has read at least as much of the stream. Builds begun before the one made live are
   * retired with the live one: still running, each ends with an error when it tries to
   * switch; abandoned (its process died), it would otherwise be kept for ever.
   */
  async switchTo(view: ViewName, generation: number): Promise<void> {
    const newer = await this.#store.transaction(async (tx) => {
      const now = new Date().toISOString()
      const [live] = await tx.query<{ generation: number }>(
        'SELECT generation FROM view_generations WHERE view = $1 AND state = $2',
        [view, 'live'],
      )
      if (live && Number(live.generation) > generation) {
        await tx.execute(
          `UPDATE view_generations SET state = 'retired', switched_at = $3 WHERE view = $1 AND generation = $2 AND state = 'building'`,
          [view, generation, now],
        )
        return Number(live.generation)
      }
      await tx.execute(
        `UPDATE view_generations SET state = 'retired', switched_at = $3
          WHERE view = $1 AND ((state = 'live' AND generation <> $2) OR (state = 'building' AND generation < $2))`,
        [view, generation, now],
      )
      const changed = await tx.execute(
        `UPDATE view_generations SET state = 'live', switched_at = $3 WHERE view = $1 AND generation = $2 AND state = 'building'`,
        [view, generation, now],
      )
      if (changed !== 1) throw new Error(`generation ${generation} of ${view} is not being built`)
      return undefined
    })
    if (newer !== undefined) {
      throw new Error(
        `generation ${generation} of ${view} was not made live: generation ${newer}, begun after it, already is; ${generation} is retired`,
      )
    }
  }

  /** Forgets a generation (its storage dropped by the caller). */
  async forget(view: ViewName, generation: number): Promise<void> {
    await this.#store.transaction(async (tx) => {
      await tx.execute(
        `DELETE FROM view_generations WHERE view = $1 AND generation = $2 AND state <> 'live'`,
        [view, generation],
      )
    })
  }

  async #rows(where: string, params: string[]): Promise<Generation[]> {
    return (await this.#store.query<Row>(`${select} ${where}`, params)).map(toGeneration)
  }
}

interface Row {
  view: string
  generation: number
  schema_version: number
  state: Generation['state']
  switched_at: string | null
}

const select = 'SELECT view, generation, schema_version, state, switched_at FROM view_generations'

function toGeneration(row: Row): Generation {
  return {
    view: row.view as ViewName,
    generation: Number(row.generation),
    schemaVersion: Number(row.schema_version),
    state: row.state,
    switchedAt: row.switched_at,
  }
}
