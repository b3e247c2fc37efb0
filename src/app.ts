// HTTP routes of the registry read API, and the one place errors are rendered. No I/O happens
// at import; createApp gets everything it uses. Manifests and small answers go through Hono;
// blob bodies are written straight to Node's response (c.env.outgoing), the one path where the
// cost of converting to web streams shows in throughput (shared/reference/performance.md).

import type { ServerResponse } from 'node:http'
import type { HttpBindings } from '@hono/node-server'
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response'
import { type Context, Hono } from 'hono'
import { RegistryError } from './errors.js'
import { ADMIN_PREFIX, type AdminDeps, adminRoutes } from './http/admin.js'
import { healthRoutes } from './http/health.js'
import {
  type ByteRange,
  parseDigest,
  parseName,
  parseRange,
  parseReference,
  type Reference,
  type RepoName,
} from './http/reference.js'
import { sendBytes } from './http/send-bytes.js'
import { statusPageRoutes } from './http/status-page.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import type { Fill } from './mirror/blob-fill.js'
import { acceptedTypes } from './mirror/manifest.js'
import type { BlobAnswer, Mirror } from './mirror/mirror.js'

export const CACHE_HEADER = 'X-Pullcache-Cache'

/** What the access log needs to know about a response that Hono did not write itself. */
export interface ResponseNote {
  cache?: string
  bytes?: () => number
}
export const responseNotes = new WeakMap<ServerResponse, ResponseNote>()

export interface AppDeps {
  mirror: Mirror
  log: Logger
  metrics: Metrics
  /** What the /_pullcache/ routes read: the index and the config. */
  admin: AdminDeps
}

type Env = { Bindings: HttpBindings }

/** Manifests, blobs and tags/list: the last path segments after the repository name. */
const ROUTE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$|^\/v2\/(.+)\/tags\/list$/

export function createApp({ mirror, log, metrics, admin }: AppDeps): Hono<Env> {
  const app = new Hono<Env>()
  const libraryPrefix = mirror.upstream.libraryPrefix

  app.get('/metrics', async () => {
    const body = await metrics.registry.metrics()
    return new Response(body, { headers: { 'Content-Type': metrics.registry.contentType } })
  })

  app.route(ADMIN_PREFIX, adminRoutes(mirror, admin))
  app.route(ADMIN_PREFIX, healthRoutes(mirror, admin))
  app.route('/', statusPageRoutes(mirror, admin))

  app.on(['GET', 'HEAD'], ['/v2', '/v2/'], (c) => c.json({}))

  app.all('/v2/*', async (c) => {
    // The raw path: percent-escapes stay escaped, so they fail the name grammar instead of
    // turning into '/' or '..' after we looked.
    const path = rawPath(c.req.url)
    const method = c.req.method
    if (method !== 'GET' && method !== 'HEAD') {
      // Push, delete and uploads: a mirror never forwards them, whatever the path.
      throw new RegistryError(
        'UNSUPPORTED',
        { method, reason: 'pullcache is a read-only mirror' },
        { headers: { Allow: 'GET, HEAD' } },
      )
    }
    const m = ROUTE.exec(path)
    if (!m) throw new RegistryError('UNSUPPORTED', { path }, { status: 404, message: 'no such endpoint' })
    // containerd names the registry it means in ?ns=. Answering for another registry would
    // serve Docker Hub's image of the same name; a 404 sends containerd to its next host.
    const ns = new URL(c.req.url).searchParams.get('ns')
    if (ns !== null && !servesNamespace(ns, mirror)) {
      throw new RegistryError('NAME_UNKNOWN', {
        ns,
        reason: `pullcache mirrors ${mirror.upstream.libraryPrefix ? 'docker.io' : mirror.registry} only`,
      })
    }
    if (m[4] !== undefined) {
      return tagList(c, mirror, parseName(m[4], libraryPrefix), method)
    }
    const name = parseName(m[1]!, libraryPrefix)
    if (m[2] === 'manifests') return manifest(c, mirror, name, m[3]!, method)
    return blob(c, mirror, name, m[3]!, method)
  })

  app.notFound((c) => {
    const err = new RegistryError(
      'UNSUPPORTED',
      { path: rawPath(c.req.url) },
      { status: 404, message: 'no such endpoint' },
    )
    return render(c, err)
  })

  app.onError((err, c) => {
    if (err instanceof RegistryError) return render(c, err)
    log.error('request.failed', { method: c.req.method, path: rawPath(c.req.url), error: err })
    return render(c, new RegistryError('UNKNOWN', null, { message: 'internal error' }))
  })

  return app
}

