// The one choke point for everything pullcache sends upstream. One undici Agent (keep-alive
// pools per origin, connect/header/idle timeouts) carries registry, token and CDN requests.
// Every response either goes back to the caller with its body unread, or has its body read or
// dumped here: undici keeps a connection busy until its body settles. Network errors and
// statuses become UpstreamError with a stable kind; the bearer token is sent to the upstream
// origin only, never along a redirect to another host (Docker Hub's blob CDN).

import type { IncomingHttpHeaders } from 'node:http'
import type { Readable } from 'node:stream'
import pLimit, { type LimitFunction } from 'p-limit'
import { Agent, type Dispatcher } from 'undici'
import { UpstreamError, type UpstreamFailure } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { MANIFEST_TYPES, MAX_MANIFEST_BYTES } from '../oci.js'
import {
  type Challenge,
  type Credentials,
  parseChallenge,
  parseTokenResponse,
  realmMayReceiveCredentials,
  TokenCache,
  type TokenResponse,
} from './auth.js'

const USER_AGENT = 'pullcache/0.1'
/** Error bodies we read to report upstream's message; anything longer is cut. */
const MAX_ERROR_BODY = 16 * 1024
const MAX_REDIRECTS = 5

export interface UpstreamOptions {
  url: string
  credentials: Credentials | null
  connectTimeoutMs: number
  headerTimeoutMs: number
  idleTimeoutMs: number
  connections: number
  maxConcurrentFetches: number
  /** Pulls left (ratelimit-remaining) under which the budget counts as low. */
  rateLimitReserve: number
  /** Never contact upstream: every request fails at once with kind OFFLINE. */
  offline: boolean
  /** One-component repository names get Docker Hub's library/ prefix upstream. */
  libraryPrefix: boolean
  log: Logger
  metrics: Metrics
}

/** One recent upstream failure, for the status page and the stats API. */
export interface UpstreamErrorNote {
  at: number
  kind: UpstreamFailure
  status: number | undefined
  message: string
}

/** How many recent failures are kept. */
const RECENT_ERRORS = 20

/** What a request upstream is for, as the metrics label it. */
type RequestKind = 'manifest' | 'blob' | 'tags' | 'token' | 'cdn' | 'ping'

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

/** How long a ping's answer is reused: readiness probes every few seconds must not reach Hub. */
const PING_CACHE_MS = 10_000

/** Whether upstream's API root answered, as the readiness check reports it. */
export interface PingResult {
  reachable: boolean
  /** The status upstream answered, undefined when none came. */
  status: number | undefined
  detail: string
  /** When the request that gave this answer finished, ms since epoch. */
  at: number
}

export interface RateLimit {
  limit: number
  remaining: number
  windowSeconds: number | undefined
  at: number
}

export interface ManifestHead {
  digest: string | undefined
  mediaType: string
  size: number | undefined
}

export interface ManifestBody {
  bytes: Buffer
  mediaType: string
  digest: string | undefined
}

export interface BlobBody {
  size: number | undefined
  body: Readable
}

type Response = Dispatcher.ResponseData

export class Upstream {
  readonly origin: URL
  /** Key for this upstream in the index: its host (and port when not the default). */
  readonly registry: string
  /** One-component repository names get Docker Hub's library/ prefix upstream. */
  readonly libraryPrefix: boolean
  /** Caps concurrent blob downloads; each fill holds a slot until its body has settled. */
  readonly fetchLimit: LimitFunction
  rateLimit: RateLimit | undefined
  rateLimitReserve: number
  offline: boolean
  /**
   * How long one exchange may take to answer, token and redirects included. The mirror gives
   * each single-flight fetch this deadline and then drops it: undici's own timers apply per hop
   * and fire late (their clock ticks in about a second), so they alone cannot keep the promise.
   */
  readonly headerTimeoutMs: number
  private budgetLowLogged = false
  private readonly agent: Agent
  private readonly tokens = new TokenCache()
  private challenge: Challenge | undefined
  private credentials: Credentials | null
  private readonly log: Logger
  private readonly metrics: Metrics
  private unwellUntil = 0
  private readonly errors: UpstreamErrorNote[] = []
  private lastAnswer: number | undefined
  private lastFailure: { at: number; message: string } | undefined
  /** A failed ping is listed once per outage: set by the first, cleared by the next answer. */
  private pingFailureListed = false
  private lastPing: { result: Promise<PingResult>; until: number } | undefined

