// Keeping the bucket to its byte budget (storage.s3.max_size) for the whole cluster. One node at
// a time does it: the owner of the key `evictor` among the live members (or the single node),
// and, where the store does atomic conditional writes, the holder of the lease object too
// (store/bucket-lease.ts). A run:
//
//   1. lists blobs/ for exact sizes; under the high-water mark it stops there
//   2. merges every node's access journal (store/bucket-journal.ts): latest access per digest
//   3. deletes the least recently used blobs until the bucket is under the low-water mark,
//      a batch at a time, skipping pins (and what pinned manifests reference, as far as this
//      node's index knows them), anything accessed within the grace period (by a journal, or
//      written: a new object's Last-Modified counts as an access), and what this node is
//      reading from the bucket right now
//   4. replaces the journal batches it merged by one compaction, and writes a record of the run
//
// Before each delete batch it checks again that it is still the evictor (and renews the lease),
// and reads the journal batches written since it started, so a blob a node began to read
// meanwhile is spared. Correctness never rests on there being one evictor: a second one would
// delete only blobs past their grace, as the first would. A blob deleted while a node still
// wants it is a miss: fetched again from upstream, never served wrong.

import type { Logger } from '../log.js'
import { type Access, compactJournals, readJournals } from './bucket-journal.js'
import type { BucketLease } from './bucket-lease.js'
import type { BucketObjects } from './bucket-objects.js'

export interface BucketBudget {
  maxSize: number | null
  highWater: number
  lowWater: number
  graceMs: number
}

/** The budget from the storage.s3 section of the config. */
export function bucketBudgetOf(s3: {
  max_size: number | null
  high_water: number
  low_water: number
  grace: number
}): BucketBudget {
  return { maxSize: s3.max_size, highWater: s3.high_water, lowWater: s3.low_water, graceMs: s3.grace }
}

/** What the last run found and did, for the stats, `cluster check` and the other nodes. */
export interface BucketRun {
  node: string
  /** ms since epoch when it ended. */
  at: number
  /** Blob bytes and objects in the bucket after the run. */
  bytes: number
  objects: number
  deleted: number
  freedBytes: number
}

export type RunOutcome =
  | { ran: true; run: BucketRun }
  | { ran: false; reason: 'no budget' | 'not the evictor' | 'lease held elsewhere' }

/** Blobs deleted between two checks that this node is still the evictor. */
const BATCH = 32
/** Where the record of the last run is kept. */
export const LAST_RUN = 'eviction/last-run'

const BLOB_KEY = /blobs\/sha256\/[0-9a-f]{2}\/([0-9a-f]{64})$/

interface Listed {
  key: string
  digest: string
  size: number
  lastAccess: number
}

export class BucketEvictor {
  private readonly objects: BucketObjects
  private readonly prefix: string
  private readonly nodeId: string
  private readonly log: Logger
  private budget: BucketBudget
  private readonly isEvictor: () => boolean
  private readonly lease: () => BucketLease | undefined
  private readonly pinned: () => Promise<ReadonlySet<string>>
  private readonly inUse: (digest: string) => boolean
  private readonly beforeRun: () => Promise<void>
  private running: Promise<RunOutcome> | undefined
  private stopped = false
  /** The last run this node knows of: its own, or the record another evictor wrote. */
  lastRun: BucketRun | undefined

  constructor(opts: {
    objects: BucketObjects
    prefix: string
    nodeId: string
    log: Logger
    budget: BucketBudget
    /** Whether this node owns the key `evictor` among the live members. */
    isEvictor: () => boolean
    /** The lease, when the store does atomic conditional writes. */
    lease: () => BucketLease | undefined
    /** Digests eviction never takes (pins and what pinned manifests reference). */
    pinned?: () => Promise<ReadonlySet<string>>
    /** A digest this node is reading from the bucket now. */
    inUse?: (digest: string) => boolean
    /** Runs first: this node's own journal is written out. */
    beforeRun?: () => Promise<void>
  }) {
    this.objects = opts.objects
    this.prefix = opts.prefix
    this.nodeId = opts.nodeId
    this.log = opts.log
    this.budget = opts.budget
    this.isEvictor = opts.isEvictor
    this.lease = opts.lease
    this.pinned = opts.pinned ?? (async () => new Set())
    this.inUse = opts.inUse ?? (() => false)
    this.beforeRun = opts.beforeRun ?? (async () => {})
  }

  setBudget(budget: BucketBudget): void {
    this.budget = budget
  }

