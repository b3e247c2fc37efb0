// Keeping the store inside its budget. Eviction removes the least recently used blobs when the
// store is above its high-water mark, until it is under the low-water mark, and anything unused
// for longer than max_unused_age. Pinned images (tag patterns) are never evicted, nor anything
// their manifests reference, down through an index's child manifests.
//
// Sizes here are bytes on disk (st_blocks * 512, the blobs.allocated column; the logical size
// until a file is measured): the budget is about the disk, and small blobs take a whole block.
//
// The server's runs never plan the whole store: they walk the last_access index in pages of
// BATCH (keyset: after the last row seen), evict each page, yield to the event loop, and stop as
// soon as the running totals are under the low-water mark. A plan (gc --dry-run) reads the same
// walk into a list; executing it goes through the same pages.
//
// A page leaves in one synchronous step: a last check that no response is streaming each blob,
// their index rows in one transaction (so no new request sees a hit), then each file is renamed
// out of blobs/ into tmp/ (a rename is cheap; no request can start streaming between the row and
// the file). A request that read the row just before is safe too: the mirror opens the file
// before answering, and a file already open stays readable after unlink. The unlink itself,
// which frees the blocks and takes tens of milliseconds for a large layer, runs off the event
// loop (fs/promises), a few at a time. A blob that cannot be removed (EACCES, EISDIR, ...) is
// logged and counted, its row restored, and eviction goes on with the next one: no eviction
// error ever ends the process. Manifests are only removed by age: they are tiny, and removing
// one costs a counted Docker Hub pull to get it back.

import pLimit from 'p-limit'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { pinnedDigests, pinnedDigestsPaged } from './eviction-pins.js'
import type { BudgetShare, EvictionPolicy } from './eviction-policy.js'
import type { IndexDb } from './index-db.js'
import type { AgedBlob, EvictionQueries } from './index-eviction.js'
import type { Store } from './store.js'

export interface EvictionPlan {
  /** `size` is the blob's length, `allocated` what its file takes on disk. */
  blobs: {
    digest: string
    size: number
    allocated: number
    lastAccess: number
    reason: 'size' | 'age' | 'share'
  }[]
  manifests: { digest: string; lastAccess: number }[]
  tags: { registry: string; repo: string; tag: string }[]
  /** Bytes on disk the plan frees. */
  bytes: number
  /** Store bytes on disk before and after the plan. */
  storeBytes: number
  storeBytesAfter: number
  pinned: number
}

export interface EvictionResult {
  blobs: number
  /** Bytes on disk freed. */
  bytes: number
  manifests: number
  tags: number
  /** Blobs left alone because a response was streaming them when their turn came. */
  skippedInUse: number
  /** Blobs whose removal failed (logged and counted); eviction went on with the next. */
  errors: number
}

/**
 * Blobs taken out between two yields to the event loop, in one transaction. Each costs up to a
 * millisecond of synchronous work on a loaded 2-core machine (two row deletes, their index
 * pages, the totals trigger, and a rename), so a page holds requests up for a few ms; the
 * unlinks run in the thread pool, and WAL checkpoints in a thread of their own (IndexDb).
 */
const BATCH = 8
/** Unlinks running at once; each is a thread-pool job (libuv has 4 threads by default). */
const UNLINKS = 2

interface Cursor {
  lastAccess: number
  digest: string
}

export class Evictor {
  private policy: EvictionPolicy
  private running: Promise<EvictionResult> | undefined
  private readonly store: Store
  private readonly index: IndexDb
  private readonly queries: EvictionQueries
  private readonly log: Logger
  private readonly metrics: Metrics | undefined
  private readonly inUse: (digest: string) => boolean
  private readonly onEvicted: (blobs: EvictionPlan['blobs']) => void
  private readonly unlinks = pLimit(UNLINKS)

  constructor(opts: {
    store: Store
    log: Logger
    policy: EvictionPolicy
    metrics?: Metrics
    inUse?: (digest: string) => boolean
    /** Told of each page of blobs taken out (the server's webhooks). */
    onEvicted?: (blobs: EvictionPlan['blobs']) => void
  }) {
    this.store = opts.store
    this.index = opts.store.index
    this.queries = opts.store.index.eviction
    this.log = opts.log
    this.policy = opts.policy
    this.metrics = opts.metrics
    this.inUse = opts.inUse ?? (() => false)
    this.onEvicted = opts.onEvicted ?? (() => {})
  }

  setPolicy(policy: EvictionPolicy): void {
    this.policy = policy
  }

  get budget(): number | null {
    return this.policy.maxSize
  }

  /** True when the store is above its high-water mark (bytes on disk, from the running totals). */
  overBudget(): boolean {
    const { maxSize, highWater } = this.policy
    return maxSize !== null && this.index.storeTotals().allocated > maxSize * highWater
  }

