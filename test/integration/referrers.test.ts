// The rest of the read API: referrers (signatures, SBOMs) of a digest, from upstream's referrers
// API or, on an upstream without one, from the referrers tag schema; and _catalog, the
// repositories pullcache holds. Both keep to what anonymous pulls may read.

import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import bcrypt from 'bcryptjs'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import type { AddedImage, FakeUpstream } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const EMPTY = 'application/vnd.oci.empty.v1+json'
const SIGNATURE = 'application/vnd.dev.cosign.artifact.sig.v1+json'
const SBOM = 'application/spdx+json'
const ALL_TYPES = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  OCI_MANIFEST,
  OCI_INDEX,
].join(', ')

interface Descriptor {
  mediaType: string
  digest: string
  size: number
  artifactType?: string
  annotations?: Record<string, string>
}

/** An artifact manifest whose subject is the image, pushed to the fake upstream. */
function pushArtifact(up: FakeUpstream, repo: string, image: AddedImage, artifactType: string, note: string) {
  const emptyDigest = up.addBlob(repo, new TextEncoder().encode('{}'), EMPTY)
  const bytes = new TextEncoder().encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType,
      config: { mediaType: EMPTY, digest: emptyDigest, size: 2 },
      layers: [{ mediaType: EMPTY, digest: emptyDigest, size: 2 }],
      subject: { mediaType: image.mediaType, digest: image.manifestDigest, size: image.manifest.length },
      annotations: { 'org.example.note': note },
    }),
  )
  const digest = up.addManifest(repo, bytes, OCI_MANIFEST)
  const descriptor: Descriptor = {
    mediaType: OCI_MANIFEST,
    digest,
    size: bytes.length,
    artifactType,
    annotations: { 'org.example.note': note },
  }
  return descriptor
}

/** The referrers tag schema: the index a client such as cosign or oras keeps at `sha256-<hex>`. */
function pushFallbackIndex(up: FakeUpstream, repo: string, image: AddedImage, manifests: Descriptor[]) {
  const bytes = new TextEncoder().encode(
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }),
  )
  return up.addManifest(repo, bytes, OCI_INDEX, image.manifestDigest.replace(':', '-'))
}

function listOf(body: Buffer): { mediaType: string; schemaVersion: number; manifests: Descriptor[] } {
  return JSON.parse(body.toString()) as { mediaType: string; schemaVersion: number; manifests: Descriptor[] }
}

function errorOf(body: Buffer): string {
  return (JSON.parse(body.toString()) as { errors: { code: string }[] }).errors[0]!.code
}

const byDigest = (a: Descriptor, b: Descriptor) => a.digest.localeCompare(b.digest)

