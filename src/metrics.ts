// Prometheus metrics, one registry per running server (no global default registry, so tests
// and a reload never collide). Names follow the conventions: pullcache_ prefix, _total for
// counters, _bytes and _seconds units. Values that already live elsewhere (in-flight fills,
// the rate-limit budget, store size) are read when scraped rather than copied on every change.

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'

export type Metrics = ReturnType<typeof createMetrics>

/** Where scrape-time gauges read their values; the server points these at the live objects. */
export interface MetricSources {
  inflightFills: () => number
  inflightFollowers: () => number
  storeTotals: () => { blobs: number; bytes: number; allocated: number }
  storeBudget: () => number
  notifyPending: () => { endpoint: string; events: number }[]
  /** The cluster's nodes by whether this one counts them as answering; none outside a cluster. */
  clusterMembers: () => { live: number; down: number } | undefined
}

export function createMetrics() {
  const sources: MetricSources = {
    inflightFills: () => 0,
    inflightFollowers: () => 0,
    storeTotals: () => ({ blobs: 0, bytes: 0, allocated: 0 }),
    storeBudget: () => 0,
    notifyPending: () => [],
    clusterMembers: () => undefined,
  }
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'pullcache_' })
  const registers = [registry]
  return {
    registry,
    sources,
    requests: new Counter({
      name: 'pullcache_requests_total',
      help: 'Registry API requests answered, by kind (manifest, blob, tags), method and cache result.',
      labelNames: ['upstream', 'kind', 'method', 'result'] as const,
      registers,
    }),
    servedBytes: new Counter({
      name: 'pullcache_served_bytes_total',
      help: 'Body bytes sent to clients, by where they came from (cache or upstream).',
      labelNames: ['upstream', 'source'] as const,
      registers,
    }),
    hubPullsAvoided: new Counter({
      name: 'pullcache_upstream_pulls_avoided_total',
      help: 'Manifest GETs answered without a manifest GET upstream (each would count as a Docker Hub pull).',
      labelNames: ['upstream'] as const,
      registers,
    }),
    requestDuration: new Histogram({
      name: 'pullcache_request_duration_seconds',
      help: 'Time to answer a registry API request, headers and body.',
      labelNames: ['kind'] as const,
      buckets: [0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120],
      registers,
    }),
    upstreamRequests: new Counter({
      name: 'pullcache_upstream_requests_total',
      help: 'Requests sent upstream, by kind (manifest, blob, tags, token, cdn, ping; access: checks of what anonymous pulls may read), method and status ("error" when none came).',
      labelNames: ['upstream', 'kind', 'method', 'status'] as const,
      registers,
    }),
    upstreamBytes: new Counter({
      name: 'pullcache_upstream_blob_bytes_total',
      help: 'Blob bytes downloaded from upstream.',
      labelNames: ['upstream'] as const,
      registers,
    }),
    tokenFetches: new Counter({
      name: 'pullcache_upstream_token_fetches_total',
      help: 'Bearer tokens fetched from the upstream token realm, by result.',
      labelNames: ['upstream', 'result'] as const,
      registers,
    }),
    rateLimitLimit: new Gauge({
      name: 'pullcache_upstream_ratelimit_limit',
      help: 'Pull budget upstream reported in its last ratelimit-limit header.',
      labelNames: ['upstream'] as const,
      registers,
    }),
    rateLimitRemaining: new Gauge({
      name: 'pullcache_upstream_ratelimit_remaining',
      help: 'Pulls left upstream reported in its last ratelimit-remaining header.',
      labelNames: ['upstream'] as const,
      registers,
    }),
    fills: new Counter({
      name: 'pullcache_fills_total',
      help: 'Blob downloads into the store, by outcome (committed, failed).',
      labelNames: ['outcome'] as const,
      registers,
    }),
    blobRedirects: new Counter({
      name: 'pullcache_blob_redirects_total',
      help: 'Blob GETs answered with a 307 to a presigned bucket URL (storage.s3.redirect): bytes the node did not send.',
      labelNames: ['upstream'] as const,
      registers,
    }),
    inflightFills: new Gauge({
      name: 'pullcache_inflight_fetches',
      help: 'Blob downloads from upstream in progress.',
      registers,
      collect() {
        this.set(sources.inflightFills())
      },
    }),
    inflightFollowers: new Gauge({
      name: 'pullcache_inflight_followers',
      help: 'Client responses streaming from a download another request started.',
      registers,
      collect() {
        this.set(sources.inflightFollowers())
      },
    }),
    storeBytes: new Gauge({
      name: 'pullcache_store_bytes',
      help: 'Bytes of blobs in the store, logical (the sum of their sizes).',
      registers,
      collect() {
        this.set(sources.storeTotals().bytes)
      },
    }),
    storeAllocatedBytes: new Gauge({
      name: 'pullcache_store_allocated_bytes',
      help: 'Bytes the blob files take on disk (allocated blocks); what the budget counts.',
      registers,
      collect() {
        this.set(sources.storeTotals().allocated)
      },
    }),
    storeBlobs: new Gauge({
      name: 'pullcache_store_blobs',
      help: 'Blobs in the store.',
      registers,
      collect() {
        this.set(sources.storeTotals().blobs)
      },
    }),
    storeBudget: new Gauge({
      name: 'pullcache_store_budget_bytes',
      help: 'The configured store budget (max_size); 0 when unlimited.',
      registers,
      collect() {
        this.set(sources.storeBudget())
      },
    }),
    evictions: new Counter({
      name: 'pullcache_evictions_total',
      help: 'Entries removed from the store, by kind (blob, manifest) and reason (size, age, missing).',
      labelNames: ['kind', 'reason'] as const,
      registers,
    }),
    evictionErrors: new Counter({
      name: 'pullcache_eviction_errors_total',
      help: 'Blobs eviction failed to remove (the error is logged); eviction goes on with the next.',
      registers,
    }),
    notifySent: new Counter({
      name: 'pullcache_notification_sent_total',
      help: 'Events a notification endpoint accepted (a 2xx answer), by endpoint.',
      labelNames: ['endpoint'] as const,
      registers,
    }),
    notifyFailed: new Counter({
      name: 'pullcache_notification_failed_total',
      help: 'Events given up after their tries failed (or left unsent at shutdown), by endpoint.',
      labelNames: ['endpoint'] as const,
      registers,
    }),
    notifyDropped: new Counter({
      name: 'pullcache_notification_dropped_total',
      help: "Events dropped unsent because the endpoint's queue was full (the oldest go), by endpoint.",
      labelNames: ['endpoint'] as const,
      registers,
    }),
    notifyPending: new Gauge({
      name: 'pullcache_notification_pending',
      help: 'Events queued for a notification endpoint, by endpoint.',
      labelNames: ['endpoint'] as const,
      registers,
      collect() {
        this.reset()
        for (const { endpoint, events } of sources.notifyPending()) this.set({ endpoint }, events)
      },
    }),
    evictedBytes: new Counter({
      name: 'pullcache_evicted_bytes_total',
      help: 'Bytes on disk (allocated blocks) freed by evicting blobs.',
      registers,
    }),
    ...clusterMetrics(sources, registers),
  }
}

