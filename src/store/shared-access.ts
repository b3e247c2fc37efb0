// The store's side of the shared tier (store/shared-tier.ts draws it): reads of the bucket for a
// local miss, each verified by its caller; stats and presigned URLs; publishes of committed local
// blobs and manifests, tracked for a clean stop. A bucket that failed lately is not asked again
// for a while (misses go upstream meanwhile), and an object whose bytes did not verify is not
// read again: the next publish, from bytes verified here, replaces it.

import type { Readable } from 'node:stream'
import { sha256 } from '../oci.js'
import { BlobMismatch, type BlobStorage } from './blob-storage.js'
import type { BucketBudgetReport } from './bucket-objects.js'
import type { IndexDb } from './index-db.js'
import type { SharedManifest, SharedStat, SharedTier } from './shared-tier.js'

/** After the bucket failed to answer, it is not asked again for this long: misses go upstream. */
const SHARED_BACKOFF_MS = 30_000

export class SharedAccess {
  private readonly blobs: BlobStorage
  private readonly index: IndexDb
  /** The bucket behind the local hot tier (store/shared-tier.ts), when S3 storage is configured. */
  readonly shared: SharedTier | undefined
  private sharedDownUntil = 0
  /**
   * Digests whose bytes in the shared tier did not verify: not read from there again. A
   * manifest's key is `manifest\0<digest>`, so a blob and a manifest of one digest stay apart.
   */
  private readonly sharedDistrusted = new Set<string>()
  private readonly publishing = new Set<Promise<unknown>>()
  /** Reads from the shared tier going on now, by digest: the bucket's evictor spares them. */
  private readonly sharedReads = new Map<string, number>()
  /** Told of each read from the shared tier as it starts (the bucket's access journal). */
  onSharedRead: ((digest: string) => void) | undefined
  /** The shared tier's budget and last eviction run, when it has a budget (store/bucket-budget.ts). */
  sharedBudget: (() => BucketBudgetReport) | undefined
  private redirected = 0

  constructor(blobs: BlobStorage, index: IndexDb, shared: SharedTier | undefined) {
    this.blobs = blobs
    this.index = index
    this.shared = shared
  }

  /**
   * A blob's bytes from the shared tier for a local miss, or undefined when it has none, has no
   * such blob, or failed lately (then the caller goes upstream: a bucket that is down costs one
   * timeout per backoff period, not one per pull). A failure is rethrown once, for the log.
   */
  async fromShared(
    digest: string,
    signal: AbortSignal,
  ): Promise<{ body: Readable; size: number } | undefined> {
    if (this.shared === undefined || Date.now() < this.sharedDownUntil) return undefined
    if (this.sharedDistrusted.has(digest)) return undefined
    this.onSharedRead?.(digest)
    this.sharedReads.set(digest, (this.sharedReads.get(digest) ?? 0) + 1)
    const done = () => {
      const n = (this.sharedReads.get(digest) ?? 1) - 1
      if (n > 0) this.sharedReads.set(digest, n)
      else this.sharedReads.delete(digest)
    }
    try {
      const got = await this.shared.get(digest, signal)
      if (got === undefined) done()
      else got.body.once('close', done)
      return got
    } catch (err) {
      done()
      if (!signal.aborted) this.sharedDownUntil = Date.now() + SHARED_BACKOFF_MS
      throw err
    }
  }

  /** Whether a read of `digest` from the shared tier is going on now. */
  readingShared(digest: string): boolean {
    return this.sharedReads.has(digest)
  }

  /**
   * The shared tier's bytes for `digest` did not verify (damaged, or written by something other
   * than pullcache): they are not read again, and the next publish of the blob, from bytes
   * verified here, replaces them.
   */
  distrustShared(digest: string): void {
    // A bound, not a cache policy: this many damaged objects means something else is wrong.
    if (this.sharedDistrusted.size >= 10_000) this.sharedDistrusted.clear()
    this.sharedDistrusted.add(digest)
  }

  /** A blob in the shared tier (size; fetched anonymously?), asked as fromShared() asks. */
  async statInShared(digest: string): Promise<SharedStat | undefined> {
    if (this.shared === undefined || Date.now() < this.sharedDownUntil) return undefined
    if (this.sharedDistrusted.has(digest)) return undefined
    try {
      return await this.shared.stat(digest)
    } catch (err) {
      this.sharedDownUntil = Date.now() + SHARED_BACKOFF_MS
      throw err
    }
  }

  /** Presigned URLs handed out to clients (redirects to the bucket) since start. */
  get redirects(): number {
    return this.redirected
  }

