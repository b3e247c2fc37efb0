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

/** Requests counted by their outcome: the part of every report the hit rate is made of. */
export interface OutcomeCounts {
  requests: number
  hits: number
  misses: number
  coalesced: number
  stale: number
  errors: number
}

/** Accounting summed over some rows. */
export interface UsageSums extends OutcomeCounts {
  bytes_from_cache: number
  bytes_from_upstream: number
  /** Manifest GETs answered without a manifest GET upstream: Docker Hub pulls not spent. */
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
 * Only repositories of one registry that anonymous pulls may read (repo_access: 'public', and
 * 'assumed' when `assumed`): what an anonymous viewer of the stats may see named.
 */
export interface PublicScope {
  registry: string
  assumed: boolean
}

/** Rows of one registry whose repository repo_access says anonymous pulls may read (table `t`). */
const PUBLIC_ONLY = `t.registry = ? AND EXISTS (SELECT 1 FROM repo_access a WHERE a.registry = t.registry
  AND a.repo = t.repo AND (a.access = 'public' OR (a.access = 'assumed' AND ?)))`

/**
 * How many of the most requested tags an anonymous viewer's list is chosen from. Which of them it
 * may see is one lookup each; without a bound, a store whose tags are mostly private or unknown to
 * repo_access would have every request walk all of them (~200 ms at 100,000 tags).
 */
export const PUBLIC_TOP_TAGS_SCAN = 10_000

const TOP_TAGS = `SELECT registry, repo, tag, requests, hits, misses, stale, errors, pulls_avoided,
    bytes_cache AS bytes_from_cache, bytes_upstream AS bytes_from_upstream, last_request
  FROM tag_stats WHERE last_request >= ?
  ORDER BY requests DESC, last_request DESC, registry, repo, tag LIMIT`

/**
 * The top-tags query: it walks the tag_stats_requests index and stops after LIMIT rows, so it
 * costs the same with a hundred tags or a hundred thousand (exported for the plan's test).
 */
export const TOP_TAGS_SQL = `${TOP_TAGS} ?`

/** The same for an anonymous viewer: the walk is bounded, then filtered by repo_access. */
export const PUBLIC_TOP_TAGS_SQL = `SELECT * FROM (${TOP_TAGS} ${PUBLIC_TOP_TAGS_SCAN}) t WHERE ${PUBLIC_ONLY}
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

  /** Rows of repositories whose names start with `prefix` ("ghcr.io/"), from `fromHour` on. */
  underPrefix(fromHour: number, prefix: string): UsageSums {
    return this.stmt.underPrefix.get(fromHour, prefix.length, prefix) as UsageSums
  }

  /** Kinds that had rows; a kind without any is absent. */
  byKind(fromHour: number): (UsageSums & { kind: string })[] {
    return this.stmt.byKind.all(fromHour) as (UsageSums & { kind: string })[]
  }

  /** Repositories by requests, most first; with `only`, those an anonymous viewer may see. */
  byRepo(
    fromHour: number,
    limit: number,
    only?: PublicScope,
  ): (UsageSums & { registry: string; repo: string })[] {
    const rows =
      only === undefined
        ? this.stmt.byRepo.all(fromHour, limit)
        : this.stmt.publicByRepo.all(fromHour, only.registry, only.assumed ? 1 : 0, limit)
    return rows as (UsageSums & { registry: string; repo: string })[]
  }

  /** Hours that had requests, oldest first. */
  byHour(fromHour: number): (UsageSums & { hour: number })[] {
    return this.stmt.byHour.all(fromHour) as (UsageSums & { hour: number })[]
  }

  /**
   * Tags last requested at or after `since`, by requests, most first (lifetime counts); with
   * `only`, those an anonymous viewer may see among the PUBLIC_TOP_TAGS_SCAN most requested.
   */
  topTags(since: number, limit: number, only?: PublicScope): TagUsage[] {
    const rows =
      only === undefined
        ? this.stmt.topTags.all(since, limit)
        : this.stmt.publicTopTags.all(since, only.registry, only.assumed ? 1 : 0, limit)
    return rows as TagUsage[]
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
    // substr, not LIKE: a name's '_' would be a wildcard there.
    underPrefix: db.prepare(`SELECT ${SUMS} FROM accounting WHERE hour >= ? AND substr(repo, 1, ?) = ?`),
    byRepo: db.prepare(
      `SELECT registry, repo, ${SUMS} FROM accounting WHERE hour >= ?
       GROUP BY registry, repo ORDER BY requests DESC, bytes_from_cache DESC, registry, repo LIMIT ?`,
    ),
    publicByRepo: db.prepare(
      `SELECT registry, repo, ${SUMS} FROM accounting t WHERE hour >= ? AND ${PUBLIC_ONLY}
       GROUP BY registry, repo ORDER BY requests DESC, bytes_from_cache DESC, registry, repo LIMIT ?`,
    ),
    byHour: db.prepare(
      `SELECT hour, ${SUMS} FROM accounting WHERE hour >= ? GROUP BY hour HAVING requests > 0 ORDER BY hour`,
    ),
    topTags: db.prepare(TOP_TAGS_SQL),
    publicTopTags: db.prepare(PUBLIC_TOP_TAGS_SQL),
    topBlobs: db.prepare(
      `SELECT digest, size, media_type, hits + coalesced + misses AS requests, hits, coalesced, misses,
         bytes_cache AS bytes_from_cache, bytes_upstream AS bytes_from_upstream, first_cached, last_access
       FROM blobs WHERE last_access >= ?
       ORDER BY requests DESC, bytes_from_cache DESC, digest LIMIT ?`,
    ),
  }
}
