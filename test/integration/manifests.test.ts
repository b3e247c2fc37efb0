import { describe, expect, test } from 'vitest'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

const REPO = 'library/app'
const ALL_TYPES = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ')
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'

describe('manifests and tags', () => {
  const fake = useFakeUpstream()
  let mirror: TestMirror

  const manifestGets = (ref: string) =>
    fake.up.requests.filter(
      (r) => r.method === 'GET' && r.path === `/v2/${REPO}/manifests/${ref}` && r.authorization,
    ).length
  const manifestHeads = (ref: string) =>
    fake.up.requests.filter(
      (r) => r.method === 'HEAD' && r.path === `/v2/${REPO}/manifests/${ref}` && r.authorization,
    ).length

  test('by tag: exact bytes and headers; inside the freshness window no upstream request at all', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'v1')
    const first = await mirror.get(`/v2/${REPO}/manifests/v1`, { accept: ALL_TYPES })
    expect(first.status).toBe(200)
    expect(first.body.equals(Buffer.from(image.manifest))).toBe(true)
    expect(first.headers['content-type']).toBe(image.mediaType)
    expect(first.headers['docker-content-digest']).toBe(image.manifestDigest)
    expect(first.headers['content-length']).toBe(String(image.manifest.length))
    expect(first.headers['x-pullcache-cache']).toBe('miss')
    // A tag costs a free HEAD; the counted GET is by digest, once.
    expect(manifestHeads('v1')).toBe(1)
    expect(manifestGets(image.manifestDigest)).toBe(1)
    expect(manifestGets('v1')).toBe(0)

    fake.up.reset()
    const head = await mirror.head(`/v2/${REPO}/manifests/v1`, { accept: ALL_TYPES })
    expect(head.status).toBe(200)
    expect(head.headers['docker-content-digest']).toBe(image.manifestDigest)
    expect(head.headers['content-length']).toBe(String(image.manifest.length))
    expect(head.headers['content-type']).toBe(image.mediaType)
    const again = await mirror.get(`/v2/${REPO}/manifests/v1`, { accept: ALL_TYPES })
    expect(again.headers['x-pullcache-cache']).toBe('hit')
    expect(fake.up.requests).toHaveLength(0)
  })

  test('by digest: served from the store with zero upstream requests', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'v2')
    const first = await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`)
    expect(first.status).toBe(200)
    expect(sha256(first.body)).toBe(image.manifestDigest)
    fake.up.reset()
    const second = await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`)
    expect(second.headers['x-pullcache-cache']).toBe('hit')
    const head = await mirror.head(`/v2/${REPO}/manifests/${image.manifestDigest}`)
    expect(head.headers['content-length']).toBe(String(image.manifest.length))
    expect(fake.up.requests).toHaveLength(0)
  })

  test('after the freshness window a tag is revalidated with HEAD only, and a moved tag is followed', async () => {
    mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '100ms' } })
    const one = fake.up.addImage(REPO, 'moving')
    await mirror.get(`/v2/${REPO}/manifests/moving`, { accept: ALL_TYPES })
    await new Promise((r) => setTimeout(r, 150))
    fake.up.reset()
    const same = await mirror.get(`/v2/${REPO}/manifests/moving`, { accept: ALL_TYPES })
    expect(same.headers['x-pullcache-cache']).toBe('hit')
    expect(manifestHeads('moving')).toBe(1)
    expect(fake.up.requests.filter((r) => r.method === 'GET' && r.host === 'registry')).toHaveLength(0)

    const two = fake.up.addImage(REPO, 'moving')
    await new Promise((r) => setTimeout(r, 150))
    const moved = await mirror.get(`/v2/${REPO}/manifests/moving`, { accept: ALL_TYPES })
    expect(moved.headers['docker-content-digest']).toBe(two.manifestDigest)
    expect(moved.headers['docker-content-digest']).not.toBe(one.manifestDigest)
  })

  test('when revalidation fails for any reason the cached manifest is served, marked stale', async () => {
    const faults = [
      { kind: 'status' as const, status: 500 },
      { kind: 'status' as const, status: 503 },
      { kind: 'status' as const, status: 429, headers: { 'retry-after': '1' } },
      { kind: 'status' as const, status: 401 },
      { kind: 'reset' as const },
    ]
    const image = fake.up.addImage(REPO, 'stable')
    for (const fault of faults) {
      mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
      await mirror.get(`/v2/${REPO}/manifests/stable`, { accept: ALL_TYPES })
      await new Promise((r) => setTimeout(r, 60))
      fake.up.fault({ method: 'HEAD', path: `/v2/${REPO}/manifests/stable` }, fault)
      const res = await mirror.get(`/v2/${REPO}/manifests/stable`, { accept: ALL_TYPES })
      expect(res.status, JSON.stringify(fault)).toBe(200)
      expect(res.headers['x-pullcache-cache']).toBe('stale')
      expect(res.headers.warning).toContain('110')
      expect(sha256(res.body)).toBe(image.manifestDigest)
      fake.up.clearFaults()
      await mirror.close()
    }
  })

  test('a revalidation that hangs is not waited on: the cached copy is served stale within the deadline', async () => {
    mirror = await fake.mirror({
      env: { PULLCACHE_TAG_FRESHNESS: '50ms' },
      config: { cache: { revalidate_timeout: '300ms' } },
    })
    fake.up.addImage(REPO, 'slowpoke')
    await mirror.get(`/v2/${REPO}/manifests/slowpoke`, { accept: ALL_TYPES })
    await new Promise((r) => setTimeout(r, 60))
    fake.up.fault({ method: 'HEAD', path: `/v2/${REPO}/manifests/slowpoke` }, { kind: 'hang' })
    const started = Date.now()
    const res = await mirror.get(`/v2/${REPO}/manifests/slowpoke`, { accept: ALL_TYPES })
    expect(res.status).toBe(200)
    expect(res.headers['x-pullcache-cache']).toBe('stale')
    expect(Date.now() - started).toBeLessThan(2_000)
  })

  test('token endpoint down: the cached tag is served stale', async () => {
    mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    fake.up.addImage(REPO, 'authdown')
    await mirror.get(`/v2/${REPO}/manifests/authdown`, { accept: ALL_TYPES })
    await new Promise((r) => setTimeout(r, 60))
    fake.up.expireTokens()
    fake.up.fault({ path: '/token', host: 'auth' }, { kind: 'status', status: 503 })
    const res = await mirror.get(`/v2/${REPO}/manifests/authdown`, { accept: ALL_TYPES })
    expect(res.status).toBe(200)
    expect(res.headers['x-pullcache-cache']).toBe('stale')
  })

  test('a tag deleted upstream is 404, not served stale', async () => {
    mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    fake.up.addImage(REPO, 'doomed')
    await mirror.get(`/v2/${REPO}/manifests/doomed`, { accept: ALL_TYPES })
    fake.up.deleteTag(REPO, 'doomed')
    await new Promise((r) => setTimeout(r, 60))
    const res = await mirror.get(`/v2/${REPO}/manifests/doomed`, { accept: ALL_TYPES })
    expect(res.status).toBe(404)
    expect(JSON.parse(res.body.toString()).errors[0].code).toBe('MANIFEST_UNKNOWN')
  })

  test('a one-component name is library/<name> upstream, unless upstream.library_prefix is off', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'short')
    const res = await mirror.get('/v2/app/manifests/short', { accept: ALL_TYPES })
    expect(res.status).toBe(200)
    expect(res.headers['docker-content-digest']).toBe(image.manifestDigest)
    await mirror.close()
    mirror = await fake.mirror({ config: { upstream: { library_prefix: false } } })
    fake.up.reset()
    expect((await mirror.get('/v2/app/manifests/short', { accept: ALL_TYPES })).status).toBe(404)
    expect(fake.up.requests.some((r) => r.path === '/v2/app/manifests/short')).toBe(true)
  })

  test('a manifest whose bytes do not hash to the digest is refused, never stored or served', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'bad')
    fake.up.fault(
      { method: 'GET', path: `/v2/${REPO}/manifests/${image.manifestDigest}` },
      { kind: 'corrupt' },
    )
    const res = await mirror.get(`/v2/${REPO}/manifests/bad`, { accept: ALL_TYPES })
    expect(res.status).toBe(502)
    expect(JSON.parse(res.body.toString()).errors[0].code).toBe('MANIFEST_INVALID')
    const byDigest = await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`)
    expect(byDigest.status).toBe(502)
    fake.up.clearFaults()
    const fixed = await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`)
    expect(fixed.status).toBe(200)
    expect(fixed.headers['x-pullcache-cache']).toBe('miss')
    expect(sha256(fixed.body)).toBe(image.manifestDigest)
  })

  test('concurrent requests for one tag make one HEAD and one GET upstream', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'popular')
    fake.up.reset()
    const all = await Promise.all(
      Array.from({ length: 10 }, () => mirror.get(`/v2/${REPO}/manifests/popular`, { accept: ALL_TYPES })),
    )
    for (const r of all) expect(sha256(r.body)).toBe(image.manifestDigest)
    expect(manifestHeads('popular')).toBe(1)
    expect(manifestGets(image.manifestDigest)).toBe(1)
  })

  test('a HEAD on a cold tag never becomes an upstream GET', async () => {
    mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'headonly')
    fake.up.reset()
    const res = await mirror.head(`/v2/${REPO}/manifests/headonly`, { accept: ALL_TYPES })
    expect(res.status).toBe(200)
    expect(res.headers['docker-content-digest']).toBe(image.manifestDigest)
    expect(res.headers['content-length']).toBe(String(image.manifest.length))
    expect(fake.up.requests.filter((r) => r.method === 'GET' && r.host === 'registry')).toHaveLength(0)
  })

  test('HEAD tag then GET by digest, as dockerd pulls: the next pull works with upstream down', async () => {
    const lonely = await fake.upstream()
    mirror = await fake.mirror({ upstream: lonely.url, env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    const image = lonely.addImage(REPO, 'dockerd')
    expect((await mirror.head(`/v2/${REPO}/manifests/dockerd`, { accept: ALL_TYPES })).status).toBe(200)
    expect((await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`)).status).toBe(200)
    await lonely.close()
    await new Promise((r) => setTimeout(r, 60))
    const head = await mirror.head(`/v2/${REPO}/manifests/dockerd`, { accept: ALL_TYPES })
    expect(head.status).toBe(200)
    expect(head.headers['docker-content-digest']).toBe(image.manifestDigest)
    expect(head.headers['x-pullcache-cache']).toBe('stale')
  })

  test('Accept is honoured: an OCI index goes to clients that accept it; older clients get the amd64 image', async () => {
    mirror = await fake.mirror()
    const amd = fake.up.addImage(REPO, 'amd-only')
    const arm = fake.up.addImage(REPO, 'arm-only')
    const toOci = (m: Uint8Array) => {
      const parsed = JSON.parse(Buffer.from(m).toString())
      parsed.mediaType = OCI_MANIFEST
      return Buffer.from(JSON.stringify(parsed))
    }
    const amdOci = toOci(amd.manifest)
    const armOci = toOci(arm.manifest)
    const amdDigest = fake.up.addManifest(REPO, amdOci, OCI_MANIFEST)
    const armDigest = fake.up.addManifest(REPO, armOci, OCI_MANIFEST)
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [
          {
            mediaType: OCI_MANIFEST,
            digest: armDigest,
            size: armOci.length,
            platform: { os: 'linux', architecture: 'arm64' },
          },
          {
            mediaType: OCI_MANIFEST,
            digest: amdDigest,
            size: amdOci.length,
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      }),
    )
    const indexDigest = fake.up.addManifest(REPO, index, OCI_INDEX, 'multi')

    const full = await mirror.get(`/v2/${REPO}/manifests/multi`, { accept: ALL_TYPES })
    expect(full.headers['content-type']).toBe(OCI_INDEX)
    expect(full.headers['docker-content-digest']).toBe(indexDigest)

    const old = await mirror.get(`/v2/${REPO}/manifests/multi`, { accept: OCI_MANIFEST })
    expect(old.status).toBe(200)
    expect(old.headers['content-type']).toBe(OCI_MANIFEST)
    expect(old.headers['docker-content-digest']).toBe(amdDigest)

    const none = await mirror.get(`/v2/${REPO}/manifests/multi`, {
      accept: 'application/vnd.docker.distribution.manifest.v2+json',
    })
    expect(none.status).toBe(404)
    expect(JSON.parse(none.body.toString()).errors[0].code).toBe('MANIFEST_UNKNOWN')
  })

  test('tags/list passes n, last and a rewritten Link, and is served stale when upstream fails', async () => {
    mirror = await fake.mirror()
    const repo = 'library/listed'
    for (const t of ['a', 'b', 'c', 'd']) fake.up.addImage(repo, t)
    const page = await mirror.get(`/v2/${repo}/tags/list?n=2`)
    expect(page.status).toBe(200)
    expect(JSON.parse(page.body.toString())).toEqual({ name: repo, tags: ['a', 'b'] })
    expect(page.headers.link).toBe(`</v2/${repo}/tags/list?n=2&last=b>; rel="next"`)
    const next = await mirror.get(`/v2/${repo}/tags/list?n=2&last=b`)
    expect(JSON.parse(next.body.toString()).tags).toEqual(['c', 'd'])

    fake.up.fault({ path: `/v2/${repo}/tags/list` }, { kind: 'status', status: 502 })
    const stale = await mirror.get(`/v2/${repo}/tags/list?n=2`)
    expect(stale.status).toBe(200)
    expect(stale.headers['x-pullcache-cache']).toBe('stale')
    expect(JSON.parse(stale.body.toString()).tags).toEqual(['a', 'b'])

    const bad = await mirror.get(`/v2/${repo}/tags/list?n=lots`)
    expect(bad.status).toBe(400)
    expect(JSON.parse(bad.body.toString()).errors[0].code).toBe('PAGINATION_NUMBER_INVALID')
  })

  test('with upstream gone entirely, cached tags and digests still answer', async () => {
    const lonely = await fake.upstream()
    mirror = await fake.mirror({ upstream: lonely.url, env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    const image = lonely.addImage(REPO, 'offline')
    await mirror.get(`/v2/${REPO}/manifests/offline`, { accept: ALL_TYPES })
    for (const layer of image.layers) await mirror.get(`/v2/${REPO}/blobs/${layer.digest}`)
    await lonely.close()
    await new Promise((r) => setTimeout(r, 60))
    const tag = await mirror.get(`/v2/${REPO}/manifests/offline`, { accept: ALL_TYPES })
    expect(tag.status).toBe(200)
    expect(tag.headers['x-pullcache-cache']).toBe('stale')
    const byDigest = await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`)
    expect(byDigest.headers['x-pullcache-cache']).toBe('hit')
    for (const layer of image.layers) {
      const blob = await mirror.get(`/v2/${REPO}/blobs/${layer.digest}`)
      expect(sha256(blob.body)).toBe(layer.digest)
    }
    const cold = await mirror.get(`/v2/${REPO}/manifests/never-seen`, { accept: ALL_TYPES })
    expect(cold.status).toBe(503)
    expect(JSON.parse(cold.body.toString()).errors[0].code).toBe('UNAVAILABLE')
  })
})
