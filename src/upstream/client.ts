// The one choke point for everything pullcache asks upstream: the registry API (manifests,
// blobs, tag lists), redirects to a blob CDN, what anonymous pulls may read, and the readiness
// ping. Every response either goes back to the caller with its body unread, or has its body read
// or dumped here: undici keeps a connection busy until its body settles. Statuses become
// UpstreamError with a stable kind; the bearer token is sent to the upstream origin only, never
// along a redirect to another host (Docker Hub's blob CDN).
//
// The parts it is built from, each owning one thing:
//   transport.ts       the undici Agent every request goes out through, and its metrics
//   token-exchange.ts  the credentials, 401 challenges and bearer tokens
//   state.ts           what the answers so far say: reachable, unwell, pull budget, recent errors
//   ping.ts            the readiness ping, shared and reused so probes do not reach Hub
//   response.ts        reading an answer: headers, bounded bodies, upstream's error message
//   referrers-api.ts   the referrers API's pages, and telling an upstream without it
//   anonymous-access.ts  what an anonymous pull may read, asked without counting as a pull
//   redirects.ts       which blob redirects are followed, and the following of them

import type { Readable } from 'node:stream'
import pLimit, { type LimitFunction } from 'p-limit'
import { UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { MANIFEST_TYPES, MAX_MANIFEST_BYTES, MEDIA_TYPES, namePrefixOf, registryKeyOf } from '../oci.js'
import type { Via } from '../via.js'
import { anonymousAccess, anonymousHas } from './anonymous-access.js'
import type { Credentials } from './auth.js'
import { type PingResult, ReadinessPing } from './ping.js'
import { followRedirects, isLocalOrigin } from './redirects.js'
import { fetchReferrers } from './referrers-api.js'
import {
  header,
  kindOfStatus,
  MAX_ERROR_BODY,
  manifestBodyOf,
  manifestHeadOf,
  type Response,
  readLimited,
  upstreamMessage,
} from './response.js'
import { type RateLimit, type Reachability, type UpstreamErrorNote, UpstreamState } from './state.js'
import { TokenExchange } from './token-exchange.js'
import { Transport } from './transport.js'

export interface UpstreamOptions {
  url: string
  /** The registry name clients use for this upstream ("docker.io", "ghcr.io"). */
  host: string
  /**
   * The key of this upstream's repositories in the index (default: the URL's host). Upstreams
   * beside the root one share the root's and name their repositories "<host>/<name>" there
   * (`prefixedNames`), so the names never meet.
   */
  registry?: string
  /** Repository names come as "<host>/<name>"; the prefix is taken off before asking. */
  prefixedNames?: boolean
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
  /** Via for requests sent upstream (src/via.ts); absent in tools that serve no clients. */
  via?: Via
}

/** What upstream said of a manifest; ageMs: how old its answer was (a central pullcache's Age). */
export interface ManifestHead {
  digest: string | undefined
  mediaType: string
  size: number | undefined
  ageMs: number
}

export interface ManifestBody {
  bytes: Buffer
  mediaType: string
  digest: string | undefined
  ageMs: number
}

export interface BlobBody {
  size: number | undefined
  body: Readable
  /**
   * Relayed by the cluster node that owns the blob: that node fetched it from upstream, counts
   * those bytes and puts them in the shared tier, so this one does neither again.
   */
  fromOwner?: boolean
}

export class Upstream {
  readonly origin: URL
  /** The registry name clients use for this upstream ("docker.io", "ghcr.io"). */
  readonly host: string
  /** Key for this upstream in the index (see UpstreamOptions.registry). */
  readonly registry: string
  /** What repository names start with in the index ("ghcr.io/"), or '' for the root upstream. */
  readonly namePrefix: string
  /** One-component repository names get Docker Hub's library/ prefix upstream. */
  readonly libraryPrefix: boolean
  /** Caps concurrent blob downloads; each fill holds a slot until its body has settled. */
  readonly fetchLimit: LimitFunction
  /**
   * How long one exchange may take to answer, token and redirects included. The mirror gives
   * each single-flight fetch this deadline and then drops it: undici's own timers apply per hop
   * and fire late (their clock ticks in about a second), so they alone cannot keep the promise.
   */
  readonly headerTimeoutMs: number
  private readonly state: UpstreamState
  private readonly transport: Transport
  private readonly auth: TokenExchange
  private readonly readiness: ReadinessPing
  /** Whether the upstream is on a loopback or private address, once resolved (redirects.ts). */
  private localOrigin: Promise<boolean> | undefined
  private knownLocal = false

  constructor(opts: UpstreamOptions) {
    this.origin = new URL(opts.url)
    this.host = opts.host
    this.registry = opts.registry ?? registryKeyOf(this.origin)
    this.namePrefix = opts.prefixedNames ? namePrefixOf(opts.host) : ''
    this.libraryPrefix = opts.libraryPrefix
    this.headerTimeoutMs = opts.headerTimeoutMs
    this.fetchLimit = pLimit(opts.maxConcurrentFetches)
    const { log, metrics } = opts
    this.state = new UpstreamState({
      rateLimitReserve: opts.rateLimitReserve,
      offline: opts.offline,
      log,
      metrics,
      host: opts.host,
    })
    this.transport = new Transport({
      host: opts.host,
      allowLocalRedirects: () => this.knownLocal,
      connectTimeoutMs: opts.connectTimeoutMs,
      headerTimeoutMs: opts.headerTimeoutMs,
      idleTimeoutMs: opts.idleTimeoutMs,
      connections: opts.connections,
      state: this.state,
      metrics,
      via: opts.via,
    })
    this.auth = new TokenExchange({
      origin: this.origin,
      credentials: opts.credentials,
      headerTimeoutMs: opts.headerTimeoutMs,
      transport: this.transport,
      state: this.state,
      log,
      metrics,
      host: opts.host,
    })
    this.readiness = new ReadinessPing(this.origin, this.transport, this.state)
  }

  /** Whether requests carry the configured account's authority (see mirror/visibility.ts). */
  get hasCredentials(): boolean {
    return this.auth.hasCredentials
  }

  /** New credentials (e.g. on reload) make every cached token stale. */
  setCredentials(credentials: Credentials | null): void {
    this.auth.setCredentials(credentials)
  }

  // --- upstream's condition, as state.ts keeps it -------------------------------------------

  /** The pull budget upstream last reported, if it did. */
  get rateLimit(): RateLimit | undefined {
    return this.state.rateLimit
  }

  /** Pulls left (ratelimit-remaining) under which the budget counts as low. */
  get rateLimitReserve(): number {
    return this.state.rateLimitReserve
  }

  set rateLimitReserve(value: number) {
    this.state.rateLimitReserve = value
  }

  /** Never contact upstream: every request fails at once with kind OFFLINE. */
  get offline(): boolean {
    return this.state.offline
  }

  set offline(value: boolean) {
    this.state.offline = value
  }

  /** True for a few seconds after upstream failed to answer (see UpstreamState.isUnwell). */
  isUnwell(now = Date.now()): boolean {
    return this.state.isUnwell(now)
  }

  /** True while upstream's pull budget is under the reserve (see UpstreamState.pullBudgetLow). */
  pullBudgetLow(now = Date.now()): boolean {
    return this.state.pullBudgetLow(now)
  }

  /** The last failures upstream, newest first. */
  recentErrors(): UpstreamErrorNote[] {
    return this.state.recentErrors()
  }

  /** Whether upstream can be reached, from the last answer and the last failure. */
  reachability(now = Date.now()): Reachability {
    return this.state.reachability(now)
  }

  /** Ends every upstream connection, including requests still waiting on a slow upstream. */
  async close(): Promise<void> {
    await this.transport.close()
  }

  /**
   * GET /v2/ without credentials: whether upstream answers, for the readiness check. The answer
   * is shared and reused for a few seconds (see ping.ts). Never throws.
   */
  ping(now = Date.now()): Promise<PingResult> {
    return this.readiness.ping(now)
  }

  // --- the registry API --------------------------------------------------------------------

  /** A manifest request answered 200 (any other answer is thrown), its rate-limit headers read. */
  private async manifestRequest(
    method: 'GET' | 'HEAD',
    repo: string,
    reference: string,
    signal: AbortSignal | undefined,
  ): Promise<Response> {
    const remote = this.remote(repo)
    const res = await this.auth.send(
      'manifest',
      remote,
      method,
      `/v2/${remote}/manifests/${reference}`,
      { accept: MANIFEST_TYPES.join(', ') },
      signal,
    )
    this.state.noteRateLimit(res.headers)
    if (res.statusCode !== 200) throw await this.failure(res, `${method} manifest ${repo}:${reference}`, repo)
    return res
  }

  /** HEAD a manifest: free on Docker Hub (it does not count against the pull limit). */
  async headManifest(repo: string, reference: string, signal?: AbortSignal): Promise<ManifestHead> {
    const res = await this.manifestRequest('HEAD', repo, reference, signal)
    await res.body.dump()
    return manifestHeadOf(res.headers)
  }

  /** GET a manifest's exact bytes. On Docker Hub this is the request that counts as a pull. */
  async getManifest(repo: string, reference: string, signal?: AbortSignal): Promise<ManifestBody> {
    const res = await this.manifestRequest('GET', repo, reference, signal)
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES)
    if (bytes === undefined)
      throw new UpstreamError('INVALID', `manifest ${repo}:${reference} is larger than 4 MiB`)
    return manifestBodyOf(res.headers, bytes)
  }

  async headBlob(repo: string, digest: string, signal?: AbortSignal): Promise<{ size: number }> {
    const remote = this.remote(repo)
    const res = await this.auth.send('blob', remote, 'HEAD', `/v2/${remote}/blobs/${digest}`, {}, signal)
    // Some registries redirect HEAD to storage too; the size is what we need, so follow.
    const final = await this.followRedirects(repo, res, 'HEAD', signal)
    if (final.statusCode !== 200) throw await this.failure(final, `HEAD blob ${digest}`, repo)
    await final.body.dump()
    const size = Number(header(final.headers, 'content-length'))
    if (!Number.isSafeInteger(size) || size < 0)
      throw new UpstreamError('SERVER', `HEAD blob ${digest}: no Content-Length`)
    return { size }
  }

  /** GET a blob, following the redirect to a CDN without our token. The body is the caller's. */
  async getBlob(repo: string, digest: string, signal?: AbortSignal): Promise<BlobBody> {
    const remote = this.remote(repo)
    const res = await this.auth.send('blob', remote, 'GET', `/v2/${remote}/blobs/${digest}`, {}, signal)
    const final = await this.followRedirects(repo, res, 'GET', signal)
    if (final.statusCode !== 200) throw await this.failure(final, `GET blob ${digest}`, repo)
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
    const remote = this.remote(repo)
    const res = await this.auth.send(
      'tags',
      remote,
      'GET',
      `/v2/${remote}/tags/list${query ? `?${query}` : ''}`,
      { accept: 'application/json' },
      signal,
    )
    if (res.statusCode !== 200) throw await this.failure(res, `GET tags ${repo}`, repo)
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES)
    if (bytes === undefined) throw new UpstreamError('INVALID', `tag list of ${repo} is larger than 4 MiB`)
    return { bytes, link: header(res.headers, 'link') }
  }

  /** The referrers API's pages for a digest, or undefined without the API (referrers-api.ts). */
  getReferrers(repo: string, digest: string, signal?: AbortSignal): Promise<Buffer[] | undefined> {
    const remote = this.remote(repo)
    return fetchReferrers(remote, digest, {
      origin: this.origin,
      send: (path) =>
        this.auth.send('manifest', remote, 'GET', path, { accept: MEDIA_TYPES.ociIndex }, signal),
      failure: (res, what) => this.failure(res, what, repo),
    })
  }

  // --- what anonymous pulls may read (anonymous-access.ts) ------------------------------------

  /** Whether an anonymous pull may read the repository. Throws UpstreamError without an answer. */
  anonymousAccess(repo: string): Promise<'public' | 'private'> {
    return anonymousAccess(this.auth, this.remote(repo), (res, what) => this.failure(res, what, repo))
  }

  /** Whether an anonymous pull finds this digest in this repository (never counted as a pull). */
  anonymousHas(repo: string, digest: string, kind: 'blob' | 'manifest'): Promise<boolean> {
    return anonymousHas(this.auth, this.remote(repo), digest, kind, (res, what) =>
      this.failure(res, what, repo),
    )
  }

  /** Follows a blob redirect, only where redirects.ts allows, without our credentials. */
  private followRedirects(
    repo: string,
    first: Response,
    method: 'GET' | 'HEAD',
    signal?: AbortSignal,
  ): Promise<Response> {
    return followRedirects(first, {
      origin: this.origin,
      localUpstream: () => {
        // Resolved once; a name that cannot be resolved now counts as public and is asked again.
        this.localOrigin ??= isLocalOrigin(this.origin).then((local) => {
          if (local === undefined) this.localOrigin = undefined
          this.knownLocal = local ?? false
          return this.knownLocal
        })
        return this.localOrigin
      },
      toOrigin: (path) => this.auth.send('blob', this.remote(repo), method, path, {}, signal),
      elsewhere: (url) => this.transport.request('cdn', method, url, {}, signal),
    })
  }

  /** The name upstream knows a repository by: the index's name without this upstream's prefix. */
  private remote(repo: string): string {
    return repo.startsWith(this.namePrefix) ? repo.slice(this.namePrefix.length) : repo
  }

  /** Turns a non-success response into an UpstreamError, reading upstream's message. */
  private async failure(res: Response, what: string, repo?: string): Promise<UpstreamError> {
    const bytes = await readLimited(res, MAX_ERROR_BODY).catch(() => undefined)
    const detail = bytes ? upstreamMessage(bytes) : undefined
    const message = `${what}: upstream answered ${res.statusCode}${detail ? ` (${detail})` : ''}`
    const kind = kindOfStatus(res.statusCode)
    const retryAfter = header(res.headers, 'retry-after')
    this.state.markUnwell(kind, retryAfter, res.statusCode, message, undefined, repo)
    return new UpstreamError(kind, message, { status: res.statusCode, retryAfter })
  }
}
