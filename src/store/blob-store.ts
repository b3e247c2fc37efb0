// Content-addressed blob files. The on-disk layout, drawn once, here where paths are built:
//
//   <data_dir>/
//     blobs/sha256/<first 2 hex>/<64 hex>    committed blobs: verified, fsynced, immutable
//     tmp/<64 hex>.<random>.part             fills in progress; emptied at every start
//     index.db (+ -wal, -shm)                the SQLite index (store/index-db.ts)
//     pullcache.lock                         held by the server using this store (store/store-lock.ts)
//
// A blob reaches blobs/ only by rename(2) from tmp/ (same filesystem, so the rename is atomic)
// after its size and sha256 were checked and the bytes fsynced. A racing writer of the same
// digest renames identical bytes over identical bytes, which is harmless. Digests reaching this
// module have passed http/reference.ts, so they are [0-9a-f]{64} and cannot name another path.

import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { type FileHandle, mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'

export class BlobStore {
  readonly root: string
  readonly blobDir: string
  readonly tmpDir: string

  constructor(root: string) {
    this.root = root
    this.blobDir = join(root, 'blobs', 'sha256')
    this.tmpDir = join(root, 'tmp')
  }

  /** Creates the directories and removes whatever a crash left in tmp/. */
  async open(): Promise<{ removedTemp: number }> {
    await mkdir(this.blobDir, { recursive: true })
    const leftovers = await readdir(this.tmpDir).catch(() => [] as string[])
    await rm(this.tmpDir, { recursive: true, force: true })
    await mkdir(this.tmpDir, { recursive: true })
    return { removedTemp: leftovers.length }
  }

  path(digest: string): string {
    const hex = hexOf(digest)
    return join(this.blobDir, hex.slice(0, 2), hex)
  }

  /** Size of a committed blob, or undefined when it is not on disk. */
  async size(digest: string): Promise<number | undefined> {
    try {
      return (await stat(this.path(digest))).size
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  /** Opens a committed blob for reading, or undefined when it is not on disk. */
  async openBlob(digest: string): Promise<{ handle: FileHandle; size: number } | undefined> {
    let handle: FileHandle
    try {
      handle = await open(this.path(digest), constants.O_RDONLY)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    try {
      return { handle, size: (await handle.stat()).size }
    } catch (err) {
      await handle.close()
      throw err
    }
  }

  /** A new temp file for a fill, open for writing and for positional reads by followers. */
  async createTemp(digest: string): Promise<{ path: string; handle: FileHandle }> {
    const path = join(this.tmpDir, `${hexOf(digest)}.${randomBytes(6).toString('hex')}.part`)
    const handle = await open(path, constants.O_CREAT | constants.O_EXCL | constants.O_RDWR, 0o644)
    return { path, handle }
  }

  /** Moves a verified, fsynced temp file into place and makes the rename itself durable. */
  async commit(tempPath: string, digest: string): Promise<void> {
    const dir = join(this.blobDir, hexOf(digest).slice(0, 2))
    await mkdir(dir, { recursive: true })
    await rename(tempPath, this.path(digest))
    await fsyncDir(dir)
  }

  async discardTemp(tempPath: string): Promise<void> {
    await rm(tempPath, { force: true })
  }

  async remove(digest: string): Promise<boolean> {
    try {
      await unlink(this.path(digest))
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
      throw err
    }
  }

  /** Every committed blob with its size; names that are not digests are skipped. */
  async *list(): AsyncGenerator<{ digest: string; size: number }> {
    for (const prefix of await readdir(this.blobDir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{2}$/.test(prefix)) continue
      for (const name of await readdir(join(this.blobDir, prefix))) {
        if (!/^[0-9a-f]{64}$/.test(name) || !name.startsWith(prefix)) continue
        const info = await stat(join(this.blobDir, prefix, name)).catch(() => undefined)
        if (info?.isFile()) yield { digest: `sha256:${name}`, size: info.size }
      }
    }
  }
}

function hexOf(digest: string): string {
  const hex = digest.slice('sha256:'.length)
  // A last line of defence: everything above validated already, but a path must never be
  // built from anything else.
  if (!digest.startsWith('sha256:') || !/^[0-9a-f]{64}$/.test(hex))
    throw new Error(`not a sha256 digest: ${digest}`)
  return hex
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY)
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
