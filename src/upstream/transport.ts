// The one place upstream requests go out: an undici Agent (keep-alive pools per origin,
// connect/header/idle timeouts) carries registry and token requests, and a second one, whose
// names are resolved through the redirect guard (redirects.ts), the requests redirects lead to. Each request is
// counted in metrics and reported to the upstream state (an answer, or a network failure with
// its stable kind), so nothing that sends upstream can forget either. Offline on purpose stops
// every request here, before any connection. The caller owns the response and settles its body.

import { Agent } from 'undici'
import { networkFailure, UpstreamError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { Via } from '../via.js'
import { redirectLookup } from './redirects.js'
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
  /** The upstream's host, the `upstream` label of its metrics. */
  host: string
  /** Whether redirects may lead to loopback or private addresses (the upstream is on one). */
  allowLocalRedirects: () => boolean
  /** Via on every request: the chain it serves, then this process (src/via.ts). */
  via?: Via | undefined
}

export class Transport {
  private readonly agent: Agent
  /** For the targets of redirects (kind 'cdn'): names resolved through the redirect guard. */
  private readonly redirectAgent: Agent
  private readonly state: UpstreamState
  private readonly metrics: Metrics
  private readonly host: string
  private readonly via: Via | undefined

  constructor(opts: TransportOptions) {
    this.state = opts.state
    this.metrics = opts.metrics
    this.host = opts.host
    this.via = opts.via
    const agentOptions = {
      headersTimeout: opts.headerTimeoutMs,
      bodyTimeout: opts.idleTimeoutMs,
      keepAliveTimeout: 30_000,
      connections: opts.connections,
    }
    this.agent = new Agent({ ...agentOptions, connect: { timeout: opts.connectTimeoutMs } })
    this.redirectAgent = new Agent({
      ...agentOptions,
      connect: { timeout: opts.connectTimeoutMs, lookup: redirectLookup(opts.allowLocalRedirects) },
    })
  }

  /** Ends every upstream connection, including requests still waiting on a slow upstream. */
  async close(): Promise<void> {
    await Promise.all([this.agent.destroy(), this.redirectAgent.destroy()])
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
      const agent = kind === 'cdn' ? this.redirectAgent : this.agent
      const res = await agent.request({
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
      this.metrics.upstreamRequests.inc({ upstream: this.host, kind, method, status: String(res.statusCode) })
      if (res.statusCode < 500) this.state.noteAnswer()
      return res
    } catch (err) {
      this.metrics.upstreamRequests.inc({ upstream: this.host, kind, method, status: 'error' })
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
