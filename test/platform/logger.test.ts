import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { describe, it } from 'node:test'
import { pino } from 'pino'
import { LazyChildLogger } from '../../src/platform/logger.ts'
import { tempDir } from '../support/wait.ts'

function capturing() {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write(chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)))
      done()
    },
  })
  return { logger: pino({ level: 'info' }, stream), lines }
}

describe('a lazy child logger', () => {
  it('writes its bindings on every line, as a pino child does', async () => {
    const { logger, lines } = capturing()
    const child = new LazyChildLogger(logger, { reqId: 'r-1' })
    child.warn({ err: 'boom' }, 'request failed')
    child.child({ step: 2 }).error('again')
    await new Promise((resolve) => setImmediate(resolve))
    assert.deepEqual(
      lines.map(({ reqId, err, step, msg, level }) => ({ reqId, err, step, msg, level })),
      [
        { reqId: 'r-1', err: 'boom', step: undefined, msg: 'request failed', level: 40 },
        { reqId: 'r-1', err: undefined, step: 2, msg: 'again', level: 50 },
      ],
    )
  })

  it('makes no child for a line below the level', () => {
    const { logger, lines } = capturing()
    let children = 0
    const child = logger.child.bind(logger)
    logger.child = ((...args: Parameters<typeof logger.child>) => {
      children++
      return child(...args)
    }) as typeof logger.child
    const lazy = new LazyChildLogger(logger, { reqId: 'r-2' })
    lazy.debug('not written')
    lazy.trace('nor this')
    assert.equal(children, 0)
    assert.equal(lines.length, 0)
    lazy.info('written')
    assert.equal(children, 1)
  })

  it('takes a child’s own level, as a route’s log level is given', async () => {
    const { logger, lines } = capturing()
    const quieter = new LazyChildLogger(logger, { reqId: 'r-3' }, { level: 'warn' })
    quieter.info('not written')
    quieter.warn('written')
    const silent = new LazyChildLogger(logger, { reqId: 'r-4' }, { level: 'silent' })
    silent.fatal('not written either')
    await new Promise((resolve) => setImmediate(resolve))
    assert.deepEqual(
      lines.map(({ reqId, msg }) => ({ reqId, msg })),
      [{ reqId: 'r-3', msg: 'written' }],
    )
  })
})

describe('the process logger', () => {
  it('lets the process exit when whatever read its lines has gone away', async () => {
    // A log shipper that died: every line after is EPIPE, and exiting must not wait on them.
    const dir = tempDir()
    try {
      const script = join(dir.path, 'reader-gone.ts')
      writeFileSync(
        script,
        `import { writeFileSync } from 'node:fs'
        import { createLogger } from ${JSON.stringify(join(process.cwd(), 'src/platform/logger.ts'))}
        const log = createLogger({ level: 'info' })
        log.info('first')
        writeFileSync(${JSON.stringify(join(dir.path, 'started'))}, '')
        setTimeout(() => {
          for (let i = 0; i < 3; i++) log.info({ i }, 'after the reader left')
          process.exit(0)
        }, 300)`,
      )
      const shell = spawn(
        'sh',
        ['-c', `"${process.execPath}" "${script}" 2>/dev/null | head -1 > /dev/null`],
        {
          stdio: 'ignore',
        },
      )
      const ended = await Promise.race([
        once(shell, 'exit').then(() => true),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 10_000)),
      ])
      if (!ended) shell.kill('SIGKILL')
      assert.ok(existsSync(join(dir.path, 'started')), 'the script ran')
      assert.ok(ended, 'the process exited')
    } finally {
      dir.remove()
    }
  })
})
