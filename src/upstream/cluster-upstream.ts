// The upstream as one node of a cluster sees it: a blob, a manifest or a tag is asked of the node
// that owns it (src/cluster/membership.ts), so the whole cluster sends one upstream request per
// key while its members agree. The owner answers through its normal registry routes: a cold blob
// streams from its fill as it arrives, a tag comes with Age (src/via.ts), so every node's window
// for the tag runs from the owner's check and the cluster sends one HEAD per tag per window.
//
// A relayed request carries the cluster secret (the owner lets it read what its account reads:
// the relaying node checked its own client first) and a relay header, and is never relayed
// again. An owner that cannot be reached within a second, or answers with anything but a result
// (a 5xx, a refused secret), is worked around: this node asks upstream itself, a duplicate
// fetch and not an error. Only "not found" is the owner's answer to pass on.

import { Agent, type Dispatcher } from 'undici'
import { networkFailure, UpstreamError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { MANIFEST_TYPES, MAX_MANIFEST_BYTES } from '../oci.js'
import type { Via } from '../via.js'
import {
  type BlobBody,
  type ManifestBody,
  type ManifestHead,
  Upstream,
  type UpstreamOptions,
} from './client.js'
import { header, manifestBodyOf, manifestHeadOf, readLimited } from './response.js'

/** Says that a request comes from another node of the cluster, and is not to be relayed on. */
export const RELAY_HEADER = 'x-pullcache-relay'
/** The cluster secret, proving the relaying node is one of the cluster's. */
export const PEER_HEADER = 'x-pullcache-peer'

const RELAY_CONNECT_TIMEOUT_MS = 1_000

/** What the relay needs of the membership: who owns a key, and telling it a node is down. */
export interface Owners {
  readonly self: string
  readonly clustered: boolean
  ownerOf(key: string): string
  markDown(url: string, reason: string): void
}

export interface ClusterUpstreamOptions extends UpstreamOptions {
  owners: Owners
  secret: string
  via: Via
}

/** The owner could not give an answer: ask upstream from here instead. */
class RelayFailed extends Error {}

export class ClusterUpstream extends Upstream {
  private readonly owners: Owners
  private readonly secret: string
  private readonly relayVia: Via
  private readonly relayLog: Logger
  private readonly relayMetrics: Metrics
  private readonly agent: Agent

  constructor(opts: ClusterUpstreamOptions) {
    super(opts)
    this.owners = opts.owners
    this.secret = opts.secret
    this.relayVia = opts.via
    this.relayLog = opts.log
    this.relayMetrics = opts.metrics
    this.agent = new Agent({
      connect: { timeout: RELAY_CONNECT_TIMEOUT_MS },
      headersTimeout: opts.headerTimeoutMs,
      bodyTimeout: opts.idleTimeoutMs,
      keepAliveTimeout: 30_000,
      connections: opts.connections,
    })
  }

  override async close(): Promise<void> {
    await Promise.all([super.close(), this.agent.destroy()])
  }

  override async getBlob(repo: string, digest: string, signal?: AbortSignal): Promise<BlobBody> {
    const got = await this.viaOwner(`blob\0${digest}`, signal, async (owner) => {
      const res = await this.relay(owner, 'GET', `/v2/${repo}/blobs/${digest}`, {}, signal)
      const length = header(res.headers, 'content-length')
      return { size: length === undefined ? undefined : Number(length), body: res.body, fromOwner: true }
    })
    return got ?? super.getBlob(repo, digest, signal)
  }

  override async headManifest(repo: string, reference: string, signal?: AbortSignal): Promise<ManifestHead> {
    const got = await this.viaOwner(this.manifestKey(repo, reference), signal, async (owner) => {
      const res = await this.relay(owner, 'HEAD', manifestPath(repo, reference), ACCEPT_MANIFESTS, signal)
      await res.body.dump()
      return manifestHeadOf(res.headers)
    })
    return got ?? super.headManifest(repo, reference, signal)
  }

  override async getManifest(repo: string, reference: string, signal?: AbortSignal): Promise<ManifestBody> {
    const got = await this.viaOwner(this.manifestKey(repo, reference), signal, async (owner) => {
      const res = await this.relay(owner, 'GET', manifestPath(repo, reference), ACCEPT_MANIFESTS, signal)
      const bytes = await readLimited(res, MAX_MANIFEST_BYTES)
      if (bytes === undefined) throw new RelayFailed(`manifest ${repo}:${reference} is larger than 4 MiB`)
      return manifestBodyOf(res.headers, bytes)
    })
    return got ?? super.getManifest(repo, reference, signal)
  }

  /** A tag is owned by its name, a manifest by its digest: the same keys on every node. */
  private manifestKey(repo: string, reference: string): string {
    return reference.includes(':') ? `manifest\0${reference}` : `tag\0${this.registry}/${repo}:${reference}`
  }

  /**
   * Asks the key's owner when that is another node and this request was not itself relayed;
   * undefined when this node is to ask upstream (it owns the key, or the owner failed).
   */
  private async viaOwner<T>(
    key: string,
    signal: AbortSignal | undefined,
    ask: (owner: string) => Promise<T>,
  ): Promise<T | undefined> {
    if (!this.owners.clustered || this.relayVia.relayed() || this.offline) return undefined
    const outcome = (o: 'ok' | 'not_found' | 'failed' | 'fallback') =>
      this.relayMetrics.relays.inc({ outcome: o })
    // Each turn takes one node out of the live set, and no node is asked twice.
    const asked = new Set<string>()
    for (;;) {
      const owner = this.owners.ownerOf(key)
      if (owner === this.owners.self || asked.has(owner)) {
        if (asked.size > 0) outcome('fallback')
        return undefined
      }
      asked.add(owner)
      try {
        const got = await ask(owner)
        outcome('ok')
        return got
      } catch (err) {
        if (err instanceof UpstreamError) {
          outcome(err.kind === 'NOT_FOUND' ? 'not_found' : 'failed')
          throw err
        }
        // The request's own deadline or its client: not the owner's fault.
        if (signal?.aborted) {
          outcome('failed')
          throw networkFailure(signal.reason)
        }
        const reason = err instanceof RelayFailed ? err.message : networkFailure(err, 'owner').message
        this.relayLog.warn('cluster.relay_failed', { owner, key: key.replaceAll('\0', ' '), reason })
        // One that answered badly stays (its upstream may be what failed), and this one request
        // goes upstream from here.
        if (err instanceof RelayFailed) {
          outcome('fallback')
          return undefined
        }
        // An unreachable owner leaves the live set, and the key's next owner is asked: the node
        // every survivor picks once it finds the same, so a dead filler costs one more fetch for
        // the cluster, not one per node.
        this.owners.markDown(owner, reason)
      }
    }
  }

  /** One request to the owner: 200 comes back unread, 404 is upstream's "not found". */
  private async relay(
    owner: string,
    method: 'GET' | 'HEAD',
    path: string,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
  ): Promise<Dispatcher.ResponseData> {
    const res = await this.agent.request({
      origin: owner,
      path,
      method,
      headers: {
        ...headers,
        [PEER_HEADER]: this.secret,
        [RELAY_HEADER]: this.owners.self,
        via: this.relayVia.outgoing(),
      },
      ...(signal === undefined ? {} : { signal }),
    })
    if (res.statusCode === 200) return res
    await res.body.dump().catch(() => {})
    if (res.statusCode === 404) {
      throw new UpstreamError('NOT_FOUND', `${method} ${path}: the owning node ${owner} says not found`, {
        status: 404,
      })
    }
    throw new RelayFailed(`${method} ${path}: the owning node answered ${res.statusCode}`)
  }
}

const ACCEPT_MANIFESTS = { accept: MANIFEST_TYPES.join(', ') }

function manifestPath(repo: string, reference: string): string {
  return `/v2/${repo}/manifests/${reference}`
}
