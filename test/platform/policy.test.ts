import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { before, describe, it } from 'node:test'
import fc from 'fast-check'
import { eventSchemas } from '../../src/contracts/events.ts'
import { ConfigError } from '../../src/platform/errors.ts'
import { type AuthzRequest, type Entity, PolicyEngine } from '../../src/platform/policy.ts'
import { tempDir } from '../support/wait.ts'

const anonymous: Entity = { type: 'Anonymous', id: 'anonymous' }
const customer = (customerId: string): Entity => ({
  type: 'User',
  id: `sub-${customerId}`,
  attrs: { role: 'customer', customerId },
})
const support: Entity = { type: 'User', id: 'sub-support', attrs: { role: 'support' } }
const admin: Entity = { type: 'User', id: 'sub-admin', attrs: { role: 'admin' } }
const service = (name: string): Entity => ({ type: 'Service', id: name })

const route = (name: string, customerId?: string): Entity => ({
  type: 'Route',
  id: name,
  attrs: { route: name, ...(customerId ? { customerId } : {}) },
})
const order = (id: string, customerId: string): Entity => ({ type: 'Order', id, attrs: { customerId } })
const customerResource = (customerId: string): Entity => ({
  type: 'Customer',
  id: customerId,
  attrs: { customerId },
})
const catalog: Entity = { type: 'Catalog', id: 'catalog' }

const publicRoutes = [
  'GET /v1/products',
  'GET /v1/products/{sku}',
  'POST /v1/customers',
  'POST /v1/auth/token',
  'POST /v1/auth/refresh',
  'GET /.well-known/jwks.json',
  'GET /v1/openapi.json',
  'GET /docs',
]
const customerRoutes = ['POST /v1/orders', 'GET /v1/orders/{id}', 'POST /v1/orders/{id}/cancel']
const ownCustomerRoutes = ['GET /v1/customers/{id}/orders', 'GET /v1/customers/{id}/360']
const readRoutes = ['GET /v1/orders/{id}', ...ownCustomerRoutes, 'GET /v1/flags', 'GET /v1/flags/{key}']
const adminWriteRoutes = [
  'POST /v1/orders/{id}/cancel',
  'PUT /v1/products/{sku}',
  'POST /v1/inventory/{sku}/adjustments',
  'GET /v1/inventory/{sku}/adjustments/{id}',
  'PUT /v1/flags/{key}',
  'POST /v1/webhooks',
  'GET /v1/webhooks',
  'GET /v1/webhooks/{id}',
  'DELETE /v1/webhooks/{id}',
]

/** What each producer emits in the code; the source of an event is `mercato/<producer>`. */
const producers: Record<string, string[]> = {
  'command-api': [
    'order.requested',
    'order.cancel-requested',
    'customer.registration-requested',
    'product.upserted',
    'inventory.adjustment-requested',
    'flag.changed',
    'webhook.endpoint-set',
    'webhook.endpoint-removed',
  ],
  'demo-data': ['product.upserted', 'inventory.adjustment-requested', 'customer.registration-requested'],
  order: [
    'order.placed',
    'order.payment-requested',
    'order.shipment-requested',
    'order.confirmed',
    'order.shipped',
    'order.delivered',
    'order.cancelled',
    'order.cancel-refused',
  ],
  inventory: [
    'inventory.reserved',
    'inventory.rejected',
    'inventory.committed',
    'inventory.released',
    'inventory.adjusted',
    'inventory.adjustment-rejected',
  ],
  payment: [
    'payment.authorized',
    'payment.declined',
    'payment.failed',
    'payment.captured',
    'payment.voided',
    'payment.refunded',
  ],
  shipping: ['shipment.scheduled', 'shipment.cancelled', 'shipment.shipped', 'shipment.delivered'],
  notification: ['notification.sent'],
  user: ['customer.registered', 'customer.registration-rejected', 'customer.address-added'],
}

