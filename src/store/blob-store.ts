// Content-addressed blob files on the local disk: the BlobStorage (store/blob-storage.ts) that
// pullcache runs on. The on-disk layout, drawn once, here where paths are built:
//
//   <data_dir>/
//     blobs/sha256/<first 2 hex>/<64 hex>    committed blobs: verified, fsynced, immutable
//     tmp/<64 hex>.<random>.part             writes in progress (fills, imports); emptied at start
//     tmp/<64 hex>.<random>.evicted          evicted blobs whose blocks are being freed
//     quarantine/<64 hex>.<ms>               blobs verify --repair found corrupt, kept for a look
//     index.db (+ -wal, -shm)                the SQLite index (store/index-db.ts)
//     pullcache.lock                         held by the server using this store (store/store-lock.ts)
//
// A blob reaches blobs/ only through a LocalBlobWriter: by rename(2) from tmp/ (same
// filesystem, so the rename is atomic) after its size and sha256 were checked and the bytes
// fsynced. A racing writer of the same digest renames identical bytes over identical bytes,
// which is harmless. Digests reaching this module have passed http/reference.ts, so they are
// [0-9a-f]{64} and cannot name another path.

import { createHash, type Hash, randomBytes } from 'node:crypto'
import { constants, createReadStream, renameSync, statSync } from 'node:fs'
import {
  type FileHandle,
  mkdir,
  open,
  opendir,
  readdir,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import {
  type BlobHandle,
  BlobMismatch,
  type BlobStat,
  type BlobStorage,
  type BlobWriter,
  type Detached,
} from './blob-storage.js'

/** Committed blobs are streamed (export, verify) this many bytes at a time. */
const STREAM_CHUNK = 1024 * 1024

export class BlobStore implements BlobStorage {
  readonly root: string
  readonly blobDir: string
  readonly tmpDir: string

  constructor(root: string) {
    this.root = root
    this.blobDir = join(root, 'blobs', 'sha256')
    this.tmpDir = join(root, 'tmp')
  }

  /**
   * For the server that owns the store: creates the directories and removes whatever a crash
   * left in tmp/. Never for a command running beside a server (prepare() is): tmp/ holds its fills.
   */
  async open(): Promise<{ removedTemp: number }> {
    await mkdir(this.blobDir, { recursive: true })
    const leftovers = await readdir(this.tmpDir).catch(() => [] as string[])
    await rm(this.tmpDir, { recursive: true, force: true })
    await mkdir(this.tmpDir, { recursive: true })
    return { removedTemp: leftovers.length }
  }

  async prepare(): Promise<void> {
    await mkdir(this.blobDir, { recursive: true })
    await mkdir(this.tmpDir, { recursive: true })
  }

  /** Creates, writes and removes a small file in tmp/, where blobs are written; no fsync, it is a probe. */
  async probe(): Promise<string> {
    // Not a write's name (<hex>.<random>.part), and tmp/ is emptied at start should one be left.
    const probe = join(this.tmpDir, `readyz.${randomBytes(6).toString('hex')}.probe`)
    try {
      await writeFile(probe, 'pullcache readiness probe\n', { flag: 'wx' })
      await rm(probe)
      return `${this.tmpDir} is writable`
    } catch (err) {
      await rm(probe, { force: true }).catch(() => {})
      throw new Error(`${this.tmpDir} is not writable: ${(err as Error).message}`, { cause: err })
    }
  }

  /** Where a committed blob lives; for this module and for tests that lay out a store by hand. */
  path(digest: string): string {
    const hex = hexOf(digest)
    return join(this.blobDir, hex.slice(0, 2), hex)
  }

  /** `allocated` is what the file takes on disk (st_blocks * 512), the figure the budget counts. */
  async openBlob(
    digest: string,
  ): Promise<{ handle: BlobHandle; size: number; allocated: number } | undefined> {
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

  stream(digest: string, range?: { start: number; end: number }): Readable {
    return createReadStream(this.path(digest), { highWaterMark: STREAM_CHUNK, ...range })
  }

  async write(digest: string, size?: number): Promise<BlobWriter> {
    const path = join(this.tmpDir, `${hexOf(digest)}.${randomBytes(6).toString('hex')}.part`)
    const handle = await open(path, constants.O_CREAT | constants.O_EXCL | constants.O_RDWR, 0o644)
    return new LocalBlobWriter(this, digest, size, path, handle)
  }

  async stat(digest: string): Promise<BlobStat | undefined> {
    try {
      const info = await stat(this.path(digest))
      return info.isFile() ? { size: info.size, allocated: allocatedBytes(info) } : undefined
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  statNow(digest: string): BlobStat | undefined {
    const info = statSync(this.path(digest), { throwIfNoEntry: false })
    return info?.isFile() ? { size: info.size, allocated: allocatedBytes(info) } : undefined
  }

  /**
   * The directory is streamed (opendir), so memory holds this prefix's names only: 1/256 of the
   * store. Names that are not digests of that prefix are skipped; a missing directory holds none.
   */
  async list(prefix: string): Promise<string[]> {
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
   * A rename into tmp/: synchronous, and cheap (no blocks are freed). The slow part, the unlink,
   * runs off the event loop when the caller gets to it; a crash in between leaves a file in
   * tmp/, which the next start empties.
   */
  detach(digest: string): Detached | undefined {
    const to = join(this.tmpDir, `${hexOf(digest)}.${randomBytes(6).toString('hex')}.evicted`)
    try {
      renameSync(this.path(digest), to)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    return { remove: () => unlink(to) }
  }

  /** Into <data_dir>/quarantine/; a digest quarantined before keeps its earlier file. */
  async quarantine(digest: string): Promise<string | undefined> {
    const dir = join(this.root, 'quarantine')
    await mkdir(dir, { recursive: true })
    const target = join(dir, `${hexOf(digest)}.${Date.now()}`)
    try {
      await rename(this.path(digest), target)
      return target
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }
}

/**
 * A temp file in tmp/, hashed and counted as bytes are given, written with one writev per
 * flush (the chunks go to disk as they are, without a copy into one buffer), renamed into
 * blobs/ by commit only when they verified.
 */
class LocalBlobWriter implements BlobWriter {
  readonly digest: string
  received = 0
  buffered = 0
  private readonly store: BlobStore
  private readonly size: number | undefined
  private readonly path: string
  private readonly handle: FileHandle
  private readonly hash: Hash = createHash('sha256')
  private batch: Buffer[] = []
  private writing: Promise<number> = Promise.resolve(0)
  private state: 'open' | 'verifying' | 'committed' | 'aborted' = 'open'
  private verifying: Promise<void> | undefined

  constructor(store: BlobStore, digest: string, size: number | undefined, path: string, handle: FileHandle) {
    this.store = store
    this.digest = digest
    this.size = size
    this.path = path
    this.handle = handle
  }

  write(chunk: Buffer): void {
    if (this.state !== 'open') throw new Error(`blob ${this.digest}: written after ${this.state}`)
    this.hash.update(chunk)
    this.batch.push(chunk)
    this.buffered += chunk.length
    this.received += chunk.length
  }

  flush(): Promise<number> {
    const chunks = this.batch
    const length = this.buffered
    const at = this.received - length
    this.batch = []
    this.buffered = 0
    const previous = this.writing
    this.writing = previous.then(async () => {
      if (length > 0) await writeAll(this.handle, chunks, length, at)
      return at + length
    })
    return this.writing
  }

  async read(buffer: Buffer, length: number, position: number): Promise<number> {
    const { bytesRead } = await this.handle.read(buffer, 0, length, position)
    return bytesRead
  }

  verify(): Promise<void> {
    this.verifying ??= this.check()
    return this.verifying
  }

  private async check(): Promise<void> {
    this.state = 'verifying'
    await this.flush()
    const actual = `sha256:${this.hash.digest('hex')}`
    if (actual !== this.digest || (this.size !== undefined && this.received !== this.size)) {
      await this.abort()
      throw new BlobMismatch(this.digest, actual, this.received, this.size)
    }
  }

  async commit(): Promise<BlobStat> {
    await this.verify()
    await this.handle.sync()
    const target = this.store.path(this.digest)
    const dir = join(target, '..')
    await mkdir(dir, { recursive: true })
    const info = await this.handle.stat()
    await rename(this.path, target)
    this.state = 'committed'
    await fsyncDir(dir)
    return { size: this.received, allocated: allocatedBytes(info) }
  }

  async abort(): Promise<void> {
    if (this.state === 'committed') return
    this.state = 'aborted'
    await this.writing.catch(() => {})
    await rm(this.path, { force: true })
  }

  async close(): Promise<void> {
    await this.handle.close()
  }
}

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

async function writeAll(
  handle: FileHandle,
  chunks: Buffer[],
  length: number,
  position: number,
): Promise<void> {
  const { bytesWritten } = await handle.writev(chunks, position)
  if (bytesWritten === length) return
  // A short write (rare on regular files): finish the rest from one buffer.
  const rest = Buffer.concat(chunks, length).subarray(bytesWritten)
  let offset = 0
  while (offset < rest.length) {
    const { bytesWritten: n } = await handle.write(
      rest,
      offset,
      rest.length - offset,
      position + bytesWritten + offset,
    )
    offset += n
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY)
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
