import { statfsSync, statSync, unlinkSync } from 'node:fs'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { IndexDb } from '../../src/store/index-db.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { sha256 } from '../support/sha256.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'

const REPO = 'library/scale'
const blobPath = (digest: string) => `/v2/${REPO}/blobs/${digest}`
const fileOf = (dataDir: string, digest: string) =>
  join(dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))

function small(i: number): { bytes: Buffer; digest: string } {
  const bytes = Buffer.alloc(8)
  bytes.writeUInt32BE(i, 4)
  return { bytes, digest: sha256(bytes) }
}

/**
 * A store as a crashed server leaves it: `n` valid blob files, each with its index row, and no
 * clean-shutdown mark. Rows record no bytes on disk yet, as after the schema upgrade.
 */
async function crashedStore(n: number): Promise<string> {
  const dataDir = await tmpRoot()
  const index = new IndexDb(join(dataDir, 'index.db'))
  const rows: [string, number][] = []
  for (let i = 0; i < n; i++) {
    const { bytes, digest } = small(i)
    const path = fileOf(dataDir, digest)
    await mkdir(join(path, '..'), { recursive: true })
    await writeFile(path, bytes)
    rows.push([digest, bytes.length])
  }
  index.database.transaction(() => {
    for (const [digest, size] of rows) index.addBlob(digest, size, null, 1000)
  })()
  index.close()
  return dataDir
}

const events = (m: TestMirror) => m.logs.map((l) => l.event as string)

