// Blobs, by digest: the store when the index has the blob (and the file is there), a file the
// index lost track of adopted as it is, a fill in progress joined, upstream's HEAD for a HEAD, or
// else a new fill from upstream (blob-fill.ts tees, verifies and commits it). One fill per digest
// at a time; the fill's commit writes the index row. A blob being streamed to a client is pinned
// (in use) so that eviction leaves it alone until the response is done.

import { RegistryError, UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { RepoName } from '../oci.js'
import type { IndexDb } from '../store/index-db.js'
import type { Store } from '../store/store.js'
import type { Upstream } from '../upstream/client.js'
import { asRegistryError, type BlobAnswer, type Outcome } from './answers.js'
import { Fill } from './blob-fill.js'
import { type Flights, timedOut } from './flights.js'

export interface BlobLookupOptions {
  upstream: Upstream
  store: Store
  index: IndexDb
  log: Logger
  metrics: Metrics
  flights: Flights
  /** Called after each blob is committed, e.g. to let eviction check the budget. */
  onBlobCommitted: (committed: CommittedBlob) => void
}

/** A blob just committed to the store, fetched for `repo` (upstream's name). */
export interface CommittedBlob {
  digest: string
  size: number
  repo: string
}

export class BlobLookup {
  private readonly upstream: Upstream
  private readonly store: Store
  private readonly index: IndexDb
  private readonly log: Logger
  private readonly metrics: Metrics
  private readonly flights: Flights
  private readonly fills = new Map<string, Fill>()
  private readonly inUse = new Map<string, number>()
  private readonly onBlobCommitted: (committed: CommittedBlob) => void

  constructor(opts: BlobLookupOptions) {
    this.upstream = opts.upstream
    this.store = opts.store
    this.index = opts.index
    this.log = opts.log
    this.metrics = opts.metrics
    this.flights = opts.flights
    this.onBlobCommitted = opts.onBlobCommitted
  }

  /** The fill running for this digest, if one is. */
  fillFor(digest: string): Fill | undefined {
    return this.fills.get(digest)
  }

  /**
   * A committed blob, opened: once open it stays readable even if eviction unlinks it. The
   * digest counts as in use until release(), and eviction leaves blobs in use alone.
   */
  async openStored(digest: string): Promise<Extract<BlobAnswer, { kind: 'file' }> | undefined> {
    const release = this.pin(digest)
    const opened = await this.store.openBlob(digest).catch((err: unknown) => {
      release()
      throw err
    })
    if (!opened) {
      release()
      return undefined
    }
    return {
      kind: 'file',
      handle: opened.handle,
      size: opened.size,
      allocated: opened.allocated,
      cache: 'hit',
      release,
    }
  }

  /** Marks the digest in use (eviction leaves it alone) until the returned function is called. */
  private pin(digest: string): () => void {
    this.inUse.set(digest, (this.inUse.get(digest) ?? 0) + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const n = (this.inUse.get(digest) ?? 1) - 1
      if (n === 0) this.inUse.delete(digest)
      else this.inUse.set(digest, n)
    }
  }

  /**
   * For a fill whose size upstream did not say: waits until it is committed, then opens the
   * stored blob. The digest is pinned from before the commit until the file is open, so an
   * eviction the commit itself starts (a budget smaller than this blob) cannot take it from the
   * client that caused the download; eviction removes it once that client is done.
   */
  async storedWhenDone(fill: Fill, cache: Outcome): Promise<Extract<BlobAnswer, { kind: 'file' }>> {
    const unpin = this.pin(fill.digest)
    try {
      try {
        await fill.done
      } catch (err) {
        throw new RegistryError('UNAVAILABLE', (err as Error).message)
      }
      const stored = await this.openStored(fill.digest)
      if (!stored) {
        throw new RegistryError('BLOB_UNKNOWN', {
          digest: fill.digest,
          reason: 'the blob went away as soon as it was stored',
        })
      }
      return { ...stored, cache }
    } finally {
      unpin()
    }
  }

  /** Whether a response is streaming this blob from the store right now. */
  isInUse(digest: string): boolean {
    return this.inUse.has(digest)
  }

  /** Fills in progress, for draining on shutdown and for metrics. */
  inflight(): Fill[] {
    return [...this.fills.values()]
  }

  /**
   * `offload`: the client may be sent to the bucket for the bytes (a GET the route found fit
   * for a redirect; see http/blob-route.ts). It is, when the bucket holds the blob whole and no
   * fill of it is running here: a blob being filled streams from the fill, and one only in the
   * hot tier (not published yet) is served from it.
   */
  async blob(
    name: RepoName,
    digest: string,
    method: 'GET' | 'HEAD',
    opts: { offload?: boolean } = {},
  ): Promise<BlobAnswer> {
    if (opts.offload === true && method === 'GET' && this.fills.get(digest) === undefined) {
      const url = await this.store.bucket.redirectUrl(digest).catch((err: unknown) => {
        this.log.warn('store.bucket_failed', { digest, op: 'presign', error: err })
        return undefined
      })
      if (url !== undefined) {
        this.metrics.blobRedirects.inc({ upstream: this.upstream.host })
        return { kind: 'redirect', url, cache: 'hit' }
      }
    }
    const row = this.index.getBlob(digest)
    if (row) {
      const stored = await this.openStored(digest)
      if (stored) return stored
      // The file went away behind our back (a crash, a disk repair, an operator): forget it,
      // fetch again. Looked at once more in the tick that deletes the row: a fill may have
      // committed the file while we waited on the open.
      this.log.warn('store.blob_missing', { digest })
      this.store.dropIfMissing(digest)
    }

    // A fill that has failed but not yet let go of its temp file is not joined: start afresh.
    const joinable = (): Fill | undefined => {
      const fill = this.fills.get(digest)
      return fill && fill.state !== 'failed' ? fill : undefined
    }
    let running = joinable()
    if (!running && !row) {
      // A file without a row: only verified files are ever renamed into blobs/, so this is a
      // commit whose index write a crash cut short (the background reconciliation adopts these
      // too, when it gets there). Adopt it now and serve it.
      const stored = await this.openStored(digest)
      if (stored) {
        if (!this.index.getBlob(digest)) {
          this.store.adopt(digest, stored)
          this.log.info('store.blob_adopted', { digest, size: stored.size })
        }
        return stored
      }
      // Another request may have started the fill while this one looked.
      running = joinable()
    }
    if (running) {
      await this.settledReady(running)
      return { kind: 'fill', fill: running, cache: 'coalesced' }
    }

    if (method === 'HEAD') {
      // The shared tier first, then upstream's HEAD: no download for a client that only asked.
      const shared = await this.store.bucket.statInShared(digest).catch((err: unknown) => {
        this.log.warn('store.bucket_failed', { digest, op: 'stat', error: err })
        return undefined
      })
      if (shared !== undefined) return { kind: 'remote', size: shared.size, cache: 'miss' }
      try {
        const { size } = await this.flights.bounded((signal) =>
          this.upstream.headBlob(name.upstream, digest, signal),
        )
        return { kind: 'remote', size, cache: 'miss' }
      } catch (err) {
        throw asRegistryError(err, 'BLOB_UNKNOWN')
      }
    }

    const fill = new Fill(digest, name.upstream, this.store)
    this.fills.set(digest, fill)
    // Upstream has until the deadline to start the body, waiting for a download slot included;
    // past it the fill is dropped and aborted, and its waiters get UNAVAILABLE.
    const ms = this.upstream.headerTimeoutMs
    const timer = setTimeout(() => {
      if (fill.state !== 'starting') return
      if (this.fills.get(digest) === fill) this.fills.delete(digest)
      void fill.abort(timedOut(ms, `blob ${digest}`))
    }, ms)
    timer.unref()
    fill.ready.then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    )
    // Where the bytes came from: a blob from the shared tier is not published back to it, nor
    // one relayed by its owner in the cluster (the owner publishes it).
    let source = 'upstream' as 'bucket' | 'upstream'
    // Bytes relayed by the blob's owner: the owner counts them as upstream bytes, not this node.
    let fromOwner = false
    void this.upstream
      .fetchLimit(() =>
        fill.run({
          open: async (signal) => {
            const fromBucket = await this.store.bucket.fromShared(digest, signal).catch((err: unknown) => {
              if (!signal.aborted) this.log.warn('store.bucket_failed', { digest, op: 'get', error: err })
              return undefined
            })
            if (fromBucket !== undefined) {
              source = 'bucket'
              return fromBucket
            }
            const got = await this.upstream.getBlob(name.upstream, digest, signal)
            fromOwner = got.fromOwner === true
            return got
          },
          onCommit: (size) => {
            this.metrics.fills.inc({ outcome: 'committed' })
            this.onBlobCommitted({ digest, size, repo: name.upstream })
            this.log.info('store.blob_committed', { digest, size, repo: name.upstream, source })
            if (source === 'upstream' && !fromOwner) this.publish(digest, !this.upstream.hasCredentials)
          },
          onSettled: () => {
            if (this.fills.get(digest) === fill) this.fills.delete(digest)
            if (source === 'upstream' && fromOwner) this.metrics.relayBytes.inc(fill.received)
            else if (source === 'upstream')
              this.metrics.upstreamBytes.inc({ upstream: this.upstream.host }, fill.received)
            if (fill.state === 'failed') this.metrics.fills.inc({ outcome: 'failed' })
            if (
              fill.state === 'failed' &&
              source === 'bucket' &&
              fill.error instanceof UpstreamError &&
              fill.error.kind === 'INVALID'
            ) {
              // The next request fetches it from upstream, and its publish replaces the object.
              this.store.bucket.distrustShared(digest)
              this.log.warn('store.bucket_blob_invalid', { digest, error: fill.error })
            }
            if (
              fill.state === 'failed' &&
              !(fill.error instanceof UpstreamError && fill.error.kind === 'NOT_FOUND')
            ) {
              this.log.warn('store.blob_fill_failed', { digest, repo: name.upstream, error: fill.error })
            }
          },
        }),
      )
      .catch((err: unknown) => this.log.error('store.blob_fill_crashed', { digest, error: err }))
    await this.settledReady(fill)
    // From the bucket it is a hit of the shared cache: no upstream request, and (for the
    // accounting) no proof that upstream has it under this name.
    return { kind: 'fill', fill, cache: source === 'bucket' ? 'hit' : 'miss' }
  }

  /** Puts a blob just fetched from upstream into the shared tier, behind its clients. */
  private publish(digest: string, anonymous: boolean): void {
    if (this.store.shared === undefined) return
    const started = Date.now()
    this.store.bucket.publish(digest, { anonymous }).then(
      (outcome) => this.log.info('store.blob_published', { digest, outcome, ms: Date.now() - started }),
      (err: unknown) => this.log.warn('store.bucket_failed', { digest, op: 'publish', error: err }),
    )
  }

  private async settledReady(fill: Fill): Promise<void> {
    try {
      await fill.ready
    } catch (err) {
      throw asRegistryError(err, 'BLOB_UNKNOWN')
    }
  }
}
