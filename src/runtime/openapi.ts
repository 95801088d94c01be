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
      },
    },
  })
  http.get('/v1/openapi.json', { schema: { hide: true } }, async () => http.swagger())
}
