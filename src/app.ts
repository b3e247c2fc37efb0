// The HTTP application: the access middleware, then the routes (metrics, pullcache's own
// endpoints, the status page, the registry API in http/registry.ts), and the one place errors
// are rendered. No I/O happens at import; createApp gets everything it uses.

import { type Context, Hono } from 'hono'
import { ownFigures } from './cluster/figures.js'
import type { Membership } from './cluster/membership.js'
import { ClusterTotals } from './cluster/totals.js'
import { RegistryError } from './errors.js'
import { type Access, ANONYMOUS, certificateUser, type RegistryEnv } from './http/access.js'
import { ADMIN_PREFIX, type AdminDeps, adminRoutes } from './http/admin.js'
import { clusterRoutes } from './http/cluster-route.js'
import { healthRoutes } from './http/health.js'
import { noteOf } from './http/outcome.js'
import { rawPath, registryRoutes } from './http/registry.js'
import { statusPageRoutes } from './http/status-page.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import type { Mirrors } from './mirror/mirrors.js'
import { PEER_HEADER, RELAY_HEADER } from './upstream/cluster-upstream.js'
import type { Via } from './via.js'

export interface AppDeps {
  /** A mirror per upstream registry; the root one answers requests that name no other. */
  mirrors: Mirrors
  log: Logger
  metrics: Metrics
  /** What the /_pullcache/ routes read: the index and the config. */
  admin: AdminDeps
  /** Client accounts and who may reach the operator endpoints. */
  access: Access
  /** Loops between tiered mirrors are refused; a client's Via goes on upstream. */
  via: Via
  /** The cluster this node is in, if any (GET /_pullcache/cluster). */
  cluster?: Membership | undefined
}

/** Load balancers' probes: reachable from anywhere, without an account. */
const HEALTH_PATHS = new Set([`${ADMIN_PREFIX}/healthz`, `${ADMIN_PREFIX}/readyz`])

/** The status page, /_pullcache/* and /metrics: what admin.allow restricts. */
function isOperatorPath(path: string): boolean {
  return path === '/' || path === '/metrics' || path === ADMIN_PREFIX || path.startsWith(`${ADMIN_PREFIX}/`)
}

export function createApp({
  mirrors,
  log,
  metrics,
  admin,
  access,
  via,
  cluster,
}: AppDeps): Hono<RegistryEnv> {
  const app = new Hono<RegistryEnv>()

  // A request from another mirror (a site pullcache, a proxy, a node of this cluster) says where
  // it has been; one from a cluster node is answered here, never relayed on.
  app.use('*', (c, next) => {
    const chain = c.req.header('via')
    const relayed = c.req.header(RELAY_HEADER) !== undefined
    if (chain === undefined && !relayed) return next()
    if (via.isLoop(chain))
      throw new RegistryError('LOOP_DETECTED', { via: chain?.slice(0, 512), self: via.id })
    return via.within(chain ?? '', relayed, next)
  })

  // Who is asking, before any route: admin.allow first (no password work for a refused
  // address; a node of this cluster, holding its secret, is let through), then the client's
  // account. Health probes and /metrics name no repository and need no account.
  app.use('*', async (c, next) => {
    const path = rawPath(c.req.url)
    const address = c.env.incoming.socket.remoteAddress ?? ''
    if (HEALTH_PATHS.has(path)) {
      c.set('viewer', ANONYMOUS)
      return next()
    }
    const peer = access.peer(c.req.header(PEER_HEADER))
    if (isOperatorPath(path) && peer === undefined && !access.adminAllowed(address)) {
      throw new RegistryError('DENIED', { reason: 'this address may not reach the operator endpoints' })
    }
    const socket = c.env.incoming.socket
    const viewer =
      path === '/metrics'
        ? ANONYMOUS
        : (peer ??
          (await access.identify(c.req.header('authorization'), address, false, certificateUser(socket))))
    c.set('viewer', viewer)
    if (viewer.user !== null) noteOf(c.env.outgoing).user = viewer.user
    return next()
  })

  app.get('/metrics', async () => {
    const body = await metrics.registry.metrics()
    return new Response(body, { headers: { 'Content-Type': metrics.registry.contentType } })
  })

  // In a cluster, the stats and the status page add the cluster's totals to the node's own.
  if (cluster !== undefined) {
    metrics.sources.clusterMembers = () => {
      const members = cluster.members()
      const live = members.filter((m) => m.live).length
      return { live, down: members.length - live }
    }
  }
  const own = () => ownFigures(metrics)
  const withTotals: AdminDeps =
    cluster === undefined
      ? admin
      : {
          ...admin,
          cluster: new ClusterTotals({ membership: cluster, secret: admin.config.cluster.secret, own }),
        }
  app.route(ADMIN_PREFIX, adminRoutes(mirrors, withTotals))
  app.route(ADMIN_PREFIX, healthRoutes(mirrors, admin))
  app.route(ADMIN_PREFIX, clusterRoutes(cluster, own, admin.store))
  app.route('/', statusPageRoutes(mirrors, withTotals))

  app.route('/', registryRoutes(mirrors, access))

  app.notFound((c) => {
    const err = new RegistryError('NOT_FOUND', { path: rawPath(c.req.url) })
    return render(c, err)
  })

  app.onError((err, c) => {
    if (err instanceof RegistryError) return render(c, err)
    log.error('request.failed', { method: c.req.method, path: rawPath(c.req.url), error: err })
    return render(c, new RegistryError('UNKNOWN', null, { message: 'internal error' }))
  })

  return app
}

function render(c: Context, err: RegistryError): Response {
  const body = err.body()
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    'Content-Length': String(Buffer.byteLength(body)),
    ...err.headers,
  }
  return new Response(c.req.method === 'HEAD' ? null : body, { status: err.status, headers })
}
