// Manifests and the tags that point at them. A manifest by digest is immutable: served from
// memory or the index with no upstream request at all, else fetched once (one GET per digest at
// a time), verified against its digest and stored. A tag is revalidated with an upstream HEAD
// (free on Docker Hub) at most once per freshness window; a manifest GET upstream (the request
// Docker Hub counts as a pull) happens only for a digest we do not have. When revalidation fails
// for any reason but "not found", the cached manifest is served and marked stale; with few pulls
// left, or upstream down moments ago, cached tags are served without asking. A client that cannot
// read an index gets the default platform's manifest, as Docker Hub does.

import { LRUCache } from 'lru-cache'
import type { TagPattern } from '../config.js'
import { RegistryError, UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import { INDEX_TYPES, MEDIA_TYPES, manifestRefs, type RepoName, sha256 } from '../oci.js'
import type { IndexDb, ManifestRow } from '../store/index-db.js'
import type { Upstream } from '../upstream/client.js'
import { asRegistryError, type ManifestAnswer, type Outcome } from './answers.js'
import type { Flights } from './flights.js'
import { accepts } from './manifest.js'
import type { ManifestBucket } from './manifest-bucket.js'

export interface FreshnessRule {
  match: TagPattern
  freshness: number
}

/** The platform an old client gets when it cannot read an index, as Docker Hub does it. */
const DEFAULT_PLATFORM = 'linux/amd64'

export interface ManifestLookupOptions {
  upstream: Upstream
  index: IndexDb
  log: Logger
  flights: Flights
  tagFreshnessMs: number
  /** Per-pattern freshness, first match wins; tags matching none get tagFreshnessMs. */
  tagFreshnessRules: readonly FreshnessRule[]
  revalidateTimeoutMs: number
  manifestMemoryBytes: number
  /** Manifests by digest in the shared tier, when there is one: read before upstream. */
  bucket?: ManifestBucket
}

export class ManifestLookup {
  private readonly upstream: Upstream
  private readonly index: IndexDb
  private readonly log: Logger
  private readonly flights: Flights
  private tagFreshnessMs: number
  private tagFreshnessRules: readonly FreshnessRule[]
  private readonly revalidateTimeoutMs: number
  private readonly manifests: LRUCache<string, ManifestRow>
  private readonly bucket: ManifestBucket | undefined

  constructor(opts: ManifestLookupOptions) {
    this.upstream = opts.upstream
    this.index = opts.index
    this.log = opts.log
    this.flights = opts.flights
    this.tagFreshnessMs = opts.tagFreshnessMs
    this.tagFreshnessRules = opts.tagFreshnessRules
    this.revalidateTimeoutMs = opts.revalidateTimeoutMs
    this.bucket = opts.bucket
    this.manifests = new LRUCache<string, ManifestRow>({
      maxSize: Math.max(1, opts.manifestMemoryBytes),
      sizeCalculation: (row) => Math.max(1, row.body.length),
    })
  }

  private get registry(): string {
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

  async manifestByDigest(name: RepoName, digest: string, method: 'GET' | 'HEAD'): Promise<ManifestAnswer> {
    const cached = this.cachedManifest(digest)
    if (cached) return answer(cached, 'hit')
    try {
      if (method === 'HEAD') {
        // The bucket before upstream: a manifest any node fetched is there for every node.
        const kept = this.bucket?.enabled
          ? await this.flights.bounded((signal) => this.fromBucket(digest, signal))
          : undefined
        if (kept) return answer(kept, 'hit')
        const head = await this.flights.bounded((signal) =>
          this.upstream.headManifest(name.upstream, digest, signal),
        )
        if (head.size === undefined)
          throw new UpstreamError('SERVER', `HEAD manifest ${digest}: no Content-Length`)
        return { digest, mediaType: head.mediaType, size: head.size, bytes: undefined, cache: 'miss' }
      }
      // Joining another request's GET: served from its download, like a coalesced blob, and
      // not a Docker Hub pull of its own (stats count pulls avoided from this).
      const joined = this.flights.has(`manifest\0${digest}`)
      const got = await this.fetchManifest(name, digest)
      return answer(got.row, got.fromBucket ? 'hit' : joined ? 'coalesced' : 'miss')
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
    // When upstream last confirmed the tag (sent on as Age): the row read above, unless a
    // revalidation below writes a newer one.
    let checkedAt = known?.last_checked

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
        // One revalidation per tag at a time, whichever method started it: its HEAD, and its GET
        // when the digest is new. A GET that joined a HEAD's gets the bytes by digest after it.
        const key = `tag\0${name.upstream}\0${tag}`
        const joined = this.flights.has(key)
        const revalidation = this.flights
          .flight(key, (signal) => this.revalidate(name, tag, method, known?.digest, signal))
          .then(async (got) =>
            method === 'GET' && got.bytes === undefined
              ? answer((await this.fetchManifest(name, got.digest)).row, got.cache)
              : got,
          )
        // With a cached copy in hand, do not wait on a slow upstream for long.
        found = known && cached ? await deadline(revalidation, this.revalidateTimeoutMs) : await revalidation
        // The leader's download served this request too (see manifestByDigest).
        if (joined && found.cache === 'miss') found = { ...found, cache: 'coalesced' }
        checkedAt = this.index.getTag(registry, name.upstream, tag)?.last_checked
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
    const negotiated = await this.negotiate(name, found, accepted, method)
    return checkedAt === undefined ? negotiated : { ...negotiated, checkedAt }
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
    // A central pullcache's answer may be older than now (its Age): the tag's window runs from
    // when the central checked it, so a site's staleness is bounded by the larger window.
    const checkedAt = Date.now() - head.ageMs
    if (head.digest !== undefined) {
      const digest = head.digest
      const cached = this.cachedManifest(digest)
      if (cached) {
        this.index.setTag(registry, name.upstream, tag, digest, cached.media_type, checkedAt)
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
        this.index.setTag(registry, name.upstream, tag, digest, head.mediaType, checkedAt)
        return { digest, mediaType: head.mediaType, size: head.size, bytes: undefined, cache: 'miss' }
      }
      const { row, fromBucket } = await this.fetchManifest(name, digest)
      this.index.setTag(registry, name.upstream, tag, digest, row.media_type, checkedAt)
      // From the bucket: upstream's HEAD just said this repository has it, and no GET was spent.
      if (fromBucket) this.index.link(registry, name.upstream, digest, 'manifest')
      return answer(row, fromBucket ? 'hit' : 'miss')
    }
    // An upstream that does not say the digest on HEAD: GET by tag and hash the bytes ourselves.
    const row = await this.flights.flight(`manifest-tag\0${name.upstream}\0${tag}`, async (signal) => {
      const got = await this.upstream.getManifest(name.upstream, tag, signal)
      return this.storeManifest(name, sha256(got.bytes), got.bytes, got.mediaType, got.digest)
    })
    this.index.setTag(registry, name.upstream, tag, row.digest, row.media_type, checkedAt)
    return answer(row, 'miss')
  }

  /**
   * From the bucket, else GET by digest from upstream; verified and stored either way. One
   * exchange per digest at a time.
   */
  private fetchManifest(name: RepoName, digest: string): Promise<{ row: ManifestRow; fromBucket: boolean }> {
    return this.flights.flight(`manifest\0${digest}`, async (signal) => {
      const kept = await this.fromBucket(digest, signal)
      if (kept) return { row: kept, fromBucket: true }
      const got = await this.upstream.getManifest(name.upstream, digest, signal)
      return {
        row: this.storeManifest(name, digest, got.bytes, got.mediaType, got.digest),
        fromBucket: false,
      }
    })
  }

  /**
   * A manifest from the bucket (verified there), committed here. Not linked to the repository
   * asked for: that it was fetched under some name proves nothing about this one.
   */
  private async fromBucket(digest: string, signal: AbortSignal): Promise<ManifestRow | undefined> {
    const got = await this.bucket?.read(digest, signal)
    if (got === undefined) return undefined
    const row = this.keep(digest, manifestMediaType(got.body, got.media_type), got.body)
    this.log.info('store.manifest_committed', { digest, media_type: row.media_type, source: 'bucket' })
    return row
  }

  /** Into the index and the memory cache. */
  private keep(digest: string, mediaType: string, bytes: Buffer): ManifestRow {
    this.index.addManifest(digest, mediaType, bytes, manifestRefs(bytes))
    const row: ManifestRow = { digest, media_type: mediaType, size: bytes.length, body: bytes }
    this.manifests.set(digest, row)
    return row
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
    const row = this.keep(digest, manifestMediaType(bytes, contentType), bytes)
    this.index.link(this.registry, name.upstream, digest, 'manifest')
    this.log.info('store.manifest_committed', {
      digest,
      media_type: row.media_type,
      repo: name.upstream,
      source: 'upstream',
    })
    this.bucket?.publish(row)
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

  cachedManifest(digest: string): ManifestRow | undefined {
    const hot = this.manifests.get(digest)
    if (hot) return hot
    const row = this.index.getManifest(digest)
    if (row) this.manifests.set(digest, row)
    return row
  }
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
