// The upstreams of one running pullcache, wired: a client and a mirror per configured registry
// (the root `upstream` and each of `upstreams`) over the one store and index, and what a reload
// may change in them without a restart (credentials, freshness, the rate-limit reserve). In a
// cluster each client asks the node that owns a key before upstream (upstream/cluster-upstream.ts).
// Adding, removing or re-pointing an upstream takes a restart: routes and pools are made once.

import type { Config } from './config.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import type { CommittedBlob } from './mirror/blob-lookup.js'
import { Mirror } from './mirror/mirror.js'
import { Mirrors } from './mirror/mirrors.js'
import type { IndexDb } from './store/index-db.js'
import type { Store } from './store/store.js'
import type { Credentials } from './upstream/auth.js'
import { Upstream } from './upstream/client.js'
import { ClusterUpstream, type Owners } from './upstream/cluster-upstream.js'
import type { Via } from './via.js'

type RootEntry = Config['upstream']
type OtherEntry = Config['upstreams'][number]

export interface UpstreamDeps {
  /** This process's Via (src/via.ts), on every request sent upstream. */
  via: Via
  /** In a cluster: who owns each key; keys another node owns are asked of it. */
  owners: Owners | undefined
  store: Store
  index: IndexDb
  log: Logger
  metrics: Metrics
  onBlobCommitted: (committed: CommittedBlob) => void
}

function credentialsOf(entry: RootEntry | OtherEntry): Credentials | null {
  return entry.username !== null && entry.password !== null
    ? { username: entry.username, password: entry.password }
    : null
}

/** A registry's own tag freshness: its `tag_freshness`, else the cache's. */
function freshnessOf(config: Config, entry: RootEntry | OtherEntry): number {
  return ('tag_freshness' in entry ? entry.tag_freshness : undefined) ?? config.cache.tag_freshness
}

export function buildMirrors(config: Config, deps: UpstreamDeps): Mirrors {
  const secret = config.cluster.secret
  const make = (entry: RootEntry | OtherEntry, registry: string | undefined) => {
    const options = {
      url: entry.url,
      host: entry.host,
      // The root keys the index by its URL's host, as before; the others share that key and
      // carry their host in their repositories' names (mirror/mirrors.ts).
      ...(registry === undefined ? {} : { registry, prefixedNames: true }),
      credentials: credentialsOf(entry),
      connectTimeoutMs: entry.connect_timeout,
      headerTimeoutMs: entry.header_timeout,
      idleTimeoutMs: entry.idle_timeout,
      connections: entry.connections,
      maxConcurrentFetches: entry.max_concurrent_fetches,
      rateLimitReserve: entry.rate_limit_reserve,
      offline: config.offline,
      libraryPrefix: entry.library_prefix,
      log: deps.log,
      metrics: deps.metrics,
      via: deps.via,
    }
    const upstream =
      deps.owners === undefined || secret === null
        ? new Upstream(options)
        : new ClusterUpstream({ ...options, owners: deps.owners, secret })
    return new Mirror({
      upstream,
      store: deps.store,
      index: deps.index,
      log: deps.log,
      metrics: deps.metrics,
      tagFreshnessMs: freshnessOf(config, entry),
      tagFreshnessRules: config.cache.tag_freshness_rules,
      revalidateTimeoutMs: config.cache.revalidate_timeout,
      manifestMemoryBytes: config.cache.manifest_memory,
      onBlobCommitted: deps.onBlobCommitted,
    })
  }
  const root = make(config.upstream, undefined)
  const others = config.upstreams.map((entry) => make(entry, root.registry))
  const mirrors = new Mirrors(root, others)
  // Each visibility learns now whether its upstream has an account: one that has forgets the
  // 'assumed' answers in the shared index before any anonymous client could lean on them.
  for (const m of mirrors.all) m.visibility.noteAccount()
  return mirrors
}

/** The keys of an `upstreams` entry a reload applies; any other change needs a restart. */
const RELOADABLE = new Set([
  'username',
  'password_file',
  'password',
  'tag_freshness',
  'rate_limit_reserve',
  'budget_share',
])

/** Whether the upstreams list differs in what only a restart applies. */
export function upstreamsNeedRestart(a: Config, b: Config): boolean {
  const fixed = (c: Config) =>
    c.upstreams.map((u) => Object.entries(u).filter(([key]) => !RELOADABLE.has(key)))
  return JSON.stringify(fixed(a)) !== JSON.stringify(fixed(b))
}

/**
 * Applies what a reload may change in the upstreams (those it can still match by host) and
 * returns the keys changed: credentials, freshness, the rate-limit reserve.
 */
export function reloadUpstreams(mirrors: Mirrors, current: Config, next: Config): string[] {
  const changed: string[] = []
  const pairs: [string, Mirror, RootEntry | OtherEntry, RootEntry | OtherEntry][] = [
    ['upstream', mirrors.root, current.upstream, next.upstream],
  ]
  next.upstreams.forEach((entry, i) => {
    const before = current.upstreams.find((u) => u.host === entry.host)
    const mirror = mirrors.forHost(entry.host)
    if (before !== undefined && mirror !== undefined && mirror !== mirrors.root) {
      pairs.push([`upstreams.${i}`, mirror, before, entry])
    }
  })
  const rules = (c: Config) =>
    JSON.stringify(c.cache.tag_freshness_rules.map((r) => [r.match.text, r.freshness]))
  const rulesChanged = rules(current) !== rules(next)
  for (const [at, mirror, before, after] of pairs) {
    if (before.username !== after.username || before.password !== after.password) {
      mirror.upstream.setCredentials(credentialsOf(after))
      mirror.visibility.noteAccount()
      changed.push(`${at}.credentials`)
    }
    const freshness = freshnessOf(next, after)
    if (freshness !== freshnessOf(current, before) || rulesChanged) {
      mirror.setTagFreshness(freshness, next.cache.tag_freshness_rules)
      // The root's is the cache's: reported under the key that changed it, as before.
      changed.push(at === 'upstream' ? 'cache.tag_freshness' : `${at}.tag_freshness`)
    }
    if (before.rate_limit_reserve !== after.rate_limit_reserve) {
      mirror.upstream.rateLimitReserve = after.rate_limit_reserve
      changed.push(`${at}.rate_limit_reserve`)
    }
  }
  return changed
}
