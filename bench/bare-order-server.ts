// The write benchmark's baseline: a bare fastify server that validates the same order body
// with the same schema and answers 202, doing nothing else.
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import { PlaceOrder, schemaAnnotations } from '../src/contracts/commands.ts'

const app = Fastify({
  ajv: {
    customOptions: {
      removeAdditional: false,
      coerceTypes: false,
      allErrors: true,
      keywords: schemaAnnotations,
    },
  },
})
app.post('/v1/orders', { schema: { body: PlaceOrder } }, async (_request, reply) => {
  const id = `ord_${randomUUID()}`
  reply.header('location', `/v1/orders/${id}`)
  return reply.code(202).send({ id, status: 'accepted', consistencyToken: 'none' })
})
const address = await app.listen({ host: '127.0.0.1', port: 0 })
console.log(JSON.stringify({ msg: 'bare server is up', address }))
process.on('SIGTERM', async () => {
  await app.close()
  process.exit(0)
})
