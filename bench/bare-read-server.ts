// The query benchmark's baseline: a bare fastify server answering GET /v1/orders/:id with
// the same documents, held in memory, doing nothing else.
import { readFileSync } from 'node:fs'
import Fastify from 'fastify'

const documents = JSON.parse(readFileSync(process.env.MERCATO_BENCH_DOCUMENTS ?? '', 'utf8')) as Record<
  string,
  unknown
>
const app = Fastify()
app.get('/v1/orders/:id', async (request, reply) => {
  const document = documents[(request.params as { id: string }).id]
  if (!document) return reply.code(404).send({ status: 404 })
  return document
})
const address = await app.listen({ host: '127.0.0.1', port: 0 })
console.log(JSON.stringify({ msg: 'bare server is up', address }))
process.on('SIGTERM', async () => {
  await app.close()
  process.exit(0)
})
