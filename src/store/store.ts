// The store as one owner: blob bytes (a BlobStorage) and their index rows (IndexDb), and the
// rules that keep the two in step. Every path that puts a blob in, takes one out or decides
// that a row and a file disagree goes through here: the fill, import, reconciliation, eviction,
// verify and the mirror's own checks.
//
//   commit      file, then row: a row never points at bytes that are not in place yet
//   adopt       file without a row: only verified bytes ever reach the store, so the file is good
//               and a commit lost its row (a crash); the row is (re)written from the file
//   drop        row without a file: the row goes, the next request fetches the blob again
//   evict       rows, then files, in one synchronous step; the space is freed later, off the loop
//   mismatch    a file whose size is not its row's is not what its name says: both go
//   quarantine  a file whose bytes do not hash to its name: moved aside, then its row goes
//
// Decisions about one digest are taken again in the synchronous step that acts on them (a
// fresh look at the row, statNow at the file): a commit puts the file before the row, and an
// eviction takes both in one step, so neither can fall between a look and the write it decides.
//
// With S3 storage the bucket sits behind all this, the hot tier's shared tier: what the store
// reads from it and publishes to it goes through `bucket` (store/shared-access.ts).

import type { BlobHandle, BlobStat, BlobStorage, BlobWriter, Detached } from './blob-storage.js'
import type { IndexDb } from './index-db.js'
import { SharedAccess } from './shared-access.js'
import type { SharedTier } from './shared-tier.js'

/** What reconcile() did with one digest. */
export type Settled = 'adopted' | 'dropped' | 'removed' | 'measured' | 'agreed' | 'absent'

export interface Evictable {
  digest: string
  size: number
  allocated: number
  lastAccess: number
}

export interface Eviction<T extends Evictable> {
  /** Candidates looked at before `decide` said stop. */
  looked: number
  /** Rows deleted and files taken out; `detached` frees the space (undefined: no file was there). */
  taken: { blob: T; detached: Detached | undefined }[]
  /** Files that could not be taken out: their rows were put back. */
  failed: { blob: T; error: unknown; restoreError?: unknown }[]
}

export class Store {
  readonly blobs: BlobStorage
  readonly index: IndexDb
  /** The bucket behind the local hot tier (store/shared-tier.ts), when S3 storage is configured. */
  readonly shared: SharedTier | undefined
  /** What the store reads from the bucket and publishes to it (store/shared-access.ts). */
  readonly bucket: SharedAccess

  constructor(blobs: BlobStorage, index: IndexDb, shared?: SharedTier) {
    this.blobs = blobs
    this.index = index
    this.shared = shared
    this.bucket = new SharedAccess(blobs, index, shared)
  }

  openBlob(digest: string): Promise<{ handle: BlobHandle; size: number; allocated: number } | undefined> {
    return this.blobs.openBlob(digest)
  }

  /**
   * A verified write whose commit also records the row: file first, then row. The row keeps a
   * longer-lived entry's first_cached and counters (an upsert), as every commit always did.
   */
  async write(digest: string, size?: number): Promise<BlobWriter> {
    const writer = await this.blobs.write(digest, size)
    const index = this.index
    return {
      digest,
      get received() {
        return writer.received
      },
      get buffered() {
        return writer.buffered
      },
      write: (chunk) => writer.write(chunk),
      flush: () => writer.flush(),
      read: (buffer, length, position) => writer.read(buffer, length, position),
      verify: () => writer.verify(),
      async commit() {
        const stat = await writer.commit()
        index.addBlob(digest, stat.size, stat.allocated)
        return stat
      },
      abort: () => writer.abort(),
      close: () => writer.close(),
    }
  }

  /**
   * The size of a blob the store holds whole (a row, and a file of the row's size), or
   * undefined. A blob being written has no row yet and does not count.
   */
  async sizeOf(digest: string): Promise<number | undefined> {
    const row = this.index.getBlob(digest)
    if (row === undefined) return undefined
    return (await this.blobs.stat(digest))?.size === row.size ? row.size : undefined
  }

