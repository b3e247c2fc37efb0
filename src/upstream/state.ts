// What pullcache knows of upstream's condition, learnt from the answers and failures of every
// request it sent: whether upstream answers (reachability, for the status page and the stats
// API), the last failures, a short back-off after a failure (unwell: callers with a cached copy
// serve it instead of waiting on a timeout each), and Docker Hub's pull budget from its
// ratelimit headers. Kept apart from the requests themselves: the transport, the token exchange
// and the registry API all report here, and readers only ever look, never send.

import type { IncomingHttpHeaders } from 'node:http'
import type { UpstreamFailure } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { header } from './response.js'

/** One recent upstream failure, for the status page and the stats API. */
export interface UpstreamErrorNote {
  at: number
  kind: UpstreamFailure
  status: number | undefined
  message: string
  /** The repository the request was for, when it was for one: anonymous viewers see a note
   * about a repository only if anonymous pulls may read it. */
  repo: string | undefined
}

/** How many recent failures are kept. */
const RECENT_ERRORS = 20

/** What a request upstream is for, as the metrics label it. */
export type RequestKind = 'manifest' | 'blob' | 'tags' | 'token' | 'cdn' | 'ping' | 'access'

/** An answer from upstream this recent, with no failure since, says it is online. */
export const ONLINE_WITHIN_MS = 60_000

/**
 * Whether upstream can be reached, as the last contacts with it say. An answer is any response
 * below 500 (a 401 or 404 is upstream answering); a failure is a refused or dropped connection,
 * a timeout, a 5xx, or a token endpoint that failed.
 */
export interface Reachability {
  /**
   * online: an answer within ONLINE_WITHIN_MS and no failure since; unreachable: the last
   * contact failed; offline: offline on purpose; unknown: no contact within ONLINE_WITHIN_MS.
   */
  state: 'online' | 'unreachable' | 'offline' | 'unknown'
  /** When upstream last answered, ms since epoch. */
  lastAnswer: number | undefined
  lastFailure: { at: number; message: string } | undefined
}

export interface RateLimit {
  limit: number
  remaining: number
  windowSeconds: number | undefined
  at: number
}

export interface UpstreamStateOptions {
  /** Pulls left (ratelimit-remaining) under which the budget counts as low. */
  rateLimitReserve: number
  /** Never contact upstream: every request fails at once with kind OFFLINE. */
  offline: boolean
  log: Logger
  metrics: Metrics
  /** The upstream's host, the `upstream` label of its metrics. */
  host: string
}

export class UpstreamState {
  rateLimit: RateLimit | undefined
  rateLimitReserve: number
  offline: boolean
  private budgetLowLogged = false
  private readonly log: Logger
  private readonly metrics: Metrics
  private readonly host: string
  private unwellUntil = 0
  private readonly errors: UpstreamErrorNote[] = []
  private lastAnswer: number | undefined
  private lastFailure: { at: number; message: string } | undefined
  /** A failed ping is listed once per outage: set by the first, cleared by the next answer. */
  private pingFailureListed = false

  constructor(opts: UpstreamStateOptions) {
    this.rateLimitReserve = opts.rateLimitReserve
    this.offline = opts.offline
    this.log = opts.log
    this.metrics = opts.metrics
    this.host = opts.host
  }

  /**
   * True for a few seconds after upstream failed to answer; callers that have a cached copy serve
   * it at once instead of waiting on a timeout for every request while upstream is down.
   */
  isUnwell(now = Date.now()): boolean {
    return now < this.unwellUntil
  }

  /**
   * True while upstream's last reported pull budget is under the reserve, until its window
   * (the w= of ratelimit-limit; an hour when not given) has passed since that report.
   */
  pullBudgetLow(now = Date.now()): boolean {
    const rl = this.rateLimit
    const until = rl === undefined ? 0 : rl.at + (rl.windowSeconds ?? 3600) * 1000
    const low = rl !== undefined && rl.remaining < this.rateLimitReserve && now < until
    if (low && !this.budgetLowLogged) {
      this.log.warn('upstream.rate_limit_low', {
        remaining: rl.remaining,
        limit: rl.limit,
        reserve: this.rateLimitReserve,
        serving_cached_tags_until: new Date(until).toISOString(),
      })
    }
    this.budgetLowLogged = low
    return low
  }

  /** The last failures upstream, newest first. */
  recentErrors(): UpstreamErrorNote[] {
    return [...this.errors].reverse()
  }

  /** Whether upstream can be reached, from the last answer and the last failure. */
  reachability(now = Date.now()): Reachability {
    const known = { lastAnswer: this.lastAnswer, lastFailure: this.lastFailure }
    if (this.offline) return { state: 'offline', ...known }
    const failed = this.lastFailure?.at
    if (failed !== undefined && (this.lastAnswer === undefined || failed >= this.lastAnswer)) {
      return { state: 'unreachable', ...known }
    }
    if (this.lastAnswer !== undefined && now - this.lastAnswer <= ONLINE_WITHIN_MS) {
      return { state: 'online', ...known }
    }
    return { state: 'unknown', ...known }
  }

  noteAnswer(): void {
    this.lastAnswer = Date.now()
    this.pingFailureListed = false
  }

  noteFailure(message: string): void {
    this.lastFailure = { at: Date.now(), message }
  }

  markUnwell(
    kind: UpstreamFailure,
    retryAfter?: string,
    status?: number,
    message?: string,
    request?: RequestKind,
    repo?: string,
  ): void {
    const now = Date.now()
    // Readiness probes ping every few seconds: during an outage their failures would push every
    // other error out of the list, so only the first failed ping of an outage is listed.
    const repeatedPing = request === 'ping' && this.pingFailureListed
    if (request === 'ping') this.pingFailureListed = true
    if (kind !== 'NOT_FOUND' && !repeatedPing) {
      this.errors.push({ at: now, kind, status, message: message ?? kind, repo })
      if (this.errors.length > RECENT_ERRORS) this.errors.shift()
    }
    if (kind === 'NETWORK' || kind === 'TIMEOUT' || kind === 'SERVER' || kind === 'AUTH_SERVER') {
      this.noteFailure(message ?? kind)
      this.unwellUntil = now + 5_000
    } else if (kind === 'RATE_LIMITED') {
      const seconds = Number(retryAfter)
      this.unwellUntil =
        now + (Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 300) * 1000 : 30_000)
    }
  }

  /** Docker Hub reports the pull budget on manifest responses: "100;w=21600". */
  noteRateLimit(headers: IncomingHttpHeaders): void {
    const limit = header(headers, 'ratelimit-limit') ?? header(headers, 'x-ratelimit-limit')
    const remaining = header(headers, 'ratelimit-remaining') ?? header(headers, 'x-ratelimit-remaining')
    if (limit === undefined || remaining === undefined) return
    const l = /^\s*(\d+)(?:\s*;\s*w=(\d+))?/.exec(limit)
    const r = /^\s*(\d+)/.exec(remaining)
    if (!l || !r) return
    this.metrics.rateLimitLimit.set({ upstream: this.host }, Number(l[1]))
    this.metrics.rateLimitRemaining.set({ upstream: this.host }, Number(r[1]))
    this.rateLimit = {
      limit: Number(l[1]),
      remaining: Number(r[1]),
      windowSeconds: l[2] === undefined ? undefined : Number(l[2]),
      at: Date.now(),
    }
  }
}