  get currentBudget(): BucketBudget {
    return this.budget
  }

  /** One run at a time; a call during a run gets that run's outcome. */
  run(): Promise<RunOutcome> {
    this.running ??= this.runOnce().finally(() => {
      this.running = undefined
    })
    return this.running
  }

  /** Resolves when no run is going on. */
  async idle(): Promise<void> {
    await this.running?.catch(() => {})
  }

  /** No new run, and a run going on stops before its next batch (a server stopping). */
  async stop(): Promise<void> {
    this.stopped = true
    await this.idle()
  }

  /** Reads the record of the last run, as a node that is not the evictor learns of it. */
  async refreshLastRun(): Promise<void> {
    const got = await this.objects.read(`${this.prefix}${LAST_RUN}`)
    if (got === undefined) return
    try {
      const run = JSON.parse(got.text) as BucketRun
      if (typeof run.at === 'number' && (this.lastRun === undefined || run.at > this.lastRun.at)) {
        this.lastRun = run
      }
    } catch {
      // Not ours to mend: the next run writes it again.
    }
  }

  private async stillEvictor(): Promise<boolean> {
    if (this.stopped || !this.isEvictor()) return false
    const lease = this.lease()
    return lease === undefined || (await lease.acquire())
  }

  private async runOnce(): Promise<RunOutcome> {
    const { maxSize, highWater, lowWater, graceMs } = this.budget
    if (maxSize === null) return { ran: false, reason: 'no budget' }
    const startedAt = Date.now()
    if (this.stopped || !this.isEvictor()) return { ran: false, reason: 'not the evictor' }
    if (!(await this.stillEvictor())) return { ran: false, reason: 'lease held elsewhere' }
    await this.beforeRun()

    const blobs: Listed[] = []
    let bytes = 0
    for await (const page of this.objects.list(`${this.prefix}blobs/`)) {
      for (const o of page) {
        const m = BLOB_KEY.exec(o.key)
        if (m === null) continue
        blobs.push({ key: o.key, digest: `sha256:${m[1]}`, size: o.size, lastAccess: o.lastModified })
        bytes += o.size
      }
    }
    const accesses = new Map<string, Access>()
    const read = new Set<string>()
    await readJournals(this.objects, this.prefix, accesses, read)
    let deleted = 0
    let freedBytes = 0
    const gone = new Set<string>()
    if (bytes > highWater * maxSize) {
      const pinned = await this.pinned()
      const lastAccess = (b: Listed) => Math.max(b.lastAccess, accesses.get(b.digest)?.lastAccess ?? 0)
      const candidates = blobs
        .filter((b) => !pinned.has(b.digest))
        .sort((a, b) => lastAccess(a) - lastAccess(b))
      const target = lowWater * maxSize
      let i = 0
      while (bytes > target && i < candidates.length) {
        if (!(await this.stillEvictor())) break
        // Accesses since the run began: a node that started reading a candidate spares it.
        await readJournals(this.objects, this.prefix, accesses, read)
        const batch: Listed[] = []
        const cutoff = Date.now() - graceMs
        let planned = bytes
        while (planned > target && i < candidates.length && batch.length < BATCH) {
          const b = candidates[i++]!
          if (lastAccess(b) > cutoff || this.inUse(b.digest)) continue
          batch.push(b)
          planned -= b.size
        }
        if (batch.length === 0) break
        await this.objects.remove(batch.map((b) => b.key))
        for (const b of batch) gone.add(b.digest)
        deleted += batch.length
        const freed = batch.reduce((n, b) => n + b.size, 0)
        freedBytes += freed
        bytes -= freed
      }
    }
    const keep = new Set(blobs.filter((b) => !gone.has(b.digest)).map((b) => b.digest))
    // Accesses of blobs still here, and recent ones of blobs published since the listing.
    await compactJournals(
      this.objects,
      this.prefix,
      accesses,
      read,
      (digest, a) => keep.has(digest) || (!gone.has(digest) && a.lastAccess > startedAt - graceMs),
      this.nodeId,
    )
    const run: BucketRun = {
      node: this.nodeId,
      at: Date.now(),
      bytes,
      objects: keep.size,
      deleted,
      freedBytes,
    }
    this.lastRun = run
    await this.objects.write(`${this.prefix}${LAST_RUN}`, JSON.stringify(run))
    if (deleted > 0)
      this.log.info('storage.bucket_evicted', { deleted, freed_bytes: freedBytes, bytes, objects: keep.size })
    return { ran: true, run }
  }
}
