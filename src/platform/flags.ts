// Feature flags, as the services read them. Definitions are in flagd's JSON format; the
// `flags` component keeps them in the key-value port and evaluates them in process.
import { MemoryStorage } from '@openfeature/flagd-core'
import type { Logger as OpenFeatureLogger } from '@openfeature/server-sdk'
import type { Cache } from '../engines/cache/port.ts'
import { errorMessage } from './errors.ts'

/** A definition larger than this is refused: the whole document is read every few seconds. */
const definitionBytesMax = 16_384

export interface FlagReader {
  boolean(
    key: string,
    fallback: boolean,
    context?: Record<string, string | number | boolean>,
  ): Promise<boolean>
  number(key: string, fallback: number, context?: Record<string, string | number | boolean>): Promise<number>
  string(key: string, fallback: string, context?: Record<string, string | number | boolean>): Promise<string>
}

/** The evaluation context of a flag read for a customer: flagd targeting keys on the customer. */
export function customerContext(customerId: string): { targetingKey: string; customerId: string } {
  return { targetingKey: customerId, customerId }
}

/** The key-value key of the document of every flag definition (flagd's file format). */
export const flagDefinitionsKey = 'flags:definitions'
const flagdSchema = 'https://flagd.dev/schema/v0/flags.json'

export type FlagDefinitions = Record<string, Record<string, unknown>>

/** Reads the document of every flag from the key-value port; undefined when absent. */
export async function readFlagDefinitions(cache: Cache): Promise<FlagDefinitions | undefined> {
  const text = await cache.get(flagDefinitionsKey)
  if (text === undefined) return undefined
  return parseDocument(text).flags
}

export function parseDocument(text: string): { flags: FlagDefinitions } {
  const parsed = JSON.parse(text) as { flags?: unknown }
  if (!parsed || typeof parsed !== 'object' || !parsed.flags || typeof parsed.flags !== 'object')
    throw new Error('the flag document has no "flags" object')
  return { flags: parsed.flags as FlagDefinitions }
}

export function documentOf(flags: FlagDefinitions): string {
  return JSON.stringify({ $schema: flagdSchema, flags })
}

/** The flags every fresh deployment starts with (flagd flag definitions). */
export const defaultFlagDefinitions: Record<string, Record<string, unknown>> = {
  'capture-on': {
    state: 'ENABLED',
    variants: { confirmation: 'confirmation', shipment: 'shipment' },
    defaultVariant: 'confirmation',
  },
  'max-lines-per-order': {
    state: 'ENABLED',
    variants: { default: 100, small: 10 },
    defaultVariant: 'default',
  },
  'express-shipping': {
    state: 'ENABLED',
    variants: { on: true, off: false },
    defaultVariant: 'on',
  },
}

/** What the code reading each flag can use: the reason a variant's value is not that, or undefined. */
const flagValueRules: Record<string, (value: unknown) => string | undefined> = {
  'capture-on': (value) =>
    value === 'confirmation' || value === 'shipment' ? undefined : 'must be "confirmation" or "shipment"',
  'max-lines-per-order': (value) =>
    Number.isInteger(value) && (value as number) >= 1 ? undefined : 'must be a whole number, 1 or more',
  'express-shipping': (value) => (typeof value === 'boolean' ? undefined : 'must be true or false'),
}

/** Why a flag definition is refused, and the field of the definition (a JSON pointer) at fault. */
export interface FlagDefinitionProblem {
  field: string
  reason: string
}

