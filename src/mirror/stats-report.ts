// The stats document: what GET /_pullcache/stats answers, `pullcache stats --json` prints and the
// status page renders. Field names are an interface; add fields, never rename them. Numbers
// come from the index (store/stats.ts, where the hit rate is defined); the upstream part comes
// from the running server, or from the config alone when there is none (the CLI).

import type { ClusterReport } from '../cluster/totals.js'
import type { Config } from '../config.js'
import { namePrefixOf } from '../oci.js'
import type { BucketBudgetReport } from '../store/bucket-objects.js'
import type { IndexDb } from '../store/index-db.js'
import {
  hourlyStats,
  type Kind,
  kindStats,
  overallStats,
  prefixStats,
  type RepoTotals,
  repositoryStats,
  storeCounts,
  type TagTotals,
  type Totals,
  tagStats,
} from '../store/stats.js'
import type { Store } from '../store/store.js'
import { VERSION } from '../version.js'
import type { Mirror } from './mirror.js'

/** What an anonymous viewer may see named: the repositories anonymous pulls may read. */
export interface PublicView {
  /** For the index's top lists, filtered in SQL (TopQuery.publicOf). */
  scope: { registry: string; assumed: boolean }
  /** For anything else that names a repository: one lookup each. */
  visible: (registry: string, repo: string) => boolean
}

export function anonymousView(mirror: Mirror, index: IndexDb): PublicView {
  const scope = mirror.visibility.publicScope()
  return {
    scope,
    visible: (registry, repo) =>
      registry === scope.registry && index.isPublicRepo(registry, repo, scope.assumed),
  }
}

/** How many repositories and tags the document lists unless asked otherwise. */
export const DEFAULT_TOP = 10

export interface UpstreamReport {
  url: string
  offline: boolean
  /**
   * Whether upstream can be reached, from the last contacts with it (Upstream.reachability):
   * online, unreachable (the last contact failed; cached content is still served), offline (on
   * purpose), or unknown (no contact in the last minute, or no running server to ask).
   */
  state: 'online' | 'unreachable' | 'offline' | 'unknown'
  /** When upstream last answered. */
  last_answer: string | null
  /** When upstream last could not be reached, or failed with a 5xx, and why. */
  last_failure: { at: string; message: string } | null
  rate_limit: { limit: number; remaining: number; window_seconds: number | null; at: string } | null
  recent_errors: { at: string; kind: string; status: number | null; message: string }[]
}

export interface StatsReport {
  generated_at: string
  since: string | null
  version: string
  /** null when there is no running server to ask (the CLI reads the index alone). */
  uptime_seconds: number | null
  overall: Totals
  by_kind: Record<Kind, Totals>
  top_repositories: RepoTotals[]
  /** As the index keeps them, with last_request as an ISO time. */
  top_tags: (Omit<TagTotals, 'last_request'> & { last_request: string })[]
  hourly: (Totals & { hour: string })[]
  /** bytes: logical (sum of sizes); allocated_bytes: on disk, what budget_bytes is compared with. */
  store: {
    blobs: number
    bytes: number
    allocated_bytes: number
    manifests: number
    tags: number
    budget_bytes: number | null
  }
  /** The root upstream (as before the others existed). */
  upstream: UpstreamReport
  /** Every upstream, the root first, each with the totals of requests for its repositories. */
  upstreams: UpstreamShare[]
  /**
   * Where blobs live: the local store alone, or a bucket behind it with what its start-up probe
   * found (null when the bucket could not be probed). Absent when no running server was asked.
   */
  storage?: StorageReport
  /**
   * In a cluster: this node's client figures and the cluster's totals over the members that
   * answered, each since its start (src/cluster/figures.ts says what is counted once). Absent
   * outside a cluster; `pullcache stats` asks the members when its config names them.
   */
  cluster?: ClusterReport
}

/** One upstream's part: its condition and its requests' totals. */
export interface UpstreamShare extends UpstreamReport {
  /** The registry name clients use for it ("docker.io", "ghcr.io"). */
  host: string
  totals: Totals
}

export type StorageReport =
  | { type: 'local' }
  | {
      type: 's3'
      endpoint: string | null
      bucket: string
      prefix: string
      capabilities: {
        conditional_create: boolean
        conditional_replace: boolean
        presigned_get: boolean
      } | null
      /** The bucket's budget and its last eviction run (storage.s3.max_size), when it has one. */
      budget?: BucketBudgetReport
      /** Blob GETs sent to the bucket with a presigned URL (storage.s3.redirect) since start. */
      redirected: number
    }

/** The storage part of the stats document, from the store of a running server. */
export function storageReport(store: Store): StorageReport {
  const shared = store.shared
  if (shared === undefined) return { type: 'local' }
  const found = shared.capabilities
  return {
    ...shared.describe,
    ...(store.bucket.sharedBudget === undefined ? {} : { budget: store.bucket.sharedBudget() }),
    capabilities:
      found === undefined
        ? null
        : {
            conditional_create: found.conditionalCreate,
            conditional_replace: found.conditionalReplace,
            presigned_get: found.presignedGet,
          },
    redirected: store.bucket.redirects,
  }
}