  /**
   * A presigned URL of the blob's object, for a client to fetch it from the bucket itself (the
   * offload: store/shared-tier.ts), or undefined when the bytes are to be served here: redirects
   * off, the probe found presigned GETs do not work (or has not run), the bucket failed lately,
   * its copy did not verify, it does not hold the blob (an object is complete or absent: one
   * being published is absent), or it holds another size than the local row says.
   */
  async redirectUrl(digest: string): Promise<string | undefined> {
    const shared = this.shared
    if (shared?.redirectHost === undefined || shared.capabilities?.presignedGet !== true) return undefined
    const there = await this.statInShared(digest)
    if (there === undefined) return undefined
    const row = this.index.getBlob(digest)
    if (row !== undefined && row.size !== there.size) return undefined
    const url = await shared.presignGet(digest)
    this.redirected++
    // A URL handed out is a read to come: the journal tells the bucket's evictor, whose grace
    // (no shorter than the URL's ttl) then spares the object until the client has fetched it.
    this.onSharedRead?.(digest)
    return url
  }

  /**
   * Publishes a committed blob to the shared tier from its local file, which is held open for
   * the upload (an eviction meanwhile does not cut it). Resolves with what happened: 'absent'
   * when there is no shared tier or the file went before it could be opened.
   */
  publish(digest: string, opts: { anonymous: boolean }): Promise<'published' | 'present' | 'absent'> {
    const shared = this.shared
    if (shared === undefined) return Promise.resolve('absent')
    const run = (async () => {
      const opened = await this.blobs.openBlob(digest)
      if (opened === undefined) return 'absent' as const
      const replace = this.sharedDistrusted.has(digest)
      try {
        const source = { size: opened.size, read: opened.handle.read.bind(opened.handle) }
        const outcome = await shared.publish(digest, source, { replace, anonymous: opts.anonymous })
        if (replace) this.sharedDistrusted.delete(digest)
        return outcome
      } finally {
        await opened.handle.close()
      }
    })()
    this.track(run)
    return run
  }

  /**
   * A manifest's body from the shared tier for a local miss, verified against its digest, asked
   * as fromShared() asks. 'invalid': the object there does not hash to its key; it is not read
   * again, and the next publish of the manifest replaces it.
   */
  async manifestFromShared(
    digest: string,
    signal: AbortSignal,
  ): Promise<SharedManifest | { invalid: string } | undefined> {
    const key = `manifest\0${digest}`
    if (this.shared === undefined || Date.now() < this.sharedDownUntil) return undefined
    if (this.sharedDistrusted.has(key)) return undefined
    let got: SharedManifest | undefined
    try {
      got = await this.shared.getManifest(digest, signal)
    } catch (err) {
      if (err instanceof BlobMismatch) {
        this.distrustShared(key)
        return { invalid: err.message }
      }
      if (!signal.aborted) this.sharedDownUntil = Date.now() + SHARED_BACKOFF_MS
      throw err
    }
    if (got === undefined) return undefined
    const actual = sha256(got.body)
    if (actual === digest) return got
    this.distrustShared(key)
    return { invalid: `its bytes hash to ${actual}` }
  }

  /** Whether a manifest is in the shared tier (and fetched anonymously), asked as above. */
  async statManifestInShared(digest: string): Promise<{ anonymous: boolean } | undefined> {
    if (this.shared === undefined || Date.now() < this.sharedDownUntil) return undefined
    if (this.sharedDistrusted.has(`manifest\0${digest}`)) return undefined
    try {
      return await this.shared.statManifest(digest)
    } catch (err) {
      this.sharedDownUntil = Date.now() + SHARED_BACKOFF_MS
      throw err
    }
  }

  /** Puts a verified manifest in the shared tier, replacing an object that did not verify. */
  publishManifest(
    digest: string,
    body: Buffer,
    opts: { mediaType: string; anonymous: boolean },
  ): Promise<'published' | 'present' | 'absent'> {
    const shared = this.shared
    if (shared === undefined) return Promise.resolve('absent')
    const key = `manifest\0${digest}`
    const replace = this.sharedDistrusted.has(key)
    const run = shared.publishManifest(digest, body, { ...opts, replace }).then((outcome) => {
      if (replace) this.sharedDistrusted.delete(key)
      return outcome
    })
    this.track(run)
    return run
  }

  private track(run: Promise<unknown>): void {
    const tracked = run.catch(() => {})
    this.publishing.add(tracked)
    void tracked.finally(() => this.publishing.delete(tracked))
  }

  /** Resolves when the publishes started so far have ended, for a clean stop. */
  async publishesDone(): Promise<void> {
    await Promise.all([...this.publishing])
  }
}
