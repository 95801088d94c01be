// One OpenAPI 3.1 document for every public route this process serves, built from the
// routes' own TypeBox schemas, at /v1/openapi.json. Routes marked `hide` (health,
// metrics, the provider stand-in) stay out of it.
import swagger from '@fastify/swagger'
import type { FastifyInstance } from 'fastify'

export async function registerOpenApi(http: FastifyInstance): Promise<void> {
  await http.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Mercato',
        version: '1',
        description:
          'An event-driven commerce backend. Commands answer 202 Accepted with a consistency token; ' +
          'errors are RFC 9457 problem details.',
        license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
      },
      // Relative: the document is served by the server it describes, wherever that listens.
      servers: [{ url: '/' }],
      components: {
        schemas: {},
        securitySchemes: {
          bearerAuth: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: 'JWT',
            description:
              'An access token from POST /v1/auth/token; the policy decides what each role may call',
          },
          serviceToken: {
            type: 'apiKey',
            in: 'header',
            name: 'mercato-service-token',
            description: 'A short-lived token one Mercato component presents to another (internal routes)',
          },
        },
      },
      // A bearer token where one is sent; public routes answer without one.
      security: [{ bearerAuth: [] }, {}],
    },
  })
  http.get(
    '/v1/openapi.json',
    {
      schema: { operationId: 'getOpenApi', summary: 'This document: every route of the API', tags: ['meta'] },
    },
    async () => {
      const document = structuredClone(http.swagger()) as OpenApiDocument
      for (const source of sourcesOf(http)) {
        const part = await source().catch(() => undefined)
        if (part) merge(document, part)
      }
      markOptionalBodies(document)
      for (const finish of finishersOf(http)) finish(document)
      return document
    },
  )
}

export interface OpenApiDocument {
  paths?: Record<string, Record<string, unknown>>
  components?: { schemas?: Record<string, unknown> }
}

const sources = new WeakMap<FastifyInstance, (() => Promise<OpenApiDocument | undefined>)[]>()

function sourcesOf(http: FastifyInstance) {
  let list = sources.get(http)
  if (!list) sources.set(http, (list = []))
  return list
}

/**
 * Adds the document of routes served elsewhere (the gateway's upstreams in a distributed
 * deployment) to this process's /v1/openapi.json, so clients see one API.
 */
export function addOpenApiSource(
  http: FastifyInstance,
  source: () => Promise<OpenApiDocument | undefined>,
): void {
  sourcesOf(http).push(source)
}

const finishers = new WeakMap<FastifyInstance, ((document: OpenApiDocument) => void)[]>()

function finishersOf(http: FastifyInstance) {
  let list = finishers.get(http)
  if (!list) finishers.set(http, (list = []))
  return list
}

/** Adds a last change to this process's /v1/openapi.json, made on the whole merged document. */
export function addOpenApiFinisher(http: FastifyInstance, finish: (document: OpenApiDocument) => void): void {
  finishersOf(http).push(finish)
}

/**
 * A route schema extension: its body may be left out. @fastify/swagger marks every request
 * body required; an operation carrying this says otherwise.
 */
export const bodyOptional = 'x-mercato-body-optional'

function markOptionalBodies(document: OpenApiDocument): void {
  for (const operations of Object.values(document.paths ?? {})) {
    for (const operation of Object.values(operations) as Record<string, unknown>[]) {
      if (!operation?.[bodyOptional]) continue
      delete operation[bodyOptional]
      const body = operation.requestBody as { required?: boolean } | undefined
      if (body) body.required = false
    }
  }
}

function merge(into: OpenApiDocument, part: OpenApiDocument): void {
  into.paths ??= {}
  for (const [path, operations] of Object.entries(part.paths ?? {})) {
    into.paths[path] = { ...operations, ...into.paths[path] }
  }
  into.components ??= {}
  into.components.schemas = { ...part.components?.schemas, ...into.components.schemas }
}
