// The bodies of the command API, in TypeBox: one definition gives the type, the validator
// and the OpenAPI document. Unknown fields are refused everywhere.
import { type Static, Type as T } from '@sinclair/typebox'
import { AmountMinor, Email, Id, Quantity, Sku } from './events.ts'

/** ISO 4217 codes the runtime knows; anything else is a bad currency. */
export const currencies: string[] = Intl.supportedValuesOf('currency')

const Currency = T.String({ enum: currencies, description: 'ISO 4217 currency code' })
const strict = { additionalProperties: false } as const

/**
 * What a refusal of a value that fails its `pattern` says, in words (a regular expression
 * means little to a client). An annotation the validator knows and ignores.
 */
export const patternSays = (message: string) => ({ 'x-pattern-message': message })

/** The annotations these schemas carry, for a validator to know (ajv refuses a keyword it does not). */
export const schemaAnnotations = ['x-pattern-message']

const idSays = patternSays('must be letters, digits, ".", "_", ":" or "-"')
const ApiId = { ...Id, ...idSays }

/**
 * ISO 3166-1 alpha-2 codes the runtime can name, less aliases of another code (UK for GB,
 * DY for BJ, and the withdrawn ones ICU still maps), groupings (EU, UN, …), test codes and
 * the exceptionally reserved ones (AC, IC, …); XK, Kosovo's user-assigned code that carriers
 * take, stays. Anything else is a bad country.
 */
export const countries: string[] = (() => {
  const names = new Intl.DisplayNames(['en'], { type: 'region', fallback: 'none' })
  const notCountries = new Set('EU EZ QO UN XA XB ZZ NT AC CP CQ DG EA IC TA'.split(' '))
  const letters = [...'ABCDEFGHIJKLMNOPQRSTUVWXYZ']
  return letters
    .flatMap((a) => letters.map((b) => a + b))
    .filter(
      (code) =>
        !notCountries.has(code) &&
        names.of(code) !== undefined &&
        new Intl.Locale(`und-${code}`).region === code,
    )
})()

/**
 * Text a person types: not blank, and free of control characters (but line breaks and tabs
 * when it may have `lines`), lone surrogates and bidi overrides.
 */
const PersonText = (minLength: number, maxLength: number, { lines = false } = {}) => {
  const controls = lines ? '\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F' : '\\p{Cc}'
  const unlike = `${lines ? 'control characters but line breaks and tabs' : 'control characters'}, lone surrogates or bidirectional overrides`
  return T.String({
    minLength,
    maxLength,
    pattern: `^${minLength > 0 ? '(?!\\s*$)' : ''}[^${controls}\\p{Cs}\\u202A-\\u202E\\u2066-\\u2069]*$`,
    ...patternSays(minLength > 0 ? `must not be blank, nor hold ${unlike}` : `must not hold ${unlike}`),
  })
}

/** A postal address as the API takes it: stricter than the events' (which must stay as published). */
const PostalAddress = T.Object(
  {
    name: PersonText(1, 200),
    line1: PersonText(1, 200),
    line2: T.Optional(PersonText(0, 200)),
    city: PersonText(1, 100),
    postalCode: PersonText(1, 20),
    country: T.String({ enum: countries, description: 'ISO 3166-1 alpha-2 country code' }),
  },
  strict,
)

export const PlaceOrder = T.Object(
  {
    customerId: T.Optional({
      ...ApiId,
      description: 'the customer is the one signed in; when sent, it must be that customer',
    }),
    lines: T.Array(
      T.Object(
        { sku: { ...Sku, ...patternSays('must be letters, digits, ".", "_" or "-"') }, quantity: Quantity },
        strict,
      ),
      { minItems: 1, maxItems: 100 },
    ),
    shippingAddress: PostalAddress,
    paymentMethodToken: ApiId,
    express: T.Optional(T.Boolean()),
  },
  strict,
)
export type PlaceOrder = Static<typeof PlaceOrder>

/** For routes that take no query parameters: one sent is refused, not ignored. */
export const NoQuery = T.Object({}, strict)

export const CancelOrder = T.Object({ reason: T.Optional(PersonText(0, 500)) }, strict)

export const RegisterCustomer = T.Object(
  {
    email: Email,
    givenName: PersonText(1, 100),
    familyName: PersonText(0, 100),
    password: T.Optional(T.String({ minLength: 10, maxLength: 200 })),
    addresses: T.Optional(T.Array(PostalAddress, { maxItems: 20 })),
  },
  strict,
)
export type RegisterCustomer = Static<typeof RegisterCustomer>

export const UpsertProduct = T.Object(
  {
    name: PersonText(1, 200),
    description: PersonText(0, 5000, { lines: true }),
    category: PersonText(1, 100),
    priceMinor: AmountMinor,
    currency: Currency,
  },
  strict,
)
export type UpsertProduct = Static<typeof UpsertProduct>

export const AdjustInventory = T.Object(
  {
    delta: T.Integer({ minimum: -1_000_000, maximum: 1_000_000, not: { const: 0 } }),
    reason: T.Union([T.Literal('restock'), T.Literal('write-off')]),
  },
  strict,
)
export type AdjustInventory = Static<typeof AdjustInventory>

export const SetFlag = T.Object(
  {
    state: T.Union([T.Literal('ENABLED'), T.Literal('DISABLED')]),
    variants: T.Record(T.String({ minLength: 1, maxLength: 64 }), T.Unknown(), { maxProperties: 100 }),
    defaultVariant: T.String({ minLength: 1, maxLength: 64 }),
    targeting: T.Optional(T.Record(T.String(), T.Unknown())),
  },
  strict,
)

export const RegisterWebhook = T.Object(
  {
    url: T.String({ format: 'uri', maxLength: 2048 }),
    events: T.Array(T.String({ minLength: 1, maxLength: 128 }), { minItems: 1, maxItems: 100 }),
    enabled: T.Optional(T.Boolean()),
  },
  strict,
)

/**
 * A SKU in a path: the events' pattern, beginning with a letter or a digit, so that no SKU
 * is `.` or `..`, which a client would read as a path segment of its own.
 */
export const SkuParam = T.Object(
  {
    sku: T.String({
      minLength: 1,
      maxLength: 64,
      pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$',
      ...patternSays('must be letters, digits, ".", "_" or "-", beginning with a letter or a digit'),
    }),
  },
  strict,
)
export const IdParam = T.Object({ id: ApiId }, strict)
export const FlagKeyParam = T.Object(
  {
    key: T.String({
      pattern: '^[a-z0-9][a-z0-9._-]{0,63}$',
      ...patternSays(
        'must be 1 to 64 lowercase letters, digits, ".", "_" or "-", beginning with a letter or a digit',
      ),
    }),
  },
  strict,
)

export const Accepted = T.Object({
  id: T.String({
    description:
      'the resource the command created or acts on: the order (also for a cancel), the customer, the product (its SKU), the stock adjustment, the flag, the webhook endpoint',
  }),
  status: T.Literal('accepted'),
  consistencyToken: T.String(),
})
