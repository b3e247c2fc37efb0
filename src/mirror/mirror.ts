// The mirror's policy, one request at a time:
//   lookup -> hit, or upstream -> tee -> verify -> commit -> index.
// Digests are immutable: a cached digest is served with no upstream request at all. Tags are
// revalidated with an upstream HEAD (free on Docker Hub) at most once per freshness window; a
// manifest GET upstream (the request Docker Hub counts as a pull) happens only for a digest we
// do not have. When revalidation fails for any reason but "not found", the cached manifest is
// served and marked stale. Concurrent requests for one blob, manifest or tag share one
// upstream exchange (single flight).
//
// Every exchange has a deadline (upstream.header_timeout) for its answer, token and redirects
// included. A flight past its deadline is taken out of the single-flight maps and aborted, and
// everyone waiting on it gets UNAVAILABLE at once: a request arriving later starts afresh and is
// never joined to a fetch that upstream has stopped answering.

import { LRUCache } from 'lru-cache'
import type { TagPattern } from '../config.js'
import { RegistryError, UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { INDEX_TYPES, MEDIA_TYPES, manifestRefs, type RepoName, sha256 } from '../oci.js'
import type { BlobHandle } from '../store/blob-storage.js'
import type { CacheResult, IndexDb, ManifestRow } from '../store/index-db.js'
import type { Store } from '../store/store.js'
import type { Upstream } from '../upstream/client.js'
import { Fill } from './blob-fill.js'
import { accepts } from './manifest.js'
import { Visibility } from './visibility.js'

export type Outcome = Exclude<CacheResult, 'error'>

export interface ManifestAnswer {
  digest: string
  mediaType: string
  size: number
  /** Absent only for a HEAD that upstream answered and we did not download. */
  bytes: Buffer | undefined
  cache: Outcome
}

export type BlobAnswer =
  | { kind: 'file'; handle: BlobHandle; size: number; allocated: number; cache: Outcome; release: () => void }
  | { kind: 'fill'; fill: Fill; cache: 'miss' | 'coalesced' }
  | { kind: 'remote'; size: number; cache: 'miss' }

export interface TagListAnswer {
  bytes: Buffer
  link: string | null
  cache: Outcome
}

export interface FreshnessRule {
  match: TagPattern
  freshness: number
}

export interface MirrorOptions {
  upstream: Upstream
  store: Store
  index: IndexDb
  log: Logger
  metrics: Metrics
  tagFreshnessMs: number
  /** Per-pattern freshness, first match wins; tags matching none get tagFreshnessMs. */
  tagFreshnessRules?: readonly FreshnessRule[]
  revalidateTimeoutMs: number
  manifestMemoryBytes: number
  /** Called after each blob is committed, e.g. to let eviction check the budget. */
  onBlobCommitted?: () => void
}

/** Where failed requests for repositories with no content here are accounted: such a name
 * may be anything at all, and each would otherwise be a row of its own. */
export const FAILED_REPO = '(failed requests)'

/** The platform an old client gets when it cannot read an index, as Docker Hub does it. */
const DEFAULT_PLATFORM = 'linux/amd64'

export class Mirror {
  readonly upstream: Upstream
  /** What anonymous clients may read. */
  readonly visibility: Visibility
  private readonly store: Store
  private readonly index: IndexDb
  private readonly log: Logger
  private readonly metrics: Metrics
  private tagFreshnessMs: number
  private tagFreshnessRules: readonly FreshnessRule[]
  private readonly revalidateTimeoutMs: number
  private readonly fills = new Map<string, Fill>()
  private readonly inUse = new Map<string, number>()
  private readonly flights = new Map<string, Promise<unknown>>()
  private readonly manifests: LRUCache<string, ManifestRow>
  private readonly onBlobCommitted: () => void

  constructor(opts: MirrorOptions) {
    this.upstream = opts.upstream
    this.store = opts.store
    this.index = opts.index
    this.log = opts.log
    this.metrics = opts.metrics
    this.tagFreshnessMs = opts.tagFreshnessMs
    this.tagFreshnessRules = opts.tagFreshnessRules ?? []
    this.revalidateTimeoutMs = opts.revalidateTimeoutMs
    this.onBlobCommitted = opts.onBlobCommitted ?? (() => {})
    this.visibility = new Visibility({ upstream: opts.upstream, index: opts.index, log: opts.log })
    this.manifests = new LRUCache<string, ManifestRow>({
      maxSize: Math.max(1, opts.manifestMemoryBytes),
      sizeCalculation: (row) => Math.max(1, row.body.length),
    })
  }

  get registry(): string {
    return this.upstream.registry
  }

  setTagFreshness(ms: number, rules: readonly FreshnessRule[] = []): void {
    this.tagFreshnessMs = ms
    this.tagFreshnessRules = rules
  }

  /** How long this tag is served from the index without asking upstream. */
  freshnessFor(repo: string, tag: string): number {
    return this.tagFreshnessRules.find((r) => r.match.test(repo, tag))?.freshness ?? this.tagFreshnessMs
  }

  /** Offline on purpose: upstream is never contacted (config `offline`, switchable at run time). */
  get offline(): boolean {
    return this.upstream.offline
  }

  set offline(value: boolean) {
    if (value !== this.upstream.offline) this.log.warn(value ? 'mirror.offline' : 'mirror.online', {})
    this.upstream.offline = value
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

  /**
   * Whether an anonymous client may have this digest under this repository (which it may read).
   * A digest pullcache does not hold is fetched under that repository's name, so upstream
   * decides; one it holds may have come from a repository anonymous pulls cannot read.
   */
  async anonymousMayRead(name: RepoName, digest: string, kind: 'blob' | 'manifest'): Promise<boolean> {
    if (kind === 'blob') {
      // Joining a download in progress: fine under its own name, or when anonymous pulls may read
      // the repository it is fetched under (public content is shared by digest).
      const fill = this.fills.get(digest)
      if (
        fill !== undefined &&
        (fill.repo === name.upstream || (await this.visibility.repoReadable(fill.repo)))
      )
        return true
    }
    const held =
      kind === 'blob'
        ? this.fills.has(digest) || this.index.getBlob(digest) !== undefined
        : this.flights.has(`manifest\0${digest}`) || this.cachedManifest(digest) !== undefined
    if (!held) return true
    return this.visibility.digestReadable(name.upstream, digest, kind)
  }

  /** Fills in progress, for draining on shutdown and for metrics. */
  inflight(): Fill[] {
    return [...this.fills.values()]
  }

  // --- blobs -------------------------------------------------------------------------------

  async blob(name: RepoName, digest: string, method: 'GET' | 'HEAD'): Promise<BlobAnswer> {
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
      // Answer HEAD from upstream's HEAD: no download for a client that only asked about it.
      try {
        const { size } = await this.bounded((signal) => this.upstream.headBlob(name.upstream, digest, signal))
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
    void this.upstream
      .fetchLimit(() =>
        fill.run({
          open: (signal) => this.upstream.getBlob(name.upstream, digest, signal),
          onCommit: (size) => {
            this.metrics.fills.inc({ outcome: 'committed' })
            this.onBlobCommitted()
            this.log.info('store.blob_committed', { digest, size, repo: name.upstream })
          },
          onSettled: () => {
            if (this.fills.get(digest) === fill) this.fills.delete(digest)
            this.metrics.upstreamBytes.inc(fill.received)
            if (fill.state === 'failed') this.metrics.fills.inc({ outcome: 'failed' })
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
    return { kind: 'fill', fill, cache: 'miss' }
  }

  private async settledReady(fill: Fill): Promise<void> {
    try {
      await fill.ready
    } catch (err) {
      throw asRegistryError(err, 'BLOB_UNKNOWN')
    }
  }

  // --- manifests ---------------------------------------------------------------------------

  async manifestByDigest(name: RepoName, digest: string, method: 'GET' | 'HEAD'): Promise<ManifestAnswer> {
    const cached = this.cachedManifest(digest)
    if (cached) return answer(cached, 'hit')
    try {
      if (method === 'HEAD') {
        const head = await this.bounded((signal) => this.upstream.headManifest(name.upstream, digest, signal))
        if (head.size === undefined)
          throw new UpstreamError('SERVER', `HEAD manifest ${digest}: no Content-Length`)
        return { digest, mediaType: head.mediaType, size: head.size, bytes: undefined, cache: 'miss' }
      }
      // Joining another request's GET: served from its download, like a coalesced blob, and
      // not a Docker Hub pull of its own (stats count pulls avoided from this).
      const joined = this.flights.has(`manifest\0${digest}`)
      return answer(await this.fetchManifest(name, digest), joined ? 'coalesced' : 'miss')
    } catch (err) {
      throw asRegistryError(err, 'MANIFEST_UNKNOWN')
    }
  }

  async manifestByTag(
    name: RepoName,
    tag: string,
    method: 'GET' | 'HEAD',
    accepted: string[],
  ): Promise<ManifestAnswer> {
    const registry = this.registry
    const known = this.index.getTag(registry, name.upstream, tag)
    const cached = known ? this.cachedManifest(known.digest) : undefined
    let found: ManifestAnswer

    if (known && cached && Date.now() - known.last_checked < this.freshnessFor(name.upstream, tag)) {
      found = answer(cached, 'hit')
    } else if (known && cached && this.upstream.pullBudgetLow()) {
      // Few Docker Hub pulls left: every revalidation risks a counted GET for a moved tag, so
      // the cached tags stand until the rate-limit window has passed.
      found = answer(cached, 'hit')
    } else if (known && cached && (this.upstream.isUnwell() || this.upstream.offline)) {
      // Upstream failed moments ago: do not make every client wait on it to fail again.
      found = answer(cached, 'stale')
    } else {
      try {
        // One revalidation per tag at a time: its HEAD, and its GET when the digest is new.
        const key = `tag\0${name.upstream}\0${tag}\0${method}`
        const joined = this.flights.has(key)
        const revalidation = this.flight(key, (signal) =>
          this.revalidate(name, tag, method, known?.digest, signal),
        )
        // With a cached copy in hand, do not wait on a slow upstream for long.
        found = known && cached ? await deadline(revalidation, this.revalidateTimeoutMs) : await revalidation
        // The leader's download served this request too (see manifestByDigest).
        if (joined && found.cache === 'miss') found = { ...found, cache: 'coalesced' }
      } catch (err) {
        if (err instanceof UpstreamError && err.kind === 'NOT_FOUND') {
          // Upstream says the tag is gone; so is our mapping. Not a failure to hide.
          if (known) this.index.deleteTag(registry, name.upstream, tag)
          throw asRegistryError(err, 'MANIFEST_UNKNOWN')
        }
        if (known && cached && err instanceof UpstreamError) {
          this.log.warn('mirror.stale_tag', { repo: name.upstream, tag, error: err })
          found = answer(cached, 'stale')
        } else {
          throw asRegistryError(err, 'MANIFEST_UNKNOWN')
        }
      }
    }
    return this.negotiate(name, found, accepted, method)
  }

  /** Asks upstream (HEAD) what the tag points at, fetching the manifest only if it is new to us. */
  private async revalidate(
    name: RepoName,
    tag: string,
    method: 'GET' | 'HEAD',
    knownDigest: string | undefined,
    signal: AbortSignal,
  ): Promise<ManifestAnswer> {
    const registry = this.registry
    const head = await this.upstream.headManifest(name.upstream, tag, signal)
    if (head.digest !== undefined) {
      const digest = head.digest
      const cached = this.cachedManifest(digest)
      if (cached) {
        this.index.setTag(registry, name.upstream, tag, digest, cached.media_type)
        // Upstream just said this repository has it, though the bytes came from another.
        this.index.link(registry, name.upstream, digest, 'manifest')
        if (knownDigest !== undefined && knownDigest !== digest) {
          this.log.info('mirror.tag_moved', { repo: name.upstream, tag, from: knownDigest, to: digest })
        }
        return answer(cached, 'hit')
      }
      if (method === 'HEAD' && head.size !== undefined) {
        // Remember where the tag points even without the bytes: dockerd and containerd HEAD the
        // tag and then GET the manifest by digest, and that pair must work offline next time.
        this.index.setTag(registry, name.upstream, tag, digest, head.mediaType)
        return { digest, mediaType: head.mediaType, size: head.size, bytes: undefined, cache: 'miss' }
      }
      const row = await this.fetchManifest(name, digest)
      this.index.setTag(registry, name.upstream, tag, digest, row.media_type)
      return answer(row, 'miss')
    }
    // An upstream that does not say the digest on HEAD: GET by tag and hash the bytes ourselves.
    const row = await this.flight(`manifest-tag\0${name.upstream}\0${tag}`, async (signal) => {
      const got = await this.upstream.getManifest(name.upstream, tag, signal)
      return this.storeManifest(name, sha256(got.bytes), got.bytes, got.mediaType, got.digest)
    })
    this.index.setTag(registry, name.upstream, tag, row.digest, row.media_type)
    return answer(row, 'miss')
  }

  /** GET by digest from upstream, verify, store. One upstream GET per digest at a time. */
  private fetchManifest(name: RepoName, digest: string): Promise<ManifestRow> {
    return this.flight(`manifest\0${digest}`, async (signal) => {
      const got = await this.upstream.getManifest(name.upstream, digest, signal)
      return this.storeManifest(name, digest, got.bytes, got.mediaType, got.digest)
    })
  }

  private storeManifest(
    name: RepoName,
    digest: string,
    bytes: Buffer,
    contentType: string,
    upstreamDigest: string | undefined,
  ): ManifestRow {
    const actual = sha256(bytes)
    if (actual !== digest || (upstreamDigest !== undefined && upstreamDigest !== actual)) {
      throw new UpstreamError('INVALID', 'upstream sent a manifest whose bytes do not match its digest', {
        detail: { expected: digest, upstream_digest: upstreamDigest ?? null, actual },
      })
    }
    const mediaType = manifestMediaType(bytes, contentType)
    this.index.addManifest(digest, mediaType, bytes, manifestRefs(bytes))
    this.index.link(this.registry, name.upstream, digest, 'manifest')
    const row: ManifestRow = { digest, media_type: mediaType, size: bytes.length, body: bytes }
    this.manifests.set(digest, row)
    this.log.info('store.manifest_committed', { digest, media_type: mediaType, repo: name.upstream })
    return row
  }

  /**
   * A client whose Accept does not list an index type gets the default platform's manifest
   * from the index, as Docker Hub does for old clients; any other mismatch is "unknown".
   */
  private async negotiate(
    name: RepoName,
    found: ManifestAnswer,
    accepted: string[],
    method: 'GET' | 'HEAD',
  ): Promise<ManifestAnswer> {
    if (accepts(accepted, found.mediaType)) return found
    if (INDEX_TYPES.has(found.mediaType)) {
      // A HEAD by tag learnt the index's digest only. Which child this client gets is in the
      // index itself: fetch it, as the GET would have.
      if (found.bytes === undefined && !this.cachedManifest(found.digest)) {
        try {
          await this.fetchManifest(name, found.digest)
        } catch (err) {
          throw asRegistryError(err, 'MANIFEST_UNKNOWN')
        }
      }
      const child = this.index
        .manifestRefs(found.digest)
        .find(
          (ref) =>
            ref.platform === DEFAULT_PLATFORM && ref.mediaType !== null && accepts(accepted, ref.mediaType),
        )
      if (child) {
        const resolved = await this.manifestByDigest(name, child.child, method)
        return { ...resolved, cache: found.cache === 'stale' ? 'stale' : resolved.cache }
      }
    }
    throw new RegistryError('MANIFEST_UNKNOWN', {
      media_type: found.mediaType,
      reason: 'the manifest has a media type that the Accept header does not list',
    })
  }

  private cachedManifest(digest: string): ManifestRow | undefined {
    const hot = this.manifests.get(digest)
    if (hot) return hot
    const row = this.index.getManifest(digest)
    if (row) this.manifests.set(digest, row)
    return row
  }

  // --- tags/list ---------------------------------------------------------------------------

  async tagList(name: RepoName, query: string): Promise<TagListAnswer> {
    const registry = this.registry
    try {
      const got = await this.bounded((signal) => this.upstream.getTags(name.upstream, query, signal))
      this.index.setTagList(registry, name.upstream, query, got.bytes, got.link ?? null)
      return { bytes: got.bytes, link: got.link ?? null, cache: 'miss' }
    } catch (err) {
      const kept = this.index.getTagList(registry, name.upstream, query)
      if (kept && err instanceof UpstreamError && err.kind !== 'NOT_FOUND') {
        this.log.warn('mirror.stale_tag_list', { repo: name.upstream, error: err })
        return { bytes: kept.body, link: kept.link, cache: 'stale' }
      }
      throw asRegistryError(err, 'NAME_UNKNOWN')
    }
  }

  // --- bookkeeping -------------------------------------------------------------------------

  /** Records one finished request: counters, repo links, accounting; all buffered, no I/O. */
  record(r: {
    kind: 'blob' | 'manifest' | 'tags'
    name: RepoName
    method: string
    result: CacheResult
    bytes: number
    digest?: string
    tag?: string
  }): void {
    const registry = this.registry
    const fromUpstream = r.result === 'miss'
    // A manifest GET answered without a manifest GET upstream: a Docker Hub pull not spent.
    const pullAvoided = r.kind === 'manifest' && r.method === 'GET' && !fromUpstream && r.result !== 'error'
    if (r.digest !== undefined && r.result !== 'error') {
      if (r.kind === 'blob') {
        this.index.touchBlob(r.digest, r.result, r.bytes)
        // A link says upstream confirmed that this repository has the digest (visibility.ts): a
        // miss was fetched under this name. A hit or a coalesced answer may have come from
        // another repository's fetch, so it proves nothing about this one.
        if (r.result === 'miss') this.index.link(registry, r.name.upstream, r.digest, 'blob')
      } else if (r.kind === 'manifest') {
        this.index.touchManifest(r.digest, !fromUpstream)
      }
    }
    // Junk must not grow the index: a failed request counts against a tag only when the tag is
    // known (cached), and under its repository's name only when the repository has content
    // here; any other is accounted under one placeholder. Requests for names and tags that do
    // not exist upstream so leave a bounded number of rows.
    const failed = r.result === 'error'
    if (r.tag !== undefined && (!failed || this.index.getTag(registry, r.name.upstream, r.tag))) {
      this.index.touchTag(registry, r.name.upstream, r.tag, r.result, r.bytes, pullAvoided)
    }
    this.metrics.requests.inc({ kind: r.kind, method: r.method, result: r.result })
    if (r.bytes > 0) this.metrics.servedBytes.inc({ source: fromUpstream ? 'upstream' : 'cache' }, r.bytes)
    if (pullAvoided) this.metrics.hubPullsAvoided.inc()
    this.index.account({
      registry,
      repo: failed && !this.index.hasRepo(registry, r.name.upstream) ? FAILED_REPO : r.name.upstream,
      kind: r.kind,
      method: r.method,
      result: r.result,
      bytesCache: fromUpstream ? 0 : r.bytes,
      bytesUpstream: fromUpstream ? r.bytes : 0,
      pullsAvoided: pullAvoided ? 1 : 0,
    })
  }

  /**
   * One exchange per key at a time, under the upstream deadline: past it the key is free for
   * the next request, the exchange is aborted, and everyone who joined it gets TIMEOUT.
   */
  private flight<T>(key: string, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const existing = this.flights.get(key)
    if (existing) return existing as Promise<T>
    const started = this.bounded(run).finally(() => {
      if (this.flights.get(key) === started) this.flights.delete(key)
    })
    this.flights.set(key, started)
    return started
  }

  /** Runs one upstream exchange; at the deadline it is aborted and the promise rejects at once. */
  private bounded<T>(run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ms = this.upstream.headerTimeoutMs
    const controller = new AbortController()
    let timer: NodeJS.Timeout | undefined
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = timedOut(ms, 'upstream exchange')
        controller.abort(err)
        reject(err)
      }, ms)
    })
    const work = run(controller.signal)
    work.catch(() => {}) // past the deadline nobody waits on it; a late failure is not unhandled
    return Promise.race([work, expired]).finally(() => clearTimeout(timer))
  }
}

function timedOut(ms: number, what: string): UpstreamError {
  return new UpstreamError('TIMEOUT', `upstream timed out: no answer for ${what} within ${ms} ms`)
}

/** Rejects with a TIMEOUT UpstreamError if `work` has not settled in `ms`; work goes on. */
function deadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new UpstreamError('TIMEOUT', `upstream did not answer the revalidation within ${ms} ms`)),
      ms,
    )
  })
  work.catch(() => {}) // a late failure of abandoned work is not unhandled
  return Promise.race([work, expired]).finally(() => clearTimeout(timer))
}

function answer(row: ManifestRow, cache: Outcome): ManifestAnswer {
  return { digest: row.digest, mediaType: row.media_type, size: row.size, bytes: row.body, cache }
}

/** The Content-Type upstream sent, or the body's own mediaType when the header says nothing useful. */
function manifestMediaType(bytes: Buffer, contentType: string): string {
  if (contentType && contentType !== 'application/json' && contentType !== 'text/plain') return contentType
  try {
    const declared = (JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown }).mediaType
    if (typeof declared === 'string' && declared) return declared
  } catch {
    // fall through
  }
  return contentType || MEDIA_TYPES.ociManifest
}

function asRegistryError(
  err: unknown,
  notFound: 'BLOB_UNKNOWN' | 'MANIFEST_UNKNOWN' | 'NAME_UNKNOWN',
): Error {
  if (err instanceof UpstreamError) return err.toRegistryError(notFound)
  return err as Error
}