/** What is wrong with a flagd flag definition, or undefined when it is valid. */
export function validateFlagDefinition(definition: unknown, key = 'flag'): FlagDefinitionProblem | undefined {
  const problem = (field: string, reason: string) => ({ field, reason })
  if (!definition || typeof definition !== 'object' || Array.isArray(definition))
    return problem('/', 'a flag definition must be a JSON object')
  let text: string
  try {
    text = JSON.stringify({ flags: { [key]: definition } })
  } catch (error) {
    return problem('/', `not serializable as JSON: ${errorMessage(error)}`)
  }
  if (Buffer.byteLength(text) > definitionBytesMax)
    return problem('/', `the definition is larger than ${definitionBytesMax} bytes`)
  const def = definition as Record<string, unknown>
  if (def.state !== 'ENABLED' && def.state !== 'DISABLED')
    return problem('/state', 'state must be "ENABLED" or "DISABLED"')
  const variants = def.variants
  if (!variants || typeof variants !== 'object' || Array.isArray(variants))
    return problem('/variants', 'variants must be an object of named values')
  const values = Object.values(variants)
  if (values.length === 0) return problem('/variants', 'variants must name at least one value')
  const kinds = new Set(
    values.map((value) => (value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value)),
  )
  if (kinds.size > 1)
    return problem('/variants', `every variant must have the same type (found ${[...kinds].join(', ')})`)
  const [kind] = kinds
  if (!['boolean', 'string', 'number', 'object'].includes(kind))
    return problem('/variants', `variants must be booleans, strings, numbers or objects (found ${kind})`)
  const rule = flagValueRules[key]
  for (const [name, value] of Object.entries(variants)) {
    const wrong = rule?.(value)
    if (wrong) return problem(`/variants/${name}`, `variant "${name}" of ${key} ${wrong}`)
  }
  if (
    def.defaultVariant !== undefined &&
    def.defaultVariant !== null &&
    !Object.hasOwn(variants, String(def.defaultVariant))
  )
    return problem(
      '/defaultVariant',
      `defaultVariant "${String(def.defaultVariant)}" is not one of the variants`,
    )
  // flagd's own schema (strict), its structural checks, and its targeting parser.
  const storage = new MemoryStorage(quietLogger)
  try {
    storage.setConfigurations(text, true)
  } catch (error) {
    // flagd points into its whole document (/flags/<key>/…): point into the definition.
    const reason = flagdReason(error).replaceAll(`/flags/${key}`, '')
    return problem(/^(\/\w+)/.exec(reason)?.[1] ?? '/', `not a valid flagd definition: ${reason}`)
  }
  const flag = storage.getFlag(key)
  if (!flag) return problem('/', 'not a valid flagd definition')
  const unknown = variantsReturnedBy(def.targeting).find((name) => !Object.hasOwn(variants, name))
  if (unknown !== undefined)
    return problem('/targeting', `the targeting rule returns "${unknown}", which is not one of the variants`)
  const probe = flag.evaluate({}, quietLogger)
  if (probe.errorCode === 'PARSE_ERROR')
    return problem('/targeting', probe.errorMessage ?? 'the targeting rule cannot be parsed')
  return undefined
}

/**
 * The variant names a targeting rule can return as literals: the branches of `if` and the
 * buckets of `fractional`, however deeply nested. flagd takes a number or a boolean returned
 * by its string (5 names the variant "5"). (A name computed at run time, with `var` or
 * `cat`, cannot be known here: if it names no variant, the evaluation fails and the reader
 * takes the code's default.)
 */
function variantsReturnedBy(rule: unknown): string[] {
  if (typeof rule === 'string' || typeof rule === 'number' || typeof rule === 'boolean') return [String(rule)]
  if (!rule || typeof rule !== 'object' || Array.isArray(rule)) return []
  const { if: branches, fractional: buckets } = rule as { if?: unknown; fractional?: unknown }
  if (Array.isArray(branches))
    return branches.flatMap((branch, i) =>
      i % 2 === 1 || i === branches.length - 1 ? variantsReturnedBy(branch) : [],
    )
  if (Array.isArray(buckets))
    return buckets.flatMap((bucket) => (Array.isArray(bucket) ? variantsReturnedBy(bucket[0]) : []))
  return []
}

function flagdReason(error: unknown): string {
  const message = errorMessage(error)
  const detail = (error as { cause?: unknown })?.cause
  const reason = detail ? `${message}: ${errorMessage(detail)}` : message
  // flagd-core prints ajv's error list as JSON: keep its first message and path.
  const match = /"instancePath":\s*"([^"]*)"[\s\S]*?"message":\s*"([^"]*)"/.exec(reason)
  return (match ? `${match[1] || '/'} ${match[2]}` : reason).slice(0, 300)
}

const quietLogger: OpenFeatureLogger = { error() {}, warn() {}, info() {}, debug() {} }
