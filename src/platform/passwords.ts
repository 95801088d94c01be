// Password hashing with scrypt (node:crypto), in a self-describing format:
// `scrypt$N$r$p$saltB64$hashB64`. The command API hashes a password before it goes on the
// stream; the user service stores only the hash; a login verifies against it.
import { randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from 'node:crypto'

/**
 * Cost of new hashes: one of the settings OWASP's password storage cheat sheet lists as
 * equivalent (N = 2^15, r = 8, p = 3: 32 MiB of memory, a few hundred ms of one core).
 */
const cost = { N: 2 ** 15, r: 8, p: 3 }
const saltBytes = 16
const keyBytes = 32
/** Bounds on the parameters a stored hash may name, so a hash cannot make a verify run without end. */
const limits = { NMax: 2 ** 20, rMax: 32, pMax: 16, saltBytesMax: 64, keyBytesMin: 16, keyBytesMax: 128 }
/** Longest password accepted (bytes): scrypt takes any length, but nothing longer is a real password. */
export const passwordBytesMax = 1024

function derive(password: string, salt: Buffer, length: number, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, length, options, (error, key) =>
      error ? reject(error) : resolve(key),
    )
  })
}

function memoryFor(N: number, r: number, p: number): number {
  // scrypt needs about 128 * N * r bytes (plus 128 * r * p); leave headroom.
  return 128 * N * r + 128 * r * p + 1_048_576
}

export async function hashPassword(password: string): Promise<string> {
  if (typeof password !== 'string' || password.length === 0) throw new TypeError('the password is empty')
  if (Buffer.byteLength(password) > passwordBytesMax)
    throw new RangeError(`the password is longer than ${passwordBytesMax} bytes`)
  const salt = randomBytes(saltBytes)
  const key = await derive(password, salt, keyBytes, { ...cost, maxmem: memoryFor(cost.N, cost.r, cost.p) })
  return `scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString('base64')}$${key.toString('base64')}`
}

interface ParsedHash {
  N: number
  r: number
  p: number
  salt: Buffer
  key: Buffer
}

function parseHash(hash: string): ParsedHash | undefined {
  if (typeof hash !== 'string' || hash.length > 512) return undefined
  const parts = hash.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return undefined
  const [N, r, p] = parts.slice(1, 4).map((part) => (/^[0-9]{1,8}$/.test(part) ? Number(part) : Number.NaN))
  if (!Number.isInteger(N) || N < 2 || N > limits.NMax || (N & (N - 1)) !== 0) return undefined
  if (!Number.isInteger(r) || r < 1 || r > limits.rMax) return undefined
  if (!Number.isInteger(p) || p < 1 || p > limits.pMax) return undefined
  const base64 = /^[A-Za-z0-9+/]+={0,2}$/
  if (!base64.test(parts[4]) || !base64.test(parts[5])) return undefined
  const salt = Buffer.from(parts[4], 'base64')
  const key = Buffer.from(parts[5], 'base64')
  if (salt.length === 0 || salt.length > limits.saltBytesMax) return undefined
  if (key.length < limits.keyBytesMin || key.length > limits.keyBytesMax) return undefined
  return { N, r, p, salt, key }
}

/** True when `password` matches `hash`; false for a wrong password or a hash that is not ours. */
export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const parsed = parseHash(hash)
  if (!parsed || typeof password !== 'string' || Buffer.byteLength(password) > passwordBytesMax) return false
  const { N, r, p, salt, key } = parsed
  const candidate = await derive(password, salt, key.length, { N, r, p, maxmem: memoryFor(N, r, p) })
  return timingSafeEqual(candidate, key)
}

/** True when a stored hash was made with weaker parameters than today's, so a login may re-hash it. */
export function passwordNeedsRehash(hash: string): boolean {
  const parsed = parseHash(hash)
  return !parsed || parsed.N * parsed.r * parsed.p < cost.N * cost.r * cost.p || parsed.key.length < keyBytes
}
