// The cluster's totals: what a node counts as its clients' (relayed requests received come off),
// how members' figures are summed, and how members that cannot be counted are named.

import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, test } from 'vitest'
import {
  type Counts,
  figuresOf,
  isFigures,
  type NodeFigures,
  ownFigures,
  sumFigures,
  withRate,
} from '../../src/cluster/figures.js'
import { ClusterTotals } from '../../src/cluster/totals.js'
import { renderStatusPage } from '../../src/http/status-page-render.js'
import { createMetrics } from '../../src/metrics.js'
import { emptyReport } from '../support/stats-fixture.js'

const ZERO: Counts = {
  requests: 0,
  hits: 0,
  misses: 0,
  coalesced: 0,
  stale: 0,
  errors: 0,
  bytes_served: 0,
  upstream_requests: 0,
  bytes_from_upstream: 0,
  relays_sent: 0,
  relay_bytes: 0,
  relays_received: 0,
}

const figures = (c: Partial<Counts>): NodeFigures => withRate({ ...ZERO, ...c })

describe("a node's client figures", () => {
  test('requests another node relayed here come off the client figures; upstream traffic stays', () => {
    // The owner: 3 client hits, 1 client miss, and 2 relayed requests it answered (a miss that
    // went upstream and a coalesced follower), 500 of its 1,700 bytes sent to relaying nodes.
    const f = figuresOf({
      byResult: { hit: 3, miss: 2, coalesced: 1 },
      relayedByResult: { miss: 1, coalesced: 1 },
      servedBytes: 1_700,
      relayedBytes: 500,
      upstreamRequests: 4,
      upstreamBytes: 900,
      relaysSent: 0,
      relayBytes: 0,
    })
    expect(f).toEqual({
      ...ZERO,
      requests: 4,
      hits: 3,
      misses: 1,
      bytes_served: 1_200,
      upstream_requests: 4,
      bytes_from_upstream: 900,
      relays_received: 2,
      hit_rate: 0.75,
    })
  })

  test('a node with nothing answered has no hit rate, not a made-up one', () => {
    expect(sumFigures([]).hit_rate).toBeNull()
    expect(sumFigures([ZERO, ZERO])).toEqual({ ...ZERO, hit_rate: null })
  })

  test('read from the counters: relays and relayed requests as the metrics hold them', async () => {
    const m = createMetrics()
    m.requests.inc({ upstream: 'docker.io', kind: 'blob', method: 'GET', result: 'miss' }, 3)
    m.requests.inc({ upstream: 'docker.io', kind: 'manifest', method: 'GET', result: 'hit' }, 5)
    m.relayedRequests.inc({ kind: 'blob', result: 'miss' }, 2)
    m.servedBytes.inc({ upstream: 'docker.io', source: 'upstream' }, 3_000)
    m.relayedBytes.inc(2_000)
    m.upstreamRequests.inc({ upstream: 'docker.io', kind: 'blob', method: 'GET', status: '200' })
    m.upstreamBytes.inc({ upstream: 'docker.io' }, 1_000)
    m.relays.inc({ outcome: 'ok' }, 4)
    m.relays.inc({ outcome: 'fallback' })
    m.relayBytes.inc(7_000)
    expect(await ownFigures(m)).toEqual({
      ...ZERO,
      requests: 6,
      hits: 5,
      misses: 1,
      bytes_served: 1_000,
      upstream_requests: 1,
      bytes_from_upstream: 1_000,
      relays_sent: 5,
      relay_bytes: 7_000,
      relays_received: 2,
      hit_rate: 5 / 6,
    })
  })
})

