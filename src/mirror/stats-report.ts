// The stats document: what GET /_pullcache/stats answers, `pullcache stats --json` prints and the
// status page renders. Field names are an interface; add fields, never rename them. Numbers
// come from the index (store/stats.ts, where the hit rate is defined); the upstream part comes
// from the running server, or from the config alone when there is none (the CLI).

import type { Config } from '../config.js'
import type { IndexDb } from '../store/index-db.js'
import {
  hourlyStats,
  type Kind,
  kindStats,
  overallStats,
  type RepoTotals,
  repositoryStats,
  storeCounts,
  type TagTotals,
  type Totals,
  tagStats,
} from '../store/stats.js'
import { VERSION } from '../version.js'
import type { Mirror } from './mirror.js'

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
  upstream: UpstreamReport
}

export interface StatsReportOptions {
  index: IndexDb
  /** ms since epoch; undefined for everything the index holds. */
  since?: number | undefined
  /** Repositories and tags listed; DEFAULT_TOP unless given. */
  top?: number | undefined
  budgetBytes: number | null
  upstream: UpstreamReport
  uptimeSeconds: number | null
  now?: number | undefined
}

export function statsReport(opts: StatsReportOptions): StatsReport {
  const { index, since } = opts
  const now = opts.now ?? Date.now()
  const limit = opts.top ?? DEFAULT_TOP
  return {
    generated_at: iso(now),
    since: since === undefined ? null : iso(since),
    version: VERSION,
    uptime_seconds: opts.uptimeSeconds,
    overall: overallStats(index, { since }),
    by_kind: kindStats(index, { since }),
    top_repositories: repositoryStats(index, { since, limit }),
    top_tags: tagStats(index, { since, limit }).map((t) => ({ ...t, last_request: iso(t.last_request) })),
    hourly: hourlyStats(index, { since }).map((h) => ({ ...h, hour: iso(h.hour) })),
    store: { ...storeCounts(index), budget_bytes: opts.budgetBytes },
    upstream: opts.upstream,
  }
}

/** The upstream as the running server sees it. */
export function liveUpstream(mirror: Mirror): UpstreamReport {
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
      message: e.message,
    })),
  }
}

/** The upstream as far as the config tells, for a report made without a running server. */
export function configuredUpstream(config: Config): UpstreamReport {
  return {
    url: config.upstream.url,
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
