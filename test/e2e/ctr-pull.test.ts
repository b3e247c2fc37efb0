// containerd's ctr pulling docker.io/library/* through pullcache, configured the way the README tells
// operators to: hosts.toml with Docker Hub as `server` and pullcache as a pull/resolve [host].
// containerd adds `?ns=docker.io` to every request it sends to a mirror; pullcache must ignore it.
// With no internet here, the fallback to registry-1.docker.io fails, so a pull that succeeds was
// served by the mirror.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sha256 } from '../support/sha256.js'
import { type Containerd, startPrivateContainerd } from './containerd.js'
import { startCountingProxy } from './counting-proxy.js'
import { createStandardImages, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo, expectedBlobDigests } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let pullcache: Pullcache
let containerd: Containerd
let small: TestImage
let ociIndex: TestImage

const NS = 'pce2e'

beforeAll(async () => {
  work = await makeTempDir('ctrpull')
  upstream = await startUpstream()
  const skopeo = await createSkopeo(join(work, 'skopeo'))
  const standard = await createStandardImages(join(work, 'images'))
  small = standard.small
  ociIndex = standard.ociIndex
  for (const image of [small, ociIndex]) await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startPullcache({ upstream: upstream.url })
  containerd = await startPrivateContainerd()
  await containerd.setMirror(pullcache.url)
})