describe('the policies of policies/', () => {
  let engine: PolicyEngine
  before(async () => {
    engine = await PolicyEngine.load(PolicyEngine.defaultDir())
  })

  /** Asserts the decision, that Cedar raised no error, and that the reasons name `file`. */
  function expect(allowed: boolean, request: AuthzRequest, file?: string): void {
    const decision = engine.isAllowed(request)
    const what = `${request.principal.type}::${request.principal.id} ${request.action} ${request.resource.type}::${request.resource.id}`
    assert.equal(decision.allowed, allowed, what)
    assert.deepEqual(decision.errors, [], what)
    if (file)
      assert.ok(decision.reasons.length > 0 && decision.reasons.every((r) => r.startsWith(`${file}#`)), what)
  }
  const call = (principal: Entity, name: string, customerId?: string): AuthzRequest => ({
    principal,
    action: 'call',
    resource: route(name, customerId),
  })

  describe('at the gateway', () => {
    it('lets anyone, signed in or not, call the public routes', () => {
      for (const principal of [anonymous, customer('c1'), support, admin, service('load')]) {
        for (const name of publicRoutes) expect(true, call(principal, name), 'gateway.cedar')
      }
    })

    it('refuses every other route to an anonymous caller', () => {
      for (const name of [...customerRoutes, ...readRoutes, ...adminWriteRoutes]) {
        expect(false, call(anonymous, name, 'c1'))
      }
    })

    it('lets a customer order, and read and cancel orders', () => {
      for (const name of customerRoutes) expect(true, call(customer('c1'), name), 'gateway.cedar')
    })

    it("lets a customer read their own order list and 360 view, not another customer's", () => {
      for (const name of ownCustomerRoutes) {
        expect(true, call(customer('c1'), name, 'c1'), 'gateway.cedar')
        expect(false, call(customer('c1'), name, 'c2'))
        expect(false, call(customer('c1'), name))
      }
    })

    it('refuses the back-office writes to a customer', () => {
      for (const name of adminWriteRoutes.filter((r) => !customerRoutes.includes(r))) {
        expect(false, call(customer('c1'), name))
      }
    })

    it('lets support read any order or customer, and nothing else', () => {
      for (const name of readRoutes) expect(true, call(support, name, 'c9'), 'gateway.cedar')
      for (const name of [...adminWriteRoutes, 'POST /v1/orders']) expect(false, call(support, name))
    })

    it('lets an admin read, cancel and run the back office', () => {
      for (const name of [...readRoutes, ...adminWriteRoutes])
        expect(true, call(admin, name, 'c9'), 'gateway.cedar')
    })

    it('refuses a route no policy names, even to an admin', () => {
      expect(false, call(admin, 'DELETE /v1/orders/{id}'))
      expect(false, call(admin, 'GET /metrics'))
    })

    it('refuses the user routes to a service', () => {
      expect(false, call(service('order'), 'GET /v1/orders/{id}'))
    })
  })

  describe('in the component that owns the data', () => {
    const ask = (principal: Entity, action: string, resource: Entity): AuthzRequest => ({
      principal,
      action,
      resource,
    })

    it('lets a customer place orders for themself only', () => {
      expect(true, ask(customer('c1'), 'order.place', customerResource('c1')), 'data.cedar')
      expect(false, ask(customer('c1'), 'order.place', customerResource('c2')))
      expect(false, ask(admin, 'order.place', customerResource('c1')))
    })

    it('lets a customer read and cancel their own orders, not those of others', () => {
      for (const action of ['order.read', 'order.cancel']) {
        expect(true, ask(customer('c1'), action, order('o1', 'c1')), 'data.cedar')
        expect(false, ask(customer('c1'), action, order('o2', 'c2')))
      }
    })

    it("lets a customer read their own customer data, not another's", () => {
      expect(true, ask(customer('c1'), 'customer.read', customerResource('c1')), 'data.cedar')
      expect(false, ask(customer('c1'), 'customer.read', customerResource('c2')))
    })

    it('lets support read any order and customer', () => {
      expect(true, ask(support, 'order.read', order('o1', 'c1')), 'data.cedar')
      expect(true, ask(support, 'customer.read', customerResource('c1')), 'data.cedar')
      expect(true, ask(support, 'catalog.read', catalog), 'data.cedar')
      expect(true, ask(support, 'flag.read', { type: 'Flags', id: 'flags' }), 'data.cedar')
    })

    it('never lets support change anything, even what is open to anyone', () => {
      const writes: AuthzRequest[] = [
        ask(support, 'order.cancel', order('o1', 'c1')),
        ask(support, 'order.place', customerResource('c1')),
        ask(support, 'customer.register', { type: 'Customer', id: 'new' }),
        ask(support, 'catalog.write', catalog),
        ask(support, 'stock.adjust', catalog),
        ask(support, 'flag.write', { type: 'Flags', id: 'flags' }),
        ask(support, 'webhook.register', { type: 'Webhooks', id: 'webhooks' }),
        ask(support, 'webhook.remove', { type: 'Webhooks', id: 'webhooks' }),
      ]
      for (const request of writes) expect(false, request, 'data.cedar')
    })

    it('lets an admin read and cancel any order, read any customer, and run the back office', () => {
      expect(true, ask(admin, 'order.read', order('o1', 'c1')), 'data.cedar')
      expect(true, ask(admin, 'order.cancel', order('o1', 'c1')), 'data.cedar')
      expect(true, ask(admin, 'customer.read', customerResource('c1')), 'data.cedar')
      expect(true, ask(admin, 'catalog.write', catalog), 'data.cedar')
      expect(true, ask(admin, 'stock.adjust', catalog), 'data.cedar')
      expect(true, ask(admin, 'flag.write', { type: 'Flags', id: 'flags' }), 'data.cedar')
      expect(true, ask(admin, 'webhook.register', { type: 'Webhooks', id: 'webhooks' }), 'data.cedar')
      expect(true, ask(admin, 'webhook.remove', { type: 'Webhooks', id: 'webhooks' }), 'data.cedar')
      expect(true, ask(admin, 'webhook.read', { type: 'Webhooks', id: 'webhooks' }), 'data.cedar')
      expect(true, ask(admin, 'flag.read', { type: 'Flags', id: 'flags' }), 'data.cedar')
    })

    it('refuses the back office to customers and anonymous callers', () => {
      for (const principal of [customer('c1'), anonymous]) {
        expect(false, ask(principal, 'catalog.write', catalog))
        expect(false, ask(principal, 'stock.adjust', catalog))
        expect(false, ask(principal, 'flag.write', { type: 'Flags', id: 'flags' }))
        expect(false, ask(principal, 'webhook.register', { type: 'Webhooks', id: 'webhooks' }))
        expect(false, ask(principal, 'webhook.remove', { type: 'Webhooks', id: 'webhooks' }))
        expect(false, ask(principal, 'webhook.read', { type: 'Webhooks', id: 'webhooks' }))
        expect(false, ask(principal, 'flag.read', { type: 'Flags', id: 'flags' }))
        expect(false, ask(principal, 'order.read', order('o2', 'c2')))
      }
    })

    it('lets anyone register and read the catalog', () => {
      for (const principal of [anonymous, customer('c1'), admin]) {
        expect(true, ask(principal, 'customer.register', { type: 'Customer', id: 'new' }), 'data.cedar')
        expect(true, ask(principal, 'catalog.read', catalog), 'data.cedar')
      }
    })

    it('lets only the gateway verify credentials', () => {
      const user = { type: 'Component', id: 'user' }
      expect(true, ask(service('gateway'), 'credentials.verify', user), 'data.cedar')
      for (const principal of [service('order'), service('command-api'), admin, anonymous]) {
        expect(false, ask(principal, 'credentials.verify', user))
      }
    })
  })

  describe('on the stream', () => {
    const emit = (producer: string, type: string): AuthzRequest => ({
      principal: service(producer),
      action: 'emit',
      resource: { type: 'EventType', id: type },
    })

    it('lets each producer emit every event type its code emits', () => {
      for (const [producer, types] of Object.entries(producers)) {
        for (const type of types) expect(true, emit(producer, type), 'events.cedar')
      }
    })

    it('refuses each producer every other event type of the contracts', () => {
      for (const [producer, types] of Object.entries(producers)) {
        for (const type of Object.keys(eventSchemas).filter((t) => !types.includes(t))) {
          expect(false, emit(producer, type))
        }
      }
    })

    it("refuses a producer another's events", () => {
      expect(false, emit('order', 'payment.captured'))
      expect(false, emit('payment', 'order.confirmed'))
      expect(false, emit('shipping', 'order.shipped'))
      expect(false, emit('user', 'customer.registration-requested'))
    })

    it('refuses components that emit nothing, unknown producers and users', () => {
      for (const producer of ['flags', 'payment-provider', 'gateway', 'query-api', 'bench']) {
        for (const type of Object.keys(eventSchemas)) expect(false, emit(producer, type))
      }
      expect(false, { principal: admin, action: 'emit', resource: { type: 'EventType', id: 'flag.changed' } })
    })

    it('has a producer for every event type of the contracts', () => {
      const produced = new Set(Object.values(producers).flat())
      assert.deepEqual(
        Object.keys(eventSchemas).filter((type) => !produced.has(type)),
        [],
      )
    })
  })

  it('never lets a customer read an order of another customer', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('customer', 'support', 'admin'),
        fc.string({ minLength: 1 }),
        fc.string({ minLength: 1 }),
        fc.string({ minLength: 1 }),
        fc.string({ minLength: 1 }),
        (role, subject, customerId, orderId, owner) => {
          const decision = engine.isAllowed({
            principal: { type: 'User', id: subject, attrs: { role, customerId } },
            action: 'order.read',
            resource: order(orderId, owner),
          })
          assert.deepEqual(decision.errors, [])
          if (role === 'customer') assert.equal(decision.allowed, owner === customerId)
          else assert.equal(decision.allowed, true)
        },
      ),
      { numRuns: 500 },
    )
  })
})

