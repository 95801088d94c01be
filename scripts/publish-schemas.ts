// Records every (type, version) of the contracts in src/contracts/published-schemas.json.
// A version, once recorded, is never rewritten here: change it compatibly, or add a version.
import { readFileSync, writeFileSync } from 'node:fs'
import { eventSchemas } from '../src/contracts/events.ts'

const file = new URL('../src/contracts/published-schemas.json', import.meta.url)
const published: Record<string, unknown> = JSON.parse(readFileSync(file, 'utf8'))
let added = 0
for (const [type, versions] of Object.entries(eventSchemas)) {
  for (const [version, schema] of Object.entries(versions)) {
    const key = `${type}@${version}`
    if (published[key]) continue
    published[key] = JSON.parse(JSON.stringify(schema))
    added++
  }
}
writeFileSync(file, `${JSON.stringify(published, null, 2)}\n`)
console.log(`${added} schema version(s) recorded`)
