// The failures and delays a test or an operator can dial into the provider stand-in.
import { type Static, Type as T } from '@sinclair/typebox'

export const DialsSchema = T.Object(
  {
    latencyMs: T.Integer({ minimum: 0, maximum: 60_000 }),
    /** Share of operations answered 500 without doing anything. */
    errorRate: T.Number({ minimum: 0, maximum: 1 }),
    /** Share of operations done but answered too late (held until `holdMs` passes or the server closes). */
    timeoutRate: T.Number({ minimum: 0, maximum: 1 }),
    declineTokens: T.Array(T.String({ minLength: 1, maxLength: 128 }), { maxItems: 1_000 }),
  },
  { additionalProperties: false },
)

export type Dials = Static<typeof DialsSchema>

export const DialsChangeSchema = T.Partial(DialsSchema, { additionalProperties: false })

export function defaultDials(): Dials {
  return { latencyMs: 0, errorRate: 0, timeoutRate: 0, declineTokens: [] }
}

/** Why a token is declined, or undefined when it is accepted. */
export function declineReasonOf(token: string, dials: Dials): string | undefined {
  if (token === 'tok_decline' || dials.declineTokens.includes(token)) return 'card_declined'
  if (!token.startsWith('tok_')) return 'invalid_payment_method'
  return undefined
}