  constructor(opts: UpstreamOptions) {
    this.origin = new URL(opts.url)
    this.registry = this.origin.host
    this.libraryPrefix = opts.libraryPrefix
    this.credentials = opts.credentials
    this.log = opts.log
    this.metrics = opts.metrics
    this.rateLimitReserve = opts.rateLimitReserve
    this.offline = opts.offline
    this.headerTimeoutMs = opts.headerTimeoutMs
    this.fetchLimit = pLimit(opts.maxConcurrentFetches)
    this.agent = new Agent({
      connect: { timeout: opts.connectTimeoutMs },
      headersTimeout: opts.headerTimeoutMs,
      bodyTimeout: opts.idleTimeoutMs,
      keepAliveTimeout: 30_000,
      connections: opts.connections,
    })
  }

  /** New credentials (e.g. on reload) make every cached token stale. */
  setCredentials(credentials: Credentials | null): void {
    this.credentials = credentials
    this.tokens.clear()
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

  /** Ends every upstream connection, including requests still waiting on a slow upstream. */
  async close(): Promise<void> {
    await this.agent.destroy()
  }

  /**
   * GET /v2/ without credentials: 200 or 401 (a registry asking for a token) means upstream
   * answers. One request at a time, and its answer is reused for PING_CACHE_MS after it came.
   * Never throws; offline on purpose is reported as unreachable without asking.
   */
  ping(now = Date.now()): Promise<PingResult> {
    if (this.offline) {
      return Promise.resolve({ reachable: false, status: undefined, detail: 'offline', at: now })
    }
    // While a ping is in flight `until` is infinite, so every caller shares it.
    if (this.lastPing && now < this.lastPing.until) return this.lastPing.result
    const entry = { result: this.sendPing(), until: Number.POSITIVE_INFINITY }
    this.lastPing = entry
    void entry.result
      .then((r) => {
        entry.until = r.at + PING_CACHE_MS
      })
      .catch(() => {}) // sendPing never rejects; this keeps a later change from making it fatal
    return entry.result
  }

  private async sendPing(): Promise<PingResult> {
    const url = new URL('/v2/', this.origin)
    try {
      // raw(): counted in metrics, and a network failure is noted like any other.
      const res = await this.raw('ping', 'GET', url, {})
      await res.body.dump()
      const reachable = res.statusCode === 200 || res.statusCode === 401
      const detail = reachable
        ? `${url.href} answered ${res.statusCode}`
        : `${url.href} answered ${res.statusCode}, expected 200 or 401`
      if (!reachable) this.noteFailure(detail)
      return { reachable, status: res.statusCode, detail, at: Date.now() }
    } catch (err) {
      return {
        reachable: false,
        status: undefined,
        detail: `${url.href}: ${(err as Error).message}`,
        at: Date.now(),
      }
    }
  }

  // --- the registry API --------------------------------------------------------------------

  /** HEAD a manifest: free on Docker Hub (it does not count against the pull limit). */
  async headManifest(repo: string, reference: string, signal?: AbortSignal): Promise<ManifestHead> {
    const res = await this.send(
      'manifest',
      repo,
      'HEAD',
      `/v2/${repo}/manifests/${reference}`,
      { accept: MANIFEST_TYPES.join(', ') },
      signal,
    )
    this.noteRateLimit(res.headers)
    if (res.statusCode !== 200) throw await this.failure(res, `HEAD manifest ${repo}:${reference}`)
    await res.body.dump()
    const length = header(res.headers, 'content-length')
    return {
      digest: header(res.headers, 'docker-content-digest'),
      mediaType: mediaTypeOf(res.headers),
      size: length === undefined ? undefined : Number(length),
    }
  }

  /** GET a manifest's exact bytes. On Docker Hub this is the request that counts as a pull. */
  async getManifest(repo: string, reference: string, signal?: AbortSignal): Promise<ManifestBody> {
    const res = await this.send(
      'manifest',
      repo,
      'GET',
      `/v2/${repo}/manifests/${reference}`,
      { accept: MANIFEST_TYPES.join(', ') },
      signal,
    )
    this.noteRateLimit(res.headers)
    if (res.statusCode !== 200) throw await this.failure(res, `GET manifest ${repo}:${reference}`)
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES)
    if (bytes === undefined)
      throw new UpstreamError('INVALID', `manifest ${repo}:${reference} is larger than 4 MiB`)
    return {
      bytes,
      mediaType: mediaTypeOf(res.headers),
      digest: header(res.headers, 'docker-content-digest'),
    }
  }

