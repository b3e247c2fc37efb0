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
import { constants, renameSync, statSync } from 'node:fs'
import { type FileHandle, mkdir, open, opendir, readdir, rename, rm, stat, unlink } from 'node:fs/promises'
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

  /**
   * Opens a committed blob for reading, or undefined when it is not on disk. `allocated` is what
   * the file takes on disk (st_blocks * 512), the figure the budget counts.
   */
  async openBlob(
    digest: string,
  ): Promise<{ handle: FileHandle; size: number; allocated: number } | undefined> {
    let handle: FileHandle
    try {
      handle = await open(this.path(digest), constants.O_RDONLY)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    try {
      const info = await handle.stat()
      return { handle, size: info.size, allocated: allocatedBytes(info) }
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

  /**
   * Moves a verified, fsynced temp file into place and makes the rename itself durable.
   * Returns the bytes the file takes on disk (st_blocks * 512), for the index.
   */
  async commit(tempPath: string, digest: string): Promise<{ allocated: number }> {
    const dir = join(this.blobDir, hexOf(digest).slice(0, 2))
    await mkdir(dir, { recursive: true })
    const info = await stat(tempPath)
    await rename(tempPath, this.path(digest))
    await fsyncDir(dir)
    return { allocated: allocatedBytes(info) }
  }

  async discardTemp(tempPath: string): Promise<void> {
    await rm(tempPath, { force: true })
  }

  /**
   * Takes a committed blob out of blobs/ at once, by a rename into tmp/ (synchronous, and cheap:
   * no blocks are freed), and returns where it went, or undefined when it was not there. The
   * slow part, unlinkDetached, can then run off the event loop; a crash in between leaves a
   * file in tmp/, which the next start empties.
   */
  detach(digest: string): string | undefined {
    const to = join(this.tmpDir, `${hexOf(digest)}.${randomBytes(6).toString('hex')}.evicted`)
    try {
      renameSync(this.path(digest), to)
      return to
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  async unlinkDetached(path: string): Promise<void> {
    await unlink(path)
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

  /**
   * The digests of the files under one prefix directory (two hex digits), sorted; names that are
   * not digests of that prefix are skipped, and a missing directory holds none. The directory is
   * streamed (opendir), so memory holds this prefix's names only: 1/256 of the store.
   */
  async listPrefix(prefix: string): Promise<string[]> {
    if (!/^[0-9a-f]{2}$/.test(prefix)) throw new Error(`not a blob prefix: ${prefix}`)
    const names: string[] = []
    let dir: Awaited<ReturnType<typeof opendir>>
    try {
      dir = await opendir(join(this.blobDir, prefix), { bufferSize: 256 })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return names
      throw err
    }
    for await (const entry of dir) {
      if (/^[0-9a-f]{64}$/.test(entry.name) && entry.name.startsWith(prefix))
        names.push(`sha256:${entry.name}`)
    }
    return names.sort()
  }

  /** Size and bytes on disk of a committed blob, or undefined when it is not on disk. */
  async measure(digest: string): Promise<{ size: number; allocated: number } | undefined> {
    try {
      const info = await stat(this.path(digest))
      return info.isFile() ? { size: info.size, allocated: allocatedBytes(info) } : undefined
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  /**
   * The same, synchronously: for a last look taken in the same tick as the index write it
   * decides, so that no commit or eviction can slip in between.
   */
  measureNow(digest: string): { size: number; allocated: number } | undefined {
    const info = statSync(this.path(digest), { throwIfNoEntry: false })
    return info?.isFile() ? { size: info.size, allocated: allocatedBytes(info) } : undefined
  }
}

/** The 256 prefix directories under blobs/sha256/, in order. */
export const PREFIXES: readonly string[] = Array.from({ length: 256 }, (_, i) =>
  i.toString(16).padStart(2, '0'),
)

/** What a file takes on disk: st_blocks counts 512-byte units whatever the filesystem's block size. */
export function allocatedBytes(info: { blocks: number }): number {
  return info.blocks * 512
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
