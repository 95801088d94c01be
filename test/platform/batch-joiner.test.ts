import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { joinBatches } from '../../src/platform/batch-joiner.ts'

describe('joinBatches', () => {
  it('runs a batch at once when idle, and joins those that arrive during a run', async () => {
    const runs: number[][] = []
    let release: () => void = () => {}
    const handle = joinBatches<number>({
      run: async (items) => {
        runs.push(items)
        if (runs.length === 1) await new Promise<void>((resolve) => (release = resolve))
      },
      itemsMax: 100,
    })
    const first = handle([1, 2])
    const second = handle([3])
    const third = handle([4, 5])
    release()
    await Promise.all([first, second, third])
    assert.deepEqual(runs, [
      [1, 2],
      [3, 4, 5],
    ])
  })

  it('never lets runs overlap, and takes whole batches up to itemsMax', async () => {
    let running = 0
    const runs: number[][] = []
    const handle = joinBatches<number>({
      run: async (items) => {
        running++
        assert.equal(running, 1, 'runs overlap')
        runs.push(items)
        await new Promise((resolve) => setTimeout(resolve, 5))
        running--
      },
      itemsMax: 3,
    })
    await Promise.all([handle([1]), handle([2, 3]), handle([4]), handle([5, 6, 7, 8]), handle([9])])
    assert.deepEqual(runs, [[1], [2, 3, 4], [5, 6, 7, 8], [9]])
  })

  it('when a joined run fails, runs each batch alone: only the bad batch fails', async () => {
    const alone: number[][] = []
    let release: () => void = () => {}
    let started = false
    const handle = joinBatches<number>({
      run: async (items) => {
        if (!started) {
          started = true
          await new Promise<void>((resolve) => (release = resolve))
        }
        if (items.includes(13)) throw new Error('bad item')
      },
      runAlone: async (batch) => {
        alone.push(batch)
        if (batch.includes(13)) throw new Error(`bad batch ${batch}`)
      },
      itemsMax: 100,
    })
    const idle = handle([0])
    const good = handle([1, 2])
    const bad = handle([13, 14])
    const after = handle([3])
    release()
    await idle
    await good
    await assert.rejects(bad, /bad batch 13,14/)
    await after
    assert.deepEqual(alone, [[1, 2], [13, 14], [3]])
  })

  it('rejects a lone batch whose run fails, without running it again', async () => {
    let runs = 0
    const handle = joinBatches<number>({
      run: async () => {
        runs++
        throw new Error('no')
      },
      itemsMax: 10,
    })
    await assert.rejects(handle([1]), /no/)
    assert.equal(runs, 1)
  })
})
