// Referrers and _catalog against a real distribution registry upstream. Debian's docker-registry
// 2.8 has no referrers API (its answer is a plain 404), so what a signing client leaves there is
// the referrers tag schema: the artifact manifest with its `subject`, and the index of referrers
// under the tag `sha256-<hex>`. Pullcache must list the signature from that index. Pushed with
// raw HTTP and the pusher's token, byte for byte, as cosign and oras push them.
import { createHash } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Pullcache, startPullcache } from './pullcache.js'
import { closeRegistryClient, fetchHashed } from './registry-client.js'
import { SERVICE, startUpstream, type Upstream } from './upstream.js'

const REPO = 'acme/signed'
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
const EMPTY = 'application/vnd.oci.empty.v1+json'
const SIGNATURE = 'application/vnd.dev.cosign.artifact.sig.v1+json'

type Descriptor = {
  mediaType: string
  digest: string
  size: number
  artifactType?: string
  annotations?: Record<string, string>
}

let upstream: Upstream
let pullcache: Pullcache

const digestOf = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

/** A push-scoped token for REPO from the token server, as the pusher. */
async function pushToken(): Promise<string> {
  const { username, password } = upstream.pusher
  const res = await fetch(`${upstream.tokens.realm}?service=${SERVICE}&scope=repository:${REPO}:pull,push`, {
    headers: { authorization: `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}` },
  })
  expect(res.status).toBe(200)
  return ((await res.json()) as { token: string }).token
}

/** Monolithic blob upload: POST for a session, then PUT the bytes with their digest. */
async function pushBlob(token: string, bytes: Buffer): Promise<Descriptor & { mediaType: string }> {
  const base = upstream.registry.url
  const digest = digestOf(bytes)
  const start = await fetch(`${base}/v2/${REPO}/blobs/uploads/`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
  })
  expect(start.status).toBe(202)
  const location = new URL(start.headers.get('location')!, base)
  location.searchParams.set('digest', digest)
  const put = await fetch(location, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' },
    body: bytes,
  })
  expect(put.status).toBe(201)
  return { mediaType: 'application/octet-stream', digest, size: bytes.length }
}

/** PUT a manifest under a tag, or (reference null) by its own digest, as artifacts are pushed. */
async function pushManifest(token: string, reference: string | null, mediaType: string, body: unknown) {
  const bytes = Buffer.from(JSON.stringify(body))
  const res = await fetch(`${upstream.registry.url}/v2/${REPO}/manifests/${reference ?? digestOf(bytes)}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': mediaType },
    body: bytes,
  })
  expect(res.status, await res.text()).toBe(201)
  return { mediaType, digest: digestOf(bytes), size: bytes.length }
}

let image: Descriptor
let signature: Descriptor

beforeAll(async () => {
  upstream = await startUpstream()
  const token = await pushToken()
  const config = await pushBlob(
    token,
    Buffer.from(
      JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }),
    ),
  )
  const layer = await pushBlob(token, Buffer.from(`layer ${Date.now()}`))
  image = await pushManifest(token, 'v1', OCI_MANIFEST, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { ...config, mediaType: 'application/vnd.oci.image.config.v1+json' },
    layers: [{ ...layer, mediaType: 'application/vnd.oci.image.layer.v1.tar' }],
  })
  const empty = await pushBlob(token, Buffer.from('{}'))
  const annotations = { 'dev.cosignproject.cosign/signature': 'MEUCIQ-e2e' }
  const pushed = await pushManifest(token, null, OCI_MANIFEST, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: SIGNATURE,
    config: { ...empty, mediaType: EMPTY },
    layers: [{ ...empty, mediaType: EMPTY }],
    subject: image,
    annotations,
  })
  signature = { ...pushed, artifactType: SIGNATURE, annotations }
  // The referrers tag schema: what a client keeps when the registry has no referrers API.
  await pushManifest(token, image.digest.replace(':', '-'), OCI_INDEX, {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [signature],
  })
  pullcache = await startPullcache({ upstream: upstream.url })
})

afterAll(async () => {
  await pullcache?.close()
  await upstream?.close()
  await closeRegistryClient()
})

describe('referrers and _catalog with distribution 2.8 upstream', () => {
  it('has no referrers API upstream, and pullcache lists the signature from the tag schema', async () => {
    const direct = await fetch(`${upstream.registry.url}/v2/${REPO}/referrers/${image.digest}`)
    expect(direct.status).toBe(404)

    const res = await fetchHashed(`${pullcache.url}/v2/${REPO}/referrers/${image.digest}`, { keepBody: true })
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toBe(OCI_INDEX)
    const list = JSON.parse(res.body!.toString()) as { mediaType: string; manifests: Descriptor[] }
    expect(list.mediaType).toBe(OCI_INDEX)
    expect(list.manifests).toEqual([signature])

    const filtered = await fetchHashed(
      `${pullcache.url}/v2/${REPO}/referrers/${image.digest}?artifactType=application%2Fspdx%2Bjson`,
      { keepBody: true },
    )
    expect(filtered.headers['oci-filters-applied']).toBe('artifactType')
    expect((JSON.parse(filtered.body!.toString()) as { manifests: Descriptor[] }).manifests).toEqual([])

    // The signature itself resolves through the mirror by the digest the list gave.
    const sig = await fetchHashed(`${pullcache.url}/v2/${REPO}/manifests/${signature.digest}`, {
      headers: { accept: OCI_MANIFEST },
    })
    expect(sig.status).toBe(200)
    expect(sig.digest).toBe(signature.digest)
  })

  it('_catalog lists the repository pullcache now holds', async () => {
    const pulled = await fetchHashed(`${pullcache.url}/v2/${REPO}/manifests/v1`, {
      headers: { accept: OCI_MANIFEST },
    })
    expect(pulled.digest).toBe(image.digest)
    const res = await fetchHashed(`${pullcache.url}/v2/_catalog`, { keepBody: true })
    expect(res.status).toBe(200)
    expect(JSON.parse(res.body!.toString())).toEqual({ repositories: [REPO] })
  })
})
