// Hit rates and byte counts, read from the index: the hourly `accounting` rows for totals, and the
// per-tag and per-blob counters for the finer rows. Read-only: nothing here writes, so these
// queries also work on an index opened read-only next to a running server.
//
// Hit rate, everywhere in pullcache: requests answered without transferring the body from
// upstream for that request (hit + coalesced + stale) over all answered requests that were not
// errors (hit + miss + coalesced + stale). A coalesced request did cause an upstream download, but
// not for itself: it rode along on another request's. Errors are left out of both sides, so an
// upstream outage shows as errors, not as a falling hit rate; the rate is null while there is no
// answered request at all, rather than a made-up 0 or 1.
//
// `since` (ms since epoch) is applied per source: accounting is kept per hour, so the hour that
// contains `since` counts in full; tags and blobs keep lifetime counters, so `since` selects those
// last requested at or after it, and their counts are still lifetime counts.

import type { IndexDb } from './index-db.js'
import type { BlobUsage, PublicScope, TagUsage, UsageSums } from './index-usage.js'

const HOUR = 3_600_000

export const KINDS = ['manifest', 'blob', 'tags'] as const
export type Kind = (typeof KINDS)[number]

/** The sums with their hit rate (withRate puts it among the counts in the JSON). */
export interface Totals extends UsageSums {
  /** 0..1, null when no request was answered (see the definition at the top). */
  hit_rate: number | null
}

export interface RepoTotals extends Totals {
  registry: string
  repo: string
}

export interface HourTotals extends Totals {
  /** Start of the hour, ms since epoch. */
  hour: number
}

/** Lifetime counters of one tag (tag_stats). */
export type TagTotals = TagUsage

export interface BlobTotals extends BlobUsage {
  hit_rate: number | null
}

export interface StoreCounts {
  blobs: number
  /** Logical: the sum of blob sizes. */
  bytes: number
  /** What the blob files take on disk (allocated blocks): what the budget counts. */
  allocated_bytes: number
  manifests: number
  tags: number
}

export interface StatsQuery {
  /** ms since epoch; undefined for everything the index holds. */
  since?: number | undefined
}

export interface TopQuery extends StatsQuery {
  limit: number
  /**
   * Only repositories of this registry that anonymous pulls may read; undefined for every
   * repository. Filtered in SQL, so an anonymous viewer's list costs what anyone's does.
   */
  publicOf?: PublicScope | undefined
}

/** The hit rate as defined at the top of this module. */
export function hitRate(c: {
  hits: number
  misses: number
  coalesced: number
  stale: number
}): number | null {
  const answered = c.hits + c.misses + c.coalesced + c.stale
  return answered === 0 ? null : (c.hits + c.coalesced + c.stale) / answered
}

type Sums = UsageSums

function withRate<T extends Sums>(row: T): T & { hit_rate: number | null } {
  const {
    requests,
    hits,
    misses,
    coalesced,
    stale,
    errors,
    bytes_from_cache,
    bytes_from_upstream,
    pulls_avoided,
    ...keys
  } = row
  // Rebuilt so that every Totals lists its fields in one order, with hit_rate among the counts.
  return {
    ...keys,
    requests,
    hits,
    misses,
    coalesced,
    stale,
    errors,
    hit_rate: hitRate(row),
    bytes_from_cache,
    bytes_from_upstream,
    pulls_avoided,
  } as T & { hit_rate: number | null }
}

/** The first hour bucket to count: the one that contains `since`. */
function fromHour(since: number | undefined): number {
  return since === undefined ? 0 : since - (since % HOUR)
}

/**
 * Accounting is buffered in memory by a running server; write it out first so the numbers
 * include every request answered so far. A read-only index has nothing buffered.
 */
function current(index: IndexDb): IndexDb {
  index.flush()
  return index
}

export function overallStats(index: IndexDb, q: StatsQuery = {}): Totals {
  return withRate(current(index).usage.overall(fromHour(q.since)))
}

/**
 * Totals per upstream: for each name prefix ("ghcr.io/", an upstream beside the root one), its
 * repositories' rows; `rest` is everything else, the root upstream's (with the requests for
 * names that hold nothing, accounted under one placeholder whatever upstream they were for).
 */
export function prefixStats(
  index: IndexDb,
  prefixes: readonly string[],
  q: StatsQuery = {},
): { rest: Totals; byPrefix: Totals[] } {
  const usage = current(index).usage
  const from = fromHour(q.since)
  const byPrefix = prefixes.map((prefix) => usage.underPrefix(from, prefix))
  const rest = { ...usage.overall(from) }
  for (const sums of byPrefix) {
    for (const key of Object.keys(rest) as (keyof Sums)[]) rest[key] -= sums[key]
  }
  return { rest: withRate(rest), byPrefix: byPrefix.map((sums) => withRate(sums)) }
}

/** Every kind is present, with zeros when it had no requests. */
export function kindStats(index: IndexDb, q: StatsQuery = {}): Record<Kind, Totals> {
  const rows = current(index).usage.byKind(fromHour(q.since))
  const zero: Sums = {
    requests: 0,
    hits: 0,
    misses: 0,
    coalesced: 0,
    stale: 0,
    errors: 0,
    bytes_from_cache: 0,
    bytes_from_upstream: 0,
    pulls_avoided: 0,
  }
  const out = {} as Record<Kind, Totals>
  for (const kind of KINDS) {
    const { kind: _, ...sums } = rows.find((r) => r.kind === kind) ?? { kind, ...zero }
    out[kind] = withRate(sums)
  }
  return out
}

/** Repositories by requests, most first. */
export function repositoryStats(index: IndexDb, q: TopQuery): RepoTotals[] {
  return current(index)
    .usage.byRepo(fromHour(q.since), q.limit, q.publicOf)
    .map((r) => withRate(r))
}

/** Hours that had requests, oldest first. */
export function hourlyStats(index: IndexDb, q: StatsQuery = {}): HourTotals[] {
  return current(index)
    .usage.byHour(fromHour(q.since))
    .map((r) => withRate(r))
}

/**
 * Tags by requests, most first (lifetime counts; `since` filters on the last request). The
 * query walks an index and stops after `limit` rows, whatever the number of tags.
 */
export function tagStats(index: IndexDb, q: TopQuery): TagTotals[] {
  return current(index).usage.topTags(q.since ?? 0, q.limit, q.publicOf)
}

/**
 * Cached blobs by requests, most first (lifetime counts; `since` filters on the last access).
 * Only blobs still in the store: an evicted blob's counters go with its row.
 */
export function blobStats(index: IndexDb, q: TopQuery): BlobTotals[] {
  return current(index)
    .usage.topBlobs(q.since ?? 0, q.limit)
    .map((r) => {
      const { first_cached, last_access, ...rest } = r
      return { ...rest, hit_rate: hitRate({ ...r, stale: 0 }), first_cached, last_access }
    })
}

/** What the store holds now, whatever `since` says: the running totals, no count over the tables. */
export function storeCounts(index: IndexDb): StoreCounts {
  const t = index.storeTotals()
  return {
    blobs: t.blobs,
    bytes: t.bytes,
    allocated_bytes: t.allocated,
    manifests: t.manifests,
    tags: t.tags,
  }
}
