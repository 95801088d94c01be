// The local mail sink: a real SMTP server (smtp-server) on 127.0.0.1 that accepts every
// message and keeps the last few, in memory and, given a directory, as .eml files there, so
// a deployment without a mail server still sends real SMTP and a person (with any mail
// program, or `cat`) or a test can read what was sent.
import { mkdirSync, readdirSync } from 'node:fs'
import { unlink, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { SMTPServer } from 'smtp-server'

export interface SinkMessage {
  /** The envelope recipients, comma separated. */
  to: string
  from: string
  subject: string
  text: string
  messageId: string | undefined
  receivedAt: string
}

export interface MailSink {
  readonly host: string
  readonly port: number
  /** The messages received, oldest first (the last `messagesMax`). */
  messages(): SinkMessage[]
  close(): Promise<void>
}

export interface MailSinkOptions {
  messagesMax?: number
  messageBytesMax?: number
  /** Where each message is also written, as received (`<time>-<n>.eml`); the last `messagesMax` stay. */
  directory?: string
}

export async function startMailSink(options: MailSinkOptions = {}): Promise<MailSink> {
  const messagesMax = options.messagesMax ?? 1_000
  const messageBytesMax = options.messageBytesMax ?? 1_048_576
  const kept: SinkMessage[] = []
  const files = options.directory ? messageFiles(options.directory) : undefined
  let received = 0
  const server = new SMTPServer({
    secure: false,
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    disableReverseLookup: true,
    logger: false,
    size: messageBytesMax,
    maxClients: 50,
    closeTimeout: 1_000,
    socketTimeout: 30_000,
    onData(stream, session, callback) {
      const chunks: Buffer[] = []
      let bytes = 0
      stream.on('data', (chunk: Buffer) => {
        bytes += chunk.length
        if (bytes <= messageBytesMax) chunks.push(chunk)
      })
      stream.on('error', (error) => callback(error))
      stream.on('end', () => {
        if (stream.sizeExceeded) {
          const error = Object.assign(new Error(`message exceeds the ${messageBytesMax}-byte limit`), {
            responseCode: 552,
          })
          callback(error)
          return
        }
        const raw = Buffer.concat(chunks)
        const parsed = parseMessage(raw)
        const envelopeFrom = session.envelope.mailFrom
        // Kept once accepted: a message refused (451) comes again, and is kept then.
        const keep = () => {
          kept.push({
            to: session.envelope.rcptTo.map((rcpt) => rcpt.address).join(', '),
            from: (envelopeFrom ? envelopeFrom.address : '') || parsed.headers.get('from') || '',
            subject: parsed.headers.get('subject') ?? '',
            text: parsed.text,
            messageId: parsed.headers.get('message-id'),
            receivedAt: new Date().toISOString(),
          })
          if (kept.length > messagesMax) kept.splice(0, kept.length - messagesMax)
          callback()
        }
        if (!options.directory || !files) {
          keep()
          return
        }
        // Named by time, then by arrival: the names sort in the order the messages came.
        const name = `${Date.now()}-${String(++received).padStart(6, '0')}.eml`
        writeFile(join(options.directory, name), raw).then(
          async () => {
            files.push(name)
            // The answer waits for the oldest to go: then a reader of the folder never finds
            // more than the last messagesMax (one gone already is no matter).
            const old = files.splice(0, Math.max(0, files.length - messagesMax))
            await Promise.all(old.map((file) => unlink(join(options.directory!, file)).catch(() => {})))
            keep()
          },
          // The sender tries again later (a full disk, say): 451 is a transient refusal.
          (error: Error) => callback(Object.assign(error, { responseCode: 451 })),
        )
      })
    },
  })
  server.on('error', () => {
    // A client that misbehaves is its own problem; the sink keeps serving.
  })
  const host = '127.0.0.1'
  const port = await new Promise<number>((resolve, reject) => {
    const listener = server.listen(0, host, () => resolve((listener.address() as AddressInfo).port))
    listener.once('error', reject)
  })
  return {
    host,
    port,
    messages: () => kept.map((message) => ({ ...message })),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

/** The .eml files a directory holds, oldest first (created if missing). */
function messageFiles(directory: string): string[] {
  mkdirSync(directory, { recursive: true })
  return readdirSync(directory)
    .filter((name) => name.endsWith('.eml'))
    .sort((a, b) => Number.parseInt(a, 10) - Number.parseInt(b, 10) || a.localeCompare(b))
}

interface ParsedMessage {
  headers: Map<string, string>
  text: string
}

/** Reads an RFC 5322 message: unfolded, decoded headers and the text of its (first) text/plain part. */
export function parseMessage(raw: Buffer): ParsedMessage {
  // latin1 maps each byte to one character, so offsets are byte offsets; the head is then
  // read as UTF-8 (RFC 6532), the body decoded by its own transfer encoding and charset.
  const source = raw.toString('latin1')
  const split = /\r?\n\r?\n/.exec(source)
  const head = split ? raw.subarray(0, split.index).toString('utf8') : raw.toString('utf8')
  const body = split ? source.slice(split.index + split[0].length) : ''
  const headers = parseHeaders(head)
  return { headers, text: textOf(headers, body) }
}

function parseHeaders(head: string): Map<string, string> {
  const headers = new Map<string, string>()
  const unfolded = head.replace(/\r?\n[ \t]+/g, ' ')
  for (const line of unfolded.split(/\r?\n/)) {
    const colon = line.indexOf(':')
    if (colon <= 0) continue
    const name = line.slice(0, colon).trim().toLowerCase()
    if (!headers.has(name)) headers.set(name, decodeWords(line.slice(colon + 1).trim()))
  }
  return headers
}

function textOf(headers: Map<string, string>, body: string): string {
  const contentType = headers.get('content-type') ?? 'text/plain'
  const boundary = /boundary="?([^";]+)"?/i.exec(contentType)?.[1]
  if (/^multipart\//i.test(contentType) && boundary) {
    for (const part of body.split(`--${boundary}`).slice(1)) {
      if (part.startsWith('--')) break
      const parsed = parseMessage(Buffer.from(part.replace(/^\r?\n/, ''), 'latin1'))
      const type = parsed.headers.get('content-type') ?? 'text/plain'
      if (/^text\/plain/i.test(type) || /^multipart\//i.test(type)) return parsed.text
    }
    return ''
  }
  const charset = /charset="?([^";]+)"?/i.exec(contentType)?.[1] ?? 'utf-8'
  const encoding = (headers.get('content-transfer-encoding') ?? '7bit').toLowerCase()
  let bytes: Buffer
  if (encoding === 'base64') bytes = Buffer.from(body.replace(/[^A-Za-z0-9+/=]/g, ''), 'base64')
  else if (encoding === 'quoted-printable') bytes = decodeQuotedPrintable(body)
  else bytes = Buffer.from(body, 'latin1')
  return decodeCharset(bytes, charset).replace(/\r\n/g, '\n').replace(/\n$/, '')
}

function decodeQuotedPrintable(text: string): Buffer {
  const joined = text.replace(/=\r?\n/g, '')
  const bytes: number[] = []
  for (let i = 0; i < joined.length; i++) {
    const hex = joined.slice(i + 1, i + 3)
    if (joined[i] === '=' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(Number.parseInt(hex, 16))
      i += 2
    } else {
      bytes.push(joined.charCodeAt(i) & 0xff)
    }
  }
  return Buffer.from(bytes)
}

function decodeCharset(bytes: Buffer, charset: string): string {
  try {
    return new TextDecoder(charset.trim().toLowerCase()).decode(bytes)
  } catch {
    return bytes.toString('utf8')
  }
}

/** Decodes RFC 2047 encoded words; white space between two adjacent encoded words is dropped. */
function decodeWords(value: string): string {
  return value
    .replace(/(\?=)\s+(?==\?)/g, '$1')
    .replace(/=\?([^?]+)\?([BbQq])\?([^?]*)\?=/g, (_, charset: string, encoding: string, text: string) =>
      decodeCharset(
        encoding.toUpperCase() === 'B'
          ? Buffer.from(text, 'base64')
          : decodeQuotedPrintable(text.replace(/_/g, ' ')),
        charset,
      ),
    )
}
