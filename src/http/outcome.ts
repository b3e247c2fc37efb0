// One outcome per request, written once. Routes note on the response what they learn (what was
// asked for, under which name, the cache result, who signed in); when the response is over,
// recordOutcome writes the access-log line, the duration histogram and the accounting record
// (mirror.record) from that note and from what was actually sent, so the log and the stats
// cannot disagree.

import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Outcome } from '../mirror/answers.js'
import type { Mirror } from '../mirror/mirror.js'
import type { Notifier } from '../notify/notifier.js'
import { RELAY_HEADER } from '../upstream/cluster-upstream.js'
import { PEER } from './access.js'
import type { RepoName } from './reference.js'

export const CACHE_HEADER = 'X-Pullcache-Cache'

/** What the routes learned about one response. */
export interface ResponseNote {
  /**
   * What the request asked for, set once the route has parsed the name and the client may read
   * it: only such requests are accounted (a refused or malformed request names nothing).
   */
  kind?: 'blob' | 'manifest' | 'tags'
  /** The upstream's mirror the request went to, once routed: it accounts the request. */
  mirror?: Mirror
  name?: RepoName
  tag?: string
  digest?: string
  cache?: Outcome
  /** The body bytes sent, for responses written outside Hono (blob streams count their own). */
  bytes?: () => number
  /** The account that signed in; never its password. */
  user?: string
}

const notes = new WeakMap<ServerResponse, ResponseNote>()

/** The note of this response, created on first use. */
export function noteOf(res: ServerResponse): ResponseNote {
  let note = notes.get(res)
  if (note === undefined) {
    note = {}
    notes.set(res, note)
  }
  return note
}

export interface OutcomeDeps {
  /** The root upstream's mirror: it accounts requests not routed to another. */
  mirror: Mirror
  metrics: Metrics
  log: Logger
  /** log.access: whether each request gets its line. */
  accessLog: boolean
  /** Webhooks: a pull event for each manifest or blob sent whole or in part (2xx). */
  notifier?: Notifier
}

/**
 * Watches one response: when it is over (finished or cut) and the route has returned (`handled`
 * settles; a route still waiting on upstream may yet note its answer), writes its outcome once.
 * The duration is taken when the response closes.
 */
export function recordOutcome(
  req: IncomingMessage,
  res: ServerResponse,
  handled: Promise<unknown>,
  { mirror, metrics, log, accessLog, notifier }: OutcomeDeps,
): void {
  const started = performance.now()
  res.once('close', () => {
    const seconds = (performance.now() - started) / 1000
    const complete = res.writableFinished
    const path = (req.url ?? '').split('?')[0] ?? ''
    const kind = requestKind(path)
    if (kind !== undefined) metrics.requestDuration.observe({ kind }, seconds)
    const write = () => {
      const note = notes.get(res)
      const declared = Number(res.getHeader('content-length') ?? 0)
      // Hono-written answers are sent whole or not at all as far as we can tell: their body
      // length once finished. Blob streams count what went out.
      const bytes = note?.bytes ? note.bytes() : req.method === 'HEAD' || !complete ? 0 : declared
      const status = res.statusCode
      if (note?.kind !== undefined && note.name !== undefined) {
        // An error status, or a response cut before the route learned its answer, served nothing.
        const result = status >= 400 || note.cache === undefined ? 'error' : note.cache
        try {
          ;(note.mirror ?? mirror).record({
            kind: note.kind,
            name: note.name,
            method: req.method ?? 'GET',
            result,
            // An error body is not content: only served content is accounted.
            bytes: result === 'error' ? 0 : bytes,
            ...(note.digest === undefined ? {} : { digest: note.digest }),
            ...(note.tag === undefined ? {} : { tag: note.tag }),
            ...(relayedByPeer(req, note.user) ? { relayed: true } : {}),
          })
        } catch (err) {
          // Accounting must never take the server down; the response is over either way.
          log.error('request.record_failed', { path, error: err })
        }
      }
      if (notifier?.active && note !== undefined && complete)
        notifyPull(notifier, req, res, note, path, bytes)
      if (!accessLog) return
      log.info('request', {
        method: req.method,
        path,
        status,
        bytes,
        duration_ms: Math.round(seconds * 10_000) / 10,
        cache: note?.cache ?? res.getHeader(CACHE_HEADER) ?? null,
        ...(note?.mirror === undefined ? {} : { upstream: note.mirror.upstream.host }),
        // Who signed in, when someone did; the Authorization header itself is never logged.
        ...(note?.user === undefined ? {} : { user: note.user }),
        complete,
      })
    }
    void handled.then(write, write)
  })
}

/** What a registry API path asks for, as a label with a handful of values; undefined off /v2. */
function requestKind(path: string): 'base' | 'manifest' | 'blob' | 'tags' | 'other' | undefined {
  if (path !== '/v2' && !path.startsWith('/v2/')) return undefined
  if (path === '/v2' || path === '/v2/') return 'base'
  if (path.includes('/manifests/')) return 'manifest'
  if (path.includes('/blobs/')) return 'blob'
  if (path.endsWith('/tags/list')) return 'tags'
  return 'other'
}

/**
 * The pull event of a manifest or blob GET answered 2xx and sent to the end (a HEAD or a 304 is a
 * question, not a pull). Built from what the route noted and what went out.
 */
function notifyPull(
  notifier: Notifier,
  req: IncomingMessage,
  res: ServerResponse,
  note: ResponseNote,
  path: string,
  bytes: number,
): void {
  const status = res.statusCode
  if (req.method !== 'GET' || status < 200 || status >= 300) return
  if ((note.kind !== 'blob' && note.kind !== 'manifest') || note.name === undefined) return
  // 206: the whole size is after the slash of Content-Range.
  const range = /\/(\d+)$/.exec(String(res.getHeader('content-range') ?? ''))
  const size = range ? Number(range[1]) : Number(res.getHeader('content-length') ?? bytes)
  const type = res.getHeader('content-type')
  const port = req.socket.remotePort
  notifier.emit({
    action: 'pull',
    target: {
      ...(typeof type === 'string' ? { mediaType: type } : {}),
      ...(note.digest === undefined ? {} : { digest: note.digest }),
      size,
      length: bytes,
      repository: note.name.upstream,
      url: path,
      ...(note.tag === undefined ? {} : { tag: note.tag }),
      ...(note.cache === undefined ? {} : { cache: note.cache }),
    },
    request: {
      id: randomUUID(),
      addr: `${req.socket.remoteAddress ?? ''}${port === undefined ? '' : `:${port}`}`,
      host: req.headers.host ?? '',
      method: req.method,
      useragent: req.headers['user-agent'] ?? '',
    },
    actor: note.user === undefined ? {} : { name: note.user },
  })
}

/** A request another node relayed here: the relay header, from a caller that had the secret. */
function relayedByPeer(req: IncomingMessage, user: string | undefined): boolean {
  return req.headers[RELAY_HEADER] !== undefined && user === PEER.user
}
