// The consistency token a write returns: the stream position of the event it appended,
// opaque to clients. A read that carries it waits until its view has reached that position.
import type { RecordPosition } from '../engines/stream/port.ts'

export function encodeConsistencyToken(position: RecordPosition): string {
  return Buffer.from(`v1:${position.topic}:${position.partition}:${position.offset}`).toString('base64url')
}

/** The position a token names, or undefined when it is not a token this version wrote. */
export function decodeConsistencyToken(token: string): RecordPosition | undefined {
  const match = /^v1:([A-Za-z0-9._-]+):(\d{1,5}):(\d{1,15})$/.exec(Buffer.from(token, 'base64url').toString())
  if (!match) return undefined
  return { topic: match[1], partition: Number(match[2]), offset: Number(match[3]) }
}
