// `pullcache prefetch` against a real registry with Docker Hub-style token auth: a multi-platform
// OCI index warmed for linux/arm64 only fetches the index, the arm64 manifest and the arm64
// blobs; skopeo on an arm64 host then pulls it through pullcache without any upstream request.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../support/run-cli.js'
import { AMD64, ARM64, createImage, manifestFor, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { assertBuilt, type Pullcache, startPullcache } from './pullcache.js'
import { createSkopeo, layoutProblems, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let skopeo: Skopeo
let image: TestImage
let pullcache: Pullcache | undefined

beforeAll(async () => {
  await assertBuilt()
  work = await makeTempDir('prefetch')
  upstream = await startUpstream()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  image = await createImage(join(work, 'images'), {
    shortName: 'prefetched',
    tag: '1.0',
    format: 'oci',
    platforms: [AMD64, ARM64],
    layerSizes: [96 * 1024, 700 * 1024],
  })
  await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

describe('prefetch from a real registry', () => {
  it('fetches only the arm64 platform of an OCI index, and pulls are then served from the cache', async () => {
    const dataDir = join(work, 'data')
    const arm64 = manifestFor(image, ARM64)
    const amd64 = manifestFor(image, AMD64)
    upstream.proxy.reset()

    const r = await runCli([
      'prefetch',
      '--data-dir',
      dataDir,
      '--upstream',
      upstream.url,
      '--platform',
      'linux/arm64',
      `${image.shortName}:${image.tag}`,
    ])
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0)
    expect(r.stdout).toContain(
      `docker.io/${image.name}:${image.tag} ${image.top.digest} platforms=linux/arm64/v8 layers=2`,
    )

    const downloads = (digest: string) =>
      upstream.proxy.count({ method: 'GET', kind: 'blob', reference: digest, status: 'success' })
    for (const d of [arm64.config, ...arm64.layers]) expect(downloads(d.digest), d.digest).toBe(1)
    for (const d of [amd64.config, ...amd64.layers]) expect(downloads(d.digest), d.digest).toBe(0)
    expect(upstream.proxy.count({ kind: 'manifest', reference: amd64.digest })).toBe(0)

    pullcache = await startPullcache({ upstream: upstream.url, dataDir })
    upstream.proxy.reset()
    const layout = await skopeo.pull(
      `${pullcache.hostPort}/${image.name}:${image.tag}`,
      join(work, 'pulled'),
      {
        arch: ARM64.architecture,
      },
    )
    expect(layoutProblems(layout, image, ARM64.architecture)).toEqual([])
    // Within the tag's freshness window: not even a HEAD for the tag.
    expect(upstream.proxy.describe()).toBe('')
  })
})