/** An upstream as the report gets it: its host, its names' prefix in the index, its condition. */
export interface UpstreamPart {
  host: string
  /** "ghcr.io/", or '' for the root upstream, whose totals are what the others' leave. */
  namePrefix: string
  report: UpstreamReport
}

export interface StatsReportOptions {
  index: IndexDb
  /** ms since epoch; undefined for everything the index holds. */
  since?: number | undefined
  /** Repositories and tags listed; DEFAULT_TOP unless given. */
  top?: number | undefined
  budgetBytes: number | null
  /** Every upstream, the root first. */
  upstreams: UpstreamPart[]
  uptimeSeconds: number | null
  now?: number | undefined
  /**
   * Which repositories the reader may see named (anonymous viewers: those anonymous pulls may
   * read); undefined for all of them.
   */
  view?: PublicView | undefined
}

export function statsReport(opts: StatsReportOptions): StatsReport {
  const { index, since } = opts
  const now = opts.now ?? Date.now()
  const limit = opts.top ?? DEFAULT_TOP
  // Filtered readers get the top `limit` of what they may see, filtered by the queries.
  const publicOf = opts.view?.scope
  const repos = repositoryStats(index, { since, limit, publicOf })
  const tags = tagStats(index, { since, limit, publicOf })
  return {
    generated_at: iso(now),
    since: since === undefined ? null : iso(since),
    version: VERSION,
    uptime_seconds: opts.uptimeSeconds,
    overall: overallStats(index, { since }),
    by_kind: kindStats(index, { since }),
    top_repositories: repos,
    top_tags: tags.map((t) => ({
      ...t,
      last_request: iso(t.last_request),
    })),
    hourly: hourlyStats(index, { since }).map((h) => ({ ...h, hour: iso(h.hour) })),
    store: { ...storeCounts(index), budget_bytes: opts.budgetBytes },
    upstream: opts.upstreams[0]!.report,
    upstreams: upstreamShares(index, opts.upstreams, since),
  }
}

function upstreamShares(index: IndexDb, parts: UpstreamPart[], since: number | undefined): UpstreamShare[] {
  const others = parts.filter((p) => p.namePrefix !== '')
  const totals = prefixStats(
    index,
    others.map((p) => p.namePrefix),
    { since },
  )
  return parts.map((p) => ({
    host: p.host,
    ...p.report,
    totals: p.namePrefix === '' ? totals.rest : totals.byPrefix[others.indexOf(p)]!,
  }))
}

/**
 * The upstream as the running server sees it. With `visible`, a failure about a repository the
 * reader may not see named keeps its time, kind and status, not its message.
 */
export function liveUpstream(
  mirror: Mirror,
  visible?: (registry: string, repo: string) => boolean,
): UpstreamReport {
  const registry = mirror.upstream.registry
  const rl = mirror.upstream.rateLimit
  const reach = mirror.upstream.reachability()
  return {
    url: mirror.upstream.origin.origin,
    offline: mirror.offline,
    state: reach.state,
    last_answer: reach.lastAnswer === undefined ? null : iso(reach.lastAnswer),
    last_failure:
      reach.lastFailure === undefined
        ? null
        : { at: iso(reach.lastFailure.at), message: reach.lastFailure.message },
    rate_limit: rl
      ? { limit: rl.limit, remaining: rl.remaining, window_seconds: rl.windowSeconds ?? null, at: iso(rl.at) }
      : null,
    recent_errors: mirror.upstream.recentErrors().map((e) => ({
      at: iso(e.at),
      kind: e.kind,
      status: e.status ?? null,
      message:
        visible === undefined || e.repo === undefined || visible(registry, e.repo)
          ? e.message
          : 'about a repository that anonymous pulls cannot read',
    })),
  }
}

/** The upstreams as far as the config tells, for a report made without a running server. */
export function configuredUpstreams(config: Config): UpstreamPart[] {
  return [
    { host: config.upstream.host, namePrefix: '', report: configuredUpstream(config, config.upstream.url) },
    ...config.upstreams.map((u) => ({
      host: u.host,
      namePrefix: namePrefixOf(u.host),
      report: configuredUpstream(config, u.url),
    })),
  ]
}

function configuredUpstream(config: Config, url: string): UpstreamReport {
  return {
    url,
    offline: config.offline,
    state: config.offline ? 'offline' : 'unknown',
    last_answer: null,
    last_failure: null,
    rate_limit: null,
    recent_errors: [],
  }
}

/** The store budget (cache.max_size), or null when the store may grow without limit. */
export function budgetBytes(config: Config): number | null {
  return config.cache.max_size ?? null
}

function iso(ms: number): string {
  return new Date(ms).toISOString()
}
