// Liveness and readiness for process supervisors and load balancers. healthz says only that the
// process answers HTTP; readyz says whether a pull can succeed now: the store takes writes, the
// index answers, and upstream answers (or is not meant to be asked: offline on purpose, when the
// cache alone serves). No check may hang a probe, so each has a deadline.

import { Hono } from 'hono'
import type { Mirror } from '../mirror/mirror.js'
import type { Mirrors } from '../mirror/mirrors.js'
import { VERSION } from '../version.js'
import type { AdminDeps } from './admin.js'

/** Longest a readiness check may take before it counts as failed. */
export const CHECK_DEADLINE_MS = 3_000

export interface Check {
  ok: boolean
  detail: string
}

export interface Readiness {
  ready: boolean
  /**
   * `upstream` is the root upstream's, and decides readiness with the store and the index;
   * `upstreams` has the others' by host: one registry down leaves the rest served, so it is
   * reported, not a reason to take pullcache out of service.
   */
  checks: { store: Check; index: Check; upstream: Check; upstreams?: Record<string, Check> }
}

/** Routes to mount at ADMIN_PREFIX. */
export function healthRoutes(mirrors: Mirrors, deps: AdminDeps): Hono {
  // The app is made once per server, as it starts.
  const startedAt = Date.now()
  const health = new Hono()

  health.get('/healthz', (c) =>
    c.json(
      { status: 'ok', version: VERSION, uptime_seconds: Math.floor((Date.now() - startedAt) / 1000) },
      200,
      { 'Cache-Control': 'no-store' },
    ),
  )

  health.get('/readyz', async (c) => {
    const others = mirrors.all.slice(1)
    const [store, index, upstream, ...rest] = await Promise.all([
      deadline(checkStore(deps)),
      deadline(checkIndex(deps)),
      upstreamCheck(mirrors.root),
      ...others.map((m) => upstreamCheck(m)),
    ])
    const ready = store.ok && index.ok && upstream.ok
    const checks: Readiness['checks'] = { store, index, upstream }
    if (others.length > 0) {
      checks.upstreams = Object.fromEntries(others.map((m, i) => [m.upstream.host, rest[i]!]))
    }
    const body: Readiness = { ready, checks }
    return c.json(body, ready ? 200 : 503, { 'Cache-Control': 'no-store' })
  })

  return health
}

/** Whether the store takes writes: a small write and its removal, where blobs are written. */
async function checkStore(deps: AdminDeps): Promise<Check> {
  try {
    return { ok: true, detail: await deps.store.blobs.probe() }
  } catch (err) {
    return { ok: false, detail: (err as Error).message }
  }
}

/** Reads the schema version: a query that reaches the database file, yet costs nothing. */
async function checkIndex(deps: AdminDeps): Promise<Check> {
  try {
    return { ok: true, detail: `open, schema version ${deps.index.schemaVersion}` }
  } catch (err) {
    return { ok: false, detail: `index query failed: ${(err as Error).message}` }
  }
}

/**
 * Whether upstream answers, within CHECK_DEADLINE_MS: the readiness check, which the status
 * page also waits on so that its badge tells how upstream is now. A ping is sent at most once
 * per 10 s however many ask (Upstream.ping), and its answer or failure is what
 * Upstream.reachability reports.
 */
export function upstreamCheck(mirror: Mirror): Promise<Check> {
  return deadline(checkUpstream(mirror))
}

async function checkUpstream(mirror: Mirror): Promise<Check> {
  // Offline on purpose means the cache alone serves: ready, since that is what was asked for.
  if (mirror.offline) return { ok: true, detail: 'offline on purpose' }
  const ping = await mirror.upstream.ping()
  // Offline may have been switched on while the ping was out.
  if (mirror.offline) return { ok: true, detail: 'offline on purpose' }
  return { ok: ping.reachable, detail: ping.detail }
}

function deadline(check: Promise<Check>): Promise<Check> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<Check>((r) => {
    timer = setTimeout(
      () => r({ ok: false, detail: `no answer within ${CHECK_DEADLINE_MS / 1000} s` }),
      CHECK_DEADLINE_MS,
    )
  })
  return Promise.race([check, late]).finally(() => clearTimeout(timer))
}
