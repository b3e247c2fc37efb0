// The one place upstream requests go out: a single undici Agent (keep-alive pools per origin,
// connect/header/idle timeouts) carries registry, token and CDN requests alike. Each request is
// counted in metrics and reported to the upstream state (an answer, or a network failure with
// its stable kind), so nothing that sends upstream can forget either. Offline on purpose stops
// every request here, before any connection. The caller owns the response and settles its body.

import { Agent } from 'undici'
import { networkFailure, UpstreamError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { Via } from '../via.js'
import type { Response } from './response.js'
import type { RequestKind, UpstreamState } from './state.js'

const USER_AGENT = 'pullcache/0.1'

export interface TransportOptions {
  connectTimeoutMs: number
  headerTimeoutMs: number
  idleTimeoutMs: number
  connections: number
  state: UpstreamState
  metrics: Metrics
  /** Via on every request: the chain it serves, then this process (src/via.ts). */
  via: Via | undefined
}

export class Transport {
  private readonly agent: Agent
  private readonly state: UpstreamState
  private readonly metrics: Metrics
  private readonly via: Via | undefined

  constructor(opts: TransportOptions) {
    this.state = opts.state
    this.metrics = opts.metrics
    this.via = opts.via
    this.agent = new Agent({
      connect: { timeout: opts.connectTimeoutMs },
      headersTimeout: opts.headerTimeoutMs,
      bodyTimeout: opts.idleTimeoutMs,
      keepAliveTimeout: 30_000,
      connections: opts.connections,
    })
  }

  /** Ends every upstream connection, including requests still waiting on a slow upstream. */
  async close(): Promise<void> {
    await this.agent.destroy()
  }

  /** One request as given: no auth, no redirects (those are the token exchange's and the client's). */
  async request(
    kind: RequestKind,
    method: string,
    url: URL,
    headers: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Response> {
    if (this.state.offline)
      throw new UpstreamError('OFFLINE', 'pullcache is offline and does not contact upstream')
    try {
      signal?.throwIfAborted()
      const res = await this.agent.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers: {
          'user-agent': USER_AGENT,
          ...(this.via === undefined ? {} : { via: this.via.outgoing() }),
          ...headers,
        },
        ...(signal === undefined ? {} : { signal }),
      })
      this.metrics.upstreamRequests.inc({ kind, method, status: String(res.statusCode) })
      if (res.statusCode < 500) this.state.noteAnswer()
      return res
    } catch (err) {
      this.metrics.upstreamRequests.inc({ kind, method, status: 'error' })
      // Aborted by a deadline: the reason says which (an UpstreamError of kind TIMEOUT).
      const failure = networkFailure(signal?.aborted ? signal.reason : err)
      this.state.markUnwell(
        failure.kind,
        undefined,
        undefined,
        `${kind} ${method} ${url.origin}: ${failure.message}`,
        kind,
      )
      throw failure
    }
  }
}
