// pullcache's own endpoints under /_pullcache/, apart from the registry API: a name outside /v2/
// can never collide with a repository. Errors are thrown as RegistryError and rendered by the
// parent app, so they are OCI JSON like every other error.

import { Hono } from 'hono'
import type { ClusterTotals } from '../cluster/totals.js'
import type { Config } from '../config.js'
import { RegistryError } from '../errors.js'
import type { Mirrors } from '../mirror/mirrors.js'
import {
  anonymousView,
  budgetBytes,
  liveUpstream,
  type StatsReport,
  statsReport,
  storageReport,
} from '../mirror/stats-report.js'
import type { IndexDb } from '../store/index-db.js'
import type { Store } from '../store/store.js'
import { parseDuration } from '../units.js'
import type { Viewer } from './access.js'

export const ADMIN_PREFIX = '/_pullcache'

export interface AdminDeps {
  index: IndexDb
  /** The store, for readiness (does it take writes). */
  store: Store
  config: Config
  /** The budget in force now: a SIGHUP may have changed it since the server started. */
  budget?: () => number | null
  /** In a cluster: the cluster's totals, for the stats document's `cluster` part. */
  cluster?: ClusterTotals | undefined
}

/** Routes that know who is asking (set by the app's access middleware). */
export type ViewerEnv = { Variables: { viewer: Viewer } }

/**
 * The stats document of the running server; `since` in ms since epoch. An anonymous viewer sees
 * by name only the repositories anonymous pulls may read; the totals cover everything.
 */
export async function serverStats(
  mirrors: Mirrors,
  deps: AdminDeps,
  startedAt: number,
  since: number | undefined,
  viewer: Viewer,
): Promise<StatsReport> {
  const now = Date.now()
  const view = viewer.user === null ? anonymousView(mirrors.root, deps.index) : undefined
  const report = statsReport({
    index: deps.index,
    since,
    view,
    budgetBytes: deps.budget ? deps.budget() : budgetBytes(deps.config),
    upstreams: mirrors.all.map((m) => ({
      host: m.upstream.host,
      namePrefix: m.upstream.namePrefix,
      report: liveUpstream(m, view?.visible),
    })),
    uptimeSeconds: Math.floor((now - startedAt) / 1000),
    now,
  })
  const cluster = deps.cluster === undefined ? undefined : await deps.cluster.report()
  return { ...report, storage: storageReport(deps.store), ...(cluster === undefined ? {} : { cluster }) }
}

/** Routes to mount at ADMIN_PREFIX. */
export function adminRoutes(mirrors: Mirrors, deps: AdminDeps): Hono<ViewerEnv> {
  // The app is made once per server, as it starts.
  const startedAt = Date.now()
  const admin = new Hono<ViewerEnv>()

  admin.get('/stats', async (c) => {
    const since = sinceParam(c.req.query('since'))
    const report = await serverStats(
      mirrors,
      deps,
      startedAt,
      since === undefined ? undefined : Date.now() - since,
      c.get('viewer'),
    )
    // Numbers of this moment: no cache between here and whoever polls them.
    return c.json(report, 200, { 'Cache-Control': 'no-store' })
  })

  return admin
}

/** `since=24h`: a duration back from now, in ms; undefined when absent. */
function sinceParam(value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const ms = parseDuration(value)
  if (ms === undefined) {
    throw new RegistryError(
      'REQUEST_INVALID',
      { parameter: 'since', value, expected: 'a duration like "30m", "24h" or "7d"' },
      { message: 'invalid query parameter: since' },
    )
  }
  return ms
}
