import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { BlobStore } from '../../src/store/blob-store.js'
import { IndexDb } from '../../src/store/index-db.js'
import { Store } from '../../src/store/store.js'
import { verifyStore } from '../../src/store/verify.js'
import { sha256 } from '../support/sha256.js'
import { tmpRoot } from '../support/tmp.js'

async function storeOf(n: number): Promise<{ store: BlobStore; index: IndexDb; corrupt: string }> {
  const root = await tmpRoot('pullcache-verify')
  const store = new BlobStore(root)
  await store.open()
  const index = new IndexDb(join(root, 'index.db'))
  let corrupt = ''
  for (let i = 0; i < n; i++) {
    const bytes = Buffer.from(`blob ${i}`)
    const digest = sha256(bytes)
    await mkdir(join(store.path(digest), '..'), { recursive: true })
    // One file whose bytes are not what its name says.
    if (i === n - 1) corrupt = digest
    await writeFile(store.path(digest), i === n - 1 ? Buffer.from(`blob ${i}!`) : bytes)
    index.addBlob(digest, bytes.length, null)
  }
  return { store, index, corrupt }
}

describe('verify on a big store', () => {
  test('stopped halfway it keeps what it checked and repaired, and --from resumes where it stopped', async () => {
    const { store, index, corrupt } = await storeOf(300)
    const controller = new AbortController()
    const first = await verifyStore(new Store(store, index), {
      repair: true,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.blobs >= 150) controller.abort()
      },
    })
    expect(first.stoppedAt).not.toBeNull()
    expect(first.blobs.checked).toBeGreaterThanOrEqual(150)
    expect(first.blobs.checked).toBeLessThan(300)
    // Nothing was checked twice or skipped: the rest, from the prefix it stopped at.
    const stoppedAt = first.stoppedAt!
    const rest = await verifyStore(new Store(store, index), { repair: true, fromPrefix: stoppedAt })
    expect(rest.stoppedAt).toBeNull()
    const checkedBefore = first.blobs.checked
    const inEarlierPrefixes = (
      await Promise.all(
        Array.from({ length: Number.parseInt(stoppedAt, 16) }, (_, i) =>
          store.list(i.toString(16).padStart(2, '0')),
        ),
      )
    ).flat().length
    expect(checkedBefore).toBeGreaterThanOrEqual(inEarlierPrefixes)
    expect(inEarlierPrefixes + rest.blobs.checked).toBe(300)
    // The corrupt file was found by whichever pass reached it, and repaired then.
    const found = [...first.problems, ...rest.problems].filter((p) => p.kind === 'corrupt_blob')
    expect(found.map((p) => p.digest)).toEqual([corrupt])
    expect(found[0]?.repaired).toBe(true)
    expect(index.getBlob(corrupt)).toBeUndefined()
    index.close()
  })
})