const DOCKER_HUB_NAMES = new Set([
  'docker.io',
  'index.docker.io',
  'registry-1.docker.io',
  'registry.hub.docker.com',
])

function servesNamespace(ns: string, mirror: Mirror): boolean {
  const name = ns.toLowerCase()
  const upstream = mirror.upstream.origin
  return (
    name === upstream.host ||
    name === upstream.hostname ||
    // A Docker Hub mirror (library/ names) answers for docker.io whatever host it pulls from.
    (mirror.upstream.libraryPrefix && DOCKER_HUB_NAMES.has(name))
  )
}

function render(c: Context, err: RegistryError): Response {
  const body = err.body()
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    'Content-Length': String(Buffer.byteLength(body)),
    ...err.headers,
  }
  return new Response(c.req.method === 'HEAD' ? null : body, { status: err.status, headers })
}

function rawPath(url: string): string {
  const start = url.indexOf('/', url.indexOf('//') + 2)
  const end = url.indexOf('?', start)
  return url.slice(start, end === -1 ? undefined : end)
}

async function manifest(
  c: Context<Env>,
  mirror: Mirror,
  name: RepoName,
  raw: string,
  method: 'GET' | 'HEAD',
) {
  const ref = parseReference(raw)
  let found: Awaited<ReturnType<Mirror['manifestByDigest']>>
  try {
    found =
      ref.kind === 'digest'
        ? await mirror.manifestByDigest(name, ref.digest, method)
        : await mirror.manifestByTag(name, ref.tag, method, acceptedTypes(c.req.header('accept')))
  } catch (err) {
    mirror.record({ kind: 'manifest', name, method, result: 'error', bytes: 0, ...tagOf(ref) })
    throw err
  }
  const headers: Record<string, string> = {
    'Content-Type': found.mediaType,
    'Content-Length': String(found.size),
    'Docker-Content-Digest': found.digest,
    ETag: `"${found.digest}"`,
    [CACHE_HEADER]: found.cache,
  }
  if (found.cache === 'stale') headers.Warning = '110 pullcache "Response is Stale"'
  const notModified = matchesEtag(c.req.header('if-none-match'), found.digest)
  const sendBody = method === 'GET' && !notModified && found.bytes !== undefined
  mirror.record({
    kind: 'manifest',
    name,
    method,
    result: found.cache,
    bytes: sendBody ? found.size : 0,
    digest: found.digest,
    ...tagOf(ref),
  })
  if (notModified)
    return new Response(null, { status: 304, headers: { ETag: headers.ETag!, [CACHE_HEADER]: found.cache } })
  return new Response(sendBody ? found.bytes! : null, { status: 200, headers })
}

async function tagList(c: Context<Env>, mirror: Mirror, name: RepoName, method: 'GET' | 'HEAD') {
  const url = new URL(c.req.url)
  const n = url.searchParams.get('n')
  if (n !== null && !/^\d{1,9}$/.test(n)) throw new RegistryError('PAGINATION_NUMBER_INVALID', { n })
  const last = url.searchParams.get('last')
  // Only the parameters that change the answer go upstream, in a stable order (also the key
  // under which the answer is kept for when upstream is down).
  const query = new URLSearchParams()
  if (n !== null) query.set('n', n)
  if (last !== null) query.set('last', last)
  let found: Awaited<ReturnType<Mirror['tagList']>>
  try {
    found = await mirror.tagList(name, query.toString())
  } catch (err) {
    mirror.record({ kind: 'tags', name, method, result: 'error', bytes: 0 })
    throw err
  }
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    'Content-Length': String(found.bytes.length),
    [CACHE_HEADER]: found.cache,
  }
  if (found.cache === 'stale') headers.Warning = '110 pullcache "Response is Stale"'
  const next = found.link ? nextLink(found.link, name.client) : undefined
  if (next) headers.Link = next
  mirror.record({
    kind: 'tags',
    name,
    method,
    result: found.cache,
    bytes: method === 'GET' ? found.bytes.length : 0,
  })
  return new Response(method === 'GET' ? found.bytes : null, { status: 200, headers })
}

/** Upstream's Link names upstream's path; the client must get ours, with its own repo name. */
function nextLink(link: string, clientName: string): string | undefined {
  const m = /<([^>]*)>\s*;\s*rel="?next"?/i.exec(link)
  if (!m) return undefined
  const q = m[1]!.indexOf('?')
  if (q === -1) return undefined
  const params = new URLSearchParams(m[1]!.slice(q + 1))
  const out = new URLSearchParams()
  for (const key of ['n', 'last']) {
    const v = params.get(key)
    if (v !== null) out.set(key, v)
  }
  return `</v2/${clientName}/tags/list?${out.toString()}>; rel="next"`
}

