// Several in-process pullcache nodes as one cluster against a test's fake upstream, and which of
// them owns a key, computed by the same rendezvous hashing as the nodes (src/cluster/membership.ts),
// so a test can pick the owner or a relaying node.

import { Membership } from '../../src/cluster/membership.js'
import { createLogger } from '../../src/log.js'
import type { FakeUpstreamFixture } from './fake-upstream-fixture.js'
import { freePorts } from './free-ports.js'
import type { TestMirror } from './start-mirror.js'

export function ownerOf(urls: string[], key: string): string {
  const members = new Membership({ self: urls[0]!, peers: urls, log: createLogger('error', () => {}) })
  try {
    return members.ownerOf(key)
  } finally {
    members.close()
  }
}

/** `n` nodes on loopback, each listing all of them, with the cluster `secret`; closed after the test. */
export async function startNodes(
  fake: FakeUpstreamFixture,
  n: number,
  secret: string,
  extraEnv: Record<string, string> = {},
): Promise<TestMirror[]> {
  const ports = await freePorts(n)
  const urls = ports.map((p) => `http://127.0.0.1:${p}`)
  const nodes: TestMirror[] = []
  for (const port of ports) {
    nodes.push(
      await fake.mirror({
        env: {
          PULLCACHE_LISTEN: `127.0.0.1:${port}`,
          PULLCACHE_NODE_URL: `http://127.0.0.1:${port}`,
          PULLCACHE_PEERS: urls.join(','),
          PULLCACHE_CLUSTER_SECRET: secret,
          ...extraEnv,
        },
      }),
    )
  }
  return nodes
}
