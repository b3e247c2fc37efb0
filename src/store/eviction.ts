// Keeping the store inside its budget. Eviction removes the least recently used blobs when the
// store is above its high-water mark, until it is under the low-water mark, and anything unused
// for longer than max_unused_age. Pinned images (tag patterns) are never evicted, nor anything
// their manifests reference, down through an index's child manifests.
//
// Planning only reads; executing deletes in small batches so requests keep flowing between
// them. Each blob leaves in one synchronous step: a last check that no response is streaming
// it, its index rows (so no new request sees a hit), then its file is renamed out of blobs/ into
// tmp/ (a rename is cheap; no request can start streaming between the row and the file). A
// request that read the row just before is safe too: the mirror opens the file before
// answering, and a file already open stays readable after unlink. The unlink itself, which
// frees the blocks and takes tens of milliseconds for a large layer, runs off the event loop
// (fs/promises), a few at a time. A blob that cannot be removed (EACCES, EISDIR, ...) is logged
// and counted, its row restored, and eviction goes on with the next one: no eviction error
// ever ends the process. Manifests are only removed by age: they are tiny, and removing one
// costs a counted Docker Hub pull to get it back.

import pLimit from 'p-limit'
import type { TagPattern } from '../config.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { BlobStore } from './blob-store.js'
import type { IndexDb } from './index-db.js'

export interface EvictionPolicy {
  maxSize: number | null
  highWater: number
  lowWater: number
  maxUnusedAgeMs: number | null
  pins: readonly TagPattern[]
}

export interface EvictionPlan {
  blobs: { digest: string; size: number; lastAccess: number; reason: 'size' | 'age' }[]
  manifests: { digest: string; lastAccess: number }[]
  tags: { registry: string; repo: string; tag: string }[]
  /** Bytes of blob files the plan frees. */
  bytes: number
  /** Store bytes before and after the plan. */
  storeBytes: number
  storeBytesAfter: number
  pinned: number
}

export interface EvictionResult {
  blobs: number
  bytes: number
  manifests: number
  tags: number
  /** Blobs left alone because a response was streaming them when their turn came. */
  skippedInUse: number
  /** Blobs whose removal failed (logged and counted); eviction went on with the next. */
  errors: number
}

/**
 * Blobs taken out between two yields to the event loop. Each costs about a millisecond of
 * synchronous work (two row deletes and a rename; measured on a loaded 2-core machine), so a
 * batch stalls requests for ~16 ms at most; the unlinks themselves run in the thread pool.
 */
const BATCH = 16
/** Unlinks running at once; each is a thread-pool job (libuv has 4 threads by default). */
const UNLINKS = 2

export class Evictor {
  private policy: EvictionPolicy
  private running: Promise<EvictionResult> | undefined
  private readonly store: BlobStore
  private readonly index: IndexDb
  private readonly log: Logger
  private readonly metrics: Metrics | undefined
  private readonly inUse: (digest: string) => boolean

  constructor(opts: {
    store: BlobStore
    index: IndexDb
    log: Logger
    policy: EvictionPolicy
    metrics?: Metrics
    inUse?: (digest: string) => boolean
  }) {
    this.store = opts.store
    this.index = opts.index
    this.log = opts.log
    this.policy = opts.policy
    this.metrics = opts.metrics
    this.inUse = opts.inUse ?? (() => false)
  }

  setPolicy(policy: EvictionPolicy): void {
    this.policy = policy
  }

  get budget(): number | null {
    return this.policy.maxSize
  }

  /** True when the store is above its high-water mark. */
  overBudget(): boolean {
    const { maxSize, highWater } = this.policy
    return maxSize !== null && this.index.storeTotals().bytes > maxSize * highWater
  }

  /** What eviction would remove now, without removing anything. */
  plan(now = Date.now()): EvictionPlan {
    // Last-access times of recent requests are still in the write buffer.
    this.index.flush()
    const db = this.index.database
    const pinned = this.pinnedDigests()
    const { maxSize, highWater, lowWater, maxUnusedAgeMs } = this.policy
    const blobs: EvictionPlan['blobs'] = []
    const chosen = new Set<string>()
    const storeBytes = this.index.storeTotals().bytes
    let remaining = storeBytes
    type Row = { digest: string; size: number; last_access: number }
    // Both walks use the last_access index and stop early: no full scan of a large store.
    if (maxUnusedAgeMs !== null) {
      const old = db
        .prepare(
          'SELECT digest, size, last_access FROM blobs WHERE last_access < ? ORDER BY last_access, digest',
        )
        .iterate(now - maxUnusedAgeMs) as IterableIterator<Row>
      for (const row of old) {
        if (pinned.has(row.digest)) continue
        blobs.push({ digest: row.digest, size: row.size, lastAccess: row.last_access, reason: 'age' })
        chosen.add(row.digest)
        remaining -= row.size
      }
    }
    if (maxSize !== null && remaining > maxSize * highWater) {
      const target = maxSize * lowWater
      const lru = db
        .prepare('SELECT digest, size, last_access FROM blobs ORDER BY last_access, digest')
        .iterate() as IterableIterator<Row>
      for (const row of lru) {
        if (remaining <= target) break
        if (pinned.has(row.digest) || chosen.has(row.digest)) continue
        blobs.push({ digest: row.digest, size: row.size, lastAccess: row.last_access, reason: 'size' })
        chosen.add(row.digest)
        remaining -= row.size
      }
    }

    const manifests: EvictionPlan['manifests'] = []
    const tags: EvictionPlan['tags'] = []
    if (maxUnusedAgeMs !== null) {
      const old = db
        .prepare('SELECT digest, last_access FROM manifests WHERE last_access < ? ORDER BY last_access')
        .all(now - maxUnusedAgeMs) as { digest: string; last_access: number }[]
      const tagsOf = db.prepare('SELECT registry, repo, tag FROM tags WHERE digest = ?')
      for (const m of old) {
        if (pinned.has(m.digest)) continue
        manifests.push({ digest: m.digest, lastAccess: m.last_access })
        tags.push(...(tagsOf.all(m.digest) as EvictionPlan['tags']))
      }
    }
    return {
      blobs,
      manifests,
      tags,
      bytes: storeBytes - remaining,
      storeBytes,
      storeBytesAfter: remaining,
      pinned: pinned.size,
    }
  }