afterAll(async () => {
  await containerd?.close()
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

const ref = (image: TestImage) => `docker.io/${image.name}:${image.tag}`

type Case = { image: () => TestImage; platform?: string; allPlatforms?: boolean; arches?: string[] }
const CASES: Record<string, Case> = {
  'single-platform schema2 image (--platform linux/amd64)': {
    image: () => small,
    platform: 'linux/amd64',
    arches: ['amd64'],
  },
  'multi-arch OCI index (--all-platforms)': { image: () => ociIndex, allPlatforms: true },
}

/** Pulls with ctr and checks that the image's target is exactly what was pushed. */
async function pullAndCheck(c: Case, namespace: string): Promise<void> {
  const image = c.image()
  const result = await containerd.pull(ref(image), {
    namespace,
    ...(c.platform === undefined ? {} : { platform: c.platform }),
    ...(c.allPlatforms === undefined ? {} : { allPlatforms: c.allPlatforms }),
  })
  expect(
    result.code,
    `ctr images pull ${ref(image)}\n${result.stdout.slice(-3000)}\n${result.stderr.slice(-3000)}`,
  ).toBe(0)
  const listed = (await containerd.images(namespace)).find((i) => i.ref === ref(image))
  expect(listed?.digest, `ctr images ls in ${namespace}`).toBe(image.top.digest)
  expect(listed?.type).toBe(image.top.mediaType)
  // Unpacked too: containerd applied every layer it got, and the snapshot chain is the one the
  // image's diff IDs say it should be, so the layer bytes pullcache served were the pushed ones.
  const snapshots = await containerd.snapshots(namespace)
  for (const m of image.manifests.filter(
    (m) => c.arches === undefined || c.arches.includes(m.platform.architecture),
  )) {
    expect(snapshots, `snapshot chain of ${m.platform.architecture}`).toContain(
      chainId(m.layers.map((l) => l.diffId)),
    )
  }
}

/** The OCI chain ID of a layer stack: containerd's snapshot key for the unpacked image. */
function chainId(diffIds: readonly string[]): string {
  let chain = ''
  for (const diffId of diffIds) chain = chain === '' ? diffId : sha256(`${chain} ${diffId}`)
  return chain
}

describe('containerd (ctr) with pullcache in hosts.toml', () => {
  for (const [name, c] of Object.entries(CASES)) {
    it(`pulls a ${name} through pullcache`, async () => {
      const image = c.image()
      upstream.proxy.reset()
      const mark = pullcache.mark()
      await pullAndCheck(c, NS)
      await pullcache.stored(mark)

      // Served by pullcache: the tag, the platform manifests and every blob.
      const served = pullcache.accessLogSince(mark)
      const describe = served.map((l) => `${l.method} ${l.path} ${l.status} ${l.cache}`).join('\n')
      expect(
        served.some((l) => l.path === `/v2/${image.name}/manifests/${image.tag}` && l.status === 200),
        describe,
      ).toBe(true)
      const blobs = expectedBlobDigests(image, c.arches)
      for (const digest of blobs) {
        const line = served.find((l) => l.method === 'GET' && l.path === `/v2/${image.name}/blobs/${digest}`)
        expect(line?.status, `pullcache access log for blob ${digest}:\n${describe}`).toBe(200)
        expect(line?.cache, describe).toBe('miss')
      }
      for (const m of image.manifests.filter(
        (m) => c.arches === undefined || c.arches.includes(m.platform.architecture),
      )) {
        expect(
          served.some((l) => l.path === `/v2/${image.name}/manifests/${m.digest}` && l.status === 200),
          describe,
        ).toBe(true)
      }

      // ...by fetching each blob upstream once: the counting proxy saw exactly those downloads.
      const proxied = upstream.proxy.describe()
      const downloads = upstream.proxy
        .filter({ kind: 'blob', method: 'GET', status: 'success' })
        .map((r) => r.reference)
        .sort()
      expect(downloads, proxied).toEqual(blobs)
      expect(upstream.proxy.count({ kind: 'manifest', status: 'success' }), proxied).toBeGreaterThan(0)
    })
  }

  it('pulls both again after images rm and content rm with no upstream blob or manifest GET', async () => {
    const images = Object.values(CASES).map((c) => c.image())
    await containerd.forget(NS, images.map(ref))
    expect(await containerd.images(NS)).toEqual([])
    expect(await containerd.content(NS)).toEqual([])

    upstream.proxy.reset()
    const mark = pullcache.mark()
    for (const c of Object.values(CASES)) await pullAndCheck(c, NS)

    const served = pullcache.accessLogSince(mark)
    for (const c of Object.values(CASES)) {
      const image = c.image()
      for (const digest of expectedBlobDigests(image, c.arches)) {
        const line = served.find((l) => l.method === 'GET' && l.path === `/v2/${image.name}/blobs/${digest}`)
        expect(line?.status, `blob ${digest}`).toBe(200)
        expect(line?.cache, `blob ${digest}`).toBe('hit')
      }
    }
    const proxied = upstream.proxy.describe()
    expect(upstream.proxy.count({ kind: 'blob', method: 'GET' }), proxied).toBe(0)
    expect(upstream.proxy.count({ kind: 'manifest', method: 'GET', byDigest: true }), proxied).toBe(0)
  })

  it('sends ?ns=docker.io on every request, and pullcache serves them regardless', async () => {
    // A counting proxy between ctr and pullcache shows the query strings ctr sends; pullcache's
    // access log leaves them out. The namespace is emptied first so that every blob is fetched:
    // with containerd's default (shared) content policy a fresh namespace would reuse the blobs
    // another namespace holds, and ctr would not ask for them at all.
    const spy = await startCountingProxy(pullcache.url)
    try {
      await containerd.setMirror(spy.url)
      const images = Object.values(CASES).map((c) => c.image())
      await containerd.forget(NS, images.map(ref))
      for (const c of Object.values(CASES)) await pullAndCheck(c, NS)
      const seen = spy.describe()
      const registryRequests = spy.requests.filter((r) => r.kind === 'manifest' || r.kind === 'blob')
      expect(registryRequests.length, seen).toBeGreaterThan(0)
      for (const r of registryRequests) {
        expect(r.query, seen).toBe('ns=docker.io')
        expect(r.status, seen).toBe(200)
      }
    } finally {
      await containerd.setMirror(pullcache.url)
      await spy.close()
    }
  })
})
