// Manifests by digest in the shared tier (store/shared-tier.ts draws the layout): read on a local
// miss before upstream is asked, published when one is committed from upstream. A manifest by
// digest is immutable, so a body that hashes to its digest is the manifest, whichever node put it
// there; one that does not is refused (upstream serves it, and the publish of what upstream sent
// replaces the object). Tags are never read from or written to the bucket.
//
// Visibility: a manifest in the bucket marked as fetched anonymously may go to anonymous clients,
// as a marked blob may (mirror.ts). Once one is admitted here, the mark is remembered for a while,
// so its next anonymous requests need no upstream question either; forgotten, it costs one (and
// a 'yes' is then linked, as for anything else held here).

import { LRUCache } from 'lru-cache'
import type { Logger } from '../log.js'
import type { ManifestRow } from '../store/index-db.js'
import type { Store } from '../store/store.js'

export interface ManifestBucketOptions {
  store: Store
  log: Logger
  /** Whether manifests fetched now are fetched without an upstream account (the bucket's mark). */
  anonymous: () => boolean
}

export class ManifestBucket {
  private readonly store: Store
  private readonly log: Logger
  private readonly anonymous: () => boolean
  /** Digests the bucket marked as fetched anonymously, as last read or looked at here. */
  private readonly marked = new LRUCache<string, true>({ max: 10_000 })

  constructor(opts: ManifestBucketOptions) {
    this.store = opts.store
    this.log = opts.log
    this.anonymous = opts.anonymous
  }

  /** Whether there is a bucket at all. */
  get enabled(): boolean {
    return this.store.shared !== undefined
  }

  /**
   * A manifest from the bucket, verified, or undefined (absent, refused, or the bucket failed:
   * the caller asks upstream). Not stored here: the caller commits it as it commits any.
   */
  async read(digest: string, signal: AbortSignal): Promise<ManifestRow | undefined> {
    if (!this.enabled) return undefined
    const got = await this.store.bucket.manifestFromShared(digest, signal).catch((err: unknown) => {
      if (!signal.aborted) this.log.warn('store.bucket_failed', { digest, op: 'get_manifest', error: err })
      return undefined
    })
    if (got === undefined) return undefined
    if ('invalid' in got) {
      this.log.warn('store.bucket_manifest_invalid', { digest, reason: got.invalid })
      return undefined
    }
    if (got.anonymous) this.marked.set(digest, true)
    return { digest, media_type: got.mediaType, size: got.body.length, body: got.body }
  }

  /** Whether the bucket holds the manifest, and whether anonymous pulls may read it from there. */
  async held(digest: string): Promise<{ anonymous: boolean } | undefined> {
    if (!this.enabled) return undefined
    // A bucket that does not answer now is not asked by the lookup either.
    const found = await this.store.bucket.statManifestInShared(digest).catch(() => undefined)
    if (found?.anonymous) this.marked.set(digest, true)
    return found
  }

  /** Whether the bucket was seen to mark this manifest as fetched anonymously. */
  markedAnonymous(digest: string): boolean {
    return this.marked.has(digest)
  }

  /** Puts a manifest just fetched from upstream (and verified) in the bucket, behind its client. */
  publish(row: ManifestRow): void {
    if (!this.enabled) return
    const started = Date.now()
    this.store.bucket
      .publishManifest(row.digest, row.body, { mediaType: row.media_type, anonymous: this.anonymous() })
      .then(
        (outcome) =>
          this.log.info('store.manifest_published', {
            digest: row.digest,
            outcome,
            ms: Date.now() - started,
          }),
        (err: unknown) =>
          this.log.warn('store.bucket_failed', { digest: row.digest, op: 'publish_manifest', error: err }),
      )
  }
}
