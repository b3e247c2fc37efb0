// A node's figures as its cluster sums them, and the sum. Each node reads its own from its
// counters (src/metrics.ts), so they run from the node's start; the others' come over the peer
// channel (GET /_pullcache/cluster/stats, src/cluster/totals.ts).
//
// What is counted once: a client's request is counted by the node the client asked. A request
// that node relayed to the key's owner (src/upstream/cluster-upstream.ts) reaches the owner too,
// carrying the relay header; the owner counts it in its own figures (the stats document's
// `overall`, pullcache_requests_total) but leaves it out of the client figures here, so the
// cluster's requests, hits, misses and bytes served are the clients' alone. Upstream traffic is
// counted where it happens: the owner's upstream requests and blob bytes are the cluster's, and
// bytes a node received from an owner by a relay are relay bytes, never upstream bytes. The hit
// rate is stats.ts's definition over the client figures: a relayed request is the miss (or the
// coalesced follower) its node recorded, whatever the owner answered it from.

import type { Metrics } from '../metrics.js'
import type { OutcomeCounts } from '../store/index-usage.js'
import { hitRate } from '../store/stats.js'

/**
 * One node's figures, or the cluster's sum of them; field names are an interface. The outcome
 * counts are the client requests answered (relayed requests received left out).
 */
export interface NodeFigures extends OutcomeCounts {
  /** Body bytes sent to clients (not to relaying nodes). */
  bytes_served: number
  /** Requests sent to the upstream registry (tokens, pings and CDN redirects included). */
  upstream_requests: number
  /** Blob bytes downloaded from the upstream registry. */
  bytes_from_upstream: number
  /** Requests this node relayed to an owner, and the blob bytes those brought. */
  relays_sent: number
  relay_bytes: number
  /** Requests other nodes relayed here. */
  relays_received: number
  /** hit_rate as stats.ts defines it, over the client requests; null when none was answered. */
  hit_rate: number | null
}

/** The counts the figures are made of, before the hit rate. */
export type Counts = Omit<NodeFigures, 'hit_rate'>

const COUNT_KEYS = [
  'requests',
  'hits',
  'misses',
  'coalesced',
  'stale',
  'errors',
  'bytes_served',
  'upstream_requests',
  'bytes_from_upstream',
  'relays_sent',
  'relay_bytes',
  'relays_received',
] as const satisfies readonly (keyof Counts)[]

/** Counts with their hit rate. */
export function withRate(c: Counts): NodeFigures {
  return { ...c, hit_rate: hitRate(c) }
}

/** The sum of several nodes' figures, its hit rate over the summed requests. */
export function sumFigures(all: readonly Counts[]): NodeFigures {
  const sum = Object.fromEntries(COUNT_KEYS.map((k) => [k, 0])) as Counts
  for (const one of all) for (const k of COUNT_KEYS) sum[k] += one[k]
  return withRate(sum)
}

/** Whether an answer from another node has the shape of NodeFigures (a newer node may add more). */
export function isFigures(value: unknown): value is NodeFigures {
  if (typeof value !== 'object' || value === null) return false
  const v = value as Record<string, unknown>
  return COUNT_KEYS.every((k) => typeof v[k] === 'number' && Number.isFinite(v[k]) && (v[k] as number) >= 0)
}

/** Per result, what the counters hold; relayed: what other nodes relayed here. */
export interface CounterTotals {
  byResult: Record<string, number>
  relayedByResult: Record<string, number>
  servedBytes: number
  relayedBytes: number
  upstreamRequests: number
  upstreamBytes: number
  relaysSent: number
  relayBytes: number
}

/** The client figures from the raw counter totals: what other nodes relayed here comes off. */
export function figuresOf(t: CounterTotals): NodeFigures {
  const client = (result: string) => Math.max(0, (t.byResult[result] ?? 0) - (t.relayedByResult[result] ?? 0))
  const results = ['hit', 'miss', 'coalesced', 'stale', 'error']
  const relaysReceived = Object.values(t.relayedByResult).reduce((a, b) => a + b, 0)
  return withRate({
    requests: results.reduce((n, r) => n + client(r), 0),
    hits: client('hit'),
    misses: client('miss'),
    coalesced: client('coalesced'),
    stale: client('stale'),
    errors: client('error'),
    bytes_served: Math.max(0, t.servedBytes - t.relayedBytes),
    upstream_requests: t.upstreamRequests,
    bytes_from_upstream: t.upstreamBytes,
    relays_sent: t.relaysSent,
    relay_bytes: t.relayBytes,
    relays_received: relaysReceived,
  })
}

/** This node's figures, read from its counters (since it started). */
export async function ownFigures(metrics: Metrics): Promise<NodeFigures> {
  const [requests, relayed, served, relayedBytes, upstreamRequests, upstreamBytes, relays, relayBytes] =
    await Promise.all([
      metrics.requests.get(),
      metrics.relayedRequests.get(),
      metrics.servedBytes.get(),
      metrics.relayedBytes.get(),
      metrics.upstreamRequests.get(),
      metrics.upstreamBytes.get(),
      metrics.relays.get(),
      metrics.relayBytes.get(),
    ])
  const total = (m: { values: { value: number }[] }) => m.values.reduce((n, v) => n + v.value, 0)
  const byResult = (m: { values: { value: number; labels: Record<string, unknown> }[] }) => {
    const out: Record<string, number> = {}
    for (const v of m.values) {
      const result = String(v.labels.result)
      out[result] = (out[result] ?? 0) + v.value
    }
    return out
  }
  return figuresOf({
    byResult: byResult(requests),
    relayedByResult: byResult(relayed),
    servedBytes: total(served),
    relayedBytes: total(relayedBytes),
    upstreamRequests: total(upstreamRequests),
    upstreamBytes: total(upstreamBytes),
    relaysSent: total(relays),
    relayBytes: total(relayBytes),
  })
}
