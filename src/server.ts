// Wires one running pullcache: store and index opened (and reconciled in the background after a
// crash), upstream client, mirror, routes, and the HTTP server, each request's outcome written
// once when it is over (http/outcome.ts). main.ts and the tests both start it here.

import { randomUUID } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import type { Server as HttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import { join, resolve } from 'node:path'
import { getRequestListener } from '@hono/node-server'
import { createApp } from './app.js'
import { startMembership } from './cluster/start-membership.js'
import type { Config } from './config.js'
import { Access } from './http/access.js'
import { createLimitedServer, requestError, type Server } from './http/limits.js'
import { recordOutcome } from './http/outcome.js'
import type { Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import type { Mirror } from './mirror/mirror.js'
import type { Mirrors } from './mirror/mirrors.js'
import { evictEvents, fillEvent } from './notify/events.js'
import { metricCounters, Notifier } from './notify/notifier.js'
import { buildMirrors, reloadUpstreams, upstreamsNeedRestart } from './server-upstreams.js'
import { BlobStore } from './store/blob-store.js'
import { bucketBudgetFor } from './store/bucket-budget.js'
import { Evictor } from './store/eviction.js'
import { budgetShares, policyFrom } from './store/eviction-policy.js'
import { IndexDb } from './store/index-db.js'
import { type BackgroundReconcile, reconcileInBackground } from './store/reconcile.js'
import { bucketSettings, startSharedTier } from './store/shared-tier-start.js'
import { Store } from './store/store.js'
import { lockStore } from './store/store-lock.js'
import {
  contextOptions,
  readTlsMaterial,
  sameMaterial,
  serverTlsOptions,
  TlsError,
  type TlsMaterial,
  tlsEnabled,
} from './tls.js'
import { Via } from './via.js'

export interface RunningServer {
  /** http://host:port (https:// with TLS), with a loopback host when listening on every address. */
  url: string
  /** The root upstream's mirror. */
  mirror: Mirror
  /** Every upstream's mirror. */
  mirrors: Mirrors
  index: IndexDb
  metrics: Metrics
  evictor: Evictor
  notifier: Notifier
  /** The background reconciliation, when the last stop was not clean. */
  reconciliation: BackgroundReconcile | undefined
  /**
   * Applies what can change without a restart (credentials, freshness, budget, pins, offline,
   * rate-limit reserve) and returns the keys that changed; keys that need a restart are listed
   * apart and left as they were.
   */
  reload(next: Config): { changed: string[]; needRestart: string[] }
  /** Stops accepting, lets responses finish for up to graceMs, then closes everything. */
  close(graceMs?: number): Promise<void>
}

export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  // First: a broken htpasswd file or TLS file stops the start before anything is opened.
  const access = new Access({ config, log })
  let tlsMaterial: TlsMaterial | undefined = tlsEnabled(config.tls) ? readTlsMaterial(config.tls) : undefined
  const root = resolve(config.data_dir)
  await mkdir(root, { recursive: true })
  const blobs = new BlobStore(root)
  const unlock = lockStore(root)
  const { removedTemp } = await blobs.open().catch((err: unknown) => {
    unlock()
    throw err
  })
  const index = new IndexDb(join(root, 'index.db'))
  // After a clean stop the index is trusted as it is; otherwise it is reconciled with the files
  // in the background once the server listens (store/reconcile.ts).
  const trusted = index.takeCleanMark()
  const shared =
    config.storage.type === 's3'
      ? await startSharedTier(bucketSettings(config.storage), {
          log,
          abandonedUploadAgeMs: config.storage.s3.abandoned_upload_age,
        })
      : undefined
  const store = new Store(blobs, index, shared?.tier)
  log.info('store.opened', {
    data_dir: root,
    removed_temp_files: removedTemp,
    schema: index.schemaVersion,
    index_trusted: trusted,
  })

  const metrics = createMetrics()
  // This process's Via id: what it adds upstream, and what it refuses when it comes back.
  const via = new Via()
  // In a cluster, keys another node owns are asked of it (upstream/cluster-upstream.ts).
  const membership = await startMembership(config, log)
  // The bucket's budget for the whole cluster (storage.s3.max_size): journals and the evictor.
  let bucketPins = config.cache.pins
  const bucketBudget = await bucketBudgetFor(config, store, root, log, membership, () => bucketPins)
  // Webhooks (notifications.endpoints). The source names this instance; its address is known
  // once the server listens.
  const instanceID = randomUUID()
  const notifier = new Notifier({
    endpoints: config.notifications.endpoints,
    log,
    counters: metricCounters(metrics),
    source: { addr: hostname(), instanceID },
  })
  metrics.sources.notifyPending = () => notifier.pending()
  let evictor: Evictor | undefined
  // A failed run (the index, the plan) is logged and counted; the next run tries again.
  const evictionFailed = (err: unknown) => {
    metrics.evictionErrors.inc()
    log.error('store.eviction_failed', { error: err })
  }
  const mirrors = buildMirrors(config, {
    via,
    owners: membership,
    store,
    index,
    log,
    metrics,
    onBlobCommitted: (committed) => {
      notifier.emit(fillEvent(committed))
      if (evictor?.overBudget()) void evictor.run().catch((err: unknown) => evictionFailed(err))
    },
  })
  const mirror = mirrors.root
  evictor = new Evictor({
    store,
    log,
    metrics,
    policy: policyFrom(config.cache, budgetShares(config)),
    inUse: (digest) => mirrors.isInUse(digest),
    onEvicted: (blobs) => {
      for (const event of evictEvents(blobs)) notifier.emit(event)
    },
  })
  metrics.sources.storeBudget = () => evictor?.budget ?? 0
  watchGauges(metrics, mirrors, index)
  const app = createApp({
    mirrors,
    via,
    cluster: membership,
    log,
    metrics,
    admin: { index, store, config, budget: () => evictor?.budget ?? null },
    access,
  })
  const listener = getRequestListener(app.fetch, { errorHandler: requestError })

  const server: Server = createLimitedServer(
    config.limits,
    log,
    (req, res) => {
      res.setHeader('Docker-Distribution-API-Version', 'registry/2.0')
      const handled = Promise.resolve(listener(req, res)).catch((err: unknown) => {
        log.error('request.crashed', { method: req.method, error: err })
        res.destroy()
      })
      recordOutcome(req, res, handled, { mirror, metrics, log, accessLog: config.log.access, notifier })
    },
    tlsMaterial === undefined ? undefined : serverTlsOptions(config.tls, tlsMaterial),
  )

  // With TLS the server is node:https's (createLimitedServer), whose context a reload swaps.
  const secureServer = tlsMaterial === undefined ? undefined : (server as HttpsServer)

  await new Promise<void>((resolveListen, reject) => {
    server.once('error', reject)
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject)
      resolveListen()
    })
  })
  const address = server.address() as AddressInfo
  const host = address.address === '0.0.0.0' || address.address === '::' ? '127.0.0.1' : address.address
  const scheme = tlsMaterial === undefined ? 'http' : 'https'
  const url = `${scheme}://${host.includes(':') ? `[${host}]` : host}:${address.port}`
  notifier.setSource({ addr: `${hostname()}:${address.port}`, instanceID })
  log.info('listening', {
    url,
    address: `${address.address}:${address.port}`,
    upstream: mirror.upstream.origin.origin,
    account: config.upstream.username !== null,
    ...(config.upstreams.length === 0
      ? {}
      : {
          upstreams: config.upstreams.map((u) => ({
            host: u.host,
            url: u.url,
            account: u.username !== null,
          })),
        }),
    ...(tlsMaterial === undefined
      ? {}
      : {
          tls: {
            subject: tlsMaterial.subject,
            valid_to: tlsMaterial.validTo,
            client_auth: config.tls.client_auth,
          },
        }),
  })

  // WAL checkpoints (a copy and an fsync) run in a thread of their own, not inside whichever
  // commit of an eviction or a reconciliation crosses SQLite's threshold.
  index.checkpointInBackground(CHECKPOINT_INTERVAL_MS, (message) =>
    log.error('index.checkpointer_failed', { error: message, fallback: 'automatic checkpoints' }),
  )
  const reconciliation = trusted ? undefined : reconcileInBackground(store, log)

  const flushTimer = setInterval(() => {
    try {
      index.flush()
    } catch (err) {
      log.error('index.flush_failed', { error: err })
    }
  }, config.index.flush_interval)
  flushTimer.unref()
  // Accounting is kept for accounting_retention; older hours go, checked every hour and at start.
  const pruneAccounting = () => {
    index
      .pruneAccountingBefore(Date.now() - config.index.accounting_retention)
      .then((rows) => {
        if (rows > 0) log.info('index.accounting_pruned', { rows })
      })
      .catch((err: unknown) => log.error('index.prune_failed', { error: err }))
  }
  const pruneTimer = setInterval(pruneAccounting, 3_600_000)
  pruneTimer.unref()
  pruneAccounting()
  const evictionTimer = setInterval(() => {
    evictor.run().catch((err: unknown) => evictionFailed(err))
  }, config.cache.eviction_interval)
  evictionTimer.unref()
  // A store over budget at start (budget lowered, or files adopted) shrinks right away.
  void evictor.run().catch((err: unknown) => evictionFailed(err))

  let current = config
  const reload = (next: Config) => {
    const changed: string[] = []
    const needRestart: string[] = []
    const differs = (a: unknown, b: unknown) => JSON.stringify(a) !== JSON.stringify(b)
    for (const key of RESTART_KEYS) {
      const [a, b] = [pick(current, key), pick(next, key)]
      if (differs(a, b)) needRestart.push(key)
    }
    // Against the start's config, not the last reload's: the listener is still the one made then.
    if (tlsRestart(config, next)) needRestart.push('tls')
    // Against the start's config too: the upstreams made then are the ones running.
    if (upstreamsNeedRestart(config, next)) needRestart.push('upstreams')
    changed.push(...reloadUpstreams(mirrors, current, next))
    const policy = (c: Config) => ({
      ...policyFrom(c.cache, budgetShares(c)),
      pins: c.cache.pins.map((p) => p.text),
    })
    if (differs(policy(next), policy(current))) {
      evictor.setPolicy(policyFrom(next.cache, budgetShares(next)))
      changed.push('cache.eviction')
    }
    if (next.offline !== current.offline) {
      mirrors.offline = next.offline
      changed.push('offline')
    }
    // The htpasswd file is read again whether or not its path changed: that is how accounts change.
    changed.push(...access.reload(next))
    // So are the TLS files, for a certificate renewed in place. Handshakes from now on get the
    // new ones; connections already open keep theirs. A set that does not check out is refused
    // and the one in force stays.
    if (tlsMaterial !== undefined && !tlsRestart(config, next)) {
      try {
        const material = readTlsMaterial(next.tls)
        if (!sameMaterial(material, tlsMaterial) || differs(next.tls, current.tls)) {
          secureServer?.setSecureContext(contextOptions(material))
          tlsMaterial = material
          changed.push('tls')
          log.info('tls.loaded', { subject: material.subject, valid_to: material.validTo })
        }
      } catch (err) {
        log.error('tls.rejected', {
          error: err instanceof TlsError ? err.problems : (err as Error).message,
          kept: { subject: tlsMaterial.subject, valid_to: tlsMaterial.validTo },
        })
      }
    }
    if (notifier.reload(next.notifications.endpoints)) changed.push('notifications')
    if (membership?.setPeers(next.cluster.peers)) changed.push('cluster.peers')
    current = next
    bucketPins = next.cache.pins
    log.info('config.reloaded', { changed, need_restart: needRestart })
    if (changed.includes('cache.eviction')) void evictor.run().catch((err: unknown) => evictionFailed(err))
    return { changed, needRestart }
  }

  let closing: Promise<void> | undefined
  const close = (graceMs = config.shutdown_grace) => {
    closing ??= (async () => {
      // First: the others stop counting this node (its heartbeat goes), before it stops answering.
      await membership?.leave()
      const closed = new Promise<void>((r) => server.close(() => r()))
      // Keep-alive clients (dockerd, containerd) hold their connection open after a response;
      // close each as soon as it falls idle, not only those idle at the start.
      server.closeIdleConnections()
      const sweeper = setInterval(() => server.closeIdleConnections(), 50)
      const timer = setTimeout(() => server.closeAllConnections(), graceMs)
      await closed
      clearInterval(sweeper)
      clearTimeout(timer)
      // Fills nobody waits for any more are abandoned; their temp files are discarded and the
      // store holds only what was verified and renamed into place.
      await Promise.allSettled(mirrors.inflight().map((f) => f.abort()))
      clearInterval(flushTimer)
      clearInterval(pruneTimer)
      clearInterval(evictionTimer)
      await reconciliation?.stop()
      await evictor.idle()
      await index.stopCheckpoints()
      // Events of the last responses and evictions get a short while to go out.
      await notifier.close()
      await bucketBudget?.close()
      // Uploads to the bucket of blobs committed here get the grace period to finish: a blob
      // left out is fetched again by the next node that misses it.
      await shared?.close(store.bucket.publishesDone(), graceMs)
      membership?.close()
      await Promise.allSettled(mirrors.all.map((m) => m.upstream.close()))
      // The last write: index and files agree, the next start need not check. Not after a
      // reconciliation that was stopped halfway: the next start runs it again.
      if (reconciliation === undefined || reconciliation.completed) index.markClean()
      index.close()
      unlock()
      log.info('stopped', {})
    })()
    return closing
  }
  return { url, mirror, mirrors, index, metrics, evictor, notifier, reconciliation, reload, close }
}

