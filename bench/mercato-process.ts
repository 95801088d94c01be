// Starts `mercato start` (or any script) as a child process for a benchmark, and waits
// until it listens, so the process under test never shares a thread with the load.
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'

export interface Started {
  url: string
  child: ChildProcess
  /** CPU time the process has used so far, every thread, user and system (Linux's /proc), in ms. */
  cpuMs(): number
  stop(): Promise<void>
}

/** Runs `work` and says how many µs of `process`'s CPU each of its `count()` requests took. */
export async function cpuPerRequest<T>(
  process: Started,
  work: () => Promise<T>,
  count: (result: T) => number,
): Promise<{ result: T; cpuUs: number }> {
  const before = process.cpuMs()
  const result = await work()
  return { result, cpuUs: ((process.cpuMs() - before) * 1000) / Math.max(1, count(result)) }
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
    cpuMs: () => {
      // Fields 14 and 15 of /proc/<pid>/stat, after the parenthesized command name: utime, stime.
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicksPerSecond
    },
    stop: async () => {
      if (child.exitCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    },
  }
}

/** Linux's USER_HZ, which /proc reports CPU times in: 100 on every common architecture. */
const clockTicksPerSecond = 100