describe('summing the members', () => {
  test('every count adds up, and the hit rate is over the summed requests', () => {
    const sum = sumFigures([
      figures({ requests: 10, hits: 9, misses: 1, bytes_served: 100, upstream_requests: 2 }),
      figures({ requests: 30, hits: 0, misses: 30, bytes_served: 300, bytes_from_upstream: 50 }),
    ])
    expect(sum).toMatchObject({ requests: 40, hits: 9, misses: 31, bytes_served: 400, upstream_requests: 2 })
    expect(sum.bytes_from_upstream).toBe(50)
    expect(sum.hit_rate).toBeCloseTo(9 / 40)
  })

  test('an answer without the figures, or with negative or missing counts, is not counted', () => {
    expect(isFigures(figures({ requests: 1 }))).toBe(true)
    expect(isFigures({ ...figures({}), extra: 'a newer node' })).toBe(true)
    expect(isFigures(null)).toBe(false)
    expect(isFigures({ ...figures({}), requests: -1 })).toBe(false)
    const { hits: _, ...noHits } = figures({})
    expect(isFigures(noHits)).toBe(false)
    expect(isFigures({ ...figures({}), requests: '3' })).toBe(false)
  })
})

describe('ClusterTotals', () => {
  const servers: Server[] = []
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))))
  })

  /** A member answering with `answer` (or never, for 'hang'), counting the questions. */
  async function member(
    answer: unknown | 'hang',
    status = 200,
  ): Promise<{ url: string; asked: () => number }> {
    let asked = 0
    const server = createServer((req, res) => {
      asked++
      expect(req.url).toBe('/_pullcache/cluster/stats')
      expect(req.headers['x-pullcache-peer']).toBe('s3cret')
      if (answer === 'hang') return
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(answer))
    })
    servers.push(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, asked: () => asked }
  }

  test('live members summed; down, silent and refusing ones named, not counted; answers kept a while', async () => {
    const good = await member(figures({ requests: 5, hits: 5, bytes_served: 50 }))
    const silent = await member('hang')
    const refusing = await member({ errors: [] }, 403)
    const self = 'http://127.0.0.1:1'
    const down = 'http://127.0.0.1:2'
    const urls = [self, good.url, silent.url, refusing.url, down]
    const totals = new ClusterTotals({
      membership: {
        self,
        members: () => urls.map((url) => ({ url, self: url === self, live: url !== down })),
      },
      secret: 's3cret',
      own: async () => figures({ requests: 3, misses: 3, upstream_requests: 2 }),
      timeoutMs: 200,
      keepMs: 60_000,
    })
    const report = await totals.report()
    expect(report.totals).toMatchObject({
      requests: 8,
      hits: 5,
      misses: 3,
      bytes_served: 50,
      upstream_requests: 2,
    })
    expect(report.node?.requests).toBe(3)
    expect(report.missing.sort()).toEqual([silent.url, refusing.url, down].sort())
    const problem = (url: string) => report.members.find((m) => m.url === url)?.problem
    expect(problem(refusing.url)).toBe('the cluster secret was refused')
    expect(problem(down)).toMatch(/^down/)
    expect(problem(silent.url)).toBeTruthy()
    expect(problem(good.url)).toBeNull()
    // Within keepMs the members are not asked again.
    await totals.report()
    expect(good.asked()).toBe(1)
  })

  test('the status page draws the members, the totals and who is missing', async () => {
    const self = 'http://node-a:5000'
    const totals = new ClusterTotals({
      membership: {
        self,
        members: () => [
          { url: self, self: true, live: true },
          { url: 'http://node-b:5000', self: false, live: false },
        ],
      },
      secret: 's3cret',
      own: async () => figures({ requests: 1234, hits: 1000, misses: 234, upstream_requests: 7 }),
    })
    const page = renderStatusPage({ ...emptyReport(), cluster: await totals.report() })
    expect(page).toContain('data-testid="cluster-totals"')
    expect(page).toContain('cluster (1 of 2 nodes)')
    expect(page).toContain('1,234')
    expect(page).toMatch(/http:\/\/node-b:5000<\/td><td colspan="5" class="note">not counted: down/)
    expect(renderStatusPage(emptyReport())).not.toContain('data-testid="cluster"')
  })
})
