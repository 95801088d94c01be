// The OpenAPI side of RFC 9457 problem details: one shared Problem schema, and the error
// answers a route documents. Used as a route's `config` (@fastify/swagger's per-route
// transform), so it changes the document only: validation and serialization stay as they are.
import type { SwaggerTransform } from '@fastify/swagger'

/** The body of every error answer (see errors.ts and runtime/http.ts). */
export const ProblemSchema = {
  type: 'object',
  required: ['type', 'title', 'status'],
  properties: {
    type: { type: 'string', description: 'a URI naming the kind of problem, or about:blank' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string', description: 'what went wrong with this request' },
    instance: { type: 'string' },
    errors: {
      type: 'array',
      description: 'each bad field of the request',
      items: {
        type: 'object',
        properties: {
          in: { type: 'string', description: 'body, querystring, params or header' },
          field: { type: 'string', description: 'a JSON pointer, or the header name' },
          message: { type: 'string' },
        },
      },
    },
  },
  additionalProperties: true,
} as const

const meanings: Record<number, string> = {
  400: 'The request is invalid (a body over the size limit too); `errors` names each bad field',
  401: 'No valid access token',
  403: 'The policy refuses this caller this route or this resource',
  404: 'Not found (or not the caller’s to see)',
  409: 'A request with this Idempotency-Key is in progress; retry after Retry-After',
  414: 'A path parameter is longer than the router accepts',
  415: 'The body is not application/json, or is compressed (Content-Encoding)',
  422: 'This Idempotency-Key was used for another request',
  429: 'Too many requests from this caller or address; retry after Retry-After',
  503: 'Overloaded, or a dependency is unreachable; retry after Retry-After',
}

/** Answers that say when to come back. */
const retryAfter = {
  'retry-after': { type: 'string', description: 'seconds to wait before trying again' },
}
const withRetryAfter = new Set([409, 429, 503])

/**
 * A route config documenting `statuses` as problem details and, optionally, headers the
 * handler requires (checked there, with its own problem, so the validated schema leaves them
 * optional), the success answers of a handler that sends its body already serialized
 * (documented here, not in the route's schema, which would not apply to a string anyway),
 * and the headers every success answer carries.
 */
export function problemDocs(
  statuses: number[],
  requiredHeaders: string[] = [],
  answers: Record<number, object> = {},
  successHeaders: Record<string, { type: 'string'; description: string }> = {},
): { swaggerTransform: SwaggerTransform } {
  return {
    swaggerTransform: ({ schema, url, ...document }) => {
      if ('openapiObject' in document) {
        const components = (document.openapiObject.components ??= {})
        components.schemas ??= {}
        components.schemas.Problem ??= ProblemSchema as never
      }
      const problem = { $ref: '#/components/schemas/Problem' }
      // The router refuses an over-long path parameter itself, before any route runs.
      const refused = url.includes(':') ? [...statuses, 414].sort((a, b) => a - b) : statuses
      // An error status in `answers` gives only headers of its own, beside the problem's.
      const errors = Object.fromEntries(
        refused.map((status) => {
          const headers = {
            ...(withRetryAfter.has(status) ? retryAfter : {}),
            ...(answers[status] as { headers?: object } | undefined)?.headers,
          }
          return [
            status,
            {
              description: meanings[status],
              content: { 'application/problem+json': { schema: problem } },
              ...(Object.keys(headers).length > 0 ? { headers } : {}),
            },
          ]
        }),
      )
      // Errors are the route's `statuses` alone: another error status of `answers` it never gives.
      const answered = Object.entries({ ...(schema.response as object), ...answers }).filter(
        ([status]) => Number(status) < 400,
      )
      const successes = Object.fromEntries(
        answered.map(([status, answer]) => [
          status,
          status.startsWith('2') && Object.keys(successHeaders).length > 0
            ? { ...answer, headers: successHeaders }
            : answer,
        ]),
      )
      const headers = schema.headers as { required?: string[] } | undefined
      return {
        url,
        schema: {
          ...schema,
          ...(headers && requiredHeaders.length > 0
            ? { headers: { ...headers, required: [...(headers.required ?? []), ...requiredHeaders] } }
            : {}),
          response: { ...successes, ...errors },
        },
      }
    },
  }
}