  /** A file without a row (or with a wrong one): the row is written from what the file is. */
  adopt(digest: string, file: BlobStat): void {
    this.index.addBlob(digest, file.size, file.allocated)
  }

  /**
   * A row whose file was not found: dropped, unless the file is there after all when looked at
   * again in this tick (a commit may have put it there meanwhile). True when the row went.
   */
  dropIfMissing(digest: string): boolean {
    if (this.blobs.statNow(digest) !== undefined) return false
    this.index.deleteBlob(digest)
    return true
  }

  /**
   * Makes one digest's row and file agree, synchronously (see store/reconcile.ts, which calls
   * this inside a batch's transaction). `freeing` collects the removals of mismatched files.
   */
  reconcile(digest: string, freeing: Promise<void>[]): Settled {
    const row = this.index.getBlob(digest)
    const file = this.blobs.statNow(digest)
    if (row === undefined) {
      // No row: a file here is verified content whose row a crash lost (or an eviction of this
      // very moment, which removes the file too, so there is then no file to adopt).
      if (file === undefined) return 'absent'
      this.adopt(digest, file)
      return 'adopted'
    }
    if (file === undefined) {
      this.index.deleteBlob(digest)
      return 'dropped'
    }
    if (file.size !== row.size) {
      // Not the size it was committed with: the file is not what its name says. Out of reach
      // now, its blocks freed later.
      const detached = this.blobs.detach(digest)
      if (detached !== undefined) freeing.push(detached.remove())
      this.index.deleteBlob(digest)
      return 'removed'
    }
    if (row.allocated !== file.allocated) {
      this.index.setAllocated(digest, file.allocated)
      return 'measured'
    }
    return 'agreed'
  }

  /**
   * Evicts in one synchronous step: `decide` is asked for each candidate in turn (stop, skip or
   * take), the rows taken are deleted in one transaction (so no new request sees a hit), then
   * each file is detached (out of reach at once; no request can start reading it between its
   * row and its file). A request that read the row just before is safe too: the mirror opens the
   * file before answering, and a file already open stays readable. A file that cannot be
   * detached gets its row back. Freeing the space (`detached.remove()`) is left to the caller,
   * off the event loop.
   */
  evict<T extends Evictable>(
    candidates: readonly T[],
    decide: (blob: T) => 'stop' | 'skip' | 'take',
  ): Eviction<T> {
    const out: Eviction<T> = { looked: 0, taken: [], failed: [] }
    const rowsGone: T[] = []
    this.index.transaction(() => {
      for (const blob of candidates) {
        const decision = decide(blob)
        if (decision === 'stop') break
        out.looked++
        if (decision === 'skip') continue
        this.index.evictBlob(blob.digest)
        rowsGone.push(blob)
      }
    })
    for (const blob of rowsGone) {
      try {
        out.taken.push({ blob, detached: this.blobs.detach(blob.digest) })
      } catch (error) {
        // The file stays where it is: so does its row, and the budget keeps counting it.
        const failure: Eviction<T>['failed'][number] = { blob, error }
        try {
          this.index.addBlob(blob.digest, blob.size, blob.allocated, blob.lastAccess)
        } catch (restoreError) {
          failure.restoreError = restoreError
        }
        out.failed.push(failure)
      }
    }
    return out
  }

  /**
   * Moves a corrupt blob aside and forgets it. The file goes first: a request arriving between
   * the two steps finds a row without a file, which the mirror already treats as "fetch it
   * again". If a fetch committed a good copy in that moment, its row is put back. Returns where
   * the file went, or undefined when it was already gone.
   */
  async quarantine(digest: string): Promise<string | undefined> {
    const target = await this.blobs.quarantine(digest)
    this.index.deleteBlob(digest)
    const refilled = await this.blobs.stat(digest)
    if (refilled !== undefined) this.adopt(digest, refilled)
    return target
  }
}
