// `mercato start` in child processes that share one data directory, as a deployment of
// several processes runs: started until they listen, and never left running after a test.
import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { after } from 'node:test'
import { tempDir } from './wait.ts'

export interface Started {
  child: ChildProcess
  url: string
}

/** A data directory, and a `start` that runs targets on it; everything is killed and removed after the file's tests. */
export function processesOnOneDataDir(baseEnv: Record<string, string> = {}) {
  const dir = tempDir()
  const children = new Set<ChildProcess>()
  after(() => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL')
    dir.remove()
  })
  function start(targets: string, env: Record<string, string> = {}): Promise<Started> {
    const child = spawn(process.execPath, ['src/main.ts', 'start', '--target', targets], {
      env: {
        ...process.env,
        MERCATO_PORT: '0',
        MERCATO_DATA_DIR: dir.path,
        MERCATO_SEED: 'false',
        MERCATO_LOG_LEVEL: 'info',
        ...baseEnv,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    children.add(child)
    return new Promise((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (/mercato is up/.test(line)) resolve({ child, url: JSON.parse(line).address })
      })
      child.once('exit', (code) => reject(new Error(`${targets} exited with ${code}`)))
    })
  }
  return { dir: dir.path, start }
}
