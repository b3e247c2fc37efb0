// The configured endpoints (notifications.endpoints) and the one call the rest of pullcache makes:
// emit(), synchronous, which stamps the event and hands it to each endpoint's queue. A reload
// keeps an endpoint whose settings did not change (its queue and its connection) and replaces the
// others; a replaced or removed endpoint gets a short while to send what it holds.

import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { Endpoint, type EndpointConfig, type EndpointCounters } from './endpoint.js'
import { type EventInput, makeEvent, type SourceRecord } from './events.js'

/** How long a replaced endpoint, or every endpoint on shutdown, may take to send what it holds. */
export const FLUSH_DEADLINE_MS = 2000

export class Notifier {
  private endpoints = new Map<string, Endpoint>()
  private readonly log: Logger
  private readonly counters: EndpointCounters
  private source: SourceRecord

  constructor(opts: {
    endpoints: readonly EndpointConfig[]
    log: Logger
    counters: EndpointCounters
    source: SourceRecord
  }) {
    this.log = opts.log
    this.counters = opts.counters
    this.source = opts.source
    this.reload(opts.endpoints)
  }

  /** Where this pullcache listens; known once the server does. */
  setSource(source: SourceRecord): void {
    this.source = source
  }

  /** Whether any endpoint is configured (the routes skip building events otherwise). */
  get active(): boolean {
    return this.endpoints.size > 0
  }

  emit(input: EventInput): void {
    if (this.endpoints.size === 0) return
    const event = makeEvent(input, this.source)
    for (const endpoint of this.endpoints.values()) endpoint.add(event)
  }

  /** Applies a new list of endpoints; returns whether anything changed. */
  reload(configs: readonly EndpointConfig[]): boolean {
    const next = new Map<string, Endpoint>()
    let changed = configs.length !== this.endpoints.size
    for (const config of configs) {
      const kept = this.endpoints.get(config.name)
      if (kept !== undefined && JSON.stringify(kept.config) === JSON.stringify(config)) {
        next.set(config.name, kept)
        continue
      }
      changed = true
      next.set(config.name, new Endpoint(config, this.log, this.counters))
      // The URL's origin and path only: no header, no query (which may hold a token).
      const url = new URL(config.url)
      this.log.info('notify.endpoint', {
        endpoint: config.name,
        url: `${url.origin}${url.pathname}`,
        headers: Object.keys(config.headers),
        events: config.events,
      })
    }
    for (const [name, old] of this.endpoints) {
      if (next.get(name) !== old) void old.close(FLUSH_DEADLINE_MS)
    }
    this.endpoints = next
    return changed
  }

  /** Pending events per endpoint, for the metrics gauge. */
  pending(): { endpoint: string; events: number }[] {
    return [...this.endpoints.values()].map((e) => ({ endpoint: e.config.name, events: e.pending }))
  }

  /** Sends what is queued, for up to `deadlineMs`; what is left then is given up. */
  async close(deadlineMs = FLUSH_DEADLINE_MS): Promise<void> {
    const all = [...this.endpoints.values()]
    this.endpoints = new Map()
    await Promise.all(all.map((e) => e.close(deadlineMs)))
  }
}

/** Endpoint counts as the Prometheus counters pullcache_notification_{sent,failed,dropped}_total. */
export function metricCounters(metrics: Metrics): EndpointCounters {
  return {
    sent: (endpoint, n) => metrics.notifySent.inc({ endpoint }, n),
    failed: (endpoint, n) => metrics.notifyFailed.inc({ endpoint }, n),
    dropped: (endpoint, n) => metrics.notifyDropped.inc({ endpoint }, n),
  }
}
