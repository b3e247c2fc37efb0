// The readiness ping: GET /v2/ without credentials, where 200 or 401 (a registry asking for a
// token) means upstream answers. Readiness probes come every few seconds; one ping at a time
// goes out and its answer is reused for a while, so probes never hammer Docker Hub. A ping is
// sent through the transport like any request, so its answer or failure lands in state.ts too.

import type { UpstreamState } from './state.js'
import type { Transport } from './transport.js'

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

export class ReadinessPing {
  private readonly origin: URL
  private readonly transport: Transport
  private readonly state: UpstreamState
  private lastPing: { result: Promise<PingResult>; until: number } | undefined

  constructor(origin: URL, transport: Transport, state: UpstreamState) {
    this.origin = origin
    this.transport = transport
    this.state = state
  }

  /**
   * GET /v2/ without credentials: 200 or 401 (a registry asking for a token) means upstream
   * answers. One request at a time, and its answer is reused for PING_CACHE_MS after it came.
   * Never throws; offline on purpose is reported as unreachable without asking.
   */
  ping(now = Date.now()): Promise<PingResult> {
    if (this.state.offline) {
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
      // Through the transport: counted in metrics, and a network failure is noted like any other.
      const res = await this.transport.request('ping', 'GET', url, {})
      await res.body.dump()
      const reachable = res.statusCode === 200 || res.statusCode === 401
      const detail = reachable
        ? `${url.href} answered ${res.statusCode}`
        : `${url.href} answered ${res.statusCode}, expected 200 or 401`
      if (!reachable) this.state.noteFailure(detail)
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
}