  async headBlob(repo: string, digest: string, signal?: AbortSignal): Promise<{ size: number }> {
    const res = await this.send('blob', repo, 'HEAD', `/v2/${repo}/blobs/${digest}`, {}, signal)
    // Some registries redirect HEAD to storage too; the size is what we need, so follow.
    const final = await this.followRedirects(repo, res, 'HEAD', signal)
    if (final.statusCode !== 200) throw await this.failure(final, `HEAD blob ${digest}`)
    await final.body.dump()
    const size = Number(header(final.headers, 'content-length'))
    if (!Number.isSafeInteger(size) || size < 0)
      throw new UpstreamError('SERVER', `HEAD blob ${digest}: no Content-Length`)
    return { size }
  }

  /** GET a blob, following the redirect to a CDN without our token. The body is the caller's. */
  async getBlob(repo: string, digest: string, signal?: AbortSignal): Promise<BlobBody> {
    const res = await this.send('blob', repo, 'GET', `/v2/${repo}/blobs/${digest}`, {}, signal)
    const final = await this.followRedirects(repo, res, 'GET', signal)
    if (final.statusCode !== 200) throw await this.failure(final, `GET blob ${digest}`)
    const length = header(final.headers, 'content-length')
    if (length !== undefined && !/^\d+$/.test(length.trim())) {
      await final.body.dump().catch(() => {})
      throw new UpstreamError('SERVER', `GET blob ${digest}: bad Content-Length ${JSON.stringify(length)}`)
    }
    return {
      size: length === undefined ? undefined : Number(length),
      body: final.body,
    }
  }

