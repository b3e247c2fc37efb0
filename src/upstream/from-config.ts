// The upstream client the config describes: the registry, its account and timeouts, and in a
// cluster the relay to the node that owns each key (cluster-upstream.ts).

import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Via } from '../via.js'
import { Upstream } from './client.js'
import { ClusterUpstream, type Owners } from './cluster-upstream.js'

export function upstreamFromConfig(
  config: Config,
  deps: { log: Logger; metrics: Metrics; via: Via; owners: Owners | undefined },
): Upstream {
  const { upstream } = config
  const options = {
    url: upstream.url,
    credentials:
      upstream.username !== null && upstream.password !== null
        ? { username: upstream.username, password: upstream.password }
        : null,
    connectTimeoutMs: upstream.connect_timeout,
    headerTimeoutMs: upstream.header_timeout,
    idleTimeoutMs: upstream.idle_timeout,
    connections: upstream.connections,
    maxConcurrentFetches: upstream.max_concurrent_fetches,
    rateLimitReserve: upstream.rate_limit_reserve,
    offline: config.offline,
    libraryPrefix: upstream.library_prefix,
    log: deps.log,
    metrics: deps.metrics,
    via: deps.via,
  }
  const secret = config.cluster.secret
  return deps.owners === undefined || secret === null
    ? new Upstream(options)
    : new ClusterUpstream({ ...options, owners: deps.owners, secret })
}
