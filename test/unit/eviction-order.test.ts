// Eviction takes the least recently used blobs first, even when the store grows while a run is
// going: a blob committed during a run joins it, and the run must come back to the older blobs
// it passed over when it last looked done, not jump ahead to the newcomer.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect, test } from 'vitest'
import { BlobStore } from '../../src/store/blob-store.js'
import { Evictor } from '../../src/store/eviction.js'
import { IndexDb } from '../../src/store/index-db.js'
import { Store } from '../../src/store/store.js'
import { sha256 } from '../support/sha256.js'
import { tmpRoot } from '../support/tmp.js'

const silent = { debug() {}, info() {}, warn() {}, error() {} }

test('a blob committed during a run does not take the place of an older one', async () => {
  const root = await tmpRoot('pullcache-eviction-order')
  let onUnlink = () => {}
  class Hooked extends BlobStore {
    override detach(digest: string) {
      const detached = super.detach(digest)
      return (
        detached && {
          remove: async () => {
            await detached.remove()
            onUnlink()
          },
        }
      )
    }
  }
  const store = new Hooked(root)
  await store.open()
  const index = new IndexDb(join(root, 'index.db'))
  const add = (i: number, lastAccess: number) => {
    const bytes = Buffer.from(`blob ${i}`)
    const digest = sha256(bytes)
    mkdirSync(join(store.path(digest), '..'), { recursive: true })
    writeFileSync(store.path(digest), bytes)
    // 100 bytes on disk each, whatever the content: the budget below is in those units.
    index.addBlob(digest, bytes.length, 100, lastAccess)
    return digest
  }
  const old: string[] = []
  for (let i = 0; i < 6; i++) old.push(add(i, 1000 + i))
  // 600 bytes against a high mark of 500: the run takes out the two oldest to reach 400.
  const evictor = new Evictor({
    store: new Store(store, index),
    log: silent,
    policy: { maxSize: 1000, highWater: 0.5, lowWater: 0.4, maxUnusedAgeMs: null, pins: [] },
  })
  let newcomer: string | undefined
  onUnlink = () => {
    // While the run's unlinks go, a fill commits: the store is over the low mark again.
    newcomer ??= add(6, 5000)
  }
  const result = await evictor.run()
  expect(result.blobs).toBe(3)
  const kept = (d: string) => index.getBlob(d) !== undefined
  expect(old.map(kept)).toEqual([false, false, false, true, true, true])
  expect(newcomer !== undefined && kept(newcomer)).toBe(true)
  expect(index.storeTotals().allocated).toBe(400)
  index.close()
})