  /** Resolves when no run is going. */
  async idle(): Promise<void> {
    await this.running?.catch(() => undefined)
  }

  /** Plans and executes, one run at a time; a run asked for while one is going joins it. */
  run(): Promise<EvictionResult> {
    this.running ??= this.execute(this.plan()).finally(() => {
      this.running = undefined
    })
    return this.running
  }

  /** Carries out a plan (e.g. one shown by a dry run), re-checking use and pins as it goes. */
  async execute(plan: EvictionPlan): Promise<EvictionResult> {
    const result: EvictionResult = { blobs: 0, bytes: 0, manifests: 0, tags: 0, skippedInUse: 0, errors: 0 }
    if (plan.blobs.length + plan.manifests.length === 0) return result
    const pinned = this.pinnedDigests()
    const db = this.index.database
    const dropBlob = db.transaction((digest: string) => {
      db.prepare('DELETE FROM blobs WHERE digest = ?').run(digest)
      db.prepare('DELETE FROM repo_links WHERE digest = ?').run(digest)
    })
    const unlinks = pLimit(UNLINKS)
    const failed = (digest: string, stage: string, err: unknown) => {
      result.errors++
      this.metrics?.evictionErrors.inc()
      this.log.error('store.eviction_error', { digest, stage, error: err })
    }
    for (let i = 0; i < plan.blobs.length; i += BATCH) {
      const removing: Promise<void>[] = []
      for (const blob of plan.blobs.slice(i, i + BATCH)) {
        if (pinned.has(blob.digest)) continue
        if (this.inUse(blob.digest)) {
          result.skippedInUse++
          continue
        }
        let detached: string | undefined
        try {
          const row = this.index.getBlob(blob.digest)
          dropBlob(blob.digest)
          try {
            detached = this.store.detach(blob.digest)
          } catch (err) {
            // The file stays where it is: so does its row, and the budget keeps counting it.
            if (row) this.index.addBlob(blob.digest, row.size, row.last_access)
            throw err
          }
        } catch (err) {
          failed(blob.digest, 'detach', err)
          continue
        }
        result.blobs++
        result.bytes += blob.size
        this.metrics?.evictions.inc({ kind: 'blob', reason: blob.reason })
        this.metrics?.evictedBytes.inc(blob.size)
        if (detached !== undefined) {
          const path = detached
          removing.push(
            unlinks(() => this.store.unlinkDetached(path)).catch((err: unknown) =>
              failed(blob.digest, 'unlink', err),
            ),
          )
        }
      }
      await Promise.all(removing)
      await new Promise((resolve) => setImmediate(resolve))
    }
    const dropManifest = db.transaction((digest: string) => {
      const gone = db.prepare('DELETE FROM tags WHERE digest = ?').run(digest).changes
      db.prepare('DELETE FROM manifest_refs WHERE manifest = ?').run(digest)
      db.prepare('DELETE FROM repo_links WHERE digest = ?').run(digest)
      db.prepare('DELETE FROM manifests WHERE digest = ?').run(digest)
      return gone
    })
    for (const m of plan.manifests) {
      if (pinned.has(m.digest)) continue
      result.tags += dropManifest(m.digest)
      result.manifests++
      this.metrics?.evictions.inc({ kind: 'manifest', reason: 'age' })
    }
    this.log.info('store.evicted', {
      blobs: result.blobs,
      bytes: result.bytes,
      manifests: result.manifests,
      tags: result.tags,
      skipped_in_use: result.skippedInUse,
      errors: result.errors,
      store_bytes: this.index.storeTotals().bytes,
      budget: this.policy.maxSize,
    })
    return result
  }

  /** Digests of pinned tags' manifests and everything they reference, recursively. */
  private pinnedDigests(): Set<string> {
    const pinned = new Set<string>()
    if (this.policy.pins.length === 0) return pinned
    const db = this.index.database
    const tags = db.prepare('SELECT repo, tag, digest FROM tags').iterate() as IterableIterator<{
      repo: string
      tag: string
      digest: string
    }>
    const children = db.prepare('SELECT child FROM manifest_refs WHERE manifest = ?').pluck()
    const stack: string[] = []
    for (const t of tags) {
      if (this.policy.pins.some((p) => p.test(t.repo, t.tag))) stack.push(t.digest)
    }
    while (stack.length > 0) {
      const digest = stack.pop()!
      if (pinned.has(digest)) continue
      pinned.add(digest)
      for (const child of children.all(digest) as string[]) stack.push(child)
    }
    return pinned
  }
}

export function policyFrom(cache: {
  max_size: number | null
  high_water: number
  low_water: number
  max_unused_age: number | null
  pins: readonly TagPattern[]
}): EvictionPolicy {
  return {
    maxSize: cache.max_size,
    highWater: cache.high_water,
    lowWater: cache.low_water,
    maxUnusedAgeMs: cache.max_unused_age,
    pins: cache.pins,
  }
}
