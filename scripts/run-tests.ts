// Runs every test file with Node's test runner, then says plainly which suites were
// skipped and why (a server not reachable). Exits with the runner's code.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const skipsFile = join(tmpdir(), `mercato-test-skips-${process.pid}`)
const files = process.argv.slice(2)
const result = spawnSync(
  process.execPath,
  [
    '--test',
    '--test-reporter=spec',
    '--test-concurrency=1',
    ...(files.length > 0 ? files : ['test/**/*.test.ts']),
  ],
  {
    stdio: 'inherit',
    env: { ...process.env, MERCATO_TEST_SKIPS_FILE: skipsFile, MERCATO_LOG_LEVEL: 'silent' },
  },
)
const skipped = existsSync(skipsFile) ? [...new Set(readFileSync(skipsFile, 'utf8').trim().split('\n'))] : []
rmSync(skipsFile, { force: true })
if (skipped.length > 0) {
  console.log(`\nSkipped ${skipped.length} suite(s), their servers not being reachable:`)
  for (const line of skipped) console.log(`  - ${line}`)
  console.log('Start them (see README) or run .ci/run, which starts them and skips nothing.')
} else {
  console.log('\nNo suite was skipped.')
}
process.exit(result.status ?? 1)
