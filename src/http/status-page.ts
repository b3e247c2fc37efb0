// The status page at / and /_pullcache/: what is drawn and when. Each load waits (briefly) for
// the readiness ping so the badge tells how upstream is now, takes the stats document as the
// viewer may see it, and sends it drawn (status-page-render.ts) with headers that keep the page
// out of caches and keep anything that slipped past escaping from running or loading.

import { type Context, Hono } from 'hono'
import type { Mirrors } from '../mirror/mirrors.js'
import { challenge } from './access.js'
import { ADMIN_PREFIX, type AdminDeps, serverStats, type ViewerEnv } from './admin.js'
import { upstreamCheck } from './health.js'
import { renderStatusPage } from './status-page-render.js'

// Whatever an injection got past escaping could still not run a script or load anything.
const SECURITY_HEADERS = {
  'Content-Security-Policy':
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
}

/** Routes to mount at the root: the page at / and at ADMIN_PREFIX/. */
export function statusPageRoutes(mirrors: Mirrors, deps: AdminDeps): Hono<ViewerEnv> {
  // The app is made once per server, as it starts.
  const startedAt = Date.now()
  const page = new Hono<ViewerEnv>()
  const handler = async (c: Context<ViewerEnv>) => {
    // The badge tells how upstream is now, not at its last pull: wait (a few seconds at most)
    // for the readiness ping, which is sent at most once per 10 s however often pages load.
    await Promise.all(mirrors.all.map((m) => upstreamCheck(m)))
    const body = renderStatusPage(await serverStats(mirrors, deps, startedAt, undefined, c.get('viewer')))
    return new Response(body, {
      status: 200,
      headers: {
        'Content-Type': 'text/html; charset=utf-8',
        'Cache-Control': 'no-store',
        ...SECURITY_HEADERS,
      },
    })
  }
  for (const path of ['/', ADMIN_PREFIX, `${ADMIN_PREFIX}/`]) page.get(path, handler)
  // Anonymous viewers see the page without private names. This is where a browser signs in:
  // the 401 makes it ask, and it then sends the account with every request under ADMIN_PREFIX/.
  page.get(`${ADMIN_PREFIX}/login`, (c) => {
    if (c.get('viewer').user === null) throw challenge('sign in to see every repository')
    return c.redirect(`${ADMIN_PREFIX}/`, 303)
  })
  return page
}
