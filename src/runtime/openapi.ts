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
      },
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
    { schema: { summary: 'This document: every route of the API', tags: ['meta'] } },
    async () => http.swagger(),
  )
}
