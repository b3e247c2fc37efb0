// Offload with real clients: pullcache on a bucket (Swift's S3 API, test/support/s3-server.sh)
// with storage.s3.redirect on. skopeo pulls cold (pullcache fills from upstream and publishes to
// the bucket); then skopeo and containerd's ctr pull again, and every blob GET is a 307 to a
// presigned URL of the bucket that the client follows (http, on loopback) and verifies: skopeo
// checks each blob's digest as it writes the layout, ctr as it stores and unpacks. The bytes
// came from the bucket: pullcache sent none of them, and upstream saw no blob GET.
import { join } from 'node:path'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startS3Server } from '../support/s3-server.js'
import { type Containerd, startPrivateContainerd } from './containerd.js'
import { createStandardImages, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type AccessLine, type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo, expectedBlobDigests, layoutProblems, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let s3: Awaited<ReturnType<typeof startS3Server>> | undefined
let skopeo: Skopeo
let pullcache: Pullcache
let containerd: Containerd | undefined
let small: TestImage
let ociIndex: TestImage
let pulls = 0

const NS = 'pcredirect'

beforeAll(async () => {
  work = await makeTempDir('s3-redirect')
  upstream = await startUpstream()
  s3 = await startS3Server()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  const standard = await createStandardImages(join(work, 'images'))
  small = standard.small
  ociIndex = standard.ociIndex
  for (const image of [small, ociIndex]) await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startPullcache({
    upstream: upstream.url,
    env: { ...s3.env('pullcache-e2e-redirect'), PULLCACHE_S3_REDIRECT: '1', PULLCACHE_S3_REDIRECT_TTL: '1m' },
  })
}, 180_000)

afterAll(async () => {
  await containerd?.close()
  await pullcache?.close()
  await s3?.stop()
  await upstream?.close()
  await removeDir(work)
})

/** skopeo copy of every platform into a fresh dir; every blob's digest checked. */
async function skopeoPull(image: TestImage): Promise<void> {
  const dest = join(work, `pull-${++pulls}`)
  const layout = await skopeo.pull(`${pullcache.hostPort}/${image.name}:${image.tag}`, dest, { all: true })
  expect(layoutProblems(layout, image), image.name).toEqual([])
  await removeDir(dest)
}

const blobGets = (lines: AccessLine[], image: TestImage, digest: string) =>
  lines.filter((l) => l.method === 'GET' && l.path === `/v2/${image.name}/blobs/${digest}`)

async function redirectedCount(): Promise<number> {
  const res = await request(`${pullcache.url}/_pullcache/stats`)
  const stats = (await res.body.json()) as { storage: { redirected: number } }
  return stats.storage.redirected
}

describe('clients following 307s to presigned bucket URLs', () => {
  it('skopeo: cold from upstream, then warm from the bucket with no byte through pullcache', async () => {
    expect(pullcache.lines.find((l) => l.event === 'storage.bucket_ready')).toMatchObject({
      presigned_get: true,
      redirect: 'on',
    })
    const mark = pullcache.mark()
    for (const image of [small, ociIndex]) await skopeoPull(image)
    await pullcache.settle()
    const cold = pullcache.accessLogSince(mark)
    // Cold: every blob streamed by pullcache as it filled, none redirected.
    for (const image of [small, ociIndex]) {
      for (const digest of expectedBlobDigests(image)) {
        const gets = blobGets(cold, image, digest)
        expect(gets.length, `${image.name} ${digest}`).toBeGreaterThan(0)
        for (const line of gets) expect(line.status).toBe(200)
        await pullcache.waitForEvent('store.blob_published', 0, (l) => l.digest === digest, 30_000)
      }
    }

    upstream.proxy.reset()
    const before = await redirectedCount()
    const warmMark = pullcache.mark()
    for (const image of [small, ociIndex]) await skopeoPull(image)
    await pullcache.settle()
    const warm = pullcache.accessLogSince(warmMark)
    let redirects = 0
    for (const image of [small, ociIndex]) {
      for (const digest of expectedBlobDigests(image)) {
        const gets = blobGets(warm, image, digest)
        expect(gets.length, `${image.name} ${digest}`).toBeGreaterThan(0)
        for (const line of gets) {
          expect(line.status, `${image.name} ${digest}`).toBe(307)
          expect(line.bytes ?? 0).toBe(0)
          redirects++
        }
      }
    }
    expect(await redirectedCount()).toBe(before + redirects)
    const proxied = upstream.proxy.describe()
    expect(upstream.proxy.count({ kind: 'blob', method: 'GET' }), proxied).toBe(0)
  }, 240_000)

  it('ctr: pulls and unpacks an image whose blobs all come from the bucket', async () => {
    // Warm already (the skopeo test ran first, or fill it here when run alone).
    await skopeoPull(ociIndex)
    for (const digest of expectedBlobDigests(ociIndex))
      await pullcache.waitForEvent('store.blob_published', 0, (l) => l.digest === digest, 30_000)
    containerd = await startPrivateContainerd()
    await containerd.setMirror(pullcache.url)
    upstream.proxy.reset()
    const before = await redirectedCount()
    const mark = pullcache.mark()
    const ref = `docker.io/${ociIndex.name}:${ociIndex.tag}`
    const result = await containerd.pull(ref, { namespace: NS, allPlatforms: true })
    expect(
      result.code,
      `ctr images pull ${ref}\n${result.stdout.slice(-3000)}\n${result.stderr.slice(-3000)}`,
    ).toBe(0)
    const listed = (await containerd.images(NS)).find((i) => i.ref === ref)
    expect(listed?.digest).toBe(ociIndex.top.digest)
    // containerd checks every blob's digest as it stores it: all of them are in its content store.
    const content = await containerd.content(NS)
    for (const digest of expectedBlobDigests(ociIndex)) expect(content).toContain(digest)

    await pullcache.settle()
    const served = pullcache.accessLogSince(mark)
    const describe = served.map((l) => `${l.method} ${l.path} ${l.status} ${l.cache}`).join('\n')
    let redirects = 0
    for (const digest of expectedBlobDigests(ociIndex)) {
      const gets = blobGets(served, ociIndex, digest)
      expect(gets.length, `${digest}\n${describe}`).toBeGreaterThan(0)
      for (const line of gets) {
        expect(line.status, `${digest}\n${describe}`).toBe(307)
        redirects++
      }
    }
    expect(await redirectedCount()).toBe(before + redirects)
    const proxied = upstream.proxy.describe()
    expect(upstream.proxy.count({ kind: 'blob', method: 'GET' }), proxied).toBe(0)
  }, 240_000)
})
