// Whole-store passes that run while the server serves must hand the event loop back often: a
// request waits at most for one page of eviction or one batch of reconciliation. Each pass is
// watched from a setImmediate loop that counts how much work ran between two of its turns.
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { BlobStore } from '../../src/store/blob-store.js'
import { Evictor } from '../../src/store/eviction.js'
import { IndexDb } from '../../src/store/index-db.js'
import { reconcileStore } from '../../src/store/reconcile.js'
import { Store } from '../../src/store/store.js'
import { sha256 } from '../support/sha256.js'
import { tmpRoot } from '../support/tmp.js'

const silent = { debug() {}, info() {}, warn() {}, error() {} }

/** `n` blobs with rows; with `prefix`, only contents whose digest starts with it (one directory). */
async function storeOf(n: number, prefix = ''): Promise<{ store: BlobStore; index: IndexDb }> {
  const root = await tmpRoot('pullcache-yields')
  const store = new BlobStore(root)
  await store.open()
  const index = new IndexDb(join(root, 'index.db'))
  for (let i = 0, made = 0; made < n; i++) {
    const bytes = Buffer.from(`blob ${i}`)
    const digest = sha256(bytes)
    if (!digest.startsWith(`sha256:${prefix}`)) continue
    made++
    await mkdir(join(store.path(digest), '..'), { recursive: true })
    await writeFile(store.path(digest), bytes)
    index.addBlob(digest, bytes.length, null, 1000 + made)
  }
  return { store, index }
}

/** Counts calls of `work` between two turns of the event loop while `run` goes; the most seen. */
async function mostPerTurn(
  run: (work: () => void) => Promise<unknown>,
): Promise<{ most: number; total: number }> {
  let now = 0
  let most = 0
  let total = 0
  let running = true
  const turn = () => {
    now = 0
    if (running) setImmediate(turn)
  }
  setImmediate(turn)
  await run(() => {
    now++
    total++
    most = Math.max(most, now)
  })
  running = false
  return { most, total }
}

describe('passes over the whole store yield to requests', () => {
  test('eviction takes out at most 8 blobs between two turns of the event loop', async () => {
    const { store, index } = await storeOf(200)
    const { most, total } = await mostPerTurn(async (work) => {
      const evictor = new Evictor({
        store: new Store(store, index),
        log: silent,
        // Everything is older than a minute: the whole store goes, by age.
        policy: { maxSize: null, highWater: 0.9, lowWater: 0.8, maxUnusedAgeMs: 60_000, pins: [] },
        inUse: () => {
          work()
          return false
        },
      })
      const result = await evictor.run()
      expect(result.blobs).toBe(200)
    })
    expect(total).toBe(200)
    expect(most).toBeLessThanOrEqual(8)
    expect(index.storeTotals().blobs).toBe(0)
    index.close()
  })

  test('reconciliation looks at most 64 files between two turns of the event loop', async () => {
    // All in one prefix directory: the pass's batches are then as full as they get.
    const { store, index } = await storeOf(400, '00')
    class Counting extends BlobStore {
      work: () => void = () => {}
      override statNow(digest: string) {
        this.work()
        return super.statNow(digest)
      }
    }
    const counting = new Counting(store.root)
    const { most, total } = await mostPerTurn(async (work) => {
      counting.work = work
      const result = await reconcileStore(new Store(counting, index))
      expect(result).toMatchObject({ completed: true, files: 400, measured_rows: 400 })
    })
    expect(total).toBe(400)
    expect(most).toBeLessThanOrEqual(64)
    index.close()
  })
})
