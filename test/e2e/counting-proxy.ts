// A plain reverse proxy in front of the test registry that records every request pullcache makes
// upstream. Bodies are streamed in both directions, never buffered, so a 200 MB blob costs no memory
// here and a client that disconnects is seen by the registry as a disconnect.
//
// The proxy's URL is what pullcache gets as PULLCACHE_UPSTREAM, so "how many upstream blob GETs" is
// a question about `requests` below.
import {
  Agent,
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

export type RequestKind = 'ping' | 'manifest' | 'blob' | 'tags' | 'other'

export type ProxiedRequest = {
  seq: number
  at: number
  method: string
  /** Path without the query string. */
  path: string
  /** Raw query string without '?', '' when absent. */
  query: string
  kind: RequestKind
  /** Repository name for manifest, blob and tags requests, e.g. 'library/small'. */
  repository: string | null
  /** Tag or digest for manifest and blob requests. */
  reference: string | null
  byDigest: boolean
  /** Whether an Authorization header came, and its scheme (lower case) if so. */
  authorization: string | null
  range: string | null
  accept: string[]
  /** Upstream status; null while waiting for it or when the proxy itself answered with an error. */
  status: number | null
  /** Body bytes passed to the client. */
  bytes: number
  completed: boolean
  error: string | null
}

export type RequestFilter = {
  method?: string
  kind?: RequestKind
  byDigest?: boolean
  repository?: string
  reference?: string
  path?: string
  /** An exact status, or 'success' for 2xx/3xx: a download, as opposed to a 401 challenge round trip. */
  status?: number | 'success'
  /** Whether the request carried an Authorization header. */
  authorized?: boolean
}

export type CountingProxy = {
  readonly url: string
  readonly port: number
  readonly requests: ProxiedRequest[]
  reset(): void
  /** Requests matching every given field. */
  filter(filter: RequestFilter): ProxiedRequest[]
  count(filter: RequestFilter): number
  /** One line per request ("GET /v2/...?q auth=bearer -> 200"), for failure messages. */
  describe(filter?: RequestFilter): string
  /** Hold every response body to this many bytes a second from now on (null: full speed). */
  setRate(bytesPerSecond: number | null): void
  /** Answer every request with this status instead of forwarding (null: forward again). */
  failWith(status: number | null): void
  setTarget(origin: string): void
  /** Stop listening and cut open connections, so clients get "connection refused". */
  stop(): Promise<void>
  /** Listen again on the same port. */
  start(): Promise<void>
  close(): Promise<void>
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

/** `target` is the registry origin, e.g. http://127.0.0.1:5000; it may be set later with setTarget. */
export async function startCountingProxy(target: string | null = null): Promise<CountingProxy> {
  const requests: ProxiedRequest[] = []
  let origin = target
  let failStatus: number | null = null
  let rate: number | null = null
  let seq = 0
  let server: Server | undefined
  let port = 0
  const sockets = new Set<Socket>()
  const agent = new Agent({ keepAlive: true, maxSockets: 64 })

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const rawUrl = req.url ?? '/'
    const q = rawUrl.indexOf('?')
    const path = q < 0 ? rawUrl : rawUrl.slice(0, q)
    const query = q < 0 ? '' : rawUrl.slice(q + 1)
    const record: ProxiedRequest = {
      seq: ++seq,
      at: Date.now(),
      method: req.method ?? 'GET',
      path,
      query,
      ...classify(path),
      authorization: req.headers.authorization?.split(' ')[0]?.toLowerCase() ?? null,
      range: headerValue(req.headers.range),
      accept: acceptValues(req.headers),
      status: null,
      bytes: 0,
      completed: false,
      error: null,
    }
    requests.push(record)

    if (failStatus !== null || origin === null) {
      const status = failStatus ?? 502
      record.status = status
      record.completed = true
      res
        .writeHead(status, { 'content-type': 'application/json' })
        .end(
          JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `counting proxy answers ${status}` }] }),
        )
      return
    }

    const headers: IncomingHttpHeaders = {}
    for (const [name, value] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.has(name) && value !== undefined) headers[name] = value
    }
    const to = new URL(rawUrl, origin)
    const upstream = request(to, { method: req.method, headers, agent })
    res.on('close', () => {
      // The client (pullcache) went away early: pass that on instead of finishing the transfer.
      if (!res.writableFinished) {
        record.error ??= 'client closed early'
        upstream.destroy()
      }
    })
    upstream.on('response', (upstreamRes) => {
      record.status = upstreamRes.statusCode ?? 0
      const outHeaders: Record<string, string | string[]> = {}
      for (const [name, value] of Object.entries(upstreamRes.headers)) {
        if (!HOP_BY_HOP.has(name) && value !== undefined) outHeaders[name] = value
      }
      res.writeHead(record.status, outHeaders)
      upstreamRes.on('data', (chunk: Buffer) => {
        record.bytes += chunk.length
      })
      upstreamRes.on('end', () => {
        record.completed = true
      })
      upstreamRes.on('error', (error) => {
        record.error = error.message
        res.destroy(error)
      })
      if (rate === null) {
        upstreamRes.pipe(res)
        return
      }
      // Paced: pause the upstream body whenever it is ahead of `rate` (or the client is behind).
      const started = Date.now()
      let sent = 0
      upstreamRes.on('data', (chunk: Buffer) => {
        sent += chunk.length
        const drained = res.write(chunk)
        const due = rate === null ? 0 : started + (sent / rate) * 1000 - Date.now()
        if (drained && due <= 0) return
        upstreamRes.pause()
        const resume = () => setTimeout(() => upstreamRes.resume(), Math.max(0, due))
        if (drained) resume()
        else res.once('drain', resume)
      })
      upstreamRes.on('end', () => res.end())
    })
    upstream.on('error', (error) => {
      record.error = error.message
      if (res.headersSent) {
        res.destroy(error)
        return
      }
      res
        .writeHead(502, { 'content-type': 'application/json' })
        .end(JSON.stringify({ errors: [{ code: 'UNKNOWN', message: `counting proxy: ${error.message}` }] }))
    })
    req.pipe(upstream)
  }

  const listen = async () => {
    const s = createServer(handler)
    s.on('connection', (socket) => {
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
    })
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject)
      s.listen(port, '127.0.0.1', resolve)
    })
    port = (s.address() as AddressInfo).port
    server = s
  }
  const stop = async () => {
    const s = server
    server = undefined
    if (s === undefined) return
    const closed = new Promise<void>((resolve) => s.close(() => resolve()))
    // Keep-alive connections would otherwise let pullcache keep talking to a "stopped" upstream.
    for (const socket of sockets) socket.destroy()
    await closed
    agent.destroy()
  }
  await listen()

  const matches = (r: ProxiedRequest, f: RequestFilter) =>
    (f.method === undefined || r.method === f.method) &&
    (f.kind === undefined || r.kind === f.kind) &&
    (f.byDigest === undefined || r.byDigest === f.byDigest) &&
    (f.repository === undefined || r.repository === f.repository) &&
    (f.reference === undefined || r.reference === f.reference) &&
    (f.path === undefined || r.path === f.path) &&
    (f.status === undefined ||
      (f.status === 'success'
        ? r.status !== null && r.status >= 200 && r.status < 400
        : r.status === f.status)) &&
    (f.authorized === undefined || (r.authorization !== null) === f.authorized)
  const filter = (f: RequestFilter) => requests.filter((r) => matches(r, f))

  return {
    get url() {
      return `http://127.0.0.1:${port}`
    },
    get port() {
      return port
    },
    requests,
    reset: () => {
      requests.length = 0
    },
    filter,
    count: (f) => filter(f).length,
    describe: (f = {}) =>
      filter(f)
        .map(
          (r) =>
            `${r.method} ${r.path}${r.query === '' ? '' : `?${r.query}`} auth=${r.authorization ?? '-'}` +
            `${r.range === null ? '' : ` range=${r.range}`} -> ${r.status ?? '?'} ${r.bytes}B` +
            `${r.error === null ? '' : ` (${r.error})`}`,
        )
        .join('\n'),
    setRate: (bytesPerSecond) => {
      rate = bytesPerSecond
    },
    failWith: (status) => {
      failStatus = status
    },
    setTarget: (o) => {
      origin = o
    },
    stop,
    start: async () => {
      if (server === undefined) await listen()
    },
    close: stop,
  }
}

const ROUTE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/

function classify(path: string): Pick<ProxiedRequest, 'kind' | 'repository' | 'reference' | 'byDigest'> {
  if (path === '/v2/' || path === '/v2')
    return { kind: 'ping', repository: null, reference: null, byDigest: false }
  const tags = /^\/v2\/(.+)\/tags\/list$/.exec(path)
  if (tags !== null) return { kind: 'tags', repository: tags[1] ?? null, reference: null, byDigest: false }
  const m = ROUTE.exec(path)
  if (m === null) return { kind: 'other', repository: null, reference: null, byDigest: false }
  const reference = decodeURIComponent(m[3] ?? '')
  return {
    kind: m[2] === 'blobs' ? 'blob' : 'manifest',
    repository: m[1] ?? null,
    reference,
    byDigest: reference.includes(':'),
  }
}

function headerValue(value: string | string[] | undefined): string | null {
  if (value === undefined) return null
  return Array.isArray(value) ? value.join(', ') : value
}

function acceptValues(headers: IncomingHttpHeaders): string[] {
  const raw = headers.accept
  if (raw === undefined) return []
  return raw
    .split(',')
    .map((v) => v.trim())
    .filter((v) => v !== '')
}