  async getTags(
    repo: string,
    query: string,
    signal?: AbortSignal,
  ): Promise<{ bytes: Buffer; link: string | undefined }> {
    const res = await this.send(
      'tags',
      repo,
      'GET',
      `/v2/${repo}/tags/list${query ? `?${query}` : ''}`,
      { accept: 'application/json' },
      signal,
    )
    if (res.statusCode !== 200) throw await this.failure(res, `GET tags ${repo}`)
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES)
    if (bytes === undefined) throw new UpstreamError('INVALID', `tag list of ${repo} is larger than 4 MiB`)
    return { bytes, link: header(res.headers, 'link') }
  }

  // --- transport ---------------------------------------------------------------------------

  /**
   * One request to the upstream origin with bearer auth: a cached token when we have one, else
   * whatever the 401 challenge asks for, then one retry. A 401 on a cached token means it was
   * revoked or expired early: drop it, fetch a fresh one, retry once.
   */
  private async send(
    kind: RequestKind,
    repo: string,
    method: 'GET' | 'HEAD',
    path: string,
    headers: Record<string, string> = {},
    signal?: AbortSignal,
  ): Promise<Response> {
    const scope = `repository:${repo}:pull`
    let token = this.challenge ? await this.token(this.challenge, scope, signal) : undefined
    let res = await this.raw(kind, method, new URL(path, this.origin), authorize(headers, token), signal)
    if (res.statusCode !== 401) return res

    const challenge = parseChallenge(res.headers['www-authenticate'])
    if (challenge?.scheme === 'bearer' && challenge.realm) {
      await res.body.dump()
      if (token !== undefined && this.challenge)
        this.tokens.invalidate(tokenKey(this.challenge, scope), token)
      this.challenge = challenge
      token = await this.token(challenge, scope, signal)
      res = await this.raw(kind, method, new URL(path, this.origin), authorize(headers, token), signal)
    } else if (challenge?.scheme === 'basic' && this.credentials) {
      await res.body.dump()
      res = await this.raw(
        kind,
        method,
        new URL(path, this.origin),
        { ...headers, authorization: basic(this.credentials) },
        signal,
      )
    }
    return res
  }

  /**
   * A token for `scope`. The fetch is shared by every request for the scope, so one caller's
   * deadline does not abort it; the caller only stops waiting. The fetch has a deadline of its
   * own, so a token service that accepts and never answers counts as upstream down.
   */
  private async token(challenge: Challenge, scope: string, signal?: AbortSignal): Promise<string> {
    const obtained = this.tokens.obtain(tokenKey(challenge, scope), () =>
      this.fetchToken(challenge, scope).then(
        (token) => {
          this.metrics.tokenFetches.inc({ result: 'ok' })
          return token
        },
        (err: unknown) => {
          this.metrics.tokenFetches.inc({ result: 'error' })
          // Network failures were noted where they happened; note what the realm answered.
          if (err instanceof UpstreamError && err.kind !== 'NETWORK' && err.kind !== 'TIMEOUT') {
            this.markUnwell(
              err.kind === 'UNAUTHORIZED' ? 'AUTH_SERVER' : err.kind,
              err.retryAfter,
              err.status,
              err.message,
            )
          }
          throw err
        },
      ),
    )
    return signal === undefined ? obtained : untilAborted(obtained, signal)
  }

  private async fetchToken(challenge: Challenge, scope: string): Promise<TokenResponse> {
    let realm: URL
    try {
      realm = new URL(challenge.realm)
    } catch (err) {
      throw new UpstreamError('AUTH_SERVER', `token realm is not a URL: ${challenge.realm}`, { cause: err })
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
      throw new UpstreamError('AUTH_SERVER', `token realm must be http(s): ${realm.origin}`)
    }
    if (challenge.service) realm.searchParams.set('service', challenge.service)
    realm.searchParams.append('scope', scope)
    const headers: Record<string, string> = {}
    if (this.credentials) {
      if (realmMayReceiveCredentials(realm, this.origin)) {
        headers.authorization = basic(this.credentials)
        realm.searchParams.set('account', this.credentials.username)
      } else {
        this.log.warn('upstream.realm_untrusted', { realm: realm.origin, upstream: this.origin.origin })
      }
    }
    let res: Response
    try {
      res = await this.raw('token', 'GET', realm, headers, timeoutSignal(this.headerTimeoutMs, 'token'))
    } catch (err) {
      throw new UpstreamError('AUTH_SERVER', `token endpoint ${realm.origin}: ${(err as Error).message}`, {
        cause: err,
      })
    }
    const bytes = await readLimited(res, MAX_ERROR_BODY)
    if (res.statusCode === 401 || res.statusCode === 403) {
      if (headers.authorization !== undefined) {
        // Wrong password, revoked access token, locked account: nothing a client can fix.
        this.log.error('upstream.credentials_refused', {
          realm: realm.origin,
          username: this.credentials?.username,
          status: res.statusCode,
        })
        throw new UpstreamError(
          'CREDENTIALS',
          `token endpoint ${realm.origin} refused the configured account`,
        )
      }
      throw new UpstreamError('UNAUTHORIZED', `token endpoint ${realm.origin} refused: ${res.statusCode}`)
    }
    if (res.statusCode === 429) {
      throw new UpstreamError('RATE_LIMITED', `token endpoint ${realm.origin} answered 429`, {
        retryAfter: header(res.headers, 'retry-after'),
      })
    }
    let parsed: ReturnType<typeof parseTokenResponse>
    try {
      parsed =
        res.statusCode === 200 && bytes ? parseTokenResponse(JSON.parse(bytes.toString('utf8'))) : undefined
    } catch {
      parsed = undefined
    }
    if (!parsed)
      throw new UpstreamError('AUTH_SERVER', `token endpoint ${realm.origin} answered ${res.statusCode}`)
    this.log.debug('upstream.token', { realm: realm.origin, scope, expires_in: parsed.expiresIn })
    return parsed
  }

  private async followRedirects(
    repo: string,
    first: Response,
    method: 'GET' | 'HEAD',
    signal?: AbortSignal,
  ): Promise<Response> {
    let res = first
    let url = new URL(this.origin)
    for (let hops = 0; isRedirect(res.statusCode); hops++) {
      const location = header(res.headers, 'location')
      await res.body.dump()
      if (location === undefined || hops >= MAX_REDIRECTS) {
        throw new UpstreamError('SERVER', `redirect without Location or more than ${MAX_REDIRECTS} redirects`)
      }
      try {
        url = new URL(location, url)
      } catch (err) {
        throw new UpstreamError('SERVER', `redirect to a bad Location: ${location}`, { cause: err })
      }
      if (url.protocol !== 'https:' && url.protocol !== 'http:') {
        throw new UpstreamError('SERVER', `redirect to a non-http URL: ${url.protocol}`)
      }
      // Our token belongs to the upstream origin; a CDN URL carries its own signature.
      res =
        url.origin === this.origin.origin
          ? await this.send('blob', repo, method, url.pathname + url.search, {}, signal)
          : await this.raw('cdn', method, url, {}, signal)
    }
    return res
  }

  private async raw(
    kind: RequestKind,
    method: string,
    url: URL,
    headers: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Response> {
    if (this.offline) throw new UpstreamError('OFFLINE', 'pullcache is offline and does not contact upstream')
    try {
      signal?.throwIfAborted()
      const res = await this.agent.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers: { 'user-agent': USER_AGENT, ...headers },
        ...(signal === undefined ? {} : { signal }),
      })
      this.metrics.upstreamRequests.inc({ kind, method, status: String(res.statusCode) })
      if (res.statusCode < 500) this.noteAnswer()
      return res
    } catch (err) {
      this.metrics.upstreamRequests.inc({ kind, method, status: 'error' })
      // Aborted by a deadline: the reason says which (an UpstreamError of kind TIMEOUT).
      const failure = networkFailure(signal?.aborted ? signal.reason : err)
      this.markUnwell(
        failure.kind,
        undefined,
        undefined,
        `${kind} ${method} ${url.origin}: ${failure.message}`,
        kind,
      )
      throw failure
    }
  }

  /** Turns a non-success response into an UpstreamError, reading upstream's message. */
  private async failure(res: Response, what: string): Promise<UpstreamError> {
    const bytes = await readLimited(res, MAX_ERROR_BODY).catch(() => undefined)
    const detail = bytes ? upstreamMessage(bytes) : undefined
    const message = `${what}: upstream answered ${res.statusCode}${detail ? ` (${detail})` : ''}`
    const kind = kindOfStatus(res.statusCode)
    const retryAfter = header(res.headers, 'retry-after')
    this.markUnwell(kind, retryAfter, res.statusCode, message)
    return new UpstreamError(kind, message, { status: res.statusCode, retryAfter })
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

  private noteAnswer(): void {
    this.lastAnswer = Date.now()
    this.pingFailureListed = false
  }

  private noteFailure(message: string): void {
    this.lastFailure = { at: Date.now(), message }
  }

  private markUnwell(
    kind: UpstreamFailure,
    retryAfter?: string,
    status?: number,
    message?: string,
    request?: RequestKind,
  ): void {
    const now = Date.now()
    // Readiness probes ping every few seconds: during an outage their failures would push every
    // other error out of the list, so only the first failed ping of an outage is listed.
    const repeatedPing = request === 'ping' && this.pingFailureListed
    if (request === 'ping') this.pingFailureListed = true
    if (kind !== 'NOT_FOUND' && !repeatedPing) {
      this.errors.push({ at: now, kind, status, message: message ?? kind })
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
  private noteRateLimit(headers: IncomingHttpHeaders): void {
    const limit = header(headers, 'ratelimit-limit') ?? header(headers, 'x-ratelimit-limit')
    const remaining = header(headers, 'ratelimit-remaining') ?? header(headers, 'x-ratelimit-remaining')
    if (limit === undefined || remaining === undefined) return
    const l = /^\s*(\d+)(?:\s*;\s*w=(\d+))?/.exec(limit)
    const r = /^\s*(\d+)/.exec(remaining)
    if (!l || !r) return
    this.metrics.rateLimitLimit.set(Number(l[1]))
    this.metrics.rateLimitRemaining.set(Number(r[1]))
    this.rateLimit = {
      limit: Number(l[1]),
      remaining: Number(r[1]),
      windowSeconds: l[2] === undefined ? undefined : Number(l[2]),
      at: Date.now(),
    }
  }
}

/**
 * Aborts after `ms` with a TIMEOUT UpstreamError as the reason. The timer is unref'd: a
 * deadline alone never keeps the process alive.
 */
export function timeoutSignal(ms: number, what: string): AbortSignal {
  const controller = new AbortController()
  setTimeout(
    () =>
      controller.abort(new UpstreamError('TIMEOUT', `upstream timed out: no ${what} answer within ${ms} ms`)),
    ms,
  ).unref()
  return controller.signal
}

/** `work`, or the signal's reason as soon as it aborts; work goes on for whoever else waits. */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(networkFailure(signal.reason))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(networkFailure(signal.reason))
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(err)
      },
    )
  })
}

