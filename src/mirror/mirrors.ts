// The mirrors of one running pullcache: one Mirror per upstream registry, all over one store and
// one index. The root upstream answers whatever names no other registry (dockerd's mirror, a
// request without ?ns=); each other one answers for its host. Each keeps its own client
// (credentials, tokens, budget), freshness, single flights and visibility; the store, index and
// metrics are shared, so a digest pulled through one registry is stored once and is a hit
// through another, where the client may read it (visibility.ts).
//
//   index (shared registry key)    repositories
//     root upstream                "library/alpine", "bitnami/redis"   (as before: no migration)
//     upstreams[i] with host H     "H/org/app"                        (never a Docker Hub name)

import type { Fill } from './blob-fill.js'
import type { Mirror } from './mirror.js'

/** Names a Docker Hub mirror (library/ names) answers for whatever host it pulls from. */
const DOCKER_HUB_NAMES = ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']

export class Mirrors {
  readonly root: Mirror
  /** Every mirror, the root first. */
  readonly all: readonly Mirror[]
  private readonly byHost = new Map<string, Mirror>()

  constructor(root: Mirror, others: readonly Mirror[] = []) {
    this.root = root
    this.all = [root, ...others]
    // The names a client may use for each: its configured host, and its URL's host. Others'
    // configured hosts come first, so no alias of the root can shadow one.
    const upstream = root.upstream
    const rootNames = [upstream.host, upstream.origin.host, upstream.origin.hostname]
    if (upstream.libraryPrefix) rootNames.push(...DOCKER_HUB_NAMES)
    for (const m of others) this.byHost.set(m.upstream.host, m)
    for (const m of others) this.alias(m.upstream.origin.host, m)
    for (const name of rootNames) this.alias(name, root)
  }

  /** The configured host of every upstream, the root's first. */
  get hosts(): string[] {
    return this.all.map((m) => m.upstream.host)
  }

  /** The mirror a registry name (?ns=, a path prefix) means; undefined for one not configured. */
  forHost(host: string): Mirror | undefined {
    return this.byHost.get(host.toLowerCase())
  }

  /** Fills in progress in every mirror, for draining on shutdown and for metrics. */
  inflight(): Fill[] {
    return this.all.flatMap((m) => m.inflight())
  }

  /** Whether any response is streaming this blob from the store right now (eviction skips it). */
  isInUse(digest: string): boolean {
    return this.all.some((m) => m.isInUse(digest))
  }

  get offline(): boolean {
    return this.root.offline
  }

  set offline(value: boolean) {
    for (const m of this.all) m.offline = value
  }

  private alias(name: string, mirror: Mirror): void {
    if (!this.byHost.has(name)) this.byHost.set(name, mirror)
  }
}
