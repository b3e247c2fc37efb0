// Three pullcache nodes on one real bucket (Swift's S3 API, test/support/s3-server.sh) as one
// cache, against the counting fake upstream: one upstream GET per blob for the whole cluster,
// every body verified, warm everywhere afterwards, and a node with an empty data dir serving from
// the bucket alone; a filling node killed with SIGKILL leaves nothing unverified in the bucket
// and costs at most one more upstream GET; a tag moved upstream reaches every node within its
// window (+1 s) for one upstream HEAD per window for the cluster.

import { createHash, randomBytes } from 'node:crypto'
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { bucketKey, manifestKey } from '../../src/store/shared-tier.js'
import { ownerOf } from '../support/cluster-nodes.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { freePorts } from '../support/free-ports.js'
import { type CliProcess, startCli } from '../support/run-cli.js'
import { useS3Server } from '../support/s3-server.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/bucketed-cluster'
const SECRET = 'cluster-secret-s3-5d2a9c'
const ACCEPT = 'application/vnd.docker.distribution.manifest.v2+json'
let buckets = 0
/** A bucket of its own for each test: what one test leaves cannot answer for another. */
const newBucket = () => `pullcache-cluster-${process.pid}-${++buckets}`

const sha256 = (bytes: Uint8Array) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

/**
 * A GET whose body is hashed as it arrives, never held whole (48 bodies of 200 MB would not fit):
 * its status, digest and length, or the error that cut it.
 */
async function streamedGet(url: string): Promise<{ status: number; digest: string; size: number } | Error> {
  try {
    const res = await request(url)
    const hash = createHash('sha256')
    let size = 0
    for await (const chunk of res.body) {
      hash.update(chunk as Buffer)
      size += (chunk as Buffer).length
    }
    return { status: res.statusCode, digest: `sha256:${hash.digest('hex')}`, size }
  } catch (err) {
    return err as Error
  }
}

