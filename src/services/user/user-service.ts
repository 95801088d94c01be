// The user service: customer profiles, credentials (the password hash only) and address
// books. A registration request becomes `customer.registered` (and one
// `customer.address-added` per address), or `customer.registration-rejected` when the
// e-mail address belongs to another customer. E-mail addresses are unique regardless of
// case, enforced by a unique index, so two requests racing on two partitions (or two
// processes) cannot both win.
import { createHash, randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { CloudEvent } from '../../contracts/envelope.ts'
import type { Migration, Store, Tx } from '../../engines/store/port.ts'
import { MercatoError } from '../../platform/errors.ts'
import { authorizeService, type Identity, requireVerifiedCaller } from '../../platform/identity/guard.ts'
import type { Role } from '../../platform/identity/tokens.ts'
import type { Logger } from '../../platform/logger.ts'
import { hashPassword, passwordBytesMax, verifyPassword } from '../../platform/passwords.ts'
import { problemDocs } from '../../platform/problem-docs.ts'
import type { Emit, HandlerTools, Service } from '../../platform/service.ts'

export const userMigrations: Migration[] = [
  {
    id: 'user-0001-customers',
    sql: `CREATE TABLE IF NOT EXISTS user_customers (
        customer_id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL,
        given_name TEXT NOT NULL,
        family_name TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        registration_event_id TEXT NOT NULL);
      CREATE UNIQUE INDEX IF NOT EXISTS user_customers_email_key ON user_customers (email_key);
      CREATE TABLE IF NOT EXISTS user_credentials (
        customer_id TEXT PRIMARY KEY REFERENCES user_customers (customer_id),
        password_hash TEXT NOT NULL,
        updated_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS user_addresses (
        customer_id TEXT NOT NULL REFERENCES user_customers (customer_id),
        address_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        address TEXT NOT NULL,
        added_at TEXT NOT NULL,
        PRIMARY KEY (customer_id, address_id));
      CREATE TABLE IF NOT EXISTS user_rejections (
        customer_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        email TEXT NOT NULL,
        reason TEXT NOT NULL,
        rejected_at TEXT NOT NULL,
        PRIMARY KEY (customer_id, event_id))`,
  },
  {
    id: 'user-0002-staff',
    sql: `CREATE TABLE IF NOT EXISTS user_staff (
        account_id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at TEXT NOT NULL);
      CREATE UNIQUE INDEX IF NOT EXISTS user_staff_email_key ON user_staff (email_key)`,
  },
]

export interface Address {
  name: string
  line1: string
  line2?: string
  city: string
  postalCode: string
  country: string
}

export interface RegistrationRequested {
  customerId: string
  email: string
  givenName: string
  familyName: string
  passwordHash?: string
  addresses?: Address[]
}

export interface Credentials {
  customerId: string
  email: string
  passwordHash: string
}

export interface CustomerProfile {
  customerId: string
  email: string
  givenName: string
  familyName: string
  registeredAt: string
  addresses: (Address & { addressId: string })[]
}

/** The form under which an e-mail address is unique: trimmed, lower case. */
export function emailKey(email: string): string {
  return email.trim().toLowerCase()
}

/** A stable id for the `index`-th address of a registration, so replaying it yields the same ids. */
export function addressIdOf(customerId: string, index: number): string {
  const digest = createHash('sha256').update(`${customerId}\u0000address\u0000${index}`).digest('base64url')
  return `adr_${digest.slice(0, 22)}`
}

/** The credentials registered for an e-mail address (any case), for a login; undefined when none. */
export async function findCredentials(store: Store, email: string): Promise<Credentials | undefined> {
  const rows = await store.query<{ customer_id: string; email: string; password_hash: string }>(
    `SELECT c.customer_id, c.email, k.password_hash
       FROM user_customers c JOIN user_credentials k ON k.customer_id = c.customer_id
      WHERE c.email_key = $1`,
    [emailKey(email)],
  )
  const row = rows[0]
  return row ? { customerId: row.customer_id, email: row.email, passwordHash: row.password_hash } : undefined
}

/** A customer's profile and address book; undefined when not registered. */
export async function findCustomer(store: Store, customerId: string): Promise<CustomerProfile | undefined> {
  const rows = await store.query<{
    customer_id: string
    email: string
    given_name: string
    family_name: string
    registered_at: string
  }>(
    'SELECT customer_id, email, given_name, family_name, registered_at FROM user_customers WHERE customer_id = $1',
    [customerId],
  )
  const row = rows[0]
  if (!row) return undefined
  const addresses = await store.query<{ address_id: string; address: string }>(
    'SELECT address_id, address FROM user_addresses WHERE customer_id = $1 ORDER BY position',
    [customerId],
  )
  return {
    customerId: row.customer_id,
    email: row.email,
    givenName: row.given_name,
    familyName: row.family_name,
    registeredAt: row.registered_at,
    addresses: addresses.map((a) => ({ addressId: a.address_id, ...(JSON.parse(a.address) as Address) })),
  }
}

async function register(
  tx: Tx,
  emit: Emit,
  event: CloudEvent,
  request: RegistrationRequested,
): Promise<void> {
  const { customerId } = request
  const existing = await tx.query('SELECT 1 FROM user_customers WHERE customer_id = $1', [customerId])
  // Already registered under this id (a second request for the same customer): nothing to do.
  if (existing.length > 0) return
  const key = emailKey(request.email)
  // A staff account's address is taken too: one address, one account to sign in as.
  const taken = await tx.query(
    'SELECT 1 FROM user_customers WHERE email_key = $1 UNION ALL SELECT 1 FROM user_staff WHERE email_key = $1',
    [key],
  )
  const now = new Date().toISOString()
  if (taken.length > 0) {
    const reason = 'the e-mail address is already registered'
    await tx.execute(
      `INSERT INTO user_rejections (customer_id, event_id, email, reason, rejected_at)
       VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
      [customerId, event.id, request.email, reason, now],
    )
    emit({ type: 'customer.registration-rejected', subject: customerId, data: { customerId, reason } })
    return
  }
  await tx.execute(
    `INSERT INTO user_customers
       (customer_id, email, email_key, given_name, family_name, registered_at, registration_event_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [customerId, request.email.trim(), key, request.givenName, request.familyName, now, event.id],
  )
  if (request.passwordHash) {
    await tx.execute(
      'INSERT INTO user_credentials (customer_id, password_hash, updated_at) VALUES ($1, $2, $3)',
      [customerId, request.passwordHash, now],
    )
  }
  emit({
    type: 'customer.registered',
    subject: customerId,
    data: {
      customerId,
      email: request.email.trim(),
      givenName: request.givenName,
      familyName: request.familyName,
    },
  })
  const addresses = request.addresses ?? []
  for (const [index, address] of addresses.entries()) {
    const addressId = addressIdOf(customerId, index)
    await tx.execute(
      `INSERT INTO user_addresses (customer_id, address_id, position, address, added_at)
       VALUES ($1, $2, $3, $4, $5)`,
      [customerId, addressId, index, JSON.stringify(address), now],
    )
    emit({ type: 'customer.address-added', subject: customerId, data: { customerId, addressId, address } })
  }
}

export interface StaffAccount {
  email: string
  /** Unset: a password is generated and logged once. */
  password?: string
}

export interface UserServiceOptions {
  http: FastifyInstance
  identity: Identity
  log: Logger
  /** The first staff accounts, created when the service has none. */
  staff: { admin: StaffAccount; support: StaffAccount }
}

export interface LoginSubject {
  subject: string
  role: Role
  customerId?: string
}

/** Creates the admin and support accounts when there is no staff account yet. */
export async function createFirstStaff(store: Store, staff: UserServiceOptions['staff'], log: Logger) {
  const existing = await store.query('SELECT 1 FROM user_staff LIMIT 1')
  if (existing.length > 0) return
  for (const role of ['admin', 'support'] as const) {
    const account = staff[role]
    const password = account.password ?? randomBytes(18).toString('base64url')
    // Another process starting on the same empty store may win the race; then its password stands.
    const created = await store.execute(
      `INSERT INTO user_staff (account_id, email, email_key, role, password_hash, created_at)
       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
      [
        `stf_${role}`,
        account.email,
        emailKey(account.email),
        role,
        await hashPassword(password),
        new Date().toISOString(),
      ],
    )
    if (created === 0) continue
    if (account.password === undefined) {
      // Shown once: only the hash is kept.
      log.warn(
        { email: account.email, role, password },
        `first ${role} account created with a generated password`,
      )
    } else {
      log.info({ email: account.email, role }, `first ${role} account created`)
    }
  }
}

let decoyHash: Promise<string> | undefined

/** Who a username and password belong to (a customer or a staff account); undefined when no one. */
export async function verifyLogin(
  store: Store,
  username: string,
  password: string,
): Promise<LoginSubject | undefined> {
  // Staff first, each account with its own password. Registration refuses a staff address,
  // but a customer who held it before the staff account existed still locks no one out.
  const [staff] = await store.query<{ account_id: string; role: Role; password_hash: string }>(
    'SELECT account_id, role, password_hash FROM user_staff WHERE email_key = $1',
    [emailKey(username)],
  )
  if (staff && (await verifyPassword(password, staff.password_hash)))
    return { subject: staff.account_id, role: staff.role }
  const customer = await findCredentials(store, username)
  if (customer && (await verifyPassword(password, customer.passwordHash)))
    return { subject: customer.customerId, role: 'customer', customerId: customer.customerId }
  if (!staff && !customer) {
    // No such account: spend the same time as a wrong password, so timing does not tell.
    decoyHash ??= hashPassword(randomBytes(16).toString('hex'))
    await verifyPassword(password, await decoyHash)
  }
  return undefined
}

const LoginBody = {
  type: 'object',
  required: ['username', 'password'],
  additionalProperties: false,
  properties: {
    username: { type: 'string', minLength: 1, maxLength: 320 },
    password: { type: 'string', minLength: 1, maxLength: passwordBytesMax },
  },
} as const

export async function startUserService(
  service: Service,
  options: UserServiceOptions,
): Promise<{ stop(): Promise<void>; ready(): Promise<void> }> {
  await service.start(userMigrations)
  await createFirstStaff(service.store, options.staff, options.log)
  await service.consume(['customers'], {
    'customer.registration-requested': async (event: CloudEvent, tools: HandlerTools) => {
      const request = event.data as unknown as RegistrationRequested
      await tools.transact((tx, emit) => register(tx, emit, event, request))
    },
  })
  options.http.post(
    '/internal/v1/credentials/verify',
    {
      onRequest: requireVerifiedCaller(options.identity, 'user'),
      // 401: no service token, or the username or password is wrong; 403: not the gateway's.
      config: problemDocs([400, 401, 403, 415]),
      schema: {
        operationId: 'verifyCredentials',
        summary: 'Check a username and password (the gateway, for a password grant)',
        tags: ['internal'],
        security: [{ serviceToken: [] }],
        body: LoginBody,
        response: {
          200: {
            description: 'Who signed in',
            type: 'object',
            required: ['subject', 'role'],
            additionalProperties: false,
            properties: {
              subject: { type: 'string' },
              role: { type: 'string', enum: ['customer', 'admin', 'support'] },
              customerId: { type: 'string' },
            },
          },
        },
      },
    },
    async (request) => {
      authorizeService(options.identity, request, 'credentials.verify', { type: 'Component', id: 'user' })
      const { username, password } = request.body as { username: string; password: string }
      const subject = await verifyLogin(service.store, username, password)
      if (!subject) throw new MercatoError('invalid-credentials', 401, 'the username or password is wrong')
      return subject
    },
  )
  return {
    stop: () => service.stop(),
    ready: () => service.store.ping(),
  }
}
