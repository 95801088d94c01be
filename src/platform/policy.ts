// Authorization as policy: every rule of who may do what lives in Cedar files that operators
// read and change (policies/*.cedar); the code only asks. A decision is pure, so it is memoized.
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
// The CommonJS build loads its wasm with fs; the ESM build imports it as a module, which Node 24
// still flags as experimental with a warning on every start.
import {
  type CedarValueJson,
  type DetailedError,
  type EntityJson,
  policySetTextToParts,
  preparsePolicySet,
  statefulIsAuthorized,
  type TypeAndId,
} from '@cedar-policy/cedar-wasm/nodejs'
import { ConfigError, errorMessage } from './errors.ts'

export type AttrValue = string | number | boolean | string[]

/** An entity, its type without the namespace (`User`, not `Mercato::User`). */
export interface Entity {
  type: string
  id: string
  attrs?: Record<string, AttrValue>
}

export interface AuthzRequest {
  principal: Entity
  /** An action id such as `order.read`: `Mercato::Action::"order.read"`. */
  action: string
  resource: Entity
  context?: Record<string, unknown>
}

export interface Decision {
  allowed: boolean
  /** Ids (`file.cedar#n`, n counted from 1 in the file) of the policies that decided. */
  reasons: string[]
  errors: string[]
}

const namespace = 'Mercato'
const setting = 'MERCATO_POLICY_DIR'
const memoSizeMax = 10_000

// Preparsed sets live in the wasm module's own storage, by id: one id per engine.
let enginesCreated = 0

export class PolicyEngine {
  readonly dir: string
  readonly #setId: string
  readonly #memo = new Map<string, Decision>()

  private constructor(dir: string) {
    this.dir = dir
    this.#setId = `mercato-policies-${++enginesCreated}`
  }

  /** Reads and preparses every `*.cedar` file of `dir`; throws ConfigError on a bad file. */
  static async load(dir: string): Promise<PolicyEngine> {
    const engine = new PolicyEngine(dir)
    await engine.reload()
    return engine
  }

  /** The repo's `policies/` directory, for when MERCATO_POLICY_DIR is unset. */
  static defaultDir(): string {
    return fileURLToPath(new URL('../../policies/', import.meta.url))
  }

