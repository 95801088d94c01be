// SQLite copies a WAL back into its database file (a checkpoint) on the connection that
// commits, once the WAL passes 1,000 pages: a few megabytes of writes and two fsyncs
// inside one COMMIT, which blocks the event loop for milliseconds. Mercato's files are
// checkpointed by one worker thread instead, on its own connections, a few times a
// second; the committing connections keep SQLite's own checkpoint only as a backstop for
// a WAL that grows far past that (the worker stalled).
import type { DatabaseSync, StatementSync } from 'node:sqlite'
import { parentPort, Worker, workerData } from 'node:worker_threads'

/** Pages a WAL may reach before the committing connection checkpoints it itself. */
const backstopPages = 20_000
const intervalMs = 100

type Message = { open: string } | { close: string; id: number }

let worker: Worker | undefined
const openCounts = new Map<string, number>()
/** Closes a worker has been asked for and not yet confirmed, by id. */
const closing = new Map<number, { done: () => void; by: Worker }>()
let closes = 0

/**
 * Puts `db` (a connection to the file at `path`, in WAL mode) under the worker's
 * checkpoints. Call `release` when the connection closes: it resolves once the worker has
 * closed its own connection to the file (the last one to close removes the WAL), so a
 * caller that then deletes the file's directory races no one.
 */
export function checkpointInBackground(db: DatabaseSync, path: string): { release(): Promise<void> } {
  db.exec(`PRAGMA wal_autocheckpoint = ${backstopPages}`)
  const count = openCounts.get(path) ?? 0
  openCounts.set(path, count + 1)
  if (count === 0) post({ open: path })
  let released = false
  return {
    async release() {
      if (released) return
      released = true
      const left = (openCounts.get(path) ?? 1) - 1
      if (left > 0) openCounts.set(path, left)
      else {
        openCounts.delete(path)
        const id = ++closes
        await new Promise<void>((done) => {
          const by = post({ close: path, id })
          closing.set(id, { done, by })
          // The answer must be able to arrive when nothing else keeps the process up.
          by.ref()
        })
      }
    },
  }
}

function post(message: Message): Worker {
  if (!worker) {
    const started = new Worker(new URL(import.meta.url), { workerData: { walCheckpoints: true } })
    worker = started
    // The process may exit with files still registered: their WAL is recovered on open.
    started.unref()
    started.on('message', ({ closed }: { closed: number }) => {
      closing.get(closed)?.done()
      closing.delete(closed)
      if (closing.size === 0) started.unref()
    })
    started.on('error', (error) => {
      process.emitWarning(`WAL checkpoint worker failed: ${String(error)}`)
      if (worker === started) worker = undefined
    })
    // Its connections are closed with it.
    started.on('exit', () => {
      if (worker === started) worker = undefined
      for (const [id, { done, by }] of closing)
        if (by === started) {
          done()
          closing.delete(id)
        }
    })
    // A worker started again (after one failed) takes every file still open (it ignores
    // a file it has already).
    for (const path of openCounts.keys()) started.postMessage({ open: path })
  }
  worker.postMessage(message)
  return worker
}

async function runWorker(): Promise<void> {
  const { DatabaseSync } = await import('node:sqlite')
  /** Files under checkpoints, each with its connection once one could be opened. */
  const files = new Map<string, { db: DatabaseSync; checkpoint: StatementSync } | undefined>()
  const isBusy = (error: unknown) => /locked|busy/i.test(String(error))
  const closeFile = (path: string) => {
    try {
      files.get(path)?.db.close()
    } catch {}
    files.delete(path)
  }
  const connect = (path: string) => {
    let db: DatabaseSync | undefined
    try {
      db = new DatabaseSync(path)
      // A checkpoint must never wait on the process's writers: PASSIVE does what it can.
      db.exec('PRAGMA busy_timeout = 0')
      files.set(path, { db, checkpoint: db.prepare('PRAGMA wal_checkpoint(PASSIVE)') })
    } catch (error) {
      // A connection left open here would hold the file for good, and keep the last close
      // from removing its WAL.
      try {
        db?.close()
      } catch {}
      // Reading the schema is refused while a writer holds the file (a migration, or its
      // switch to WAL): the next turn tries again. Anything else (the file is gone) ends it.
      if (!isBusy(error)) files.delete(path)
    }
  }
  parentPort!.on('message', (message: Message) => {
    if ('close' in message) {
      closeFile(message.close)
      parentPort!.postMessage({ closed: message.id })
      return
    }
    if (files.has(message.open)) return
    files.set(message.open, undefined)
    connect(message.open)
  })
  setInterval(() => {
    for (const [path, connection] of files) {
      if (!connection) {
        connect(path)
        continue
      }
      try {
        connection.checkpoint.get()
      } catch (error) {
        // Busy is the next turn's work; anything else (the file was removed) ends it.
        if (!isBusy(error)) closeFile(path)
      }
    }
  }, intervalMs)
}

// Only in the thread started above: other worker threads may import this module too.
if ((workerData as { walCheckpoints?: boolean } | null)?.walCheckpoints && parentPort) void runWorker()
