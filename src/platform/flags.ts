// Feature flags, as the services read them. Definitions are in flagd's JSON format; the
// `flags` component keeps them in the key-value port and evaluates them in process.

export interface FlagReader {
  boolean(
    key: string,
    fallback: boolean,
    context?: Record<string, string | number | boolean>,
  ): Promise<boolean>
  number(key: string, fallback: number, context?: Record<string, string | number | boolean>): Promise<number>
  string(key: string, fallback: string, context?: Record<string, string | number | boolean>): Promise<string>
}

/** The flags every fresh deployment starts with (flagd flag definitions). */
export const defaultFlagDefinitions: Record<string, Record<string, unknown>> = {
  'capture-on': {
    state: 'ENABLED',
    variants: { confirmation: 'confirmation', shipment: 'shipment' },
    defaultVariant: 'confirmation',
  },
  'max-lines-per-order': {
    state: 'ENABLED',
    variants: { default: 100, small: 10 },
    defaultVariant: 'default',
  },
  'express-shipping': {
    state: 'ENABLED',
    variants: { on: true, off: false },
    defaultVariant: 'on',
  },
}
