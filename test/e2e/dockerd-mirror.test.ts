// A real dockerd with `--registry-mirror` pointed at pullcache, pulling docker.io/library/* images.
// With no internet, dockerd's fallback to registry-1.docker.io fails, so a successful pull was served
// by the mirror.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Dockerd, startDockerd } from './dockerd.js'
import { ARM64, createStandardImages, manifestFor, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let pullcache: Pullcache
let dockerd: Dockerd
let images: TestImage[]

beforeAll(async () => {
  work = await makeTempDir('dockerd')
  upstream = await startUpstream()
  const skopeo = await createSkopeo(join(work, 'skopeo'))
  const standard = await createStandardImages(join(work, 'images'))
  images = [standard.small, standard.ociIndex, standard.dockerList]
  for (const image of images) await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startPullcache({ upstream: upstream.url })
  dockerd = await startDockerd({ mirror: pullcache.url })
})

afterAll(async () => {
  await dockerd?.close()
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

const ref = (image: TestImage) => `${image.shortName}:${image.tag}`

/** Pulls with dockerd and checks the image ID (config digest) and the recorded repo digest. */
async function pullAndInspect(image: TestImage): Promise<void> {
  const result = await dockerd.pull(ref(image))
  expect(
    result.code,
    `docker pull ${ref(image)}\n${result.stderr}\n${dockerd.logs().slice(-20).join('\n')}`,
  ).toBe(0)
  const inspected = await dockerd.inspectImage(ref(image))
  expect(inspected.Id).toBe(manifestFor(image).config.digest)
  expect(inspected.RepoTags).toContain(ref(image))
  // For an index or list dockerd records the digest of the list, which is what the tag points at.
  expect(inspected.RepoDigests).toContain(`${image.shortName}@${image.top.digest}`)
}

describe('dockerd with pullcache as registry mirror', () => {
  it('pulls a single-platform image and two multi-arch images through pullcache', async () => {
    upstream.proxy.reset()
    const mark = pullcache.mark()
    for (const image of images) await pullAndInspect(image)

    // Served by the mirror, not by a fallback to Docker Hub.
    expect(dockerd.logs().filter((l) => l.includes('Attempting next endpoint'))).toEqual([])
    const served = pullcache.accessLogSince(mark)
    for (const image of images) {
      for (const blob of [manifestFor(image).config, ...manifestFor(image).layers]) {
        const line = served.find(
          (l) => l.method === 'GET' && l.path === `/v2/${image.name}/blobs/${blob.digest}`,
        )
        expect(line?.status, `pullcache access log for ${image.name} blob ${blob.digest}`).toBe(200)
      }
    }
  })

  it('pulls again after docker rmi without any upstream blob request', async () => {
    await dockerd.removeImages(images.map(ref))
    upstream.proxy.reset()
    for (const image of images) await pullAndInspect(image)
    expect(upstream.proxy.describe({ kind: 'blob' })).toBe('')
    expect(upstream.proxy.describe({ kind: 'manifest', byDigest: true })).toBe('')
  })

  it('pulls another platform of a multi-arch image (--platform linux/arm64)', async () => {
    const [, ociIndex] = images
    if (ociIndex === undefined) throw new Error('no images')
    await dockerd.removeImages([ref(ociIndex)])
    const result = await dockerd.pull(ref(ociIndex), { platform: 'linux/arm64' })
    expect(result.code, result.stderr).toBe(0)
    const inspected = await dockerd.inspectImage(ref(ociIndex))
    expect(inspected.Id).toBe(manifestFor(ociIndex, ARM64).config.digest)
    expect(inspected.Architecture).toBe('arm64')
  })

  it('pulls by digest', async () => {
    const [small] = images
    if (small === undefined) throw new Error('no images')
    await dockerd.removeImages([ref(small)])
    const byDigest = `${small.shortName}@${small.top.digest}`
    const result = await dockerd.pull(byDigest)
    expect(result.code, result.stderr).toBe(0)
    expect((await dockerd.inspectImage(byDigest)).Id).toBe(manifestFor(small).config.digest)
  })
})