function tagOf(ref: Reference): { tag?: string } {
  return ref.kind === 'tag' ? { tag: ref.tag } : {}
}

function matchesEtag(header: string | undefined, digest: string): boolean {
  if (!header) return false
  return header.split(',').some((t) => t.trim().replace(/^W\//, '').replace(/"/g, '') === digest)
}

async function blob(c: Context<Env>, mirror: Mirror, name: RepoName, raw: string, method: 'GET' | 'HEAD') {
  const digest = parseDigest(raw, 'BLOB_UNKNOWN')
  const res = c.env.outgoing
  // The client may leave during any await below. The close listener comes before the first
  // one, so whatever this response has taken (an eviction pin, a file handle) is let go however
  // early the client goes; after each await the response checks whether it is still wanted.
  let answer: BlobAnswer | undefined
  let closed = false
  let streaming = false
  let settled = false
  let sent = () => 0
  const settle = () => {
    if (settled || answer === undefined) return
    settled = true
    if (answer.kind === 'file') {
      // Once streaming, the sender closes the handle when it is done with it.
      if (!streaming) void answer.handle.close().catch(() => {})
      answer.release()
    }
    mirror.record({ kind: 'blob', name, method, result: answer.cache, bytes: sent(), digest })
  }
  res.once('close', () => {
    closed = true
    settle()
  })

  let found: BlobAnswer
  try {
    found = await mirror.blob(name, digest, method)
    if (found.kind === 'fill' && found.fill.size === undefined && !closed) {
      // An upstream that sent no Content-Length: the size is known only once the fill is done.
      // The stored file is opened under a pin, so even a budget smaller than the blob cannot
      // evict it before this response has it.
      found = await mirror.storedWhenDone(found.fill, found.cache)
    }
  } catch (err) {
    mirror.record({ kind: 'blob', name, method, result: 'error', bytes: 0 })
    throw err
  }
  answer = found
  if (closed) {
    settle()
    return RESPONSE_ALREADY_SENT
  }
  const note: ResponseNote = { cache: found.cache }
  responseNotes.set(res, note)
  note.bytes = () => sent()

  const size = found.kind === 'fill' ? found.fill.size! : found.size
  const headers: Record<string, string | number> = {
    'Content-Type': 'application/octet-stream',
    'Docker-Content-Digest': digest,
    ETag: `"${digest}"`,
    'Accept-Ranges': 'bytes',
    // Content-addressed: the bytes behind this URL can never change.
    'Cache-Control': 'max-age=31536000',
    [CACHE_HEADER]: found.cache,
  }
  if (matchesEtag(c.req.header('if-none-match'), digest)) {
    res.writeHead(304, { ETag: headers.ETag!, [CACHE_HEADER]: found.cache })
    res.end()
    return RESPONSE_ALREADY_SENT
  }
  const range: ByteRange | undefined = parseRange(c.req.header('range'), size)
  const start = range?.start ?? 0
  const end = range?.end ?? size - 1
  headers['Content-Length'] = size === 0 ? 0 : end - start + 1
  if (range) headers['Content-Range'] = `bytes ${start}-${end}/${size}`
  res.writeHead(range ? 206 : 200, headers)
  if (method === 'HEAD' || found.kind === 'remote' || size === 0) {
    res.end()
    return RESPONSE_ALREADY_SENT
  }

  streaming = true
  let bytes = 0
  sent = () => bytes
  const count = (n: number) => {
    bytes += n
  }
  if (found.kind === 'file') {
    const handle = found.handle
    void sendBytes(
      res,
      {
        read: async (buffer, length, position) => (await handle.read(buffer, 0, length, position)).bytesRead,
      },
      start,
      end,
      count,
    ).finally(() => handle.close().catch(() => {}))
  } else {
    const fill = found.fill
    const reader = fill.reader(end)
    void sendBytes(
      res,
      { read: reader.read, ready: (position) => written(fill, position) },
      start,
      end,
      count,
    ).finally(reader.release)
  }
  return RESPONSE_ALREADY_SENT
}

/** Resolves once the fill has bytes at `position` on disk, or has ended either way. */
async function written(fill: Fill, position: number): Promise<void> {
  while (fill.state === 'streaming' && fill.written <= position) await fill.changed()
}
