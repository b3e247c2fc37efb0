// A fill's readers against a real store whose commit (fsync, rename, row) the test holds back:
// a client gets its last byte once the blob is verified, without waiting for the commit, and
// never gets it when the bytes do not verify.
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, test } from 'vitest'
import { Fill } from '../../src/mirror/blob-fill.js'
import type { BlobWriter } from '../../src/store/blob-storage.js'
import { BlobStore } from '../../src/store/blob-store.js'
import { IndexDb } from '../../src/store/index-db.js'
import { Store } from '../../src/store/store.js'
import { sha256 } from '../support/sha256.js'
import { tmpRoot } from '../support/tmp.js'

/** A disk store whose writers' commits wait until `release()`, and whose writes take `writeMs` more. */
class HeldCommits extends BlobStore {
  committing = 0
  writeMs = 0
  release!: () => void
  private readonly held = new Promise<void>((resolve) => {
    this.release = resolve
  })

  override async write(digest: string, size?: number): Promise<BlobWriter> {
    const writer = await super.write(digest, size)
    const commit = writer.commit.bind(writer)
    const flush = writer.flush.bind(writer)
    writer.commit = async () => {
      this.committing++
      await this.held
      return commit()
    }
    writer.flush = async () => {
      const written = flush()
      await sleep(this.writeMs)
      return written
    }
    return writer
  }
}

async function setup(): Promise<{ store: Store; disk: HeldCommits; root: string }> {
  const root = await tmpRoot('pullcache-blob-fill')
  const disk = new HeldCommits(root)
  await disk.open()
  return { store: new Store(disk, new IndexDb(join(root, 'index.db'))), disk, root }
}

/** Starts a fill of `digest` whose upstream body is `bytes`, in chunks across batch edges. */
function fill(store: Store, digest: string, bytes: Buffer, chunk = 300_001): Fill {
  const f = new Fill(digest, 'library/held', store)
  const chunks: Buffer[] = []
  for (let at = 0; at < bytes.length; at += chunk) chunks.push(bytes.subarray(at, at + chunk))
  void f.run({
    open: async () => ({ size: bytes.length, body: Readable.from(chunks) }),
    onCommit: () => {},
    onSettled: () => {},
  })
  return f
}

/** Reads the whole blob as a client of the fill does; resolves with what it got, or rejects. */
async function readAll(f: Fill, size: number, got: { bytes: number }): Promise<Buffer> {
  const reader = f.reader(size - 1)
  const out = Buffer.alloc(size)
  try {
    while (got.bytes < size) {
      const n = await reader.read(out.subarray(got.bytes), size - got.bytes, got.bytes)
      got.bytes += n
    }
    return out
  } finally {
    reader.release()
  }
}

describe('a fill and its readers', () => {
  test('a reader gets its last byte once the blob is verified, while the commit is still held', async () => {
    const { store, disk, root } = await setup()
    const bytes = randomBytes(3 * 1024 * 1024 + 5)
    const digest = sha256(bytes)
    const f = fill(store, digest, bytes)
    const got = { bytes: 0 }
    const read = readAll(f, bytes.length, got)
    const first = await Promise.race([read, sleep(5_000).then(() => 'held')])
    expect(first).not.toBe('held')
    expect(sha256(first as Buffer)).toBe(digest)
    expect(disk.committing).toBe(1)
    expect(f.verified).toBe(true)
    expect(f.state).toBe('streaming')
    const hex = digest.slice(7)
    expect(existsSync(join(root, 'blobs', 'sha256', hex.slice(0, 2), hex))).toBe(false)

    disk.release()
    await f.done
    expect(f.state).toBe('committed')
    expect(existsSync(join(root, 'blobs', 'sha256', hex.slice(0, 2), hex))).toBe(true)
    expect(await store.sizeOf(digest)).toBe(bytes.length)
  })

  test('a disk slower than upstream paces the download: it never runs more than a batch ahead of the disk', async () => {
    const { store, disk } = await setup()
    disk.release()
    disk.writeMs = 15
    const bytes = randomBytes(8 * 1024 * 1024 + 3)
    const digest = sha256(bytes)
    const f = fill(store, digest, bytes, 64 * 1024)
    let ahead = 0
    const watch = (async () => {
      while (f.state === 'starting' || f.state === 'streaming') {
        ahead = Math.max(ahead, f.received - f.written)
        await f.changed()
      }
    })()
    const got = { bytes: 0 }
    const body = await readAll(f, bytes.length, got)
    await f.done
    await watch
    expect(body.equals(bytes)).toBe(true)
    // One batch being written and one filling, at most: the body was paused, not buffered.
    expect(ahead).toBeGreaterThan(0)
    expect(ahead).toBeLessThanOrEqual(2 * 1024 * 1024)
  })

  test('bytes that do not hash to the digest: the reader is cut before its last byte, nothing is committed', async () => {
    const { store, disk } = await setup()
    const bytes = randomBytes(2 * 1024 * 1024)
    const digest = sha256(randomBytes(bytes.length))
    const f = fill(store, digest, bytes)
    const got = { bytes: 0 }
    await expect(readAll(f, bytes.length, got)).rejects.toThrow(/hash to/)
    expect(got.bytes).toBeLessThan(bytes.length)
    expect(f.verified).toBe(false)
    expect(disk.committing).toBe(0)
    await expect(f.done).rejects.toThrow(/hash to/)
    expect(await store.sizeOf(digest)).toBeUndefined()
  })
})
