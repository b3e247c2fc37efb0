// skopeo (containers/image, the podman / CRI-O client) pulling every test image through pullcache:
// cold, warm, after a restart, and with the upstream gone.
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sha256 } from '../support/sha256.js'
import { waitFor } from '../support/wait-for.js'
import { ARM64, createBigImage, createStandardImages, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { closeRegistryClient, getBlob, getManifest } from './registry-client.js'
import { createSkopeo, layoutProblems, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let skopeo: Skopeo
let pullcache: Pullcache
let images: TestImage[]
let small: TestImage
let ociIndex: TestImage
let pulls = 0
let coldPullStarted = 0
let cached = false

beforeAll(async () => {
  work = await makeTempDir('skopeo-pull')
  upstream = await startUpstream()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  const standard = await createStandardImages(join(work, 'images'))
  small = standard.small
  ociIndex = standard.ociIndex
  images = [small, ociIndex, standard.dockerList, await createBigImage(join(work, 'images'))]
  for (const image of images) await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  // Default settings on purpose: tag freshness is the shipped 60 s.
  pullcache = await startPullcache({ upstream: upstream.url })
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await closeRegistryClient()
  await removeDir(work)
})

type By = 'tag' | 'digest'

/** Pulls `image` through pullcache into a fresh dir, checks every digest, and removes the copy. */
async function pullAndCheck(image: TestImage, by: By, arch?: string): Promise<void> {
  const reference = by === 'tag' ? `:${image.tag}` : `@${image.top.digest}`
  const dest = join(work, `pull-${++pulls}`)
  const layout = await skopeo.pull(`${pullcache.hostPort}/${image.name}${reference}`, dest, {
    all: arch === undefined,
    ...(arch === undefined ? {} : { arch }),
  })
  expect(layoutProblems(layout, image, arch), `${image.name}${reference}`).toEqual([])
  await removeDir(dest)
}

async function pullEverything(): Promise<void> {
  for (const image of images) {
    await pullAndCheck(image, 'tag')
    await pullAndCheck(image, 'digest')
    const raw = await skopeo.inspectRaw(`${pullcache.hostPort}/${image.name}:${image.tag}`)
    expect(sha256(raw), `inspect --raw ${image.name}:${image.tag}`).toBe(image.top.digest)
  }
}

/** Lets each test run alone (vitest -t) without paying for a second cold pull when run in order. */
async function ensureCached(): Promise<void> {
  if (cached) return
  coldPullStarted = Date.now()
  const mark = pullcache.mark()
  await pullEverything()
  await pullcache.stored(mark)
  cached = true
}

/** Upstream manifest-by-digest and blob requests, which a warm cache must never make. */
function contentRequests(): string {
  return [
    upstream.proxy.describe({ kind: 'blob' }),
    upstream.proxy.describe({ kind: 'manifest', byDigest: true }),
  ]
    .filter((s) => s !== '')
    .join('\n')
}

describe('skopeo through pullcache', () => {
  it('pulls every image cold, by tag and by digest, with every digest intact', async () => {
    coldPullStarted = Date.now()
    upstream.proxy.reset()
    upstream.tokens.reset()
    const mark = pullcache.mark()
    await pullEverything()
    // One platform only, as a client on an arm64 host would pull it.
    await pullAndCheck(ociIndex, 'tag', ARM64.architecture)
    await pullcache.stored(mark)

    cached = true

    // Each blob crosses the upstream link once, however many times and ways it was pulled.
    for (const image of images) {
      for (const blob of image.blobs) {
        const gets = upstream.proxy.count({
          method: 'GET',
          kind: 'blob',
          reference: blob.digest,
          status: 'success',
        })
        expect(gets, `upstream downloads of ${image.name} blob ${blob.digest}`).toBe(1)
      }
    }
    // No account configured: pullcache must ask for tokens anonymously, for pull only.
    expect(upstream.tokens.requests.length).toBeGreaterThan(0)
    for (const request of upstream.tokens.requests) {
      expect(request.basicUser).toBeNull()
      for (const scope of request.scopes) expect(scope).toMatch(/^repository:library\/[a-z-]+:pull$/)
    }
  })

  it('pulls again without any upstream blob or manifest-by-digest request', async () => {
    await ensureCached()
    // The freshness window (60 s by default) must not have passed, or tag revalidation is legitimate.
    expect(Date.now() - coldPullStarted, 'test setup too slow for the 60 s tag window').toBeLessThan(55_000)
    upstream.proxy.reset()
    const mark = pullcache.mark()
    await pullEverything()
    expect(contentRequests()).toBe('')
    expect(upstream.proxy.describe({ kind: 'manifest' }), 'tag requests within the freshness window').toBe('')
    // The access log tells the same story: every blob and manifest answered from the cache.
    const served = pullcache.accessLogSince(mark).filter((l) => /\/(blobs|manifests)\//.test(l.path))
    expect(served.length).toBeGreaterThan(0)
    for (const line of served) {
      expect({ path: line.path, status: line.status, cache: line.cache }).toEqual({
        path: line.path,
        status: 200,
        cache: 'hit',
      })
    }

    const manifest = await getManifest(pullcache.url, small.name, small.tag)
    expect(manifest.headers['x-pullcache-cache']).toBe('hit')
    const byDigest = await getManifest(pullcache.url, small.name, small.top.digest)
    expect(byDigest.headers['x-pullcache-cache']).toBe('hit')
    const firstBlob = small.blobs[0]?.digest ?? ''
    const blob = await getBlob(pullcache.url, small.name, firstBlob)
    expect(blob.headers['x-pullcache-cache']).toBe('hit')
    expect(blob.digest).toBe(firstBlob)
  })

  it('keeps the cache across a restart on the same data dir', async () => {
    await ensureCached()
    const exit = await pullcache.restart()
    expect(exit, 'pullcache exits cleanly on SIGTERM, before the SIGKILL grace period').toEqual({
      code: 0,
      signal: null,
    })
    upstream.proxy.reset()
    await pullEverything()
    expect(contentRequests()).toBe('')
    // Tags may be revalidated after a restart, but with HEAD (free on Hub), never a counted GET.
    expect(upstream.proxy.describe({ kind: 'manifest', method: 'GET' })).toBe('')
  })

  it('serves cached images with the upstream down, marks old tags stale, and recovers', async () => {
    await ensureCached()
    await pullcache.restart({ PULLCACHE_TAG_FRESHNESS: '1s' })
    const fresh = await getManifest(pullcache.url, small.name, small.tag)
    expect(fresh.status).toBe(200)

    await upstream.stop()
    try {
      await sleep(1500)
      upstream.proxy.reset()
      const stale = await getManifest(pullcache.url, small.name, small.tag)
      expect(stale.status).toBe(200)
      expect(stale.digest).toBe(small.top.digest)
      expect(stale.headers['x-pullcache-cache']).toBe('stale')
      const byDigest = await getManifest(pullcache.url, small.name, small.top.digest)
      expect(byDigest.headers['x-pullcache-cache']).toBe('hit')

      await pullEverything()

      // Nothing cached and nowhere to get it: an error the client can tell from "does not exist".
      const unknownTag = await getManifest(pullcache.url, small.name, 'never-pushed')
      expect(unknownTag.status, 'uncached tag with the upstream down').toBeGreaterThanOrEqual(500)
      const missing = `sha256:${randomBytes(32).toString('hex')}`
      const unknownBlob = await getBlob(pullcache.url, small.name, missing)
      expect(unknownBlob.status, 'uncached blob with the upstream down').toBeGreaterThanOrEqual(500)
    } finally {
      await upstream.start()
    }

    // Pullcache may hold off for a few seconds after upstream failures (serving stale without
    // trying); recovery must come by itself, within a bounded time and without a restart.
    upstream.proxy.reset()
    const recovered = await waitFor(
      async () => {
        const r = await getManifest(pullcache.url, small.name, small.tag)
        return r.status === 200 && r.headers['x-pullcache-cache'] !== 'stale' ? r : undefined
      },
      { timeoutMs: 20_000, intervalMs: 250, what: 'tag no longer served stale after the upstream came back' },
    )
    expect(recovered.digest).toBe(small.top.digest)
    expect(
      upstream.proxy.count({ kind: 'manifest', byDigest: false }),
      'tag revalidated upstream',
    ).toBeGreaterThan(0)
  })
})
