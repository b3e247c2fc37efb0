// The mirror's policy, one request at a time:
//   lookup -> hit, or upstream -> tee -> verify -> commit -> index.
// Digests are immutable: a cached digest is served with no upstream request at all. Tags are
// revalidated with an upstream HEAD (free on Docker Hub) at most once per freshness window; a
// manifest GET upstream (the request Docker Hub counts as a pull) happens only for a digest we
// do not have. When revalidation fails for any reason but "not found", the cached manifest is
// served and marked stale. Concurrent requests for one blob, manifest or tag share one
// upstream exchange (single flight).
//
// The parts, each owning one thing:
//   blob-lookup.ts      blobs: store, adopt, join or start a fill; pins against eviction
//   blob-fill.ts        one fill: upstream body -> tee -> verify -> commit
//   manifest-lookup.ts  manifests by digest and tag, freshness, stale-if-error, negotiation
//   referrers.ts        referrers of a digest: upstream's API or the tag schema, kept per repo
//   flights.ts          one exchange per key at a time, each under the upstream deadline
//   accounting.ts       what a finished request leaves: counters, links, accounting rows
//   visibility.ts       what anonymous clients may read
//   answers.ts          what the routes get back, and failures as registry errors

import { UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { RepoName } from '../oci.js'
import type { IndexDb } from '../store/index-db.js'
import type { Store } from '../store/store.js'
import type { Upstream } from '../upstream/client.js'
import { Accounting, type RequestRecord } from './accounting.js'
import {
  asRegistryError,
  type BlobAnswer,
  type ManifestAnswer,
  type Outcome,
  type TagListAnswer,
} from './answers.js'
import type { Fill } from './blob-fill.js'
import { BlobLookup, type CommittedBlob } from './blob-lookup.js'
import { Flights } from './flights.js'
import { ManifestBucket } from './manifest-bucket.js'
import { type FreshnessRule, ManifestLookup } from './manifest-lookup.js'
import { type ReferrersAnswer, ReferrersLookup } from './referrers.js'
import { Visibility } from './visibility.js'

/** How many names an anonymous catalog page may look at per name it can list. */
const CATALOG_SCAN_FACTOR = 4

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
  onBlobCommitted?: (committed: CommittedBlob) => void
}

export class Mirror {
  readonly upstream: Upstream
  /** What anonymous clients may read. */
  readonly visibility: Visibility
  private readonly index: IndexDb
  private readonly store: Store
  private readonly log: Logger
  private readonly flights: Flights
  private readonly blobs: BlobLookup
  private readonly manifests: ManifestLookup
  private readonly manifestBucket: ManifestBucket
  private readonly referrerLookup: ReferrersLookup
  private readonly accounting: Accounting

  constructor(opts: MirrorOptions) {
    this.upstream = opts.upstream
    this.index = opts.index
    this.store = opts.store
    this.log = opts.log
    this.flights = new Flights(opts.upstream.headerTimeoutMs)
    this.blobs = new BlobLookup({
      upstream: opts.upstream,
      store: opts.store,
      index: opts.index,
      log: opts.log,
      metrics: opts.metrics,
      flights: this.flights,
      onBlobCommitted: opts.onBlobCommitted ?? (() => {}),
    })
    this.manifestBucket = new ManifestBucket({
      store: opts.store,
      log: opts.log,
      anonymous: () => !opts.upstream.hasCredentials,
    })
    this.manifests = new ManifestLookup({
      bucket: this.manifestBucket,
      upstream: opts.upstream,
      index: opts.index,
      log: opts.log,
      flights: this.flights,
      tagFreshnessMs: opts.tagFreshnessMs,
      tagFreshnessRules: opts.tagFreshnessRules ?? [],
      revalidateTimeoutMs: opts.revalidateTimeoutMs,
      manifestMemoryBytes: opts.manifestMemoryBytes,
    })
    this.referrerLookup = new ReferrersLookup({
      upstream: opts.upstream,
      index: opts.index,
      log: opts.log,
      flights: this.flights,
      freshnessFor: (repo, tag) => this.manifests.freshnessFor(repo, tag),
      cachedManifest: (digest) => this.manifests.cachedManifest(digest),
    })
    this.accounting = new Accounting(opts.index, opts.metrics, opts.upstream.registry, opts.upstream.host)
    this.visibility = new Visibility({ upstream: opts.upstream, index: opts.index, log: opts.log })
  }

  get registry(): string {
    return this.upstream.registry
  }

  setTagFreshness(ms: number, rules: readonly FreshnessRule[] = []): void {
    this.manifests.setTagFreshness(ms, rules)
  }

  /** How long this tag is served from the index without asking upstream. */
  freshnessFor(repo: string, tag: string): number {
    return this.manifests.freshnessFor(repo, tag)
  }

  /** Offline on purpose: upstream is never contacted (config `offline`, switchable at run time). */
  get offline(): boolean {
    return this.upstream.offline
  }

  set offline(value: boolean) {
    if (value !== this.upstream.offline) this.log.warn(value ? 'mirror.offline' : 'mirror.online', {})
    this.upstream.offline = value
  }