  /** Registries whose own blobs take more than their share, with those blobs' bytes. */
  private sharesOver(): { share: BudgetShare; bytes: number }[] {
    return (this.policy.shares ?? [])
      .map((share) => ({ share, bytes: this.queries.ownBytes(share.registry, share.prefix) }))
      .filter(({ share, bytes }) => bytes > share.bytes)
  }

  /** What eviction would remove now, without removing anything. */
  plan(now = Date.now()): EvictionPlan {
    // Last-access times of recent requests are still in the write buffer.
    this.index.flush()
    const pinned = pinnedDigests(this.queries, this.policy.pins)
    const { maxSize, highWater, lowWater, maxUnusedAgeMs } = this.policy
    const blobs: EvictionPlan['blobs'] = []
    const chosen = new Set<string>()
    const storeBytes = this.index.storeTotals().allocated
    let remaining = storeBytes
    // Both walks use the last_access index and stop early: no full scan of a large store.
    if (maxUnusedAgeMs !== null) {
      for (const row of this.queries.oldest(now - maxUnusedAgeMs)) {
        if (pinned.has(row.digest)) continue
        blobs.push({ ...row, reason: 'age' })
        chosen.add(row.digest)
        remaining -= row.allocated
      }
    }
    if (maxSize !== null && remaining > maxSize * highWater) {
      const target = maxSize * lowWater
      for (const row of this.queries.oldest(null)) {
        if (remaining <= target) break
        if (pinned.has(row.digest) || chosen.has(row.digest)) continue
        blobs.push({ ...row, reason: 'size' })
        chosen.add(row.digest)
        remaining -= row.allocated
      }
    }

    for (const { share, bytes } of this.sharesOver()) {
      let own = bytes
      for (const row of this.queries.ownOldest(share.registry, share.prefix, -1)) {
        if (own <= share.bytes * lowWater) break
        if (pinned.has(row.digest)) continue
        if (!chosen.has(row.digest)) {
          blobs.push({ ...row, reason: 'share' })
          chosen.add(row.digest)
          remaining -= row.allocated
        }
        own -= row.allocated
      }
    }

    const manifests: EvictionPlan['manifests'] = []
    const tags: EvictionPlan['tags'] = []
    if (maxUnusedAgeMs !== null) {
      for (const m of this.queries.unusedManifests(now - maxUnusedAgeMs)) {
        if (pinned.has(m.digest)) continue
        manifests.push({ digest: m.digest, lastAccess: m.last_access })
        tags.push(...this.queries.tagsAt(m.digest))
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

  /**
   * Evicts what the policy says, one run at a time; a run asked for while one is going joins it.
   * Never plans the whole store: pages of BATCH, deleted as they are read, until under budget.
   */
  run(now = Date.now()): Promise<EvictionResult> {
    this.running ??= this.drain(now).finally(() => {
      this.running = undefined
    })
    return this.running
  }

  private async drain(now: number): Promise<EvictionResult> {
    const result: EvictionResult = { blobs: 0, bytes: 0, manifests: 0, tags: 0, skippedInUse: 0, errors: 0 }
    const { maxSize, lowWater, maxUnusedAgeMs } = this.policy
    // Read to the end (one row): an iterator left open keeps the statement busy, and the
    // connection then refuses every write of this run.
    const ageDue = maxUnusedAgeMs !== null && [...this.queries.oldest(now - maxUnusedAgeMs, 1)].length > 0
    const sharesOver = this.sharesOver()
    if (!ageDue && !this.overBudget() && sharesOver.length === 0) return result
    // Last-access times of recent requests are still in the write buffer.
    this.index.flush()
    const pinned = await pinnedDigestsPaged(this.queries, this.policy.pins)
    const walk = async (
      pageAfter: (after: Cursor | undefined) => AgedBlob[],
      reason: 'age' | 'size' | 'share',
      done: () => boolean,
    ) => {
      let after: Cursor | undefined
      while (!done()) {
        const page = pageAfter(after)
        if (page.length === 0) break
        const looked = await this.evictPage(
          page.map((b) => ({ ...b, reason })),
          pinned,
          result,
          done,
        )
        // The next page starts after the last blob this one looked at, not after its end: when
        // the page stopped early (under the mark) and a commit has since put the store over it
        // again, the older blobs it did not reach come before the newcomer.
        if (looked === 0) break
        after = { lastAccess: page[looked - 1]!.lastAccess, digest: page[looked - 1]!.digest }
        await new Promise((resolve) => setImmediate(resolve))
      }
    }
    const oldest = (cutoff: number | null) => (after: Cursor | undefined) => [
      ...this.queries.oldest(cutoff, BATCH, after),
    ]
    if (maxUnusedAgeMs !== null) await walk(oldest(now - maxUnusedAgeMs), 'age', () => false)
    if (maxSize !== null && this.overBudget()) {
      const target = maxSize * lowWater
      await walk(oldest(null), 'size', () => this.index.storeTotals().allocated <= target)
    }
    // A registry over its share gives up its own least recently used blobs, down to the low
    // mark of its share; the bytes are counted as they go, one query per registry and run.
    for (const { share, bytes } of sharesOver) {
      const target = share.bytes * lowWater
      const freedBefore = result.bytes
      const left = () => bytes - (result.bytes - freedBefore) - target
      // A page holds no more than the share still has to give: eight blobs can be most of it.
      const page = (after: Cursor | undefined) => {
        let sum = 0
        return this.queries.ownOldest(share.registry, share.prefix, BATCH, after).filter((b) => {
          if (sum >= left()) return false
          sum += b.allocated
          return true
        })
      }
      await walk(page, 'share', () => left() <= 0)
    }
    if (maxUnusedAgeMs !== null) {
      let skipped = 0
      for (;;) {
        const page = this.queries.unusedManifestPage(now - maxUnusedAgeMs, skipped + BATCH)
        const todo = page.slice(skipped)
        if (todo.length === 0) break
        for (const digest of todo) {
          if (pinned.has(digest)) {
            skipped++
            continue
          }
          result.tags += this.queries.dropManifest(digest)
          result.manifests++
          this.metrics?.evictions.inc({ kind: 'manifest', reason: 'age' })
        }
        await new Promise((resolve) => setImmediate(resolve))
      }
    }
    if (result.blobs + result.manifests > 0) this.logResult(result)
    return result
  }

  /**
   * One page of blobs, taken out by the store in one synchronous step (Store.evict: a last
   * check that no response streams each one, their rows in one transaction, then their files
   * out of reach), then the space freed off the event loop. `done` is asked before each blob. A
   * blob whose file cannot be moved keeps its row and counts as an error; the page goes on.
   * Returns how many of the page's blobs were looked at (evicted or passed over) before `done`.
   */
  private async evictPage(
    blobs: EvictionPlan['blobs'],
    pinned: Set<string>,
    result: EvictionResult,
    done: () => boolean = () => false,
  ): Promise<number> {
    const { looked, taken, failed } = this.store.evict(blobs, (blob) => {
      if (done()) return 'stop'
      if (pinned.has(blob.digest)) return 'skip'
      if (this.inUse(blob.digest)) {
        result.skippedInUse++
        return 'skip'
      }
      return 'take'
    })
    const fail = (digest: string, stage: string, err: unknown) => {
      result.errors++
      this.metrics?.evictionErrors.inc()
      this.log.error('store.eviction_error', { digest, stage, error: err })
    }
    for (const { blob, error, restoreError } of failed) {
      if (restoreError !== undefined)
        this.log.error('store.eviction_error', { digest: blob.digest, stage: 'restore', error: restoreError })
      fail(blob.digest, 'detach', error)
    }
    const removing: Promise<void>[] = []
    for (const { blob, detached } of taken) {
      result.blobs++
      result.bytes += blob.allocated
      this.metrics?.evictions.inc({ kind: 'blob', reason: blob.reason })
      this.metrics?.evictedBytes.inc(blob.allocated)
      if (detached !== undefined) {
        removing.push(
          this.unlinks(() => detached.remove()).catch((err: unknown) => fail(blob.digest, 'unlink', err)),
        )
      }
    }
    // Out of the index and out of reach: gone for every client, whatever the unlinks do.
    if (taken.length > 0) this.onEvicted(taken.map((t) => t.blob))
    await Promise.all(removing)
    return looked
  }

  private logResult(result: EvictionResult): void {
    const totals = this.index.storeTotals()
    this.log.info('store.evicted', {
      blobs: result.blobs,
      bytes: result.bytes,
      manifests: result.manifests,
      tags: result.tags,
      skipped_in_use: result.skippedInUse,
      errors: result.errors,
      store_bytes: totals.bytes,
      store_allocated_bytes: totals.allocated,
      budget: this.policy.maxSize,
    })
  }

  /** Carries out a plan (e.g. one shown by a dry run), re-checking use and pins as it goes. */
  async execute(plan: EvictionPlan): Promise<EvictionResult> {
    const result: EvictionResult = { blobs: 0, bytes: 0, manifests: 0, tags: 0, skippedInUse: 0, errors: 0 }
    if (plan.blobs.length + plan.manifests.length === 0) return result
    const pinned = pinnedDigests(this.queries, this.policy.pins)
    for (let i = 0; i < plan.blobs.length; i += BATCH) {
      await this.evictPage(plan.blobs.slice(i, i + BATCH), pinned, result)
      await new Promise((resolve) => setImmediate(resolve))
    }
    for (const m of plan.manifests) {
      if (pinned.has(m.digest)) continue
      result.tags += this.queries.dropManifest(m.digest)
      result.manifests++
      this.metrics?.evictions.inc({ kind: 'manifest', reason: 'age' })
    }
    this.logResult(result)
    return result
  }
}
