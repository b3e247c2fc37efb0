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

const HOUR = 3_600_000

export const KINDS = ['manifest', 'blob', 'tags'] as const
export type Kind = (typeof KINDS)[number]

export interface Totals {
  requests: number
  hits: number
  misses: number
  coalesced: number
  stale: number
  errors: number
  /** 0..1, null when no request was answered (see the definition at the top). */
  hit_rate: number | null
  bytes_from_cache: number
  bytes_from_upstream: number
  /** Manifest GETs answered without a manifest GET upstream: Docker Hub pulls not spent. */
  pulls_avoided: number
}

export interface RepoTotals extends Totals {
  registry: string
  repo: string
}

export interface HourTotals extends Totals {
  /** Start of the hour, ms since epoch. */
  hour: number
}

export interface TagTotals {
  registry: string
  repo: string
  tag: string
  requests: number
  /** Includes coalesced answers; tag_stats does not keep them apart. */
  hits: number
  misses: number
  stale: number
  errors: number
  pulls_avoided: number
  bytes_from_cache: number
  bytes_from_upstream: number
  /** ms since epoch */
  last_request: number
}

export interface BlobTotals {
  digest: string
  size: number
  media_type: string | null
  requests: number
  hits: number
  coalesced: number
  misses: number
  hit_rate: number | null
  bytes_from_cache: number
  bytes_from_upstream: number
  /** ms since epoch */
  first_cached: number
  last_access: number
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
   * Only repositories of this registry that anonymous pulls may read (repo_access: 'public', and
   * 'assumed' when `assumed`); undefined for every repository. Filtered in SQL, so a top list
   * for an anonymous viewer stops after `limit` rows like any other.
   */
  publicOf?: { registry: string; assumed: boolean } | undefined
}

/** The WHERE terms and parameters of TopQuery.publicOf, for a table aliased `t`. */
function publicTerms(q: Pick<TopQuery, 'publicOf'>): { sql: string; params: (string | number)[] } {
  if (q.publicOf === undefined) return { sql: '', params: [] }
  return {
    sql: `AND t.registry = ? AND EXISTS (SELECT 1 FROM repo_access a WHERE a.registry = t.registry
      AND a.repo = t.repo AND (a.access = 'public' OR (a.access = 'assumed' AND ?)))`,
    params: [q.publicOf.registry, q.publicOf.assumed ? 1 : 0],
  }
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

/** The sums every accounting query selects; `sum` of no rows is NULL, hence coalesce. */
const SUMS = `
  coalesce(sum(requests), 0) AS requests,
  coalesce(sum(CASE result WHEN 'hit' THEN requests END), 0) AS hits,
  coalesce(sum(CASE result WHEN 'miss' THEN requests END), 0) AS misses,
  coalesce(sum(CASE result WHEN 'coalesced' THEN requests END), 0) AS coalesced,
  coalesce(sum(CASE result WHEN 'stale' THEN requests END), 0) AS stale,
  coalesce(sum(CASE result WHEN 'error' THEN requests END), 0) AS errors,
  coalesce(sum(bytes_cache), 0) AS bytes_from_cache,
  coalesce(sum(bytes_upstream), 0) AS bytes_from_upstream,
  coalesce(sum(pulls_avoided), 0) AS pulls_avoided`

type Sums = Omit<Totals, 'hit_rate'>

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
  const row = current(index)
    .database.prepare(`SELECT ${SUMS} FROM accounting WHERE hour >= ?`)
    .get(fromHour(q.since)) as Sums
  return withRate(row)
}

/** Every kind is present, with zeros when it had no requests. */
export function kindStats(index: IndexDb, q: StatsQuery = {}): Record<Kind, Totals> {
  const rows = current(index)
    .database.prepare(`SELECT kind, ${SUMS} FROM accounting WHERE hour >= ? GROUP BY kind`)
    .all(fromHour(q.since)) as (Sums & { kind: string })[]
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
  const only = publicTerms(q)
  const rows = current(index)
    .database.prepare(
      `SELECT registry, repo, ${SUMS} FROM accounting t WHERE hour >= ? ${only.sql}
       GROUP BY registry, repo ORDER BY requests DESC, bytes_from_cache DESC, registry, repo LIMIT ?`,
    )
    .all(fromHour(q.since), ...only.params, q.limit) as (Sums & { registry: string; repo: string })[]
  return rows.map((r) => withRate(r))
}

/** Hours that had requests, oldest first. */
export function hourlyStats(index: IndexDb, q: StatsQuery = {}): HourTotals[] {
  const rows = current(index)
    .database.prepare(
      `SELECT hour, ${SUMS} FROM accounting WHERE hour >= ? GROUP BY hour HAVING requests > 0 ORDER BY hour`,
    )
    .all(fromHour(q.since)) as (Sums & { hour: number })[]
  return rows.map((r) => withRate(r))
}

/**
 * The top-tags query: it walks the tag_stats_requests index and stops after LIMIT rows, so it
 * costs the same with a hundred tags or a hundred thousand (exported for the plan's test).
 */
/**
 * How many of the most requested tags an anonymous viewer's list is chosen from. Which of them it
 * may see is one lookup each; without a bound, a store whose tags are mostly private or unknown to
 * repo_access would have every request walk all of them (~200 ms at 100,000 tags).
 */
export const PUBLIC_TOP_TAGS_SCAN = 10_000

/**
 * Walks tag_stats_requests and stops after LIMIT rows: the same cost at a hundred tags or a
 * hundred thousand (exported for the plan's test). With `publicOf`, the walk is bounded by
 * PUBLIC_TOP_TAGS_SCAN and the rows the viewer may not see are dropped.
 */
export function topTagsSql(q: Pick<TopQuery, 'publicOf'> = {}): string {
  const top = `SELECT registry, repo, tag, requests, hits, misses, stale, errors, pulls_avoided,
    bytes_cache AS bytes_from_cache, bytes_upstream AS bytes_from_upstream, last_request
  FROM tag_stats WHERE last_request >= ?
  ORDER BY requests DESC, last_request DESC, registry, repo, tag LIMIT`
  if (q.publicOf === undefined) return `${top} ?`
  return `SELECT * FROM (${top} ${PUBLIC_TOP_TAGS_SCAN}) t WHERE 1 ${publicTerms(q).sql}
  ORDER BY requests DESC, last_request DESC, registry, repo, tag LIMIT ?`
}

/** Tags by requests, most first (lifetime counts; `since` filters on the last request). */
export function tagStats(index: IndexDb, q: TopQuery): TagTotals[] {
  return current(index)
    .database.prepare(topTagsSql(q))
    .all(q.since ?? 0, ...publicTerms(q).params, q.limit) as TagTotals[]
}

/**
 * Cached blobs by requests, most first (lifetime counts; `since` filters on the last access).
 * Only blobs still in the store: an evicted blob's counters go with its row.
 */
export function blobStats(index: IndexDb, q: TopQuery): BlobTotals[] {
  const rows = current(index)
    .database.prepare(
      `SELECT digest, size, media_type, hits + coalesced + misses AS requests, hits, coalesced, misses,
         bytes_cache AS bytes_from_cache, bytes_upstream AS bytes_from_upstream, first_cached, last_access
       FROM blobs WHERE last_access >= ?
       ORDER BY requests DESC, bytes_from_cache DESC, digest LIMIT ?`,
    )
    .all(q.since ?? 0, q.limit) as Omit<BlobTotals, 'hit_rate'>[]
  return rows.map((r) => {
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
