// How a component knows who calls it, and asks the policy whether they may. A component
// trusts no caller it has not verified: a request reaches it either through the gateway in
// the same process (which verified the user's token and left the principal on the
// request), or over the network with a service token addressed to it plus the user's own
// access token, both verified here. Authorization is the Cedar policy, not code.
import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { MercatoError } from '../errors.ts'
import { type Entity, lastingEntity, type PolicyEngine } from '../policy.ts'
import { anonymous, InvalidTokenError, type Principal, type Tokens } from './tokens.ts'

export const serviceTokenHeader = 'mercato-service-token'

export interface Identity {
  tokens: Tokens
  policy: PolicyEngine
}

export interface Caller {
  principal: Principal
  /** The component that called, for a call from inside; undefined for the in-process gateway's. */
  service?: string
}

const callerKey = Symbol('mercato.caller')
type WithCaller = FastifyRequest & { [callerKey]?: Caller }

/** Leaves the verified caller on a request (the in-process gateway does, once per request). */
export function setCaller(request: FastifyRequest, caller: Caller): void {
  ;(request as WithCaller)[callerKey] = caller
}

export function callerOf(request: FastifyRequest): Caller | undefined {
  return (request as WithCaller)[callerKey]
}

/** The user on whose behalf a request is made; anonymous when none. */
export function principalOf(request: FastifyRequest): Principal {
  return callerOf(request)?.principal ?? anonymous
}

/** The header in which the gateway tells a component in another process the client's address. */
export const clientAddressHeader = 'x-forwarded-for'

/**
 * The address the request came from: the client's as the gateway saw it for a call the gateway
 * forwarded (a verified service call), the peer's otherwise.
 */
export function clientAddressOf(request: FastifyRequest): string {
  const forwarded = request.headers[clientAddressHeader]
  if (callerOf(request)?.service && typeof forwarded === 'string' && forwarded.length <= 64) return forwarded
  return request.ip
}

/** The bearer token of an Authorization header; undefined when there is none. */
export function bearerOf(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  if (header === undefined) return undefined
  const match = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(header)
  if (!match) throw new InvalidTokenError('the Authorization header is not a Bearer token')
  return match[1]
}

/** The user a request's bearer token names (anonymous without one); 401 for a bad token. */
export async function authenticateUser(tokens: Tokens, request: FastifyRequest): Promise<Principal> {
  const token = bearerOf(request)
  return token === undefined ? anonymous : tokens.verifyAccess(token)
}

/**
 * An onRequest hook for the routes of `component`: passes a request the in-process
 * gateway verified; otherwise demands a service token addressed to `component` and
 * verifies the user's token the caller forwarded.
 */
export function requireVerifiedCaller(identity: Identity, component: string) {
  const { tokens } = identity
  const verify = async (request: FastifyRequest, serviceToken: string) => {
    const service = await tokens.verifyService(serviceToken, component)
    const principal = await authenticateUser(tokens, request)
    setCaller(request, { principal, service })
  }
  // Callback-style: a caller whose tokens this process verified a moment ago (every request of
  // a client carries the same ones) goes on without a promise or a wait.
  return (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => {
    if (callerOf(request)) return done()
    const serviceToken = request.headers[serviceTokenHeader]
    if (typeof serviceToken !== 'string') {
      reply.header('www-authenticate', 'Bearer')
      return done(
        new MercatoError(
          'unauthenticated',
          401,
          'this route answers only calls through the gateway (a service token is required)',
        ),
      )
    }
    // A token verified a moment ago is the very same text again: its syntax needs no second look.
    const service = tokens.knownService(serviceToken, component)
    const authorization = request.headers.authorization
    const principal =
      authorization === undefined
        ? anonymous
        : authorization.startsWith('Bearer ')
          ? tokens.knownAccess(authorization.slice('Bearer '.length))
          : undefined
    if (service !== undefined && principal !== undefined) {
      setCaller(request, { principal, service })
      return done()
    }
    verify(request, serviceToken).then(() => done(), done)
  }
}

const entities = new WeakMap<Principal, Entity>()

/**
 * Cedar's entity for a principal: one frozen object per principal, which the policy engine's
 * memo can key without reading it again (a verified token's principal is itself remembered).
 */
export function principalEntity(principal: Principal): Entity {
  let entity = entities.get(principal)
  if (entity === undefined) {
    entity = lastingEntity(entityOf(principal))
    entities.set(principal, entity)
  }
  return entity
}

function entityOf(principal: Principal): Entity {
  if (principal.kind === 'anonymous') return { type: 'Anonymous', id: 'anonymous' }
  return {
    type: 'User',
    id: principal.subject,
    attrs: { role: principal.role, ...(principal.customerId ? { customerId: principal.customerId } : {}) },
  }
}

/**
 * Throws unless the policy lets the request's principal take `action` on `resource`: 401
 * for an anonymous caller, 404 when `hideExistence` (the resource's existence must not
 * leak to who may not see it), 403 otherwise.
 */
export function authorize(
  identity: Identity,
  request: FastifyRequest,
  action: string,
  resource: Entity,
  options: { hideExistence?: boolean; notFoundDetail?: string } = {},
): void {
  const principal = principalOf(request)
  const decision = identity.policy.isAllowed({ principal: principalEntity(principal), action, resource })
  if (decision.allowed) return
  if (options.hideExistence) throw new MercatoError('not-found', 404, options.notFoundDetail ?? 'not found')
  if (principal.kind === 'anonymous')
    throw new MercatoError('unauthenticated', 401, 'sign in first: this request needs a bearer token')
  throw new MercatoError('forbidden', 403, `the policy does not let you take the action ${action} here`)
}

/** Throws 403 unless the policy lets the calling component take `action` on `resource`. */
export function authorizeService(
  identity: Identity,
  request: FastifyRequest,
  action: string,
  resource: Entity,
): void {
  const service = callerOf(request)?.service
  const decision = service
    ? identity.policy.isAllowed({ principal: { type: 'Service', id: service }, action, resource })
    : { allowed: false }
  if (!decision.allowed) throw new MercatoError('forbidden', 403, `this component may not ${action}`)
}
