// Cluster members that come and go while clients pull. Nodes on one bucket (a real S3 server,
// test/support/s3-server.ts) find each other by their heartbeats in it (cluster.peers_from_bucket):
// two start, a third joins, one leaves with SIGTERM and one is killed with SIGKILL, all while a
// client pulls cold and warm manifests and blobs round the nodes it is told are in service, as a
// load balancer would. No pull may fail or come back wrong (every body is checked by sha256), and
// every node must come to list exactly the nodes that are running. (A static list edited and
// reloaded during pulls: test/integration/cluster.test.ts.)

import { ListObjectsV2Command } from '@aws-sdk/client-s3'
import { describe, expect, test } from 'vitest'
import { nodeId } from '../../src/cluster/bucket-members.js'
import { membersAre, type Pullable, Puller, viewOf } from '../support/cluster-pulls.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { freePorts } from '../support/free-ports.js'
import { type CliProcess, runCli, startCli } from '../support/run-cli.js'
import { useS3Server } from '../support/s3-server.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/members'
const SECRET = 'cluster-secret-9d0f17a4e2'
const BUCKET = `members-${process.pid}`

describe('members that join and leave during pulls', () => {
  const s3 = useS3Server()
  const fake = useFakeUpstream()

  function images(n: number): Pullable[] {
    return Array.from({ length: n }, (_, i) => ({
      repo: REPO,
      tag: `m${i}`,
      image: fake.up.addImage(REPO, `m${i}`, { layers: 1, layerBytes: 96 * 1024 }),
    }))
  }

  test('nodes on one bucket find each other by heartbeats; a join, a SIGTERM and a SIGKILL cost no pull', async () => {
    const all = images(120)
    const ports = await freePorts(3)
    const urls = ports.map((p) => `http://127.0.0.1:${p}`)
    const [a, b, c] = urls as [string, string, string]
    const env = (i: number) => ({
      ...s3.server.env(BUCKET, 'pc/'),
      PULLCACHE_LISTEN: `127.0.0.1:${ports[i]}`,
      PULLCACHE_NODE_URL: urls[i]!,
      PULLCACHE_PEERS_FROM_BUCKET: '1',
      PULLCACHE_CLUSTER_SECRET: SECRET,
    })
    // B and C are processes of their own, for SIGTERM and SIGKILL; A runs in this one.
    const children: CliProcess[] = []
    const serve = async (i: number) => {
      const child = startCli(['serve'], {
        env: { ...env(i), PULLCACHE_DATA_DIR: await tmpRoot(), PULLCACHE_UPSTREAM: fake.up.url },
      })
      children.push(child)
      await waitFor(() => child.lines.some((l) => l.event === 'listening'), {
        what: `node ${urls[i]} to listen`,
        timeoutMs: 30_000,
      })
      return child
    }
    const puller = new Puller(all)
    const bucket = s3.server.client()
    try {
      await fake.mirror({ env: env(0) })
      const nodeB = await serve(1)
      const two = await membersAre([a, b], [a, b], {
        secret: SECRET,
        what: 'A and B to find each other in the bucket',
      })
      for (const view of two) {
        for (const m of view.members) expect(m.found).toEqual(m.url === view.node_url ? ['self'] : ['bucket'])
      }

      puller.serving = [a, b]
      puller.phase = 'two nodes'
      puller.start(2)
      await waitFor(() => puller.pulls >= 6, { what: 'pulls on two nodes', timeoutMs: 15_000 })

      puller.phase = 'C joins'
      const nodeC = await serve(2)
      await membersAre([a, b, c], [a, b, c], { secret: SECRET, what: 'every node to find C' })
      puller.serving = [a, b, c]
      const before = puller.pulls
      // cluster check, with A's configuration: the nodes A found in the bucket, each asked.
      const check = await runCli(['cluster', 'check'], { env: env(0) })
      expect(check.code, check.stdout + check.stderr).toBe(0)
      expect(check.stdout).toContain('one cluster of 3 nodes, every node answering')
      expect(check.stdout).toContain(`${c}  pullcache`)
      expect(check.stdout).toContain(`3 answering; found by bucket`)
      // Every node names the one bucket and what the probe found (stock Swift: no conditional PUT).
      expect(
        check.stdout.match(/conditional create no, conditional replace no, presigned GET yes/g),
      ).toHaveLength(3)
      await waitFor(() => puller.pulls >= before + 6, { what: 'pulls on three nodes', timeoutMs: 15_000 })

      // SIGKILL: C's heartbeat stays behind until it is too old; the others' probes take C out
      // of the live set at once. A request another node was relaying from C when it died is cut
      // (the client tries again); none may come back wrong. Then SIGTERM: B takes its heartbeat
      // away first, then finishes what it serves. The wait for C's heartbeat to age covers both.
      puller.phase = 'C killed (SIGKILL)'
      await puller.drain(c)
      nodeC.signal('SIGKILL')
      await nodeC.exited
      await waitFor(
        async () => {
          const views = await Promise.all([a, b].map((url) => viewOf(url, SECRET)))
          return views.every((v) => v.members.find((m) => m.url === c)?.live !== true)
        },
        { what: 'A and B to find C down', timeoutMs: 10_000, intervalMs: 100 },
      )
      puller.phase = 'B stopped (SIGTERM)'
      await puller.drain(b)
      nodeB.signal('SIGTERM')
      expect(await nodeB.exited).toBe(0)
      const after = puller.pulls
      await membersAre([a], [a], { secret: SECRET, what: 'A to drop B, and C once its heartbeat is stale' })
      await waitFor(() => puller.pulls >= after + 5, { what: 'pulls after the kill', timeoutMs: 15_000 })
      await puller.stop()

      expect(puller.failures).toEqual([])
      expect(puller.cuts.filter((cut) => !cut.startsWith('C killed'))).toEqual([])
      expect(puller.pulls).toBeGreaterThan(18)
      // B removed its heartbeat; C's, stale but not yet 10 minutes old, is left and not counted.
      const listed = await bucket.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'pc/members/' }))
      expect((listed.Contents ?? []).map((o) => o.Key).sort()).toEqual(
        [`pc/members/${nodeId(a)}`, `pc/members/${nodeId(c)}`].sort(),
      )
    } finally {
      await puller.stop()
      for (const child of children) await child.kill()
      bucket.destroy()
    }
  }, 90_000)
})