  /** Re-reads the directory and forgets memoized decisions; on failure the old set stays in force. */
  async reload(): Promise<void> {
    const policies = await readPolicies(this.dir)
    const answer = preparsePolicySet(this.#setId, { staticPolicies: policies })
    if (answer.type === 'failure') throw new ConfigError(setting, `${this.dir}: ${describe(answer.errors)}`)
    this.#memo.clear()
  }

  /** Default deny; a failure to decide is a deny with the reason in `errors`, never a throw. */
  isAllowed(request: AuthzRequest): Decision {
    const key = memoKey(request)
    const known = this.#memo.get(key)
    if (known) return known
    const decision = this.#decide(request)
    if (this.#memo.size >= memoSizeMax) this.#memo.clear()
    this.#memo.set(key, decision)
    return decision
  }

  #decide(request: AuthzRequest): Decision {
    try {
      const principal = uidOf(request.principal)
      const resource = uidOf(request.resource)
      const entities: EntityJson[] = [entityOf(request.principal)]
      // Cedar refuses the same entity twice (a service asking about itself).
      if (principal.type !== resource.type || principal.id !== resource.id) {
        entities.push(entityOf(request.resource))
      }
      const answer = statefulIsAuthorized({
        principal,
        action: { type: `${namespace}::Action`, id: request.action },
        resource,
        context: (request.context ?? {}) as Record<string, CedarValueJson>,
        preparsedPolicySetId: this.#setId,
        entities,
      })
      if (answer.type === 'failure') return deny(answer.errors.map((e) => e.message))
      const { decision, diagnostics } = answer.response
      return frozen({
        allowed: decision === 'allow',
        reasons: diagnostics.reason,
        errors: diagnostics.errors.map((e) => `${e.policyId}: ${e.error.message}`),
      })
    } catch (error) {
      return deny([errorMessage(error)])
    }
  }
}

/** Every policy of the `*.cedar` files of `dir`, in name order, by id `file.cedar#n`. */
async function readPolicies(dir: string): Promise<Record<string, string>> {
  let names: string[]
  try {
    names = (await readdir(dir)).filter((name) => name.endsWith('.cedar')).sort()
  } catch (error) {
    throw new ConfigError(setting, `cannot read policies from ${dir}: ${errorMessage(error)}`)
  }
  if (names.length === 0) throw new ConfigError(setting, `${dir} has no .cedar files`)
  const policies: Record<string, string> = {}
  for (const name of names) {
    const text = await readFile(join(dir, name), 'utf8')
    const parts = policySetTextToParts(text)
    if (parts.type === 'failure') throw new ConfigError(setting, `${name}: ${describe(parts.errors, text)}`)
    if (parts.policy_templates.length > 0) {
      throw new ConfigError(setting, `${name}: policy templates (?principal, ?resource) are not supported`)
    }
    for (const [i, policy] of inSourceOrder(parts.policies).entries()) policies[`${name}#${i + 1}`] = policy
  }
  return policies
}

/**
 * Cedar names the policies of a text policy0, policy1, … in source order, and returns them
 * sorted by that name as a string (policy10 before policy2): undo the sort.
 */
function inSourceOrder(sortedById: string[]): string[] {
  const ids = sortedById.map((_, i) => `policy${i}`).sort()
  const ordered: string[] = []
  for (const [position, id] of ids.entries())
    ordered[Number(id.slice('policy'.length))] = sortedById[position]
  return ordered
}

/** Cedar's errors, with line:column when the source text is known. */
function describe(errors: DetailedError[], text?: string): string {
  return errors
    .map((error) => {
      const at = error.sourceLocations?.[0]
      const where = at && text !== undefined ? `line ${lineColumnOf(text, at.start)}: ` : ''
      const expected = at?.label ? ` (${at.label})` : ''
      return `${where}${error.message}${expected}`
    })
    .join('; ')
}

function lineColumnOf(text: string, byteOffset: number): string {
  const before = Buffer.from(text, 'utf8').subarray(0, byteOffset).toString('utf8').split('\n')
  return `${before.length}:${before[before.length - 1].length + 1}`
}

function uidOf(entity: Entity): TypeAndId {
  return { type: `${namespace}::${entity.type}`, id: entity.id }
}

function entityOf(entity: Entity): EntityJson {
  return { uid: uidOf(entity), attrs: entity.attrs ?? {}, parents: [] }
}

function deny(errors: string[]): Decision {
  return frozen({ allowed: false, reasons: [], errors })
}

// A memoized decision is handed to every caller that asks the same: none may change it.
function frozen(decision: Decision): Decision {
  Object.freeze(decision.reasons)
  Object.freeze(decision.errors)
  return Object.freeze(decision)
}

function memoKey(request: AuthzRequest): string {
  const { principal, action, resource, context } = request
  // JSON escapes U+0000, so it separates the parts unambiguously.
  const contextKey = context === undefined ? '' : canonical(context)
  return `${principalKey(principal)}\u0000${action}\u0000${entityKey(resource)}\u0000${contextKey}`
}

/** Entities made by `lastingEntity`, and their memo keys: the same object request after request. */
const lasting = new WeakMap<Entity, string>()

/**
 * Freezes `entity` (its attributes too) and lets the memo keep its key by the object: for an
 * entity asked about over and over (a signed-in user's), made once and kept.
 */
export function lastingEntity(entity: Entity): Entity {
  if (entity.attrs) {
    for (const value of Object.values(entity.attrs)) if (Array.isArray(value)) Object.freeze(value)
    Object.freeze(entity.attrs)
  }
  Object.freeze(entity)
  lasting.set(entity, entityKey(entity))
  return entity
}

function principalKey(principal: Entity): string {
  return lasting.get(principal) ?? entityKey(principal)
}

/** JSON texts in a row: each one ends where it ends, so the key is unambiguous. */
function entityKey(entity: Entity): string {
  return `${JSON.stringify(entity.type)}${JSON.stringify(entity.id)}{${attrsKey(entity.attrs)}}`
}

/** Attributes with their names sorted, so equal entities give equal keys whatever their key order. */
function attrsKey(attrs: Entity['attrs']): string {
  if (attrs === undefined) return ''
  const names = Object.keys(attrs)
  if (names.length > 1) names.sort()
  let key = ''
  for (const name of names) key += `${JSON.stringify(name)}:${JSON.stringify(attrs[name])},`
  return key
}

/** JSON with object keys sorted at every depth. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  )
}

/**
 * What a consumer asks of every event: may its producer (the CloudEvents `source`,
 * `mercato/<component>`) emit its type? Answers the reason to refuse, or undefined.
 */
export function producerRefusal(
  policy: PolicyEngine,
): (event: { source: string; type: string }) => string | undefined {
  return ({ source, type }) => {
    const producer = source.startsWith('mercato/') ? source.slice('mercato/'.length) : ''
    if (producer === '') return `producer refused: the source "${source}" names no Mercato component`
    const decision = policy.isAllowed({
      principal: { type: 'Service', id: producer },
      action: 'emit',
      resource: { type: 'EventType', id: type },
    })
    return decision.allowed
      ? undefined
      : `producer refused: ${producer} may not emit ${type} (the events policy)`
  }
}