describe('three nodes on one bucket', () => {
  const s3 = useS3Server()
  const fake = useFakeUpstream()
  let client: S3Client
  const children: CliProcess[] = []

  beforeAll(() => {
    client = s3.server.client()
  })
  afterAll(() => client?.destroy())
  afterEach(async () => {
    for (const child of children.splice(0)) await child.kill()
  })

  /** Exchanges upstream answered (a 401 challenge round trip before a token is not one). */
  const exchanges = (method: string, path: string) =>
    fake.up.requests.filter(
      (r) => r.method === method && r.path === path && r.authorization?.startsWith('Bearer'),
    ).length

  /** The sha256 of an object's bytes, streamed. */
  const objectDigest = async (bucket: string, key: string) => {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }))
    const hash = createHash('sha256')
    for await (const chunk of res.Body as AsyncIterable<Buffer>) hash.update(chunk)
    return `sha256:${hash.digest('hex')}`
  }
  const keys = async (bucket: string) => {
    const found: string[] = []
    let ContinuationToken: string | undefined
    do {
      const page = await client.send(
        new ListObjectsV2Command({
          Bucket: bucket,
          ...(ContinuationToken === undefined ? {} : { ContinuationToken }),
        }),
      )
      for (const o of page.Contents ?? []) if (o.Key !== undefined) found.push(o.Key)
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined
    } while (ContinuationToken !== undefined)
    return found
  }
  /** Every object in the bucket is a blob or a manifest whose bytes hash to its key. */
  const expectBucketVerified = async (bucket: string) => {
    const all = await keys(bucket)
    for (const key of all) {
      const match = /^(blobs|manifests)\/sha256\/([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(key)
      expect(match, `${key} is a blob or a manifest`).not.toBeNull()
      expect(match![3]!.startsWith(match![2]!)).toBe(true)
      expect(await objectDigest(bucket, key), key).toBe(`sha256:${match![3]}`)
    }
    return all
  }
  const inBucket = (bucket: string, key: string) =>
    waitFor(async () => (await keys(bucket)).includes(key), {
      what: `${key} in the bucket`,
      timeoutMs: 60_000,
    })

  const clusterEnv = (urls: string[], url: string, bucket: string, extra: Record<string, string> = {}) => ({
    ...s3.server.env(bucket),
    PULLCACHE_LISTEN: url.slice('http://'.length),
    PULLCACHE_NODE_URL: url,
    PULLCACHE_PEERS: urls.join(','),
    PULLCACHE_CLUSTER_SECRET: SECRET,
    ...extra,
  })

  /** A node as a process of its own: the 200 MB test needs more than one core, and kill -9 one. */
  async function startNode(env: Record<string, string>): Promise<CliProcess> {
    const child = startCli(['serve'], {
      env: { PULLCACHE_DATA_DIR: await tmpRoot(), PULLCACHE_UPSTREAM: fake.up.url, ...env },
    })
    children.push(child)
    await waitFor(() => child.lines.find((l) => l.event === 'listening'), {
      what: 'a node to listen',
      timeoutMs: 30_000,
    })
    return child
  }

  async function startCluster(bucket: string, extra: Record<string, string> = {}): Promise<TestMirror[]> {
    const urls = (await freePorts(3)).map((p) => `http://127.0.0.1:${p}`)
    const nodes: TestMirror[] = []
    for (const url of urls) nodes.push(await fake.mirror({ env: clusterEnv(urls, url, bucket, extra) }))
    return nodes
  }

  // 9.6 GB through loopback and sha256 on two cores, and 200 MB through the bucket three times:
  // more room than the default when the machine is shared.
  test('48 concurrent cold GETs of a 200 MB blob: one upstream GET, every body and the bucket verified; then warm everywhere, and a fourth node with an empty data dir serves from the bucket', async () => {
    const bucket = newBucket()
    const image = fake.up.addImage(REPO, 'big', { layers: 1, layerBytes: 200 * 1024 * 1024 })
    const layer = image.layers[0]!
    const urls = (await freePorts(3)).map((p) => `http://127.0.0.1:${p}`)
    await Promise.all(urls.map((url) => startNode(clusterEnv(urls, url, bucket))))
    fake.up.reset()
    const manifest = await request(`${urls[1]}/v2/${REPO}/manifests/big`, { headers: { accept: ACCEPT } })
    expect(manifest.headers['docker-content-digest']).toBe(image.manifestDigest)
    await manifest.body.dump()

    const path = `/v2/${REPO}/blobs/${layer.digest}`
    const bodies = await Promise.all(
      Array.from({ length: 48 }, (_, i) => streamedGet(`${urls[i % 3]}${path}`)),
    )
    for (const got of bodies) {
      expect(got).not.toBeInstanceOf(Error)
      expect(got).toEqual({ status: 200, digest: layer.digest, size: layer.bytes.length })
    }
    expect(exchanges('GET', path)).toBe(1)
    expect(fake.up.count('GET', `/blobs/${layer.digest}`, 'cdn')).toBe(1)

    // Published behind the clients: the blob and the manifest, each hashing to its key.
    await inBucket(bucket, bucketKey('', layer.digest))
    await inBucket(bucket, manifestKey('', image.manifestDigest))
    expect(await expectBucketVerified(bucket)).toEqual(
      expect.arrayContaining([bucketKey('', layer.digest), manifestKey('', image.manifestDigest)]),
    )

    fake.up.reset()
    for (const url of urls) {
      const warm = await streamedGet(`${url}${path}`)
      expect(warm).toEqual({ status: 200, digest: layer.digest, size: layer.bytes.length })
    }
    expect(fake.up.requests).toEqual([])

    // A node that never saw any of it, on the same bucket.
    const fourth = await fake.mirror({ env: s3.server.env(bucket) })
    const byDigest = await fourth.get(`/v2/${REPO}/manifests/${image.manifestDigest}`, { accept: ACCEPT })
    expect(byDigest.status).toBe(200)
    expect(sha256(byDigest.body)).toBe(image.manifestDigest)
    expect(await streamedGet(`${fourth.url}${path}`)).toEqual({
      status: 200,
      digest: layer.digest,
      size: layer.bytes.length,
    })
    expect(fake.up.requests).toEqual([])
  }, 300_000)

  test('the filling node killed with SIGKILL mid-blob: nothing unverified in the bucket, at most one more upstream GET, every client whole or cut', async () => {
    const bucket = newBucket()
    const bytes = randomBytes(8 * 1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    const path = `/v2/${REPO}/blobs/${digest}`
    const urls = (await freePorts(3)).map((p) => `http://127.0.0.1:${p}`)
    const ownerUrl = ownerOf(urls, `blob\0${digest}`)
    // The owner is a process of its own, so that it can be killed as a machine dies.
    const owner = await startNode(clusterEnv(urls, ownerUrl, bucket))
    const others: TestMirror[] = []
    for (const url of urls.filter((u) => u !== ownerUrl)) {
      others.push(await fake.mirror({ env: clusterEnv(urls, url, bucket) }))
    }
    fake.up.reset()
    // The upstream trickles (about 3 MB/s), so the owner is still filling when it dies.
    fake.up.fault(
      { path: `/blobs/${digest}`, host: 'cdn' },
      { kind: 'slow', chunkBytes: 64 * 1024, delayMs: 20 },
      1,
    )
    const nodeUrls = [ownerUrl, ...others.map((n) => n.url)]
    const first = Array.from({ length: 12 }, (_, i) => streamedGet(`${nodeUrls[i % 3]}${path}`))
    // Upstream has started sending to the owner: half a second in, about a fifth of it is there.
    await waitFor(() => fake.up.count('GET', `/blobs/${digest}`, 'cdn') === 1, {
      what: 'the owner to start its fill',
      timeoutMs: 30_000,
    })
    await new Promise((resolve) => setTimeout(resolve, 500))
    owner.signal('SIGKILL')
    await owner.exited
    const firstWave = await Promise.all(first)
    for (const got of firstWave) {
      // Cut (an error on the wire, or an error answer), or complete and correct: a 200 that
      // ended cleanly is the whole blob, never a short or wrong body.
      if (!(got instanceof Error) && got.status === 200) {
        expect(got).toEqual({ status: 200, digest, size: bytes.length })
      }
    }
    // The owner's own clients at least were cut mid-body.
    expect(firstWave.some((got) => got instanceof Error)).toBe(true)
    // The survivors' clients come back at once, each node finding the owner gone.
    const again = await Promise.all(others.map((node) => streamedGet(`${node.url}${path}`)))
    for (const got of again) expect(got).toEqual({ status: 200, digest, size: bytes.length })
    expect(fake.up.count('GET', `/blobs/${digest}`, 'cdn')).toBeLessThanOrEqual(2)

    await inBucket(bucket, bucketKey('', digest))
    await expectBucketVerified(bucket)
  })

  test('a tag moved upstream reaches every node within its window + 1 s, for one upstream HEAD per window', async () => {
    const windowMs = 2_000
    const bucket = newBucket()
    const before = fake.up.addImage(REPO, 'moving')
    const nodes = await startCluster(bucket, { PULLCACHE_TAG_FRESHNESS: '2s' })
    const path = `/v2/${REPO}/manifests/moving`
    for (const node of nodes) {
      const got = await node.get(path, { accept: ACCEPT })
      expect(got.headers['docker-content-digest']).toBe(before.manifestDigest)
    }

    const after = fake.up.addImage(REPO, 'moving')
    fake.up.reset()
    const moved = Date.now()
    // Per node: when the first request answered with the new digest was sent, and when the last
    // one answered with the old digest was. What a puller sees is judged by when it asked: a
    // request sent more than a window + 1 s after the move must get the new digest, however long
    // a loaded machine then takes to carry the answer back.
    const switched = new Map<string, number>()
    const lastStale = new Map<string, number>()
    // Every node asked every 100 ms, as a busy fleet would, for at least two and a half windows.
    while (switched.size < nodes.length || Date.now() - moved < 2.5 * windowMs) {
      const sent = Date.now() - moved
      const answers = await Promise.all(nodes.map((n) => n.get(path, { accept: ACCEPT })))
      answers.forEach((got, i) => {
        expect(got.status).toBe(200)
        const url = nodes[i]!.url
        const digest = got.headers['docker-content-digest']
        if (digest === after.manifestDigest) {
          if (!switched.has(url)) switched.set(url, sent)
        } else {
          expect(digest).toBe(before.manifestDigest)
          lastStale.set(url, sent)
        }
      })
      if (Date.now() - moved > 10 * windowMs) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const elapsed = Date.now() - moved
    expect(switched.size).toBe(nodes.length)
    for (const ms of lastStale.values()) expect(ms).toBeLessThanOrEqual(windowMs + 1_000)
    // Once a node has the new digest it never goes back to the old one.
    for (const [url, ms] of switched) expect(lastStale.get(url) ?? -1).toBeLessThan(ms)
    const heads = exchanges('HEAD', path)
    expect(heads).toBeGreaterThanOrEqual(1)
    expect(heads).toBeLessThanOrEqual(Math.ceil(elapsed / windowMs))
    // The new manifest itself: one GET for the cluster.
    expect(exchanges('GET', `/v2/${REPO}/manifests/${after.manifestDigest}`)).toBe(1)
  })
})