  // --- blobs (blob-lookup.ts) ----------------------------------------------------------------

  /** A committed blob, opened (see BlobLookup.openStored); release() ends its pin. */
  openStored(digest: string): Promise<Extract<BlobAnswer, { kind: 'file' }> | undefined> {
    return this.blobs.openStored(digest)
  }

  /** For a fill whose size upstream did not say: the stored blob once it is committed. */
  storedWhenDone(fill: Fill, cache: Outcome): Promise<Extract<BlobAnswer, { kind: 'file' }>> {
    return this.blobs.storedWhenDone(fill, cache)
  }

  /** Whether a response is streaming this blob from the store right now. */
  isInUse(digest: string): boolean {
    return this.blobs.isInUse(digest)
  }

  /** Fills in progress, for draining on shutdown and for metrics. */
  inflight(): Fill[] {
    return this.blobs.inflight()
  }

  blob(
    name: RepoName,
    digest: string,
    method: 'GET' | 'HEAD',
    opts: { offload?: boolean } = {},
  ): Promise<BlobAnswer> {
    return this.blobs.blob(name, digest, method, opts)
  }

  /** With redirects to the bucket on: the host (no port) clients are sent to. */
  get redirectHost(): string | undefined {
    return this.store.shared?.redirectHost
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
      const fill = this.blobs.fillFor(digest)
      if (
        fill !== undefined &&
        (fill.repo === name.upstream || (await this.visibility.repoReadable(fill.repo)))
      )
        return true
    }
    let held =
      kind === 'blob'
        ? this.blobs.fillFor(digest) !== undefined || this.index.getBlob(digest) !== undefined
        : this.flights.has(`manifest\0${digest}`) || this.manifests.cachedManifest(digest) !== undefined
    if (!held && kind === 'blob' && this.store.shared !== undefined) {
      // The bucket would serve it without asking upstream, and any node on the bucket may have
      // fetched it with an account: public only when marked as fetched anonymously. A bucket
      // that does not answer now is not asked by the fill either.
      const shared = await this.store.bucket.statInShared(digest).catch(() => undefined)
      if (shared?.anonymous) return true
      held = shared !== undefined
    }
    if (kind === 'manifest') {
      // The same for a manifest the bucket would serve, or served (mirror/manifest-bucket.ts).
      if (this.manifestBucket.markedAnonymous(digest)) return true
      if (!held) {
        const shared = await this.manifestBucket.held(digest)
        if (shared?.anonymous) return true
        held = shared !== undefined
      }
    }
    if (!held) return true
    return this.visibility.digestReadable(name.upstream, digest, kind)
  }

  // --- manifests (manifest-lookup.ts) ---------------------------------------------------------

  manifestByDigest(name: RepoName, digest: string, method: 'GET' | 'HEAD'): Promise<ManifestAnswer> {
    return this.manifests.manifestByDigest(name, digest, method)
  }

  manifestByTag(
    name: RepoName,
    tag: string,
    method: 'GET' | 'HEAD',
    accepted: string[],
  ): Promise<ManifestAnswer> {
    return this.manifests.manifestByTag(name, tag, method, accepted)
  }

  // --- tags/list ---------------------------------------------------------------------------

  async tagList(name: RepoName, query: string): Promise<TagListAnswer> {
    const registry = this.registry
    try {
      const got = await this.flights.bounded((signal) => this.upstream.getTags(name.upstream, query, signal))
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

  // --- referrers and the catalog -------------------------------------------------------------

  /** The manifests whose subject is this digest, as listed under this repository. */
  referrers(name: RepoName, digest: string): Promise<ReferrersAnswer> {
    return this.referrerLookup.referrers(name, digest)
  }

  /**
   * Up to `n` repositories with content here, in order, after `last` (upstream names); `more`
   * when there may be another page. An anonymous viewer sees only those recorded readable by
   * anonymous pulls (no upstream question per name: an unknown one stays hidden). At most
   * CATALOG_SCAN_FACTOR * n names are looked at per page, so a page of private names ends short.
   */
  catalog(last: string, n: number, anonymous: boolean): { repositories: string[]; next: string | undefined } {
    const { registry, assumed } = this.visibility.publicScope()
    const scan = anonymous ? n * CATALOG_SCAN_FACTOR : n
    // One name beyond the scan says whether there is another page.
    const names = this.index.listings.repositories(registry, last, scan + 1)
    const repositories: string[] = []
    let seen = 0
    for (const name of names.slice(0, scan)) {
      if (repositories.length === n) break
      seen++
      if (!anonymous || this.index.isPublicRepo(registry, name, assumed)) repositories.push(name)
    }
    const lastSeen = seen === 0 ? undefined : names[seen - 1]
    const more = seen < names.length
    return { repositories, next: more ? lastSeen : undefined }
  }

  /** Records one finished request: counters, repo links, accounting; all buffered, no I/O. */
  record(r: RequestRecord): void {
    this.accounting.record(r)
  }
}