describe('a large store', () => {
  const fake = useFakeUpstream()

  test('after a crash, a store of 20,000 blobs listens and serves hits before the background reconciliation ends', async () => {
    const dataDir = await crashedStore(20_000)
    // Two disagreements for the pass to find: a row without a file, a file without a row.
    const gone = small(0)
    unlinkSync(fileOf(dataDir, gone.digest))
    const orphan = small(20_000)
    await writeFile(fileOf(dataDir, orphan.digest), orphan.bytes)

    const mirror = await fake.mirror({ dataDir })
    const reconciliation = mirror.server.reconciliation
    expect(reconciliation).toBeDefined()
    // Listening, and answering hits from the index, while the pass is still going. The rows came
    // with no record of the repository they were pulled under, so upstream confirms (by a HEAD)
    // that the repository has the digest before an anonymous client gets it from the store.
    fake.up.addBlob(REPO, small(123).bytes)
    const hit = await mirror.get(blobPath(small(123).digest))
    expect(hit.status).toBe(200)
    expect(hit.headers['x-pullcache-cache']).toBe('hit')
    expect(hit.body.equals(small(123).bytes)).toBe(true)
    expect(reconciliation?.completed).toBe(false)
    const result = await reconciliation?.done
    expect(result).toMatchObject({ completed: true, dropped_rows: 1, adopted_files: 1 })
    expect(result?.files).toBe(20_000)
    const order = events(mirror)
    expect(order.indexOf('listening')).toBeGreaterThanOrEqual(0)
    expect(order.indexOf('listening')).toBeLessThan(order.indexOf('store.reconciled'))

    const index = mirror.server.index
    expect(index.getBlob(gone.digest)).toBeUndefined()
    expect(index.getBlob(orphan.digest)?.size).toBe(8)
    // Every row now records what its file takes on disk.
    const perFile = statSync(fileOf(dataDir, small(1).digest)).blocks * 512
    expect(index.storeTotals()).toMatchObject({ blobs: 20_000, bytes: 160_000, allocated: 20_000 * perFile })
    expect(fake.up.count('GET', /\/blobs\//, 'cdn')).toBe(0)
  }, 180_000)

  test('a clean stop leaves a mark that lets the next start trust the index; a running server has none', async () => {
    const mirror = await fake.mirror()
    const marked = () =>
      mirror.server.index.database
        .prepare("SELECT count(*) FROM store_state WHERE key = 'clean_shutdown'")
        .pluck()
    // A fresh store has no mark: the first start reconciles (there is nothing to find).
    expect(mirror.server.reconciliation).toBeDefined()
    await mirror.server.reconciliation?.done
    expect(marked().get()).toBe(0)
    await mirror.close({ wipe: false })

    // A file nobody indexed, put there while the server was down: a trusted start does not look.
    const stray = small(7)
    await mkdir(join(fileOf(mirror.dataDir, stray.digest), '..'), { recursive: true })
    await writeFile(fileOf(mirror.dataDir, stray.digest), stray.bytes)
    const again = await fake.mirror({ dataDir: mirror.dataDir })
    expect(again.logs.find((l) => l.event === 'store.opened')).toMatchObject({ index_trusted: true })
    expect(again.server.reconciliation).toBeUndefined()
    expect(events(again)).not.toContain('store.reconcile_started')
    expect(again.server.index.getBlob(stray.digest)).toBeUndefined()
    // The mark was taken at start: a crash from here on leaves an untrusted index.
    expect(
      again.server.index.database
        .prepare("SELECT count(*) FROM store_state WHERE key = 'clean_shutdown'")
        .pluck()
        .get(),
    ).toBe(0)
    await rm(mirror.dataDir, { recursive: true, force: true })
  })

  test('with a trusted index, a row whose file is gone is a miss that fetches the blob again and repairs the store', async () => {
    const { bytes, digest } = small(11)
    fake.up.addBlob(REPO, bytes)
    const first = await fake.mirror()
    expect((await first.get(blobPath(digest))).status).toBe(200)
    // A new store has no mark either; a pass stopped by the close would leave none.
    await first.server.reconciliation?.done
    await first.close({ wipe: false })
    unlinkSync(fileOf(first.dataDir, digest))

    const mirror = await fake.mirror({ dataDir: first.dataDir })
    expect(mirror.server.reconciliation).toBeUndefined()
    const res = await mirror.get(blobPath(digest))
    expect(res.status).toBe(200)
    expect(res.body.equals(bytes)).toBe(true)
    expect(res.headers['x-pullcache-cache']).toBe('miss')
    expect(events(mirror)).toContain('store.blob_missing')
    expect(fake.up.count('GET', `/blobs/${digest}`, 'cdn')).toBe(2)
    expect(statSync(fileOf(mirror.dataDir, digest)).size).toBe(8)
    expect((await mirror.get(blobPath(digest))).headers['x-pullcache-cache']).toBe('hit')
    await rm(first.dataDir, { recursive: true, force: true })
  })

  test('with a trusted index, a file without a row is adopted by the request that names it, with no upstream call', async () => {
    const { bytes, digest } = small(12)
    fake.up.addBlob(REPO, bytes)
    const first = await fake.mirror()
    expect((await first.get(blobPath(digest))).status).toBe(200)
    // A new store has no mark either; a pass stopped by the close would leave none.
    await first.server.reconciliation?.done
    await first.close({ wipe: false })
    // The commit's index write "cut short": the file is there, the row is not.
    const index = new IndexDb(join(first.dataDir, 'index.db'))
    index.deleteBlob(digest)
    index.close()
    fake.up.reset()

    const mirror = await fake.mirror({ dataDir: first.dataDir })
    expect(mirror.server.reconciliation).toBeUndefined()
    expect(mirror.server.index.getBlob(digest)).toBeUndefined()
    const res = await mirror.get(blobPath(digest))
    expect(res.status).toBe(200)
    expect(res.headers['x-pullcache-cache']).toBe('hit')
    expect(res.body.equals(bytes)).toBe(true)
    expect(events(mirror)).toContain('store.blob_adopted')
    expect(fake.up.count('GET', /\/blobs\//, 'cdn')).toBe(0)
    expect(mirror.server.index.getBlob(digest)).toMatchObject({
      size: 8,
      allocated: statSync(fileOf(mirror.dataDir, digest)).blocks * 512,
    })
    await rm(first.dataDir, { recursive: true, force: true })
  })

  test('the budget counts the blocks blobs take on disk, not their length', async () => {
    // The data dir is made under the temp dir: its filesystem's block size.
    const block = statfsSync(tmpdir()).bsize
    const blobs = [Buffer.from('a'), Buffer.from('b'), Buffer.from('c')]
    const digests = blobs.map((b) => fake.up.addBlob(REPO, b))
    // Three 1-byte blobs: 3 bytes, but three blocks on disk; a budget of 2.5 blocks holds two.
    const mirror = await fake.mirror({
      config: { cache: { max_size: String(Math.floor(block * 2.5)), high_water: 0.9, low_water: 0.8 } },
    })
    for (const d of digests.slice(0, 2)) expect((await mirror.get(blobPath(d))).status).toBe(200)
    const file = statSync(fileOf(mirror.dataDir, digests[0]!))
    expect(file.blocks * 512).toBeGreaterThanOrEqual(block)
    expect(mirror.server.index.storeTotals()).toMatchObject({
      blobs: 2,
      bytes: 2,
      allocated: 2 * file.blocks * 512,
    })
    const stats = (await mirror.get('/_pullcache/stats')).body.toString()
    expect(JSON.parse(stats).store).toMatchObject({ bytes: 2, allocated_bytes: 2 * file.blocks * 512 })
    const metrics = (await mirror.get('/metrics')).body.toString()
    expect(metrics).toContain(`pullcache_store_allocated_bytes ${2 * file.blocks * 512}`)

    expect((await mirror.get(blobPath(digests[2]!))).status).toBe(200)
    await mirror.server.evictor.idle()
    await mirror.server.evictor.run()
    // Three blocks are over 0.9 * 2.5: back to at most 0.8 * 2.5 blocks, i.e. two blobs.
    const totals = mirror.server.index.storeTotals()
    expect(totals.allocated).toBeLessThanOrEqual(block * 2.5 * 0.8)
    expect(totals.blobs).toBe(2)
    expect(sha256((await mirror.get(blobPath(digests[2]!))).body)).toBe(digests[2])
  })
})