describe('the policy engine', () => {
  const permitAll = 'permit (principal, action, resource);\n'
  const asAlice: AuthzRequest = {
    principal: { type: 'User', id: 'alice' },
    action: 'order.read',
    resource: { type: 'Order', id: 'o1' },
  }

  it('names a policy by its file and its position in the file, counted from 1', async () => {
    const dir = tempDir()
    try {
      // More than ten policies: Cedar sorts its own ids as strings (policy10 before policy2).
      const twelve = Array.from(
        { length: 12 },
        (_, i) => `// policy ${i + 1}\npermit (principal == Mercato::User::"u${i + 1}", action, resource);`,
      )
      writeFileSync(join(dir.path, 'b.cedar'), twelve.join('\n'))
      writeFileSync(join(dir.path, 'a.cedar'), 'permit (principal == Mercato::User::"u2", action, resource);')
      writeFileSync(join(dir.path, 'notes.txt'), 'not a policy')
      const engine = await PolicyEngine.load(dir.path)
      for (const [user, reasons] of [
        ['u1', ['b.cedar#1']],
        ['u2', ['a.cedar#1', 'b.cedar#2']],
        ['u10', ['b.cedar#10']],
        ['u12', ['b.cedar#12']],
      ] as const) {
        const decision = engine.isAllowed({ ...asAlice, principal: { type: 'User', id: user } })
        assert.equal(decision.allowed, true)
        assert.deepEqual([...decision.reasons].sort(), reasons)
      }
    } finally {
      dir.remove()
    }
  })

  it('refuses a file with a syntax error, naming the file and what Cedar found', async () => {
    const dir = tempDir()
    try {
      writeFileSync(join(dir.path, 'good.cedar'), permitAll)
      writeFileSync(
        join(dir.path, 'broken.cedar'),
        `${permitAll}\npermit (principal, action, resource) when { 1 == };\n`,
      )
      await assert.rejects(PolicyEngine.load(dir.path), (error) => {
        assert.ok(error instanceof ConfigError)
        assert.equal(error.setting, 'MERCATO_POLICY_DIR')
        assert.match(error.message, /broken\.cedar/)
        assert.match(error.message, /line 3:/)
        assert.match(error.message, /unexpected token/)
        return true
      })
    } finally {
      dir.remove()
    }
  })

  it('refuses a directory that is missing or has no policies', async () => {
    const dir = tempDir()
    try {
      await assert.rejects(PolicyEngine.load(dir.path), ConfigError)
      await assert.rejects(PolicyEngine.load(join(dir.path, 'missing')), ConfigError)
    } finally {
      dir.remove()
    }
  })

  it('answers a request Cedar cannot evaluate with a deny and the error, not a throw', async () => {
    const dir = tempDir()
    try {
      writeFileSync(join(dir.path, 'all.cedar'), permitAll)
      const engine = await PolicyEngine.load(dir.path)
      // Cedar has no floating-point numbers.
      const decision = engine.isAllowed({ ...asAlice, context: { amount: 1.5 } })
      assert.equal(decision.allowed, false)
      assert.equal(decision.errors.length, 1)
    } finally {
      dir.remove()
    }
  })

  it('forgets its decisions on reload, and keeps the old policies when a reload fails', async () => {
    const dir = tempDir()
    try {
      const file = join(dir.path, 'rules.cedar')
      writeFileSync(file, permitAll)
      const engine = await PolicyEngine.load(dir.path)
      assert.equal(engine.isAllowed(asAlice).allowed, true)

      writeFileSync(file, 'forbid (principal, action, resource);\n')
      assert.equal(engine.isAllowed(asAlice).allowed, true, 'answered from the memo until a reload')
      await engine.reload()
      assert.equal(engine.isAllowed(asAlice).allowed, false)

      writeFileSync(file, 'permit (principal, action, resource) when {')
      await assert.rejects(engine.reload(), ConfigError)
      assert.equal(engine.isAllowed(asAlice).allowed, false)
      const other = { ...asAlice, resource: { type: 'Order', id: 'o2' } }
      assert.equal(engine.isAllowed(other).allowed, false, 'a new request is decided by the old policies')
    } finally {
      dir.remove()
    }
  })
})