/**
 * A node's part in its cluster (src/upstream/cluster-upstream.ts): the requests it relayed to the
 * key's owner and what came of them, and the relayed requests it answered as the owner. Per node;
 * the cluster's totals are in the stats document (src/cluster/figures.ts).
 */
function clusterMetrics(sources: MetricSources, registers: Registry[]) {
  return {
    relays: new Counter({
      name: 'pullcache_cluster_relays_total',
      help: 'Requests relayed to the owning node, by outcome: ok (it answered), not_found (its 404, passed on), fallback (it could not answer; asked upstream from here), failed (the request ended first).',
      labelNames: ['outcome'] as const,
      registers,
    }),
    relayBytes: new Counter({
      name: 'pullcache_cluster_relay_bytes_total',
      help: 'Blob bytes received from owning nodes by relayed requests (not counted as upstream bytes).',
      registers,
    }),
    relayedRequests: new Counter({
      name: 'pullcache_cluster_relayed_requests_total',
      help: 'Requests another node relayed here as the owner, by kind and cache result (also counted in pullcache_requests_total).',
      labelNames: ['kind', 'result'] as const,
      registers,
    }),
    relayedBytes: new Counter({
      name: 'pullcache_cluster_relayed_served_bytes_total',
      help: 'Body bytes sent to nodes that relayed a request here (also counted in pullcache_served_bytes_total).',
      registers,
    }),
    members: new Gauge({
      name: 'pullcache_cluster_members',
      help: 'Nodes of the cluster, this one included, by state: live (answering) or down.',
      labelNames: ['state'] as const,
      registers,
      collect() {
        this.reset()
        const members = sources.clusterMembers()
        if (members === undefined) return
        this.set({ state: 'live' }, members.live)
        this.set({ state: 'down' }, members.down)
      },
    }),
  }
}
