// Is a new JSON schema a safe replacement for a published one? Safe means: every event
// valid under the old schema is still valid under the new one (consumers updated first
// keep reading old events), and the new one asks for nothing the old did not promise.
// Anything this check cannot prove safe counts as breaking.

type Schema = Record<string, unknown>

export function breakingChanges(published: Schema, current: Schema, path = '$'): string[] {
  if (JSON.stringify(published) === JSON.stringify(current)) return []
  const changes: string[] = []
  const typeOf = (s: Schema) => s.type ?? (s.anyOf ? 'anyOf' : s.const !== undefined ? 'const' : 'any')
  if (typeOf(published) !== typeOf(current))
    return [`${path}: type changed from ${typeOf(published)} to ${typeOf(current)}`]
  const tighter = (key: string, direction: 'up' | 'down') => {
    const before = published[key] as number | undefined
    const after = current[key] as number | undefined
    if (after === undefined) return
    if (before === undefined || (direction === 'up' ? after > before : after < before)) {
      changes.push(`${path}: ${key} tightened from ${before ?? 'none'} to ${after}`)
    }
  }
  tighter('minimum', 'up')
  tighter('minLength', 'up')
  tighter('minItems', 'up')
  tighter('maximum', 'down')
  tighter('maxLength', 'down')
  tighter('maxItems', 'down')
  for (const key of ['pattern', 'format', 'const']) {
    if (current[key] !== undefined && current[key] !== published[key]) changes.push(`${path}: ${key} changed`)
  }
  if (published.anyOf || current.anyOf) {
    const before = ((published.anyOf as Schema[]) ?? []).map((s) => JSON.stringify(s))
    const after = new Set(((current.anyOf as Schema[]) ?? []).map((s) => JSON.stringify(s)))
    for (const option of before)
      if (!after.has(option)) changes.push(`${path}: alternative ${option} removed`)
  }
  if (published.items || current.items) {
    changes.push(
      ...breakingChanges((published.items as Schema) ?? {}, (current.items as Schema) ?? {}, `${path}[]`),
    )
  }
  if (typeOf(current) === 'object') {
    const before = (published.properties ?? {}) as Record<string, Schema>
    const after = (current.properties ?? {}) as Record<string, Schema>
    const requiredBefore = new Set((published.required as string[]) ?? [])
    for (const name of (current.required as string[]) ?? []) {
      if (!requiredBefore.has(name)) changes.push(`${path}.${name}: newly required`)
    }
    for (const [name, schema] of Object.entries(before)) {
      if (!after[name]) {
        if (current.additionalProperties === false) changes.push(`${path}.${name}: removed`)
        continue
      }
      changes.push(...breakingChanges(schema, after[name], `${path}.${name}`))
    }
    if (current.additionalProperties === false && published.additionalProperties !== false) {
      changes.push(`${path}: additional properties no longer allowed`)
    }
  }
  return changes
}
