// The harness checked on its own, without pullcache: the fake Hub (token auth, counting proxy,
// stop/start) and the real clients work against it. When a pullcache test fails, this file passing
// says the fault is not in the harness.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startDockerd } from './dockerd.js'
import { createStandardImages, manifestFor, type StandardImages } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import { closeRegistryClient, getManifest } from './registry-client.js'
import { createSkopeo, layoutProblems, type Skopeo } from './skopeo.js'
import { decodeJwtPayload } from './token-server.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let images: StandardImages
let skopeo: Skopeo

beforeAll(async () => {
  work = await makeTempDir('harness')
  upstream = await startUpstream()
  skopeo = await createSkopeo(join(work, 'skopeo'))
  images = await createStandardImages(join(work, 'images'))
  for (const image of Object.values(images))
    await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
})

afterAll(async () => {
  await upstream?.close()
  await closeRegistryClient()
  await removeDir(work)
})

describe('e2e harness (no pullcache)', () => {
  it('the registry demands a token and the token server grants pull anonymously, push to the pusher', async () => {
    const anonymous = await getManifest(upstream.url, images.small.name, images.small.tag)
    expect(anonymous.status).toBe(401)
    expect(anonymous.headers['www-authenticate']).toBe(
      `Bearer realm="${upstream.tokens.realm}",service="registry.docker.io",` +
        `scope="repository:${images.small.name}:pull"`,
    )
    const scope = `repository:${images.small.name}:pull,push`
    const anon = await fetch(`${upstream.tokens.realm}?service=registry.docker.io&scope=${scope}`)
    const anonToken = (await anon.json()) as { token: string; access_token: string; expires_in: number }
    expect(anonToken.access_token).toBe(anonToken.token)
    expect(anonToken.expires_in).toBe(300)
    expect(decodeJwtPayload(anonToken.token).access).toEqual([
      { type: 'repository', name: images.small.name, actions: ['pull'] },
    ])
    const { username, password } = upstream.pusher
    const authed = await fetch(`${upstream.tokens.realm}?service=registry.docker.io&scope=${scope}`, {
      headers: { authorization: `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}` },
    })
    expect(decodeJwtPayload(((await authed.json()) as { token: string }).token).access).toEqual([
      { type: 'repository', name: images.small.name, actions: ['pull', 'push'] },
    ])
    const wrong = await fetch(`${upstream.tokens.realm}?service=registry.docker.io&scope=${scope}`, {
      headers: { authorization: `Basic ${Buffer.from(`${username}:nope`).toString('base64')}` },
    })
    expect(wrong.status).toBe(401)
  })

  it('skopeo pulls through the counting proxy, which counts every request', async () => {
    upstream.proxy.reset()
    const image = images.ociIndex
    const hostPort = new URL(upstream.url).host
    const layout = await skopeo.pull(`${hostPort}/${image.name}:${image.tag}`, join(work, 'p1'), {
      all: true,
    })
    expect(layoutProblems(layout, image)).toEqual([])
    for (const blob of image.blobs) {
      expect(upstream.proxy.count({ method: 'GET', kind: 'blob', reference: blob.digest })).toBe(1)
    }
    expect(upstream.proxy.count({ method: 'GET', kind: 'manifest', byDigest: true })).toBe(2)
    expect(upstream.proxy.count({ method: 'GET', kind: 'manifest', byDigest: false })).toBe(1)
  })

  it('stop() refuses connections and start() comes back on the same port with the same data', async () => {
    const url = upstream.url
    await upstream.stop()
    await expect(fetch(`${url}/v2/`)).rejects.toThrow()
    await upstream.start()
    expect(upstream.url).toBe(url)
    const layout = await skopeo.pull(
      `${new URL(url).host}/${images.small.name}:${images.small.tag}`,
      join(work, 'p2'),
    )
    expect(layoutProblems(layout, images.small)).toEqual([])
  })

  it('dockerd pulls with the counting proxy as its mirror', async () => {
    const dockerd = await startDockerd({ mirror: upstream.url })
    try {
      upstream.proxy.reset()
      for (const image of [images.small, images.dockerList, images.ociIndex]) {
        const result = await dockerd.pull(`${image.shortName}:${image.tag}`)
        expect(result.code, result.stderr).toBe(0)
        const inspected = await dockerd.inspectImage(`${image.shortName}:${image.tag}`)
        expect(inspected.Id).toBe(manifestFor(image).config.digest)
        expect(inspected.RepoDigests).toContain(`${image.shortName}@${image.top.digest}`)
      }
      // The legacy pull path resolves tags with HEAD (protocol.md §3.2).
      expect(upstream.proxy.count({ method: 'HEAD', kind: 'manifest', byDigest: false })).toBe(3)

      // A mirror that cannot serve makes dockerd fall back to Hub, which fails offline: tests can
      // therefore tell "served by the mirror" from "not served".
      const missing = await dockerd.pull('does-not-exist:1')
      expect(missing.code).not.toBe(0)
    } finally {
      await dockerd.close()
    }
  })
})
