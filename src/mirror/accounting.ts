// What every finished request leaves behind: counters, the links that say upstream confirmed a
// repository has a digest, the tag and blob touches eviction and the stats read, and the hourly
// accounting rows. All buffered by the index, no I/O on the request's path. Junk requests (names
// and tags that do not exist) are folded so that they cannot grow the index.

import type { Metrics } from '../metrics.js'
import type { RepoName } from '../oci.js'
import type { CacheResult, IndexDb } from '../store/index-db.js'

/** Where failed requests for repositories with no content here are accounted: such a name
 * may be anything at all, and each would otherwise be a row of its own. */
export const FAILED_REPO = '(failed requests)'

/** One finished request, as the routes report it. */
export interface RequestRecord {
  kind: 'blob' | 'manifest' | 'tags'
  name: RepoName
  method: string
  result: CacheResult
  bytes: number
  digest?: string
  tag?: string
  /**
   * Another node of the cluster relayed it here, this node being the owner: its client was
   * counted by that node, so the cluster's totals leave it out of their client requests.
   */
  relayed?: boolean
}

export class Accounting {
  private readonly index: IndexDb
  private readonly metrics: Metrics
  /** The upstream's key in the index (Upstream.registry). */
  private readonly registry: string

  /** The upstream's host, the `upstream` label of the metrics. */
  private readonly host: string

  constructor(index: IndexDb, metrics: Metrics, registry: string, host: string) {
    this.index = index
    this.metrics = metrics
    this.registry = registry
    this.host = host
  }

  /** Records one finished request: counters, repo links, accounting; all buffered, no I/O. */
  record(r: RequestRecord): void {
    const registry = this.registry
    const fromUpstream = r.result === 'miss'
    // A manifest GET answered without a manifest GET upstream: a Docker Hub pull not spent.
    const pullAvoided = r.kind === 'manifest' && r.method === 'GET' && !fromUpstream && r.result !== 'error'
    if (r.digest !== undefined && r.result !== 'error') {
      if (r.kind === 'blob') {
        this.index.touchBlob(r.digest, r.result, r.bytes)
        // A link says upstream confirmed that this repository has the digest (visibility.ts): a
        // miss was fetched under this name. A hit or a coalesced answer may have come from
        // another repository's fetch, so it proves nothing about this one.
        if (r.result === 'miss') this.index.link(registry, r.name.upstream, r.digest, 'blob')
      } else if (r.kind === 'manifest') {
        this.index.touchManifest(r.digest, !fromUpstream)
      }
    }
    // Junk must not grow the index: a failed request counts against a tag only when the tag is
    // known (cached), and under its repository's name only when the repository has content
    // here; any other is accounted under one placeholder. Requests for names and tags that do
    // not exist upstream so leave a bounded number of rows.
    const failed = r.result === 'error'
    if (r.tag !== undefined && (!failed || this.index.getTag(registry, r.name.upstream, r.tag))) {
      this.index.touchTag(registry, r.name.upstream, r.tag, r.result, r.bytes, pullAvoided)
    }
    const upstream = this.host
    this.metrics.requests.inc({ upstream, kind: r.kind, method: r.method, result: r.result })
    if (r.bytes > 0) {
      this.metrics.servedBytes.inc({ upstream, source: fromUpstream ? 'upstream' : 'cache' }, r.bytes)
    }
    if (pullAvoided) this.metrics.hubPullsAvoided.inc({ upstream })
    if (r.relayed === true) {
      this.metrics.relayedRequests.inc({ kind: r.kind, result: r.result })
      if (r.bytes > 0) this.metrics.relayedBytes.inc(r.bytes)
    }
    this.index.account({
      registry,
      repo: failed && !this.index.hasRepo(registry, r.name.upstream) ? FAILED_REPO : r.name.upstream,
      kind: r.kind,
      method: r.method,
      result: r.result,
      bytesCache: fromUpstream ? 0 : r.bytes,
      bytesUpstream: fromUpstream ? r.bytes : 0,
      pullsAvoided: pullAvoided ? 1 : 0,
    })
  }
}
