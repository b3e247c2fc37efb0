// dockerd in front of a mirror that has client accounts and an upstream account able to read a
// private repository. dockerd cannot send credentials to a registry mirror, so it is an anonymous
// client: it gets public images from the mirror, and the private one is refused there. dockerd
// then falls back to Docker Hub, which is unreachable here, so the private pull fails.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSecretImage, startAccessMirror, writeHtpasswd } from './accounts.js'
import { type Dockerd, startDockerd } from './dockerd.js'
import { createStandardImages, manifestFor, type TestImage } from './images.js'
import { makeTempDir, removeDir } from './processes.js'
import type { Pullcache } from './pullcache.js'
import { createSkopeo, type Skopeo } from './skopeo.js'
import { startUpstream, type Upstream } from './upstream.js'

let work: string
let upstream: Upstream
let pullcache: Pullcache
let dockerd: Dockerd
let small: TestImage
let secret: TestImage
let skopeo: Skopeo
const CLIENT = { username: 'ci-runner', password: 'runner-pass-0d93aa' }

beforeAll(async () => {
  work = await makeTempDir('accdockerd')
  small = (await createStandardImages(join(work, 'images'))).small
  secret = await createSecretImage(join(work, 'images'), [40 * 1024, 8 * 1024])
  upstream = await startUpstream({ privateRepos: [secret.name] })
  skopeo = await createSkopeo(join(work, 'skopeo'))
  for (const image of [small, secret]) await skopeo.push(image, upstream.registry.hostPort, upstream.pusher)
  pullcache = await startAccessMirror(upstream, await writeHtpasswd(work, CLIENT))
  dockerd = await startDockerd({ mirror: pullcache.url })
})

afterAll(async () => {
  await dockerd?.close()
  await pullcache?.close()
  await upstream?.close()
  await removeDir(work)
})

const ref = (image: TestImage) => `${image.shortName}:${image.tag}`

describe('dockerd through a mirror with accounts', () => {
  it('gets a public image from the mirror anonymously', async () => {
    upstream.proxy.reset()
    const mark = pullcache.mark()
    const result = await dockerd.pull(ref(small))
    expect(
      result.code,
      `docker pull ${ref(small)}\n${result.stderr}\n${dockerd.logs().slice(-20).join('\n')}`,
    ).toBe(0)
    expect((await dockerd.inspectImage(ref(small))).Id).toBe(manifestFor(small).config.digest)
    expect(dockerd.logs().filter((l) => l.includes('Attempting next endpoint'))).toEqual([])

    // Served by the mirror to an anonymous client, every blob fetched upstream once.
    await pullcache.settle()
    const served = pullcache.accessLogSince(mark)
    for (const blob of [manifestFor(small).config, ...manifestFor(small).layers]) {
      const line = served.find(
        (l) => l.method === 'GET' && l.path === `/v2/${small.name}/blobs/${blob.digest}`,
      )
      expect(line?.status, `pullcache access log for blob ${blob.digest}`).toBe(200)
      expect(line?.user ?? null).toBe(null)
    }
    const proxied = upstream.proxy.describe()
    const downloads = upstream.proxy
      .filter({ kind: 'blob', method: 'GET', status: 'success', repository: small.name })
      .map((r) => r.reference)
      .sort()
    expect(downloads, proxied).toEqual(
      [manifestFor(small).config, ...manifestFor(small).layers].map((d) => d.digest).sort(),
    )
  })

  it('does not serve the private image; dockerd falls back to Docker Hub and fails', async () => {
    upstream.proxy.reset()
    upstream.tokens.reset()
    const mark = pullcache.mark()
    const result = await dockerd.pull(ref(secret), { timeoutMs: 90_000 })
    const why = `docker pull ${ref(secret)}\n${result.stderr}\n${dockerd.logs().slice(-20).join('\n')}`
    expect(result.code, why).not.toBe(0)
    const inspected = await dockerd.docker(['image', 'inspect', ref(secret)], { allowFailure: true })
    expect(inspected.code, 'the private image is not in dockerd').not.toBe(0)

    // The mirror refused dockerd with the Basic challenge and served nothing of the repository.
    await pullcache.settle()
    const served = pullcache.accessLogSince(mark).filter((l) => l.path.startsWith(`/v2/${secret.name}/`))
    const log = served.map((l) => `${l.method} ${l.path} ${l.status}`).join('\n')
    expect(served.length, 'dockerd asked the mirror for the private image').toBeGreaterThan(0)
    expect(
      served.every((l) => l.status === 401),
      log,
    ).toBe(true)
    // dockerd moved on to its next endpoint (Docker Hub) after the mirror's refusal.
    expect(dockerd.logs().some((l) => l.includes('Attempting next endpoint'))).toBe(true)

    // Upstream: pullcache asked the token service what anonymous pulls may read, and fetched
    // nothing of the private repository for dockerd.
    const proxied = upstream.proxy.describe()
    expect(
      upstream.proxy.count({ repository: secret.name, kind: 'manifest', status: 'success' }),
      proxied,
    ).toBe(0)
    expect(upstream.proxy.count({ repository: secret.name, kind: 'blob' }), proxied).toBe(0)
    const anonymousAsk = upstream.tokens.requests.filter(
      (r) => r.basicUser === null && r.scopes.some((s) => s.startsWith(`repository:${secret.name}:`)),
    )
    expect(anonymousAsk.length).toBeGreaterThan(0)
    for (const r of anonymousAsk) {
      expect(r.granted.find((g) => g.name === secret.name)?.actions ?? []).toEqual([])
    }
  })

  it('does not serve the private image by digest under a public name once a signed-in client cached it', async () => {
    // A signed-in client pulls the private image: its manifest and blobs are now in the cache.
    const signedIn = await skopeo.pull(
      `${pullcache.hostPort}/${secret.name}:${secret.tag}`,
      join(work, 'signed-in'),
      {
        creds: CLIENT,
      },
    )
    expect(signedIn.blobs.size).toBe(secret.blobs.length)

    // dockerd asks for that manifest by digest under the public repository's name.
    const mark = pullcache.mark()
    const crossName = `${small.shortName}@${secret.top.digest}`
    const result = await dockerd.pull(crossName, { timeoutMs: 90_000 })
    expect(result.code, `docker pull ${crossName}\n${result.stderr}`).not.toBe(0)
    await pullcache.settle()
    const served = pullcache.accessLogSince(mark).filter((l) => l.path.includes(secret.top.digest))
    const log = served.map((l) => `${l.method} ${l.path} ${l.status}`).join('\n')
    expect(served.length, 'dockerd asked the mirror for the digest').toBeGreaterThan(0)
    expect(
      served.every((l) => l.status === 404),
      log,
    ).toBe(true)
  })
})