function tokenKey(challenge: Challenge, scope: string): string {
  return `${challenge.realm}\0${challenge.service ?? ''}\0${scope}`
}

function authorize(headers: Record<string, string>, token: string | undefined): Record<string, string> {
  return token === undefined ? headers : { ...headers, authorization: `Bearer ${token}` }
}

function basic(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`
}

function isRedirect(status: number): boolean {
  return status === 301 || status === 302 || status === 303 || status === 307 || status === 308
}

export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

function mediaTypeOf(headers: IncomingHttpHeaders): string {
  // Parameters such as "; charset=utf-8" are not part of a manifest media type.
  return (header(headers, 'content-type') ?? '').split(';')[0]!.trim()
}

function kindOfStatus(status: number): UpstreamFailure {
  if (status === 404) return 'NOT_FOUND'
  if (status === 401 || status === 403) return 'UNAUTHORIZED'
  if (status === 429) return 'RATE_LIMITED'
  return 'SERVER'
}

const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
])

export function networkFailure(err: unknown): UpstreamError {
  if (err instanceof UpstreamError) return err
  const code = (err as { code?: string }).code ?? ''
  const kind: UpstreamFailure = TIMEOUT_CODES.has(code) ? 'TIMEOUT' : 'NETWORK'
  return new UpstreamError(
    kind,
    `upstream ${kind === 'TIMEOUT' ? 'timed out' : 'unreachable'}: ${code || (err as Error).message}`,
    {
      cause: err,
    },
  )
}

/** Reads a whole body, or returns undefined (and drops the rest) past `limit` bytes. */
async function readLimited(res: Response, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = []
  let total = 0
  try {
    for await (const chunk of res.body) {
      total += (chunk as Buffer).length
      if (total > limit) {
        res.body.destroy()
        return undefined
      }
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    throw networkFailure(err)
  }
  return Buffer.concat(chunks)
}

function upstreamMessage(bytes: Buffer): string | undefined {
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as { errors?: { code?: string; message?: string }[] }
    const first = parsed.errors?.[0]
    if (first) return [first.code, first.message].filter(Boolean).join(': ')
  } catch {
    // not JSON: say nothing rather than echo arbitrary upstream text
  }
  return undefined
}
