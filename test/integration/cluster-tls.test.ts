// Nodes of a cluster that talk to each other over https with certificates from a private CA.
// Node-to-node traffic (relays to a key's owner, health probes, `cluster check`) trusts what
// Node.js trusts: the system's roots plus NODE_EXTRA_CA_CERTS, the standard way to add a private
// CA to a Node.js service (systemd `Environment=`, a Kubernetes env var). These are real `serve`
// processes, since Node reads that variable only when a process starts.

import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { Agent, request } from 'undici'
import { afterEach, describe, expect, test } from 'vitest'
import { ownerOf } from '../support/cluster-nodes.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { freePorts } from '../support/free-ports.js'
import { type CliProcess, runCli, startCli } from '../support/run-cli.js'
import { makeTestCa } from '../support/test-certs.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/tls-cluster'
const SECRET = 'cluster-secret-tls-51f0'

describe('a cluster on https with a private CA', () => {
  const fake = useFakeUpstream()
  const children: CliProcess[] = []
  afterEach(async () => {
    for (const child of children.splice(0)) await child.kill()
  })

  test('relays and cluster check work with the CA in NODE_EXTRA_CA_CERTS, and fail without it', async () => {
    const ca = await makeTestCa('cluster CA')
    const ports = await freePorts(2)
    const urls = ports.map((p) => `https://127.0.0.1:${p}`)
    const cluster = {
      PULLCACHE_PEERS: urls.join(','),
      PULLCACHE_CLUSTER_SECRET: SECRET,
      NODE_EXTRA_CA_CERTS: ca.cert,
    }
    for (const [i, port] of ports.entries()) {
      const cert = await ca.server(`node${i}`)
      const child = startCli(['serve'], {
        env: {
          ...cluster,
          PULLCACHE_LISTEN: `127.0.0.1:${port}`,
          PULLCACHE_NODE_URL: urls[i]!,
          PULLCACHE_DATA_DIR: await tmpRoot(),
          PULLCACHE_UPSTREAM: fake.up.url,
          PULLCACHE_TLS_CERT: cert.cert,
          PULLCACHE_TLS_KEY: cert.key,
        },
      })
      children.push(child)
      await waitFor(() => child.lines.find((l) => l.event === 'listening'), {
        timeoutMs: 20_000,
        what: `node ${i} listening`,
      })
    }

    const image = fake.up.addImage(REPO, 'v1', { layers: 1, layerBytes: 500_000 })
    const layer = image.layers[0]!
    const path = `/v2/${REPO}/blobs/${layer.digest}`
    const owner = ownerOf(urls, `blob\0${layer.digest}`)
    const [relaying] = urls.filter((u) => u !== owner)

    // The client trusts the CA too; it asks the node that does not own the blob first.
    const client = new Agent({ connect: { ca: await readFile(ca.cert) } })
    try {
      fake.up.reset()
      for (const url of [relaying!, owner]) {
        const res = await request(`${url}${path}`, { dispatcher: client })
        const body = Buffer.from(await res.body.arrayBuffer())
        expect(res.statusCode).toBe(200)
        expect(`sha256:${createHash('sha256').update(body).digest('hex')}`).toBe(layer.digest)
      }
    } finally {
      await client.close()
    }
    // One upstream download: the second node relayed to the owner over https.
    const gets = fake.up.requests.filter((r) => r.method === 'GET' && r.path === path)
    expect(gets.filter((r) => r.authorization?.startsWith('Bearer'))).toHaveLength(1)
    const failed = children.flatMap((c) => c.lines).filter((l) => l.event === 'cluster.relay_failed')
    expect(failed).toEqual([])

    const check = (env: Record<string, string>) =>
      runCli(['cluster', 'check', '--timeout', '3'], { env: { PULLCACHE_NODE_URL: urls[0]!, ...env } })
    const trusted = await check(cluster)
    expect(trusted.code, trusted.stdout + trusted.stderr).toBe(0)
    expect(trusted.stdout).toContain('every node answering')
    // Without the CA the nodes' certificates are not trusted, and the check says so.
    const { NODE_EXTRA_CA_CERTS: _, ...untrusting } = cluster
    const refused = await check(untrusting)
    expect(refused.code).toBe(1)
  })
})
