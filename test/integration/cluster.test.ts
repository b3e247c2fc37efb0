// Several pullcache nodes as one cache (cluster.node_url, cluster.peers, the cluster secret):
// each blob, manifest and tag is asked upstream by the node that owns it (rendezvous hashing over
// the live nodes) and the others relay the owner's answer, so the registry sees one request per
// key for the whole cluster. An owner that goes away costs at most one more fetch, never a
// failed pull after the cut; the relay endpoint is the registry API, and without the secret it
// gives nothing that anonymous clients may not read.

import { createHash } from 'node:crypto'
import { describe, expect, test } from 'vitest'
import { loadConfig } from '../../src/config.js'
import { ownerOf, startNodes } from '../support/cluster-nodes.js'
import { membersAre, type Pullable, Puller } from '../support/cluster-pulls.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { freePorts } from '../support/free-ports.js'
import { runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/clustered'
const SECRET = 'cluster-secret-3b8e51d0c2'
const ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json'

/** Exchanges upstream answered (a 401 challenge round trip before a token is not one). */
function exchanges(fake: ReturnType<typeof useFakeUpstream>, method: string, path: string): number {
  return fake.up.requests.filter(
    (r) => r.method === method && r.path === path && r.authorization?.startsWith('Bearer'),
  ).length
}

const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

describe('three nodes, one cache', () => {
  const fake = useFakeUpstream({ users: { puller: 'pull-pw-7c1e' }, tokenFormat: 'jwt' })

  const startCluster = (extraEnv: Record<string, string> = {}) => startNodes(fake, 3, SECRET, extraEnv)

  test('48 concurrent cold GETs spread over the nodes: one upstream GET, every body verified; then warm everywhere', async () => {
    const image = fake.up.addImage(REPO, 'v1', { layers: 1, layerBytes: 3_000_000 })
    const layer = image.layers[0]!
    const nodes = await startCluster()
    fake.up.reset()
    const path = `/v2/${REPO}/blobs/${layer.digest}`
    const bodies = await Promise.all(Array.from({ length: 48 }, (_, i) => nodes[i % 3]!.get(path)))
    for (const got of bodies) {
      expect(got.status).toBe(200)
      expect(sha256(got.body)).toBe(layer.digest)
    }
    expect(exchanges(fake, 'GET', path)).toBe(1)

    fake.up.reset()
    for (const node of nodes) {
      const warm = await node.get(path)
      expect(warm.status).toBe(200)
      expect(warm.headers['x-pullcache-cache']).toBe('hit')
    }
    expect(fake.up.requests).toEqual([])
  })

  test('a tag pulled on every node costs one upstream HEAD, and every node has the same digest', async () => {
    const image = fake.up.addImage(REPO, 'v2')
    const nodes = await startCluster()
    fake.up.reset()
    const answers = await Promise.all(nodes.map((n) => n.get(`/v2/${REPO}/manifests/v2`, { accept: ACCEPT })))
    for (const got of answers) {
      expect(got.status).toBe(200)
      expect(got.headers['docker-content-digest']).toBe(image.manifestDigest)
    }
    expect(exchanges(fake, 'HEAD', `/v2/${REPO}/manifests/v2`)).toBe(1)
    expect(exchanges(fake, 'GET', `/v2/${REPO}/manifests/${image.manifestDigest}`)).toBe(1)
  })

  test('an owner that goes away mid-blob: at most one more upstream GET, and the next pulls succeed', async () => {
    const image = fake.up.addImage(REPO, 'v3', { layers: 1, layerBytes: 2_000_000 })
    const layer = image.layers[0]!
    const nodes = await startCluster()
    const owner = ownerOf(
      nodes.map((n) => n.url),
      `blob\0${layer.digest}`,
    )
    const others = nodes.filter((n) => n.url !== owner)
    const owning = nodes.find((n) => n.url === owner)!
    const path = `/v2/${REPO}/blobs/${layer.digest}`
    fake.up.reset()
    // The upstream trickles, so the owner is still filling when it goes.
    fake.up.fault({ method: 'GET', path }, { kind: 'slow', chunkBytes: 64 * 1024, delayMs: 20 }, 1)
    const first = others.map((n) => n.get(path).catch((err: unknown) => err as Error))
    await new Promise((resolve) => setTimeout(resolve, 300))
    await owning.close({ wipe: false })
    for (const got of await Promise.all(first)) {
      // Cut, or complete and correct: never a wrong body.
      if (!(got instanceof Error) && got.status === 200) expect(sha256(got.body)).toBe(layer.digest)
    }
    for (const node of others) {
      const again = await node.get(path)
      expect(again.status).toBe(200)
      expect(sha256(again.body)).toBe(layer.digest)
    }
    expect(exchanges(fake, 'GET', path)).toBeLessThanOrEqual(2)
  })

  test('the relay is the registry API: without the secret a private repository stays closed', async () => {
    fake.up.addImage(`${REPO}-private`, 'v1')
    fake.up.setPrivate(`${REPO}-private`)
    const nodes = await startCluster({
      PULLCACHE_UPSTREAM_USERNAME: 'puller',
      PULLCACHE_UPSTREAM_PASSWORD: 'pull-pw-7c1e',
    })
    const path = `/v2/${REPO}-private/manifests/v1`
    const relayHeaders = { accept: ACCEPT, 'x-pullcache-relay': 'http://127.0.0.1:1' }
    const wrong = await nodes[0]!.get(path, { ...relayHeaders, 'x-pullcache-peer': 'not-the-secret' })
    expect(wrong.status).not.toBe(200)
    expect((await nodes[1]!.get(path, { accept: ACCEPT })).status).not.toBe(200)
    const right = await nodes[0]!.get(path, { ...relayHeaders, 'x-pullcache-peer': SECRET })
    expect(right.status).toBe(200)
  })

  test('cluster check: every node answers and agrees; a node down, or a wrong secret, is named', async () => {
    const nodes = await startCluster()
    const env = {
      PULLCACHE_NODE_URL: nodes[0]!.url,
      PULLCACHE_PEERS: nodes.map((n) => n.url).join(','),
      PULLCACHE_CLUSTER_SECRET: SECRET,
    }
    const ok = await runCli(['cluster', 'check'], { env })
    expect(ok.code, ok.stdout + ok.stderr).toBe(0)
    expect(ok.stdout).toContain('one cluster of 3 nodes, every node answering')
    expect(ok.stdout).not.toContain(SECRET)

    // Without the secret the view is refused.
    expect((await nodes[1]!.get('/_pullcache/cluster')).status).toBe(403)
    const wrong = await runCli(['cluster', 'check'], { env: { ...env, PULLCACHE_CLUSTER_SECRET: 'guess' } })
    expect(wrong.code).toBe(1)
    expect(wrong.stdout).toContain('the cluster secret was refused')

    await nodes[2]!.close({ wipe: false })
    const down = await runCli(['cluster', 'check', '--timeout', '2'], { env })
    expect(down.code).toBe(1)
    expect(down.stdout).toContain(`${nodes[2]!.url}  no answer`)
  })

  test('a static list edited and reloaded (SIGHUP) during pulls: a node added and one removed cost no pull', async () => {
    const all: Pullable[] = Array.from({ length: 60 }, (_, i) => ({
      repo: REPO,
      tag: `listed${i}`,
      image: fake.up.addImage(REPO, `listed${i}`, { layers: 1, layerBytes: 96 * 1024 }),
    }))
    const ports = await freePorts(3)
    const urls = ports.map((p) => `http://127.0.0.1:${p}`)
    const nodeEnv = (i: number, peers: string[]) => ({
      PULLCACHE_LISTEN: `127.0.0.1:${ports[i]}`,
      PULLCACHE_NODE_URL: urls[i]!,
      PULLCACHE_PEERS: peers.join(','),
      PULLCACHE_CLUSTER_SECRET: SECRET,
    })
    const [a, b, c] = urls as [string, string, string]
    const nodes = [
      await fake.mirror({ env: nodeEnv(0, [a, b]) }),
      await fake.mirror({ env: nodeEnv(1, [a, b]) }),
    ]
    const reload = (node: TestMirror, i: number, peers: string[]) =>
      node.server.reload(loadConfig({ env: { ...nodeEnv(i, peers), PULLCACHE_UPSTREAM: fake.up.url } }))
    await membersAre([a, b], [a, b], { secret: SECRET, what: 'A and B from the list' })
    const puller = new Puller(all)
    try {
      puller.serving = [a, b]
      puller.phase = 'two nodes'
      puller.start(2)
      await waitFor(() => puller.pulls >= 6, { what: 'pulls on two nodes', timeoutMs: 15_000 })

      puller.phase = 'C added'
      nodes.push(await fake.mirror({ env: nodeEnv(2, [a, b, c]) }))
      expect(reload(nodes[0]!, 0, [a, b, c]).changed).toContain('cluster.peers')
      expect(reload(nodes[1]!, 1, [a, b, c]).changed).toContain('cluster.peers')
      await membersAre([a, b, c], [a, b, c], { secret: SECRET, what: 'every node to list C' })
      puller.serving = [a, b, c]
      const before = puller.pulls
      await waitFor(() => puller.pulls >= before + 6, { what: 'pulls on three nodes', timeoutMs: 15_000 })

      puller.phase = 'B removed'
      await puller.drain(b)
      reload(nodes[0]!, 0, [a, c])
      reload(nodes[2]!, 2, [a, c])
      await nodes[1]!.close()
      await membersAre([a, c], [a, c], { secret: SECRET, what: 'A and C without B' })
      const after = puller.pulls
      await waitFor(() => puller.pulls >= after + 6, { what: 'pulls without B', timeoutMs: 15_000 })
      await puller.stop()
      expect(puller.failures).toEqual([])
      expect(puller.cuts).toEqual([])

      // cluster check names how each node was found.
      const check = await runCli(['cluster', 'check'], {
        env: { PULLCACHE_NODE_URL: a, PULLCACHE_PEERS: [a, c].join(','), PULLCACHE_CLUSTER_SECRET: SECRET },
      })
      expect(check.code, check.stdout + check.stderr).toBe(0)
      expect(check.stdout).toContain(`${c}  pullcache`)
      expect(check.stdout).toContain('found by static')
    } finally {
      await puller.stop()
    }
  }, 60_000)
})
