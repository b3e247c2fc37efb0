// The index's read-only queries behind the stats (store/stats.ts says what the numbers mean):
// sums over the hourly accounting rows, and the per-tag and per-blob counters. They only read,
// so they also work on an index opened read-only next to a running server.

import type Database from 'better-sqlite3'

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

/** Accounting summed over some rows. */
export interface UsageSums {
  requests: number
  hits: number
  misses: number
  coalesced: number
  stale: number
  errors: number
  bytes_from_cache: number
  bytes_from_upstream: number
  pulls_avoided: number
}

export interface TagUsage {
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

export interface BlobUsage {
  digest: string
  size: number
  media_type: string | null
  requests: number
  hits: number
  coalesced: number
  misses: number
  bytes_from_cache: number
  bytes_from_upstream: number
  /** ms since epoch */
  first_cached: number
  last_access: number
}

/**
 * The top-tags query: it walks the tag_stats_requests index and stops after LIMIT rows, so it
 * costs the same with a hundred tags or a hundred thousand (exported for the plan's test).
 */
export const TOP_TAGS_SQL = `SELECT registry, repo, tag, requests, hits, misses, stale, errors, pulls_avoided,
    bytes_cache AS bytes_from_cache, bytes_upstream AS bytes_from_upstream, last_request
  FROM tag_stats WHERE last_request >= ?
  ORDER BY requests DESC, last_request DESC, registry, repo, tag LIMIT ?`

export class UsageQueries {
  private readonly stmt: ReturnType<typeof prepare>

  constructor(db: Database.Database) {
    this.stmt = prepare(db)
  }

  /** Every accounting row from the hour `fromHour` on. */
  overall(fromHour: number): UsageSums {
    return this.stmt.overall.get(fromHour) as UsageSums
  }

  /** Kinds that had rows; a kind without any is absent. */
  byKind(fromHour: number): (UsageSums & { kind: string })[] {
    return this.stmt.byKind.all(fromHour) as (UsageSums & { kind: string })[]
  }

  /** Repositories by requests, most first. */
  byRepo(fromHour: number, limit: number): (UsageSums & { registry: string; repo: string })[] {
    return this.stmt.byRepo.all(fromHour, limit) as (UsageSums & { registry: string; repo: string })[]
  }

  /** Hours that had requests, oldest first. */
  byHour(fromHour: number): (UsageSums & { hour: number })[] {
    return this.stmt.byHour.all(fromHour) as (UsageSums & { hour: number })[]
  }

  /** Tags last requested at or after `since`, by requests, most first (lifetime counts). */
  topTags(since: number, limit: number): TagUsage[] {
    return this.stmt.topTags.all(since, limit) as TagUsage[]
  }

  /** Stored blobs last accessed at or after `since`, by requests, most first (lifetime counts). */
  topBlobs(since: number, limit: number): BlobUsage[] {
    return this.stmt.topBlobs.all(since, limit) as BlobUsage[]
  }
}

function prepare(db: Database.Database) {
  return {
    overall: db.prepare(`SELECT ${SUMS} FROM accounting WHERE hour >= ?`),
    byKind: db.prepare(`SELECT kind, ${SUMS} FROM accounting WHERE hour >= ? GROUP BY kind`),
    byRepo: db.prepare(
      `SELECT registry, repo, ${SUMS} FROM accounting WHERE hour >= ?
       GROUP BY registry, repo ORDER BY requests DESC, bytes_from_cache DESC, registry, repo LIMIT ?`,
    ),
    byHour: db.prepare(
      `SELECT hour, ${SUMS} FROM accounting WHERE hour >= ? GROUP BY hour HAVING requests > 0 ORDER BY hour`,
    ),
    topTags: db.prepare(TOP_TAGS_SQL),
    topBlobs: db.prepare(
      `SELECT digest, size, media_type, hits + coalesced + misses AS requests, hits, coalesced, misses,
         bytes_cache AS bytes_from_cache, bytes_upstream AS bytes_from_upstream, first_cached, last_access
       FROM blobs WHERE last_access >= ?
       ORDER BY requests DESC, bytes_from_cache DESC, digest LIMIT ?`,
    ),
  }
}
