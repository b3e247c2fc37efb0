// Pulls that go on while a cluster's members change, and what the nodes say of their cluster:
// for the tests that add and remove nodes (test/integration/cluster*.test.ts).

import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ClusterView } from '../../src/http/cluster-route.js'
import { PEER_HEADER } from '../../src/upstream/cluster-upstream.js'
import type { AddedImage } from './fake-upstream-content.js'
import { waitFor } from './wait-for.js'

const ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json'

const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

/** An image the fake upstream serves, by the repository and tag it was added under. */
export interface Pullable {
  repo: string
  tag: string
  image: AddedImage
}

/** What a node says of its cluster (GET /_pullcache/cluster, with the secret). */
export async function viewOf(url: string, secret: string): Promise<ClusterView> {
  const res = await fetch(`${url}/_pullcache/cluster`, {
    headers: { [PEER_HEADER]: secret },
    signal: AbortSignal.timeout(3_000),
  })
  if (!res.ok) throw new Error(`${url} answered ${res.status}`)
  return (await res.json()) as ClusterView
}

/** Waits until every node in `asked` lists exactly `expected`, all answering. */
export async function membersAre(
  asked: string[],
  expected: string[],
  opts: { secret: string; what: string },
): Promise<ClusterView[]> {
  const want = [...expected].sort().join(' ')
  return waitFor(
    async () => {
      const views = await Promise.all(asked.map((url) => viewOf(url, opts.secret)))
      const agreed = views.every(
        (v) => v.members.map((m) => m.url).join(' ') === want && v.members.every((m) => m.live),
      )
      return agreed && views
    },
    { what: opts.what, timeoutMs: 30_000, intervalMs: 200 },
  )
}

/**
 * A client pulling image after image round the nodes in `serving` (its load balancer's list):
 * each image's manifest by tag and its layer, cold on one node, then warm on the next. A request
 * that fails is tried once more, as container runtimes do, and recorded as a cut with the phase
 * it was in; one that fails twice, or any body that does not hash to its digest, is a failure.
 */
export class Puller {
  serving: string[] = []
  phase = 'start'
  pulls = 0
  readonly failures: string[] = []
  readonly cuts: string[] = []
  /** Requests in flight per node, so a node is taken out only once nothing is under way there. */
  readonly inflight = new Map<string, number>()
  private stopped = false
  private readonly loops: Promise<void>[] = []
  private next = 0
  private readonly images: Pullable[]

  constructor(images: Pullable[]) {
    this.images = images
  }

  start(workers: number): void {
    for (let i = 0; i < workers; i++) this.loops.push(this.loop())
  }

  async stop(): Promise<void> {
    this.stopped = true
    await Promise.all(this.loops)
  }

  /** Out of the load balancer's list, and nothing of this client's still under way there. */
  async drain(url: string): Promise<void> {
    this.serving = this.serving.filter((u) => u !== url)
    await waitFor(() => (this.inflight.get(url) ?? 0) === 0, { what: `requests to ${url} to finish` })
  }

  private async loop(): Promise<void> {
    // Bounded: the test stops it long before, but a hang must not run forever.
    for (let round = 0; !this.stopped && round < 2_000; round++) {
      const i = this.next++
      const { repo, tag, image } = this.images[i % this.images.length]!
      const layer = image.layers[0]!
      const nodes = [...this.serving]
      for (const node of [nodes[i % nodes.length]!, nodes[(i + 1) % nodes.length]!]) {
        await this.pull(node, `/v2/${repo}/manifests/${tag}`, image.manifestDigest, { accept: ACCEPT })
        await this.pull(node, `/v2/${repo}/blobs/${layer.digest}`, layer.digest)
      }
      this.pulls++
      await sleep(20)
    }
  }

  private async pull(node: string, path: string, digest: string, headers: Record<string, string> = {}) {
    for (let attempt = 1; attempt <= 2; attempt++) {
      // Like a load balancer: nothing new goes to a node taken out of service meanwhile.
      const target = this.serving.includes(node) ? node : this.serving[0]!
      const problem = await this.request(target, path, digest, headers)
      if (problem === undefined) return
      if (problem.wrong || attempt === 2) {
        this.failures.push(`${this.phase}: ${problem.text}`)
        return
      }
      this.cuts.push(`${this.phase}: ${problem.text}`)
    }
  }

  private async request(
    node: string,
    path: string,
    digest: string,
    headers: Record<string, string>,
  ): Promise<{ text: string; wrong?: boolean } | undefined> {
    this.inflight.set(node, (this.inflight.get(node) ?? 0) + 1)
    try {
      const res = await fetch(`${node}${path}`, { headers, signal: AbortSignal.timeout(20_000) })
      const body = new Uint8Array(await res.arrayBuffer())
      if (res.status !== 200) return { text: `${node}${path} answered ${res.status}` }
      if (sha256(body) !== digest) return { text: `${node}${path} body is not ${digest}`, wrong: true }
      return undefined
    } catch (err) {
      return { text: `${node}${path} failed: ${(err as Error).message}` }
    } finally {
      this.inflight.set(node, this.inflight.get(node)! - 1)
    }
  }
}
