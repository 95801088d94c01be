// Demo data for a fresh shop: a catalog, stock for every product and a few customers,
// published as ordinary events on an empty data directory. Event ids are fixed, so a
// second run (or a crash half-way) duplicates nothing.
import { createEvent, type NewEvent } from '../contracts/envelope.ts'
import type { Store } from '../engines/store/port.ts'
import type { EventStream } from '../engines/stream/event-stream.ts'
import { hashPassword } from '../platform/passwords.ts'

const categories: Record<string, string[]> = {
  coffee: ['Espresso Beans', 'Filter Roast', 'Decaf Blend', 'Single Origin Kenya', 'Cold Brew Pack'],
  tea: ['Sencha', 'Earl Grey', 'Rooibos', 'Oolong', 'Chai Spice'],
  kitchen: ['Pour-over Kettle', 'Burr Grinder', 'French Press', 'Milk Frother', 'Scale'],
  books: ['Brewing at Home', 'The Tea Atlas', 'Roasting Basics', 'Latte Art', 'Water for Coffee'],
  apparel: ['Barista Apron', 'Canvas Tote', 'Roaster Cap', 'Logo T-shirt', 'Wool Socks'],
}

export const demoCustomers = [
  { email: 'ada@example.com', givenName: 'Ada', familyName: 'Lovelace', password: 'ada-demo-password' },
  { email: 'grace@example.com', givenName: 'Grace', familyName: 'Hopper', password: 'grace-demo-password' },
  { email: 'alan@example.com', givenName: 'Alan', familyName: 'Turing', password: 'alan-demo-password' },
]

const demoAddress = {
  name: 'Demo Customer',
  line1: '1 Market Street',
  city: 'Springfield',
  postalCode: '12345',
  country: 'US',
}

/** The demo catalog: SKUs `DEMO-<CATEGORY>-<n>`. */
export function demoProducts() {
  return Object.entries(categories).flatMap(([category, names], c) =>
    names.map((name, i) => ({
      sku: `DEMO-${category.toUpperCase()}-${i + 1}`,
      name,
      description: `${name}: part of the demo ${category} range.`,
      category,
      priceMinor: 500 + 250 * ((c * 5 + i) % 13),
      currency: 'USD',
    })),
  )
}

/** Publishes the demo data once per data directory; resolves false when it was there already. */
export async function seedDemoData(
  stream: EventStream,
  store: Store,
  stockPerProduct = 1_000,
): Promise<boolean> {
  await store.migrate([
    {
      id: 'seed-0001-runs',
      sql: 'CREATE TABLE IF NOT EXISTS seed_runs (name TEXT PRIMARY KEY, at TEXT NOT NULL)',
    },
  ])
  const [done] = await store.query('SELECT 1 FROM seed_runs WHERE name = $1', ['demo'])
  if (done) return false
  const source = 'mercato/demo-data'
  const events: NewEvent[] = []
  for (const product of demoProducts()) {
    events.push({
      id: `demo-product-${product.sku}`,
      source,
      type: 'product.upserted',
      subject: product.sku,
      data: product,
    })
    events.push({
      id: `demo-stock-${product.sku}`,
      source,
      type: 'inventory.adjustment-requested',
      subject: product.sku,
      data: { sku: product.sku, delta: stockPerProduct, reason: 'restock' },
    })
  }
  for (const [i, customer] of demoCustomers.entries()) {
    const customerId = `cus_demo_${i + 1}`
    events.push({
      id: `demo-customer-${i + 1}`,
      source,
      type: 'customer.registration-requested',
      subject: customerId,
      data: {
        customerId,
        email: customer.email,
        givenName: customer.givenName,
        familyName: customer.familyName,
        passwordHash: await hashPassword(customer.password),
        addresses: [{ ...demoAddress, name: `${customer.givenName} ${customer.familyName}` }],
      },
    })
  }
  await stream.publish(events.map((event) => createEvent(event)))
  await store.execute('INSERT INTO seed_runs (name, at) VALUES ($1, $2) ON CONFLICT DO NOTHING', [
    'demo',
    new Date().toISOString(),
  ])
  return true
}
