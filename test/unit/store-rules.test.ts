// The store's rules, one by one, on a real store in a temp dir: the verified write (nothing
// reaches blobs/ or the index unless its sha256 and size match), and how Store keeps rows and
// files in step (adopt, drop, reconcile, evict).
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { BlobMismatch } from '../../src/store/blob-storage.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { IndexDb } from '../../src/store/index-db.js'
import { Store } from '../../src/store/store.js'
import { sha256 } from '../support/sha256.js'
import { tmpRoot } from '../support/tmp.js'

async function open(blobs?: (root: string) => BlobStore): Promise<{ store: Store; local: BlobStore }> {
  const root = await tmpRoot('pullcache-store-rules')
  const local = blobs ? blobs(root) : new BlobStore(root)
  await local.open()
  return { store: new Store(local, new IndexDb(join(root, 'index.db'))), local }
}

async function put(store: Store, bytes: Buffer): Promise<string> {
  const digest = sha256(bytes)
  const writer = await store.write(digest, bytes.length)
  writer.write(bytes)
  await writer.commit()
  await writer.close()
  return digest
}

describe('the verified write', () => {
  test('commits file then row when sha256 and size match; reads go on until close', async () => {
    const { store, local } = await open()
    const bytes = Buffer.from('a verified blob')
    const digest = sha256(bytes)
    const writer = await store.write(digest, bytes.length)
    writer.write(bytes.subarray(0, 4))
    expect(await writer.flush()).toBe(4)
    writer.write(bytes.subarray(4))
    const stat = await writer.commit()
    expect(stat.size).toBe(bytes.length)
    const back = Buffer.alloc(bytes.length)
    expect(await writer.read(back, bytes.length, 0)).toBe(bytes.length)
    expect(back).toEqual(bytes)
    await writer.close()
    expect(await readFile(local.path(digest))).toEqual(bytes)
    expect(store.index.getBlob(digest)).toMatchObject({ size: bytes.length, allocated: stat.allocated })
    expect(await readdir(local.tmpDir)).toEqual([])
  })

  test.each([
    ['bytes that hash to another digest', Buffer.from('other bytes'), undefined],
    ['the right bytes, but not the size expected', Buffer.from('right bytes'), 999],
  ])('refuses %s, and leaves nothing behind', async (_, bytes, size) => {
    const { store, local } = await open()
    const digest = size === undefined ? sha256(Buffer.from('what was asked for')) : sha256(bytes)
    const writer = await store.write(digest, size ?? bytes.length)
    writer.write(bytes)
    const refused = await writer.commit().catch((err: unknown) => err)
    expect(refused).toBeInstanceOf(BlobMismatch)
    await writer.close()
    expect(await local.stat(digest)).toBeUndefined()
    expect(store.index.getBlob(digest)).toBeUndefined()
    expect(await readdir(local.tmpDir)).toEqual([])
  })

  test('abort removes the partial blob', async () => {
    const { store, local } = await open()
    const writer = await store.write(sha256(Buffer.from('x')))
    writer.write(Buffer.from('x'))
    await writer.flush()
    await writer.abort()
    await writer.close()
    expect(await readdir(local.tmpDir)).toEqual([])
  })
})

describe('rows and files in step', () => {
  test('a row whose file is gone is dropped; one whose file is there is kept', async () => {
    const { store, local } = await open()
    const digest = await put(store, Buffer.from('kept'))
    expect(store.dropIfMissing(digest)).toBe(false)
    expect(store.index.getBlob(digest)).toBeDefined()
    await local.remove(digest)
    expect(store.dropIfMissing(digest)).toBe(true)
    expect(store.index.getBlob(digest)).toBeUndefined()
  })

  test('reconcile adopts, drops, removes a file of the wrong size, and measures', async () => {
    const { store, local } = await open()
    const orphan = await put(store, Buffer.from('orphan'))
    store.index.deleteBlob(orphan)
    const missing = await put(store, Buffer.from('missing'))
    await local.remove(missing)
    const resized = await put(store, Buffer.from('resized'))
    await writeFile(local.path(resized), 'resized, and longer')
    // Recorded with what it took elsewhere (a store copied to another filesystem).
    const unmeasured = await put(store, Buffer.from('unmeasured'))
    store.index.setAllocated(unmeasured, 1)
    const fine = await put(store, Buffer.from('fine'))

    const freeing: Promise<void>[] = []
    const settled = [orphan, missing, resized, unmeasured, fine].map((d) => store.reconcile(d, freeing))
    await Promise.all(freeing)
    expect(settled).toEqual(['adopted', 'dropped', 'removed', 'measured', 'agreed'])
    expect(store.index.getBlob(orphan)?.size).toBe('orphan'.length)
    expect(store.index.getBlob(missing)).toBeUndefined()
    expect(store.index.getBlob(resized)).toBeUndefined()
    expect(await local.stat(resized)).toBeUndefined()
    expect(store.index.getBlob(unmeasured)?.allocated).toBe((await local.stat(unmeasured))?.allocated)
    expect(await readdir(local.tmpDir)).toEqual([])
  })

  test('evict takes rows and files in one step, skips what it is told, stops when told', async () => {
    const { store, local } = await open()
    const digests = [] as string[]
    for (const word of ['one', 'two', 'three', 'four']) digests.push(await put(store, Buffer.from(word)))
    const rows = digests.map((d) => ({ ...store.index.getBlob(d)!, allocated: 4096, lastAccess: 0 }))
    const seen: string[] = []
    const out = store.evict(rows, (blob) => {
      seen.push(blob.digest)
      if (blob.digest === digests[3]) return 'stop'
      return blob.digest === digests[1] ? 'skip' : 'take'
    })
    expect(out.looked).toBe(3)
    expect(seen).toEqual(digests)
    expect(out.taken.map((t) => t.blob.digest)).toEqual([digests[0], digests[2]])
    // Out of reach at once, before the space is freed.
    for (const d of [digests[0]!, digests[2]!]) {
      expect(store.index.getBlob(d)).toBeUndefined()
      expect(local.statNow(d)).toBeUndefined()
    }
    await Promise.all(out.taken.map((t) => t.detached?.remove()))
    expect(await readdir(local.tmpDir)).toEqual([])
    expect(store.index.getBlob(digests[1]!)).toBeDefined()
    expect(store.index.getBlob(digests[3]!)).toBeDefined()
  })

  test('a file that cannot be taken out keeps its row', async () => {
    class Stuck extends BlobStore {
      override detach(): never {
        throw Object.assign(new Error('EACCES'), { code: 'EACCES' })
      }
    }
    const { store, local } = await open((root) => new Stuck(root))
    const digest = await put(store, Buffer.from('stuck'))
    const row = store.index.getBlob(digest)!
    const out = store.evict(
      [{ ...row, allocated: row.allocated ?? row.size, lastAccess: row.last_access }],
      () => 'take',
    )
    expect(out.taken).toEqual([])
    expect(out.failed.map((f) => f.blob.digest)).toEqual([digest])
    expect(store.index.getBlob(digest)?.size).toBe(row.size)
    expect(await local.stat(digest)).toBeDefined()
  })
})
