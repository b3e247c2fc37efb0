// Eight clients asking for the same cold 200 MB blob at once: pullcache must fetch it upstream once
// and give all eight the right bytes (distribution's proxy would fetch it eight times, protocol.md §1.2).
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BIG_LAYER_BYTES, createBigImage, type Layer, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { type Pullcache, startPullcache } from './pullcache.js'
import { closeRegistryClient, getBlob } from './registry-client.js'
import { createSkopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let pullcache: Pullcache
let big: TestImage
let layer: Layer

beforeAll(async () => {
  work = await makeTempDir('concurrent')
  upstream = await startUpstream()
  const skopeo = await createSkopeo(join(work, 'skopeo'))
  big = await createBigImage(join(work, 'images'))
  const [only] = big.manifests[0]?.layers ?? []
  if (only === undefined) throw new Error('big image has no layer')
  layer = only
  await skopeo.push(big, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startPullcache({ upstream: upstream.url })
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await closeRegistryClient()
  await removeDir(work)
})

describe('concurrent cold blob requests', () => {
  it('eight concurrent GETs of a 200 MB blob cause one upstream GET, and all eight hash right', async () => {
    expect(layer.size).toBeGreaterThan(BIG_LAYER_BYTES)
    upstream.proxy.reset()
    const results = await Promise.all(
      Array.from({ length: 8 }, () => getBlob(pullcache.url, big.name, layer.digest)),
    )
    for (const [i, r] of results.entries()) {
      expect(r.status, `client ${i}`).toBe(200)
      expect(r.size, `client ${i}`).toBe(layer.size)
      expect(r.digest, `client ${i}`).toBe(layer.digest)
    }
    const seen = upstream.proxy.describe({ kind: 'blob' })
    const downloads = upstream.proxy.filter({ method: 'GET', reference: layer.digest, status: 'success' })
    expect(downloads.length, seen).toBe(1)
    expect(downloads[0]?.bytes, seen).toBe(layer.size)
    // Besides the download, at most the anonymous request that discovers the token challenge (401).
    const others = upstream.proxy.requests.filter((r) => r.kind === 'blob' && !downloads.includes(r))
    expect(
      others.every((r) => r.status === 401 && r.authorization === null),
      seen,
    ).toBe(true)
    expect(others.length, seen).toBeLessThanOrEqual(1)

    // Exactly one client caused the fill; the others joined it (or, if late, found it done).
    const outcomes = results.map((r) => r.headers['x-pullcache-cache'])
    expect(
      outcomes.filter((o) => o === 'miss'),
      `outcomes ${outcomes.join(',')}`,
    ).toHaveLength(1)
    for (const outcome of outcomes) expect(['miss', 'coalesced', 'hit']).toContain(outcome)
  })

  it('serves the same blob from the cache afterwards', async () => {
    await pullcache.stored(0)
    upstream.proxy.reset()
    const again = await getBlob(pullcache.url, big.name, layer.digest)
    expect(again.status).toBe(200)
    expect(again.digest).toBe(layer.digest)
    expect(again.headers['x-pullcache-cache']).toBe('hit')
    expect(upstream.proxy.describe({ kind: 'blob' })).toBe('')
  })
})
