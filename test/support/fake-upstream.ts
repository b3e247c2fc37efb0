// A fake Docker Hub for pullcache's integration tests: a registry, its token service and the CDN its
// blob GETs redirect to, each on its own 127.0.0.1 port, so that tests can see which host received
// which credentials. Unlike a real registry it counts every request and fails on demand (see
// fake-upstream-faults.ts), which is what lets a test say "ten concurrent pulls cause one GET" or
// "a cut stream is not committed".
//
//   client ── GET /v2/<name>/...                  ─▶ registry  401 Bearer realm="<auth>/token",...
//          ── GET /token?service&scope            ─▶ auth      {"token",...} (Basic checked only here)
//          ── GET /v2/<name>/blobs/<d> + Bearer   ─▶ registry  307 Location: <cdn>/blobs/<d>?sig=...
//          ── GET /blobs/<d>?sig=..., no Authorization ─▶ cdn  200/206 bytes
import { createHash, createHmac, randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import {
  type AddedImage,
  ContentStore,
  DIGEST_RE,
  MEDIA_TYPES,
  NAME_RE,
  TAG_RE,
} from './fake-upstream-content.js'
import {
  type BodyFault,
  type Fault,
  type FaultMatch,
  FaultTable,
  type Host,
  pathMatches,
  TimerSet,
  writeReply,
} from './fake-upstream-faults.js'
import { bytesReply, codeForStatus, empty, json, ociError, type Reply, text } from './fake-upstream-http.js'
import {
  parseBasic,
  pullableRepos,
  redactAuthorization,
  type TokenFormat,
  TokenStore,
} from './fake-upstream-tokens.js'

export type { AddedImage } from './fake-upstream-content.js'
export type { Fault, FaultMatch, Host } from './fake-upstream-faults.js'
export { sha256 } from './sha256.js'

export interface RecordedRequest {
  method: string
  // Percent-decoded pathname, without the query.
  path: string
  // Raw query string without the leading '?', '' when there is none.
  query: string
  // Verbatim, except Basic credentials, recorded as `Basic <user>`.
  authorization: string | undefined
  range: string | undefined
  accept: string | undefined
  // The Via chain a mirror sends (src/via.ts).
  via: string | undefined
  host: Host
}

export interface RateLimit {
  limit: number
  remaining: number
  window: number
}

export interface FakeUpstreamOptions {
  // 'basic': every registry request needs one of `users` by HTTP Basic (no token service).
  auth?: 'none' | 'bearer' | 'basic'
  users?: Record<string, string>
  tokenTtlSeconds?: number
  redirectBlobs?: boolean
  rateLimit?: RateLimit
  // How long a CDN URL from a 307 stays valid (Hub's expire after about an hour). Default 1200.
  cdnUrlTtlSeconds?: number
  // 'opaque' (default) or 'jwt' tokens with Hub's `access` claim; see fake-upstream-tokens.ts.
  tokenFormat?: TokenFormat
  // Repositories only a user of `users` may pull from the start (setPrivate changes it later).
  privateRepos?: string[]
  // Whether /v2/<name>/referrers/<digest> (OCI distribution 1.1) is served; without it the route is
  // distribution 2.8's plain 404 and clients fall back to the referrers tag schema. Default off.
  referrersApi?: boolean
}

export interface FakeUpstream {
  url: string
  authUrl: string
  cdnUrl: string
  addBlob(repo: string, bytes: Uint8Array, mediaType?: string): string
  addManifest(repo: string, bytes: Uint8Array, mediaType: string, tag?: string): string
  setTag(repo: string, tag: string, digest: string): void
  deleteTag(repo: string, tag: string): void
  // A private repository: tokens grant pull of it only to a signed-in user (any of `users`), as Hub
  // does for an account's private repositories; anonymous tokens grant nothing for it.
  setPrivate(repo: string, isPrivate?: boolean): void
  // Switches the referrers API on or off (see FakeUpstreamOptions.referrersApi).
  setReferrersApi(on: boolean): void
  addImage(repo: string, tag: string, opts?: { layers?: number; layerBytes?: number }): AddedImage
  fault(match: FaultMatch, fault: Fault, times?: number): void
  clearFaults(): void
  expireTokens(): void
  setRateLimit(rateLimit: RateLimit | undefined): void
  requests: RecordedRequest[]
  count(method: string, path: string | RegExp, host?: Host): number
  reset(): void
  cdnAuthorizationLeaks: number
  close(): Promise<void>
}

const SERVICE = 'fake-registry'
const API_VERSION = { 'docker-distribution-api-version': 'registry/2.0' }

function decodePath(pathname: string): string {
  try {
    return decodeURIComponent(pathname)
  } catch {
    return pathname
  }
}

// distribution's Accept handling (registry/handlers/manifests.go): OCI manifests and indexes are only
// served to clients that name their media type; `*/*` does not count. Docker types are always served.
function acceptable(mediaType: string, accept: string | undefined): boolean {
  if (mediaType !== MEDIA_TYPES.ociManifest && mediaType !== MEDIA_TYPES.ociIndex) return true
  const accepted = (accept ?? '').split(',').map((a) => a.split(';')[0]?.trim())
  return accepted.includes(mediaType)
}

class FakeUpstreamServer implements FakeUpstream {
  readonly requests: RecordedRequest[] = []
  readonly #opts: FakeUpstreamOptions
  readonly #store = new ContentStore()
  readonly #tokens = new TokenStore()
  readonly #faults = new FaultTable()
  readonly #timers = new TimerSet()
  readonly #sockets = new Set<Socket>()
  readonly #secret = randomBytes(32)
  readonly #private = new Set<string>()
  readonly #servers: Record<Host, Server>
  readonly #urls: Record<Host, string> = { registry: '', cdn: '', auth: '' }
  #rateLimit: RateLimit | undefined
  #referrersApi: boolean
  #leaks = 0
  #closing: Promise<void> | undefined

  constructor(opts: FakeUpstreamOptions) {
    this.#opts = opts
    this.#rateLimit = opts.rateLimit === undefined ? undefined : { ...opts.rateLimit }
    this.#referrersApi = opts.referrersApi ?? false
    for (const repo of opts.privateRepos ?? []) this.#private.add(repo)
    const make = (host: Host) => {
      const server = createServer((req, res) => this.#handle(host, req, res))
      // Tracked by hand: close() must also end hung, stalled and keep-alive connections.
      server.on('connection', (socket) => {
        this.#sockets.add(socket)
        socket.on('close', () => this.#sockets.delete(socket))
      })
      return server
    }
    this.#servers = { registry: make('registry'), cdn: make('cdn'), auth: make('auth') }
  }

  get url(): string {
    return this.#urls.registry
  }

  get authUrl(): string {
    return this.#urls.auth
  }

  get cdnUrl(): string {
    return this.#urls.cdn
  }

  get cdnAuthorizationLeaks(): number {
    return this.#leaks
  }

  async listen(): Promise<void> {
    for (const host of ['registry', 'cdn', 'auth'] as const) {
      const server = this.#servers[host]
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, '127.0.0.1', () => {
          server.off('error', reject)
          resolve()
        })
      })
      this.#urls[host] = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    }
  }

  addBlob(repo: string, bytes: Uint8Array, mediaType?: string): string {
    return this.#store.addBlob(repo, bytes, mediaType)
  }

  addManifest(repo: string, bytes: Uint8Array, mediaType: string, tag?: string): string {
    return this.#store.addManifest(repo, bytes, mediaType, tag)
  }

  setTag(repo: string, tag: string, digest: string): void {
    this.#store.setTag(repo, tag, digest)
  }

  deleteTag(repo: string, tag: string): void {
    this.#store.deleteTag(repo, tag)
  }

  setReferrersApi(on: boolean): void {
    this.#referrersApi = on
  }

  setPrivate(repo: string, isPrivate = true): void {
    if (isPrivate) this.#private.add(repo)
    else this.#private.delete(repo)
  }

  addImage(repo: string, tag: string, opts?: { layers?: number; layerBytes?: number }): AddedImage {
    return this.#store.addImage(repo, tag, opts)
  }

  fault(match: FaultMatch, fault: Fault, times?: number): void {
    this.#faults.add(match, fault, times)
  }

  clearFaults(): void {
    this.#faults.clear()
  }

  expireTokens(): void {
    this.#tokens.expireAll()
  }

  setRateLimit(rateLimit: RateLimit | undefined): void {
    this.#rateLimit = rateLimit === undefined ? undefined : { ...rateLimit }
  }

  count(method: string, path: string | RegExp, host: Host = 'registry'): number {
    const m = method.toUpperCase()
    return this.requests.filter((r) => r.host === host && r.method === m && pathMatches(path, r.path)).length
  }

  // In place, so a test holding `up.requests` keeps seeing the live list. The leak counter is not
  // reset: a credential that reached the CDN stays a violation whatever phase the test is in.
  reset(): void {
    this.requests.length = 0
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#timers.clear()
      const closed = Object.values(this.#servers).map(
        (server) => new Promise<void>((resolve) => server.close(() => resolve())),
      )
      for (const socket of this.#sockets) socket.destroy()
      await Promise.all(closed)
    })()
    return this.#closing
  }

  #handle(host: Host, req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://fake')
    const method = (req.method ?? 'GET').toUpperCase()
    const path = decodePath(url.pathname)
    const authorization = req.headers.authorization
    this.requests.push({
      method,
      path,
      query: url.search.slice(1),
      authorization: redactAuthorization(authorization),
      range: req.headers.range,
      accept: req.headers.accept,
      via: req.headers.via,
      host,
    })
    if (host === 'cdn' && authorization !== undefined) this.#leaks += 1

    const early = this.#faults.takeEarly(host, method, path)
    if (early?.kind === 'hang') return
    if (early?.kind === 'reset') {
      req.socket.destroy()
      return
    }
    if (early?.kind === 'delay') {
      this.#timers.after(early.ms, () => this.#answer(host, method, path, url, req, res, undefined))
      return
    }
    this.#answer(host, method, path, url, req, res, early)
  }

  #answer(
    host: Host,
    method: string,
    path: string,
    url: URL,
    req: IncomingMessage,
    res: ServerResponse,
    early: Extract<Fault, { kind: 'status' }> | undefined,
  ): void {
    if (res.destroyed) return
    const authorization = req.headers.authorization
    const head = method === 'HEAD'
    let reply: Reply
    if (early?.kind === 'status') {
      reply = this.#statusFault(host, path, early)
    } else if (host === 'registry') {
      reply = this.#registry(method, path, url.searchParams, req)
    } else if (host === 'cdn') {
      reply = this.#cdn(method, path, url.searchParams, req.headers.range)
    } else {
      reply = this.#auth(method, path, url.searchParams, authorization)
    }
    if (host === 'registry') reply.headers = { ...API_VERSION, ...reply.headers }

    let bodyFault: BodyFault | undefined
    if (early === undefined && !head && (reply.status === 200 || reply.status === 206)) {
      bodyFault = this.#faults.takeBody(host, method, path)
    }
    writeReply(res, reply, head, bodyFault, this.#timers)
  }

  #statusFault(host: Host, path: string, f: Extract<Fault, { kind: 'status' }>): Reply {
    const headers: Record<string, string> = {}
    for (const [k, v] of Object.entries(f.headers ?? {})) headers[k.toLowerCase()] = v
    if (f.body !== undefined) {
      const type = f.body.trimStart().startsWith('{') ? 'application/json' : 'text/plain; charset=utf-8'
      return {
        status: f.status,
        headers: { 'content-type': type, ...headers },
        body: new TextEncoder().encode(f.body),
      }
    }
    if (f.status < 400) return empty(f.status, headers)
    // A CDN or a load balancer in front of Hub does not speak OCI errors; the registry does.
    if (host === 'registry') return ociError(f.status, codeForStatus(f.status, path), null, headers)
    return text(f.status, `${f.status}\n`, headers)
  }

  // ---- registry -------------------------------------------------------------------------------

  #registry(method: string, path: string, params: URLSearchParams, req: IncomingMessage): Reply {
    const readOnly = method === 'GET' || method === 'HEAD'
    if (path === '/v2/' || path === '/v2') {
      if (!readOnly) return ociError(405, 'UNSUPPORTED')
      return this.#authorize(req.headers.authorization, undefined) ?? json(200, {})
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\/(.+)$/.exec(path)
    if (m === null || (m[2] === 'referrers' && !this.#referrersApi)) return text(404, '404 page not found\n')
    const [, name = '', kind, rest = ''] = m
    // The fake is a read-only upstream: uploads, pushes and deletes are refused as distribution does.
    if (!readOnly || (kind === 'blobs' && rest.startsWith('uploads'))) return ociError(405, 'UNSUPPORTED')
    if (kind === 'tags' && rest !== 'list') return text(404, '404 page not found\n')
    if (!NAME_RE.test(name)) return ociError(400, 'NAME_INVALID', { name })
    const denied = this.#authorize(req.headers.authorization, name)
    if (denied !== undefined) return denied
    const repo = this.#store.repo(name)
    if (repo === undefined) return ociError(404, 'NAME_UNKNOWN', { name })

    if (kind === 'tags') return this.#tagsList(name, [...repo.tags.keys()], params)
    if (kind === 'referrers') {
      if (method !== 'GET') return ociError(405, 'UNSUPPORTED')
      if (!DIGEST_RE.test(rest)) return ociError(400, 'DIGEST_INVALID', { digest: rest })
      return this.#referrers(name, rest)
    }
    if (kind === 'manifests') {
      const isDigest = DIGEST_RE.test(rest)
      if (!isDigest && !TAG_RE.test(rest)) return ociError(400, 'TAG_INVALID', { tag: rest })
      return this.#manifest(method, name, rest, isDigest, req.headers.accept)
    }
    if (!DIGEST_RE.test(rest)) return ociError(400, 'DIGEST_INVALID', { digest: rest })
    const mediaType = repo.blobs.get(rest)
    const bytes = this.#store.blob(rest)
    if (mediaType === undefined || bytes === undefined) return ociError(404, 'BLOB_UNKNOWN', { digest: rest })
    const headers = { 'content-type': mediaType, 'docker-content-digest': rest, etag: `"${rest}"` }
    // HEAD is answered by the registry itself, as Hub does; only GET goes to the CDN.
    if (method === 'HEAD')
      return { status: 200, headers: { ...headers, 'accept-ranges': 'bytes' }, body: bytes }
    if (this.#opts.redirectBlobs ?? true) {
      return empty(307, { 'content-type': MEDIA_TYPES.octetStream, location: this.#signedCdnUrl(rest) })
    }
    return bytesReply(bytes, req.headers.range, headers)
  }

  // undefined when the request may go on; otherwise the 401 to answer with. The challenge follows
  // Hub: no scope on /v2/, the repository pull scope elsewhere, and RFC 6750's error once a token
  // was presented and refused.
  #authorize(header: string | undefined, repo: string | undefined): Reply | undefined {
    if ((this.#opts.auth ?? 'bearer') === 'none') return undefined
    if (this.#opts.auth === 'basic') {
      const basic = header === undefined ? undefined : parseBasic(header)
      const users = this.#opts.users ?? {}
      if (basic !== undefined && Object.hasOwn(users, basic.user) && users[basic.user] === basic.password) {
        return undefined
      }
      return ociError(401, 'UNAUTHORIZED', null, { 'www-authenticate': 'Basic realm="fake-registry"' })
    }
    const token = /^bearer\s+(\S+)$/i.exec(header?.trim() ?? '')?.[1]
    const result = token === undefined ? 'missing' : this.#tokens.check(token, repo)
    if (result === 'ok') return undefined
    let challenge = `Bearer realm="${this.#urls.auth}/token",service="${SERVICE}"`
    if (repo !== undefined) challenge += `,scope="repository:${repo}:pull"`
    if (result !== 'missing') challenge += `,error="${result}"`
    const detail = repo === undefined ? null : [{ Type: 'repository', Name: repo, Action: 'pull' }]
    return ociError(401, 'UNAUTHORIZED', detail, { 'www-authenticate': challenge })
  }

  #manifest(method: string, name: string, ref: string, isDigest: boolean, accept: string | undefined): Reply {
    const repo = this.#store.repo(name)
    const rl = this.#rateLimit
    const rlHeaders: Record<string, string> =
      rl === undefined
        ? {}
        : {
            'ratelimit-limit': `${rl.limit};w=${rl.window}`,
            'ratelimit-remaining': `${rl.remaining};w=${rl.window}`,
            'docker-ratelimit-source': '127.0.0.1',
          }
    // Only GET is a "pull"; HEAD is the free version check and is never refused for the limit.
    if (method === 'GET' && rl !== undefined && rl.remaining <= 0) {
      return ociError(429, 'TOOMANYREQUESTS', null, { ...rlHeaders, 'retry-after': String(rl.window) })
    }
    const digest = isDigest ? ref : repo?.tags.get(ref)
    const stored = digest === undefined ? undefined : repo?.manifests.get(digest)
    if (stored === undefined) return ociError(404, 'MANIFEST_UNKNOWN', { [isDigest ? 'digest' : 'tag']: ref })
    if (!acceptable(stored.mediaType, accept)) {
      return ociError(404, 'MANIFEST_UNKNOWN', { reason: `${stored.mediaType} not in Accept` }, rlHeaders)
    }
    if (method === 'GET' && rl !== undefined) {
      rl.remaining -= 1
      rlHeaders['ratelimit-remaining'] = `${rl.remaining};w=${rl.window}`
    }
    return {
      status: 200,
      headers: {
        'content-type': stored.mediaType,
        'docker-content-digest': stored.digest,
        etag: `"${stored.digest}"`,
        ...rlHeaders,
      },
      body: stored.bytes,
    }
  }

  // The OCI referrers API: every manifest of the repository whose subject is the digest, with the
  // artifactType the spec derives (the manifest's own, else its config's media type). No filtering.
  #referrers(name: string, digest: string): Reply {
    const manifests: Record<string, unknown>[] = []
    for (const stored of this.#store.repo(name)?.manifests.values() ?? []) {
      let body: {
        subject?: { digest?: string }
        artifactType?: string
        config?: { mediaType?: string }
        annotations?: Record<string, string>
      }
      try {
        body = JSON.parse(new TextDecoder().decode(stored.bytes))
      } catch {
        continue
      }
      if (body.subject?.digest !== digest) continue
      manifests.push({
        mediaType: stored.mediaType,
        digest: stored.digest,
        size: stored.bytes.length,
        artifactType: body.artifactType ?? body.config?.mediaType,
        ...(body.annotations === undefined ? {} : { annotations: body.annotations }),
      })
    }
    const bytes = new TextEncoder().encode(
      JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests }),
    )
    return { status: 200, headers: { 'content-type': MEDIA_TYPES.ociIndex }, body: bytes }
  }

  // distribution's paging: lexical order, `last` exclusive, `n` a page size, and a Link to the next
  // page only when one exists. n=0 is an empty page without a Link (OCI spec).
  #tagsList(name: string, tags: string[], params: URLSearchParams): Reply {
    const nParam = params.get('n')
    if (nParam !== null && !/^\d+$/.test(nParam))
      return ociError(400, 'PAGINATION_NUMBER_INVALID', { n: nParam })
    const last = params.get('last')
    const after = tags.sort().filter((t) => last === null || t > last)
    const n = nParam === null ? after.length : Number(nParam)
    const page = after.slice(0, n)
    const headers: Record<string, string> = {}
    const lastOnPage = page[page.length - 1]
    if (page.length < after.length && lastOnPage !== undefined) {
      headers.link = `</v2/${name}/tags/list?last=${encodeURIComponent(lastOnPage)}&n=${n}>; rel="next"`
    }
    return json(200, { name, tags: page }, headers)
  }

  // ---- CDN --------------------------------------------------------------------------------------

  // Like Hub's `verify=<expiry>-<signature>`: the URL alone grants access, which is exactly why a
  // client must not add its registry token when it follows it.
  #signedCdnUrl(digest: string): string {
    const expires = Math.floor(Date.now() / 1000) + (this.#opts.cdnUrlTtlSeconds ?? 1200)
    return `${this.#urls.cdn}/blobs/${digest}?sig=${expires}-${this.#sign(digest, expires)}`
  }

  #sign(digest: string, expires: number): string {
    return createHmac('sha256', this.#secret).update(`${digest}\n${expires}`).digest('base64url')
  }

  #cdn(method: string, path: string, params: URLSearchParams, range: string | undefined): Reply {
    const headers = { server: 'fake-cdn' }
    const m = /^\/blobs\/([^/]+)$/.exec(path)
    if (m?.[1] === undefined) return text(404, 'Not Found\n', headers)
    const digest = m[1]
    if (method !== 'GET' && method !== 'HEAD') return text(405, 'Method Not Allowed\n', headers)
    // The signature is base64url, which may itself contain '-': split at the first one only.
    const param = params.get('sig') ?? ''
    const dash = param.indexOf('-')
    const expires = dash < 0 ? '' : param.slice(0, dash)
    const sig = param.slice(dash + 1)
    const exp = Number(expires)
    if (!/^\d+$/.test(expires) || sig !== this.#sign(digest, exp) || exp * 1000 < Date.now()) {
      return text(403, 'Forbidden: missing, wrong or expired signature\n', headers)
    }
    const bytes = this.#store.blob(digest)
    if (bytes === undefined) return text(404, 'Not Found\n', headers)
    // An MD5 Etag, as Hub's CDN sends: a client that takes it for the digest is wrong.
    return bytesReply(bytes, range, {
      ...headers,
      'content-type': MEDIA_TYPES.octetStream,
      etag: `"${createHash('md5').update(bytes).digest('hex')}"`,
      vary: 'Accept-Encoding',
    })
  }

  // ---- token service ----------------------------------------------------------------------------

  #auth(method: string, path: string, params: URLSearchParams, authorization: string | undefined): Reply {
    if (path !== '/token') return text(404, '404 page not found\n')
    // Only the GET flow: containerd falls back to it when the OAuth POST is refused.
    if (method !== 'GET') return json(405, { details: 'method not allowed' }, { allow: 'GET' })
    // A token for another service is useless to the registry; refusing it catches a client that
    // ignores the challenge's service parameter.
    if (params.get('service') !== SERVICE) return json(400, { details: `service must be ${SERVICE}` })
    let subject = ''
    if (authorization !== undefined) {
      const basic = parseBasic(authorization)
      const users = this.#opts.users ?? {}
      if (basic === undefined || !Object.hasOwn(users, basic.user) || users[basic.user] !== basic.password) {
        return json(401, { details: 'incorrect username or password' })
      }
      subject = basic.user
    }
    const ttl = this.#opts.tokenTtlSeconds ?? 300
    const asked = [...pullableRepos(params.getAll('scope'))]
    // Hub answers an anonymous request for a private repository with a token granting nothing.
    const granted = new Set(asked.filter((repo) => subject !== '' || !this.#private.has(repo)))
    const format = this.#opts.tokenFormat ?? 'opaque'
    const { token, issuedAt } = this.#tokens.issue(granted, ttl, format, asked, subject)
    return json(
      200,
      { token, access_token: token, expires_in: ttl, issued_at: issuedAt.toISOString() },
      { 'content-type': 'application/json; charset=utf-8' },
    )
  }
}

export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const up = new FakeUpstreamServer(opts)
  try {
    await up.listen()
  } catch (err) {
    await up.close()
    throw err
  }
  return up
}