/** How often the checkpointer thread copies the WAL back into the index file. */
const CHECKPOINT_INTERVAL_MS = 200

/** Settings that are read once, at start: a reload reports them as needing a restart. */
const RESTART_KEYS = [
  'listen',
  'data_dir',
  'shutdown_grace',
  'upstream.url',
  'upstream.host',
  'upstream.library_prefix',
  'upstream.connections',
  'upstream.connect_timeout',
  'upstream.header_timeout',
  'upstream.idle_timeout',
  'upstream.max_concurrent_fetches',
  'cache.revalidate_timeout',
  'cache.manifest_memory',
  'cache.eviction_interval',
  'index.flush_interval',
  'index.accounting_retention',
  'limits',
  'log.level',
  'log.access',
  'cluster.node_url',
  'cluster.peers_dns',
  'cluster.peers_from_bucket',
  'storage',
]

/**
 * TLS settings a reload cannot apply: turning TLS on or off changes the listener, and whether
 * client certificates are asked for is the server's, not its secure context's.
 */
function tlsRestart(a: Config, b: Config): boolean {
  return tlsEnabled(a.tls) !== tlsEnabled(b.tls) || a.tls.client_auth !== b.tls.client_auth
}

function pick(config: Config, dotted: string): unknown {
  let node: unknown = config
  for (const part of dotted.split('.')) node = (node as Record<string, unknown>)[part]
  return node
}

/** Gauges whose values live in the mirror and the index are read when Prometheus scrapes. */
function watchGauges(metrics: Metrics, mirrors: Mirrors, index: IndexDb): void {
  metrics.sources.inflightFills = () => mirrors.inflight().length
  metrics.sources.inflightFollowers = () =>
    mirrors.inflight().reduce((n, f) => n + Math.max(0, f.readers - 1), 0)
  metrics.sources.storeTotals = () => index.storeTotals()
}
