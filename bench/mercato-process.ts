// Starts `mercato start` (or any script) as a child process for a benchmark, and waits
// until it listens, so the process under test never shares a thread with the load.
import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'

export interface Started {
  url: string
  child: ChildProcess
  stop(): Promise<void>
}

export async function startProcess(
  args: string[],
  env: Record<string, string>,
  ready: RegExp,
): Promise<Started> {
  // MERCATO_BENCH_NODE_FLAGS (say `--cpu-prof`) go to every process under test, for profiling.
  const flags = process.env.MERCATO_BENCH_NODE_FLAGS?.split(' ').filter(Boolean) ?? []
  const child = spawn(process.execPath, [...flags, ...args], {
    env: { ...process.env, MERCATO_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!ready.test(line)) return
      const match = /"address":"([^"]+)"/.exec(line) ?? /(http:\/\/[\d.:]+)/.exec(line)
      if (match) resolve(match[1])
    })
    child.once('exit', (code) =>
      reject(new Error(`${args.join(' ')} exited with ${code} before it was ready`)),
    )
  })
  return {
    url,
    child,
    stop: async () => {
      if (child.exitCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    },
  }
}
