// The bucket's budget as a running server keeps it (storage.s3.max_size): this node's access
// journal fed by every blob it serves or reads from the bucket, and the evictor's timer, which
// runs eviction when this node is the evictor and otherwise reads the last run's record, so
// every node's stats show it. The jobs themselves are store/bucket-journal.ts and
// store/bucket-eviction.ts.

import { createHash } from 'node:crypto'
import { hostname } from 'node:os'
import type { Config, TagPattern } from '../config.js'
import type { Logger } from '../log.js'
import { type BucketBudget, BucketEvictor, type BucketRun, bucketBudgetOf } from './bucket-eviction.js'
import { AccessJournal } from './bucket-journal.js'
import { BucketLease } from './bucket-lease.js'
import type { BucketBudgetReport, BucketObjects } from './bucket-objects.js'
import { pinnedDigestsPaged } from './eviction-pins.js'
import type { SharedTier } from './shared-tier.js'
import { bucketSettings, openBucketObjects } from './shared-tier-start.js'
import type { Store } from './store.js'

export interface RunningBucketBudget {
  journal: AccessJournal
  evictor: BucketEvictor
  report(): BucketBudgetReport
  /** Stops the timer, lets a run finish, writes the journal's last batch. */
  close(): Promise<void>
}

/** A node's id in journal keys: a digest of its URL (or host and data dir), never the URL itself. */
export function bucketNodeId(nodeUrl: string | null, dataDir: string): string {
  return createHash('sha256')
    .update(nodeUrl ?? `${hostname()}\0${dataDir}`)
    .digest('hex')
    .slice(0, 16)
}

/**
 * The bucket's budget for a server, or undefined when S3 storage has none (storage.s3.max_size
 * null): nothing is journaled then, and nothing in the bucket is ever deleted. The evictor is
 * the owner of the key `evictor` among the live members, or this node when it is alone.
 */
export async function bucketBudgetFor(
  config: Config,
  store: Store,
  dataDir: string,
  log: Logger,
  members: { self: string; ownerOf(key: string): string } | undefined,
  pins: () => readonly TagPattern[],
): Promise<RunningBucketBudget | undefined> {
  const tier = store.shared
  const s3 = config.storage.s3
  if (tier === undefined || s3.max_size === null) return undefined
  return startBucketBudget({
    objects: await openBucketObjects(bucketSettings(config.storage), tier),
    tier,
    store,
    prefix: s3.prefix,
    nodeId: bucketNodeId(config.cluster.node_url, dataDir),
    budget: bucketBudgetOf(s3),
    pins,
    isEvictor: () => members === undefined || members.ownerOf('evictor') === members.self,
    journalIntervalMs: s3.journal_interval,
    evictionIntervalMs: s3.eviction_interval,
    log,
  })
}

export function startBucketBudget(opts: {
  objects: BucketObjects
  tier: SharedTier
  store: Store
  prefix: string
  nodeId: string
  budget: BucketBudget
  pins: () => readonly TagPattern[]
  /** Whether this node owns the key `evictor` (true for a single node). */
  isEvictor: () => boolean
  journalIntervalMs: number
  evictionIntervalMs: number
  log: Logger
}): RunningBucketBudget {
  const { objects, store, log } = opts
  const journal = new AccessJournal({
    objects,
    prefix: opts.prefix,
    nodeId: opts.nodeId,
    intervalMs: opts.journalIntervalMs,
    log,
  })
  store.index.onBlobTouched = (digest, at) => journal.note(digest, at)
  store.bucket.onSharedRead = (digest) => journal.noteSoon(digest)
  // Three runs' time: a holder renews at every run, so only a dead or partitioned one lapses.
  const lease = new BucketLease({
    objects,
    prefix: opts.prefix,
    nodeId: opts.nodeId,
    ttlMs: 3 * opts.evictionIntervalMs,
  })
  const atomic = () => {
    const caps = opts.tier.capabilities
    return caps?.conditionalCreate === true && caps.conditionalReplace
  }
  const evictor = new BucketEvictor({
    objects,
    prefix: opts.prefix,
    nodeId: opts.nodeId,
    log,
    budget: opts.budget,
    isEvictor: opts.isEvictor,
    lease: () => (atomic() ? lease : undefined),
    pinned: () => pinnedDigestsPaged(store.index.eviction, opts.pins()),
    inUse: (digest) => store.bucket.readingShared(digest),
    beforeRun: () => journal.flush(),
  })
  const tick = () => {
    const work = opts.isEvictor() ? evictor.run() : evictor.refreshLastRun()
    work.catch((err: unknown) => log.warn('store.bucket_failed', { op: 'eviction', error: err }))
  }
  store.bucket.sharedBudget = () => report()
  const timer = setInterval(tick, opts.evictionIntervalMs)
  timer.unref()
  tick()
  const report = (): BucketBudgetReport => {
    const b = evictor.currentBudget
    const last: BucketRun | undefined = evictor.lastRun
    return {
      max_size: b.maxSize,
      high_water: b.highWater,
      low_water: b.lowWater,
      grace_seconds: Math.round(b.graceMs / 1000),
      evictor: opts.isEvictor(),
      lease: atomic(),
      last_run:
        last === undefined
          ? null
          : {
              node: last.node,
              at: new Date(last.at).toISOString(),
              bytes: last.bytes,
              objects: last.objects,
              deleted: last.deleted,
              freed_bytes: last.freedBytes,
            },
    }
  }
  return {
    journal,
    evictor,
    report,
    async close() {
      clearInterval(timer)
      await evictor.stop()
      store.index.onBlobTouched = undefined
      store.bucket.onSharedRead = undefined
      store.bucket.sharedBudget = undefined
      await journal.close()
      objects.close()
    },
  }
}