describe('referrers', () => {
  const fake = useFakeUpstream()
  const referrerGets = (repo: string) =>
    fake.up.requests.filter(
      (r) => r.method === 'GET' && r.path.startsWith(`/v2/${repo}/referrers/`) && r.authorization,
    ).length

  test("from upstream's referrers API; cached for the freshness window; artifactType filters and says so", async () => {
    fake.up.setReferrersApi(true)
    const repo = 'acme/signed'
    const image = fake.up.addImage(repo, 'v1')
    const sig = pushArtifact(fake.up, repo, image, SIGNATURE, 'signed')
    const sbom = pushArtifact(fake.up, repo, image, SBOM, 'sbom')
    const mirror = await fake.mirror()
    const path = `/v2/${repo}/referrers/${image.manifestDigest}`

    const first = await mirror.get(path)
    expect(first.status).toBe(200)
    expect(first.headers['content-type']).toBe(OCI_INDEX)
    expect(first.headers['x-pullcache-cache']).toBe('miss')
    expect(first.headers['oci-filters-applied']).toBeUndefined()
    const list = listOf(first.body)
    expect(list.schemaVersion).toBe(2)
    expect(list.mediaType).toBe(OCI_INDEX)
    expect(list.manifests.sort(byDigest)).toEqual([sig, sbom].sort(byDigest))
    expect(referrerGets(repo)).toBe(1)
    // The API answered: the tag schema is not asked.
    expect(fake.up.count('HEAD', /\/manifests\/sha256-/)).toBe(0)

    fake.up.reset()
    const again = await mirror.get(path)
    expect(again.headers['x-pullcache-cache']).toBe('hit')
    expect(listOf(again.body).manifests.sort(byDigest)).toEqual([sig, sbom].sort(byDigest))
    const filtered = await mirror.get(`${path}?artifactType=${encodeURIComponent(SBOM)}`)
    expect(filtered.status).toBe(200)
    expect(filtered.headers['oci-filters-applied']).toBe('artifactType')
    expect(listOf(filtered.body).manifests).toEqual([sbom])
    const none = await mirror.get(`${path}?artifactType=application%2Fnothing`)
    expect(none.headers['oci-filters-applied']).toBe('artifactType')
    expect(listOf(none.body).manifests).toEqual([])
    // Inside the window, no upstream request at all.
    expect(fake.up.requests).toHaveLength(0)
    // Accounted and logged like other requests.
    expect(
      mirror.logs.some(
        (l) => l.event === 'request' && l.path === path && l.status === 200 && l.cache === 'hit',
      ),
    ).toBe(true)
  })

  test('an upstream without the API (404): the referrers tag schema, and an empty list without the tag', async () => {
    const repo = 'acme/fallback'
    const image = fake.up.addImage(repo, 'v1')
    const sig = pushArtifact(fake.up, repo, image, SIGNATURE, 'signed')
    const mirror = await fake.mirror()

    const before = await mirror.get(`/v2/${repo}/referrers/${image.manifestDigest}`)
    expect(before.status).toBe(200)
    // The signature exists upstream, but with neither the API nor the tag nothing lists it.
    expect(listOf(before.body).manifests).toEqual([])
    expect(before.body.toString()).not.toContain(sig.digest)

    const other = fake.up.addImage(repo, 'v2')
    const otherSig = pushArtifact(fake.up, repo, other, SIGNATURE, 'other')
    pushFallbackIndex(fake.up, repo, other, [otherSig])
    fake.up.reset()
    const found = await mirror.get(`/v2/${repo}/referrers/${other.manifestDigest}`)
    expect(found.status).toBe(200)
    expect(found.headers['x-pullcache-cache']).toBe('miss')
    expect(listOf(found.body).manifests).toEqual([otherSig])
    expect(referrerGets(repo)).toBe(1)
    const tag = other.manifestDigest.replace(':', '-')
    expect(fake.up.count('HEAD', `/v2/${repo}/manifests/${tag}`)).toBeGreaterThanOrEqual(1)
  })

  test('an empty list is kept only for a manifest pullcache holds: made-up digests leave nothing', async () => {
    fake.up.setReferrersApi(true)
    const repo = 'acme/empty'
    const image = fake.up.addImage(repo, 'v1')
    const mirror = await fake.mirror()
    const path = `/v2/${repo}/referrers/${image.manifestDigest}`
    for (let i = 0; i < 2; i++) expect(listOf((await mirror.get(path)).body).manifests).toEqual([])
    expect(referrerGets(repo)).toBe(2)

    expect((await mirror.get(`/v2/${repo}/manifests/v1`, { accept: ALL_TYPES })).status).toBe(200)
    fake.up.reset()
    expect((await mirror.get(path)).headers['x-pullcache-cache']).toBe('miss')
    const kept = await mirror.get(path)
    expect(kept.headers['x-pullcache-cache']).toBe('hit')
    expect(listOf(kept.body).manifests).toEqual([])
    expect(referrerGets(repo)).toBe(1)
  })

  test('after the window it is asked again; when upstream fails, the kept list is served stale', async () => {
    fake.up.setReferrersApi(true)
    const repo = 'acme/stale'
    const image = fake.up.addImage(repo, 'v1')
    const sig = pushArtifact(fake.up, repo, image, SIGNATURE, 'signed')
    const mirror = await fake.mirror({ env: { PULLCACHE_TAG_FRESHNESS: '100ms' } })
    const path = `/v2/${repo}/referrers/${image.manifestDigest}`
    expect(listOf((await mirror.get(path)).body).manifests).toEqual([sig])

    await new Promise((r) => setTimeout(r, 150))
    const sbom = pushArtifact(fake.up, repo, image, SBOM, 'sbom')
    const refreshed = await mirror.get(path)
    expect(refreshed.headers['x-pullcache-cache']).toBe('miss')
    expect(listOf(refreshed.body).manifests.sort(byDigest)).toEqual([sig, sbom].sort(byDigest))

    await new Promise((r) => setTimeout(r, 150))
    fake.up.fault({ path: /\/referrers\// }, { kind: 'status', status: 503 })
    const stale = await mirror.get(path)
    expect(stale.status).toBe(200)
    expect(stale.headers['x-pullcache-cache']).toBe('stale')
    expect(stale.headers.warning).toContain('110')
    expect(listOf(stale.body).manifests.sort(byDigest)).toEqual([sig, sbom].sort(byDigest))

    // Nothing kept, upstream failing: an error, not an empty list.
    const fresh = fake.up.addImage(repo, 'v2')
    const failed = await mirror.get(`/v2/${repo}/referrers/${fresh.manifestDigest}`)
    expect(failed.status).toBeGreaterThanOrEqual(500)
  })

  test('bad digests and names are refused as the spec says; HEAD is not a referrers method', async () => {
    const mirror = await fake.mirror()
    const bad = await mirror.get('/v2/acme/app/referrers/sha256:nothex')
    expect(bad.status).toBe(400)
    expect(errorOf(bad.body)).toBe('DIGEST_INVALID')
    const sha512 = await mirror.get(`/v2/acme/app/referrers/sha512:${'a'.repeat(128)}`)
    expect(sha512.status).toBe(400)
    expect(errorOf(sha512.body)).toBe('DIGEST_INVALID')
    const name = await mirror.get(`/v2/Acme/App/referrers/sha256:${'a'.repeat(64)}`)
    expect(name.status).toBe(400)
    expect(errorOf(name.body)).toBe('NAME_INVALID')
    const head = await mirror.head(`/v2/acme/app/referrers/sha256:${'a'.repeat(64)}`)
    expect(head.status).toBe(405)
    expect(fake.up.requests.filter((r) => r.path.includes('/referrers/'))).toHaveLength(0)
  })
})

describe('_catalog', () => {
  const fake = useFakeUpstream()

  test('lists the repositories held, in pages linked by Link; n is bounded and checked', async () => {
    const repos = ['acme/a', 'acme/b', 'acme/c', 'library/d', 'zeta/e']
    for (const repo of repos) fake.up.addImage(repo, 'v1')
    fake.up.addImage('acme/never-pulled', 'v1')
    const mirror = await fake.mirror()
    for (const repo of repos)
      expect((await mirror.get(`/v2/${repo}/manifests/v1`, { accept: ALL_TYPES })).status).toBe(200)

    const all = await mirror.get('/v2/_catalog')
    expect(all.status).toBe(200)
    expect(JSON.parse(all.body.toString())).toEqual({ repositories: repos })
    expect(all.headers.link).toBeUndefined()

    const seen: string[] = []
    let next: string | undefined = '/v2/_catalog?n=2'
    let pages = 0
    while (next !== undefined) {
      const page = await mirror.get(next)
      expect(page.status).toBe(200)
      seen.push(...(JSON.parse(page.body.toString()) as { repositories: string[] }).repositories)
      next = /<([^>]+)>;\s*rel="next"/.exec(String(page.headers.link ?? ''))?.[1]
      pages++
    }
    expect(seen).toEqual(repos)
    expect(pages).toBe(3)

    const bad = await mirror.get('/v2/_catalog?n=-1')
    expect(bad.status).toBe(400)
    expect(errorOf(bad.body)).toBe('PAGINATION_NUMBER_INVALID')
    // The catalog is the mirror's own: upstream is never asked.
    expect(fake.up.requests.filter((r) => r.path.includes('_catalog'))).toHaveLength(0)
  })
})

describe('with a private repository upstream and accounts here', () => {
  const UPSTREAM_USER = 'puller'
  const UPSTREAM_PASSWORD = 'upstream-secret-5e2a'
  const ALICE = { user: 'alice', password: 'alice-pass-0c4f1' }
  const SECRET = 'acme/secret'
  const fx = useFakeUpstream({
    users: { [UPSTREAM_USER]: UPSTREAM_PASSWORD },
    tokenFormat: 'jwt',
    referrersApi: true,
  })
  let dir: string
  let file: string

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pullcache-referrers-'))
    file = join(dir, 'htpasswd')
    await writeFile(file, `${ALICE.user}:${bcrypt.hashSync(ALICE.password, 5)}\n`)
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const alice = () => ({
    authorization: `Basic ${Buffer.from(`${ALICE.user}:${ALICE.password}`).toString('base64')}`,
  })
  const start = (): Promise<TestMirror> =>
    fx.mirror({
      env: {
        PULLCACHE_UPSTREAM_USERNAME: UPSTREAM_USER,
        PULLCACHE_UPSTREAM_PASSWORD: UPSTREAM_PASSWORD,
        PULLCACHE_AUTH_HTPASSWD: file,
      },
    })

  test('referrers of a private repository: refused to anonymous clients, listed for an account', async () => {
    fx.up.setReferrersApi(true)
    const image = fx.up.addImage(SECRET, 'v1')
    const sig = pushArtifact(fx.up, SECRET, image, SIGNATURE, 'secret')
    fx.up.setPrivate(SECRET)
    const mirror = await start()
    const path = `/v2/${SECRET}/referrers/${image.manifestDigest}`

    const signedIn = await mirror.get(path, alice())
    expect(signedIn.status).toBe(200)
    expect(listOf(signedIn.body).manifests).toEqual([sig])
    // Cached now; an anonymous client still gets nothing of it.
    const anonymous = await mirror.get(path)
    expect(anonymous.status).toBe(401)
    expect(errorOf(anonymous.body)).toBe('UNAUTHORIZED')
    expect(anonymous.body.toString()).not.toContain(sig.digest)
  })

  test('_catalog: anonymous clients see the repositories anonymous pulls may read; accounts see all', async () => {
    fx.up.addImage('library/alpine', '3')
    fx.up.addImage(SECRET, 'v2')
    fx.up.setPrivate(SECRET)
    const mirror = await start()
    expect((await mirror.get('/v2/library/alpine/manifests/3', { accept: ALL_TYPES })).status).toBe(200)
    expect((await mirror.get(`/v2/${SECRET}/manifests/v2`, { ...alice(), accept: ALL_TYPES })).status).toBe(
      200,
    )

    const anonymous = await mirror.get('/v2/_catalog')
    expect(anonymous.status).toBe(200)
    expect(JSON.parse(anonymous.body.toString())).toEqual({ repositories: ['library/alpine'] })
    const signedIn = await mirror.get('/v2/_catalog', alice())
    expect(JSON.parse(signedIn.body.toString())).toEqual({ repositories: [SECRET, 'library/alpine'] })

    // Hidden names are passed over within a page, not counted against n.
    const first = await mirror.get('/v2/_catalog?n=1')
    const firstList = (JSON.parse(first.body.toString()) as { repositories: string[] }).repositories
    expect(firstList).toEqual(['library/alpine'])
  })
})
