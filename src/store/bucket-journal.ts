// Access journals: how the node that keeps the bucket to its budget (store/bucket-eviction.ts)
// learns what every node served. Each node gathers (digest, last access, hits) in memory and
// writes a batch as one object every journal_interval:
//
//   <prefix>journal/<node id>/<seq>       one line per blob: "<digest> <last access ms> <hits>"
//   <prefix>journal/_merged/<seq>-<id>    the evictor's compaction of the batches it has read
//
// Merging keeps the latest access per digest, so reading a batch twice, or a compaction beside
// the batches it came from, changes nothing; the evictor removes the batches it merged only
// after their compaction is written. A read from the bucket is written out within about a
// second, not at the next interval: the evictor then sees the blob in use while it streams.
// Hits are for the record only (a replayed batch counts its hits again); eviction reads only
// the last access.

import type { Logger } from '../log.js'
import type { BucketObjects } from './bucket-objects.js'

export interface Access {
  lastAccess: number
  hits: number
}

/** A read from the bucket reaches the journal within this long. */
const SOON_MS = 1_000
/** The directory of the evictor's compactions under journal/ (no node id starts with "_"). */
const MERGED = '_merged'

export function journalPrefix(prefix: string): string {
  return `${prefix}journal/`
}

/** A sortable, unique name for a batch: the time, then a counter for batches of one ms. */
function seqName(now: number, n: number): string {
  return `${String(now).padStart(15, '0')}-${String(n).padStart(6, '0')}`
}

export class AccessJournal {
  private pending = new Map<string, Access>()
  private readonly objects: BucketObjects
  private readonly dir: string
  private readonly log: Logger
  private readonly timer: NodeJS.Timeout
  private soon: NodeJS.Timeout | undefined
  private flushing: Promise<void> = Promise.resolve()
  private n = 0

  constructor(opts: {
    objects: BucketObjects
    prefix: string
    nodeId: string
    intervalMs: number
    log: Logger
  }) {
    this.objects = opts.objects
    this.dir = `${journalPrefix(opts.prefix)}${opts.nodeId}/`
    this.log = opts.log
    this.timer = setInterval(() => void this.flush(), opts.intervalMs)
    this.timer.unref()
  }

  /** A blob served or filled here, at `at`. */
  note(digest: string, at = Date.now()): void {
    const entry = this.pending.get(digest)
    if (entry === undefined) this.pending.set(digest, { lastAccess: at, hits: 1 })
    else {
      entry.lastAccess = Math.max(entry.lastAccess, at)
      entry.hits++
    }
  }

  /** A read from the bucket starting: noted, and written out within SOON_MS. */
  noteSoon(digest: string): void {
    this.note(digest)
    if (this.soon !== undefined) return
    this.soon = setTimeout(() => {
      this.soon = undefined
      void this.flush()
    }, SOON_MS)
    this.soon.unref()
  }

  /** Writes what was noted since the last batch; a failed batch is kept for the next one. */
  flush(): Promise<void> {
    this.flushing = this.flushing.then(async () => {
      if (this.pending.size === 0) return
      const batch = this.pending
      this.pending = new Map()
      const key = `${this.dir}${seqName(Date.now(), this.n++)}`
      try {
        await this.objects.write(key, formatBatch(batch))
      } catch (err) {
        for (const [digest, a] of batch) {
          const later = this.pending.get(digest)
          this.pending.set(digest, mergeAccess(a, later))
        }
        this.log.warn('store.bucket_failed', { op: 'journal', error: err })
      }
    })
    return this.flushing
  }

  /** Stops the timers and writes what is left. */
  async close(): Promise<void> {
    clearInterval(this.timer)
    clearTimeout(this.soon)
    await this.flush()
  }
}

function mergeAccess(a: Access, b: Access | undefined): Access {
  if (b === undefined) return { ...a }
  return { lastAccess: Math.max(a.lastAccess, b.lastAccess), hits: a.hits + b.hits }
}

export function formatBatch(batch: ReadonlyMap<string, Access>): string {
  let text = ''
  for (const [digest, a] of batch) text += `${digest} ${a.lastAccess} ${a.hits}\n`
  return text
}

/** Merges a batch's text into `into`: the latest access wins, hits add up. Bad lines are skipped. */
export function mergeBatch(text: string, into: Map<string, Access>): void {
  for (const line of text.split('\n')) {
    const [digest, at, hits] = line.split(' ')
    const lastAccess = Number(at)
    if (digest === undefined || !digest.startsWith('sha256:') || !Number.isFinite(lastAccess)) continue
    const prev = into.get(digest)
    into.set(digest, {
      lastAccess: Math.max(lastAccess, prev?.lastAccess ?? 0),
      hits: (prev?.hits ?? 0) + (Number(hits) || 0),
    })
  }
}

/**
 * The journals in the bucket, merged: every batch and compaction whose key is not in `seen`
 * (which gains the keys read). Batches are read a few at a time.
 */
export async function readJournals(
  objects: BucketObjects,
  prefix: string,
  into: Map<string, Access>,
  seen: Set<string>,
): Promise<void> {
  const keys: string[] = []
  for await (const page of objects.list(journalPrefix(prefix))) {
    for (const o of page) if (!seen.has(o.key)) keys.push(o.key)
  }
  let next = 0
  const worker = async () => {
    while (next < keys.length) {
      const key = keys[next++]!
      const got = await objects.read(key)
      seen.add(key)
      if (got !== undefined) mergeBatch(got.text, into)
    }
  }
  await Promise.all(Array.from({ length: Math.min(4, keys.length) }, worker))
}

/**
 * Replaces the batches in `read` by one compaction of `merged` (only what `keep` says still
 * matters): written first, then the batches it covers removed, so an access is never in
 * neither. Batches written meanwhile are not in `read` and stay.
 */
export async function compactJournals(
  objects: BucketObjects,
  prefix: string,
  merged: ReadonlyMap<string, Access>,
  read: ReadonlySet<string>,
  keep: (digest: string, access: Access) => boolean,
  nodeId: string,
): Promise<void> {
  const kept = new Map([...merged].filter(([digest, access]) => keep(digest, access)))
  if (kept.size > 0) {
    await objects.write(
      `${journalPrefix(prefix)}${MERGED}/${seqName(Date.now(), 0)}-${nodeId}`,
      formatBatch(kept),
    )
  }
  await objects.remove([...read])
}
