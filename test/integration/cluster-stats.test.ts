// The cluster's totals and the relay metrics, on three nodes against the counting fake upstream:
// a blob pulled through two nodes that relay to its owner, and once on the owner, is three client
// requests and one upstream download for the cluster, whichever node is asked; a node that stops
// is named and left out; the metrics say per node what was relayed and received.

import { createHash } from 'node:crypto'
import { describe, expect, test } from 'vitest'
import type { ClusterReport } from '../../src/cluster/totals.js'
import type { StatsReport } from '../../src/mirror/stats-report.js'
import { ownerOf, startNodes } from '../support/cluster-nodes.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { freePorts } from '../support/free-ports.js'
import { runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'

const REPO = 'library/counted'
const SECRET = 'cluster-secret-9a41c7e2'
const LAYER_BYTES = 1_500_000

/** Prometheus text -> the value of one series, 0 when absent; labels given in the order exposed. */
function series(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? 0 : Number(line.slice(name.length + 1))
}

/** The sum of every series of a metric. */
function total(text: string, name: string): number {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((n, l) => n + Number(l.split(' ').at(-1)), 0)
}

const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

describe('cluster totals', () => {
  const fake = useFakeUpstream({})

  test('three client requests, one upstream download, counted once whichever node is asked', async () => {
    const image = fake.up.addImage(REPO, 'v1', { layers: 1, layerBytes: LAYER_BYTES })
    const layer = image.layers[0]!
    const nodes = await startNodes(fake, 3, SECRET)
    const urls = nodes.map((n) => n.url)
    const ownerUrl = ownerOf(urls, `blob\0${layer.digest}`)
    const owner = nodes.find((n) => n.url === ownerUrl)!
    const [first, second] = nodes.filter((n) => n !== owner) as [TestMirror, TestMirror]
    const path = `/v2/${REPO}/blobs/${layer.digest}`
    fake.up.reset()

    // Through a node that relays it to the owner (cold: the owner fetches), on the owner (warm
    // there), and through the other node (relayed, the owner answers from its store).
    for (const node of [first, owner, second]) {
      const got = await node.get(path)
      expect(got.status).toBe(200)
      expect(sha256(got.body)).toBe(layer.digest)
    }
    // A blob upstream does not have, asked of a node that does not own it: the owner's 404.
    let absent = sha256(Buffer.from('absent'))
    for (let i = 0; ownerOf(urls, `blob\0${absent}`) === first.url; i++)
      absent = sha256(Buffer.from(`absent ${i}`))
    const notFound = await first.get(`/v2/${REPO}/blobs/${absent}`)
    expect(notFound.status).toBe(404)
    const absentOwner = ownerOf(urls, `blob\0${absent}`)

    const blobGets = fake.up.requests.filter(
      (r) => r.method === 'GET' && r.path.endsWith(layer.digest.slice(7)),
    )
    expect(blobGets.length).toBeGreaterThanOrEqual(1)

    const metrics = await Promise.all(nodes.map(async (n) => (await n.get('/metrics')).body.toString()))
    const [mFirst, mOwner, mSecond] = [first, owner, second].map((n) => metrics[nodes.indexOf(n)]!) as [
      string,
      string,
      string,
    ]
    // Per node: the relaying nodes relayed once each and count the owner's bytes as relay bytes,
    // not upstream bytes; the owner received two relayed requests, a miss and a hit.
    expect(series(mFirst, 'pullcache_cluster_relays_total{outcome="not_found"}')).toBe(1)
    for (const m of [mFirst, mSecond]) {
      expect(series(m, 'pullcache_cluster_relays_total{outcome="ok"}')).toBe(1)
      expect(series(m, 'pullcache_cluster_relay_bytes_total')).toBe(LAYER_BYTES)
      expect(total(m, 'pullcache_upstream_blob_bytes_total')).toBe(0)
      expect(total(m, 'pullcache_cluster_relayed_requests_total')).toBe(
        m === mSecond && absentOwner === second.url ? 1 : 0,
      )
      expect(series(m, 'pullcache_cluster_members{state="live"}')).toBe(3)
      expect(series(m, 'pullcache_cluster_members{state="down"}')).toBe(0)
    }
    expect(series(mOwner, 'pullcache_cluster_relayed_requests_total{kind="blob",result="miss"}')).toBe(1)
    expect(series(mOwner, 'pullcache_cluster_relayed_requests_total{kind="blob",result="hit"}')).toBe(1)
    expect(series(mOwner, 'pullcache_cluster_relayed_served_bytes_total')).toBe(2 * LAYER_BYTES)
    expect(total(mOwner, 'pullcache_upstream_blob_bytes_total')).toBe(LAYER_BYTES)
    expect(total(mOwner, 'pullcache_cluster_relays_total')).toBe(0)
    // The owner's own requests still count all it answered (its node figures are unchanged).
    expect(total(mOwner, 'pullcache_requests_total')).toBe(absentOwner === owner.url ? 4 : 3)

    // Upstream requests as the nodes' metrics count them (a status page load may add a ping).
    const upstreamRequests = async () => {
      const now = await Promise.all(nodes.map(async (n) => (await n.get('/metrics')).body.toString()))
      return now.reduce((n, m) => n + total(m, 'pullcache_upstream_requests_total'), 0)
    }
    let expectedUpstream = await upstreamRequests()
    expect(expectedUpstream).toBeGreaterThanOrEqual(1)
    const stats = async (node: TestMirror) =>
      JSON.parse((await node.get('/_pullcache/stats')).body.toString()) as StatsReport
    const expectTotals = (cluster: ClusterReport | undefined) => {
      expect(cluster?.missing).toEqual([])
      expect(cluster?.totals).toMatchObject({
        requests: 4,
        hits: 1,
        misses: 2,
        errors: 1,
        bytes_served: 3 * LAYER_BYTES,
        bytes_from_upstream: LAYER_BYTES,
        upstream_requests: expectedUpstream,
        relays_sent: 3,
        relay_bytes: 2 * LAYER_BYTES,
        relays_received: 3,
      })
      expect(cluster?.totals.hit_rate).toBeCloseTo(1 / 3)
    }
    // Not yet `first`: its view is asked once, after a node stops (answers are kept 5 s).
    for (const node of [owner, second]) {
      const report = await stats(node)
      expectTotals(report.cluster)
      expect(report.cluster?.node?.requests).toBe(1)
      expect(report.cluster?.members.map((m) => m.url)).toEqual([...urls].sort())
    }
    // The status page shows them beside the node's own.
    const page = (await owner.get('/')).body.toString()
    expect(page).toMatch(/data-testid="cluster-totals"/)
    expect(page).toContain('cluster (3 of 3 nodes)')

    // `pullcache stats` asks every node with the cluster's settings.
    const env = {
      PULLCACHE_DATA_DIR: owner.dataDir,
      PULLCACHE_NODE_URL: owner.url,
      PULLCACHE_PEERS: urls.join(','),
      PULLCACHE_CLUSTER_SECRET: SECRET,
    }
    expectedUpstream = await upstreamRequests()
    const json = await runCli(['stats', '--json'], { env })
    expect(json.code, json.stderr).toBe(0)
    expectTotals((JSON.parse(json.stdout) as StatsReport).cluster)
    const table = await runCli(['stats'], { env })
    expect(table.stdout).toMatch(/cluster \(3 of 3 nodes\)\s+4\s+33\.3%/)
    expect(table.stdout).not.toContain(SECRET)

    // A node that stops is named and left out; the others' figures still add up. Asked of the
    // node whose view has not been asked for before, so none of its answers are kept from then.
    await second.close({ wipe: false })
    const after = (await stats(first)).cluster
    expect(after?.missing).toEqual([second.url])
    expect(after?.node?.requests).toBe(2)
    expect(after?.totals.requests).toBe(3)
    expect(after?.members.find((m) => m.url === second.url)?.problem).toBeTruthy()
  })

  test('an owner that does not answer: the request goes upstream from here, the owner is named down', async () => {
    const port = (await freePorts(1))[0]!
    const self = `http://127.0.0.1:${port}`
    const dead = 'http://127.0.0.1:1'
    const node = await fake.mirror({
      env: {
        PULLCACHE_LISTEN: `127.0.0.1:${port}`,
        PULLCACHE_NODE_URL: self,
        PULLCACHE_PEERS: `${self},${dead}`,
        PULLCACHE_CLUSTER_SECRET: SECRET,
      },
    })
    let digest = fake.up.addBlob(REPO, Buffer.from('owned by the dead node 0'))
    for (let i = 1; ownerOf([self, dead], `blob\0${digest}`) !== dead; i++) {
      digest = fake.up.addBlob(REPO, Buffer.from(`owned by the dead node ${i}`))
    }
    expect((await node.get(`/v2/${REPO}/blobs/${digest}`)).status).toBe(200)
    const m = (await node.get('/metrics')).body.toString()
    expect(series(m, 'pullcache_cluster_relays_total{outcome="fallback"}')).toBe(1)
    expect(series(m, 'pullcache_cluster_members{state="live"}')).toBe(1)
    expect(series(m, 'pullcache_cluster_members{state="down"}')).toBe(1)
    const report = JSON.parse((await node.get('/_pullcache/stats')).body.toString()) as StatsReport
    expect(report.cluster?.missing).toEqual([dead])
    expect(report.cluster?.members.find((x) => x.url === dead)?.problem).toMatch(/^down/)
    expect(report.cluster?.totals).toMatchObject({ requests: 1, misses: 1, relays_sent: 1, relay_bytes: 0 })
    expect(report.cluster?.totals.bytes_from_upstream).toBeGreaterThan(0)

    // The figures a node gives its peers are for the cluster secret only.
    expect((await node.get('/_pullcache/cluster/stats')).status).toBe(403)
    expect((await node.get('/_pullcache/cluster/stats', { 'x-pullcache-peer': 'guess' })).status).toBe(403)
    const ok = await node.get('/_pullcache/cluster/stats', { 'x-pullcache-peer': SECRET })
    expect(ok.status).toBe(200)
    expect(JSON.parse(ok.body.toString())).toMatchObject({ requests: 1, misses: 1, hit_rate: 0 })
  })
})
