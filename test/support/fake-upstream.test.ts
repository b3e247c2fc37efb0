// Proves the fake upstream behaves like Docker Hub where pullcache's tests rely on it, and that each
// fault is visible to an ordinary HTTP client. Uses global fetch with redirect: 'manual' so every hop
// (and every header sent on it) is explicit, as pullcache's own client must do it.
import { afterEach, describe, expect, test } from 'vitest'
import { type FakeUpstream, type FakeUpstreamOptions, sha256, startFakeUpstream } from './fake-upstream.js'

const REPO = 'library/alpine'
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'

let up: FakeUpstream | undefined

async function start(opts?: FakeUpstreamOptions): Promise<FakeUpstream> {
  up = await startFakeUpstream(opts)
  return up
}

afterEach(async () => {
  await up?.close()
  up = undefined
})

function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

async function token(u: FakeUpstream, scope: string | undefined = `repository:${REPO}:pull`, auth?: string) {
  const q = new URLSearchParams({ service: 'fake-registry' })
  if (scope !== undefined) q.append('scope', scope)
  const res = await fetch(
    `${u.authUrl}/token?${q}`,
    auth === undefined ? {} : { headers: { authorization: auth } },
  )
  expect(res.status).toBe(200)
  const body = (await res.json()) as {
    token: string
    access_token: string
    expires_in: number
    issued_at: string
  }
  return body.token
}

function get(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Response> {
  return fetch(url, { method, headers, redirect: 'manual' })
}

function bearer(t: string): Record<string, string> {
  return { authorization: `Bearer ${t}` }
}

async function bytes(res: Response): Promise<Uint8Array> {
  return new Uint8Array(await res.arrayBuffer())
}

// Reads until the stream ends or fails, so a test can see how much arrived before a fault.
async function drain(res: Response): Promise<{ received: number; error: unknown }> {
  const reader = res.body!.getReader()
  let received = 0
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return { received, error: undefined }
      received += value.length
    }
  } catch (error) {
    return { received, error }
  }
}

// Blob GET the way pullcache must do it: token to the registry, nothing but the URL to the CDN.
async function pullBlob(u: FakeUpstream, t: string, digest: string, range?: string): Promise<Response> {
  const extra: Record<string, string> = range === undefined ? {} : { range }
  const redirect = await get(`${u.url}/v2/${REPO}/blobs/${digest}`, { ...bearer(t), ...extra })
  expect(redirect.status).toBe(307)
  await redirect.arrayBuffer()
  return get(redirect.headers.get('location')!, extra)
}

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10))
  expect(cond()).toBe(true)
}

describe('token flow', () => {
  test('/v2/ challenges without a scope and accepts any live token', async () => {
    const u = await start()
    const res = await get(`${u.url}/v2/`)
    expect(res.status).toBe(401)
    expect(res.headers.get('www-authenticate')).toBe(
      `Bearer realm="${u.authUrl}/token",service="fake-registry"`,
    )
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0')
    expect(await res.json()).toEqual({
      errors: [{ code: 'UNAUTHORIZED', message: 'authentication required', detail: null }],
    })
    const ok = await get(`${u.url}/v2/`, bearer(await token(u, undefined)))
    expect(ok.status).toBe(200)
    expect(ok.headers.get('docker-distribution-api-version')).toBe('registry/2.0')
    expect(await ok.json()).toEqual({})
  })

  test('repository URLs challenge with the pull scope', async () => {
    const u = await start()
    u.addImage(REPO, 'latest')
    const res = await get(`${u.url}/v2/${REPO}/manifests/latest`, {}, 'HEAD')
    expect(res.status).toBe(401)
    expect(res.headers.get('www-authenticate')).toBe(
      `Bearer realm="${u.authUrl}/token",service="fake-registry",scope="repository:${REPO}:pull"`,
    )
  })

  test('anonymous token: the documented fields, no Authorization sent or recorded', async () => {
    const u = await start({ tokenTtlSeconds: 120 })
    const res = await get(`${u.authUrl}/token?service=fake-registry&scope=repository:${REPO}:pull`)
    expect(res.status).toBe(200)
    const body = (await res.json()) as Record<string, unknown>
    expect(Object.keys(body).sort()).toEqual(['access_token', 'expires_in', 'issued_at', 'token'])
    expect(body.token).toBe(body.access_token)
    expect(body.expires_in).toBe(120)
    expect(Number.isNaN(Date.parse(String(body.issued_at)))).toBe(false)
    expect(u.requests).toEqual([
      expect.objectContaining({ host: 'auth', method: 'GET', path: '/token', authorization: undefined }),
    ])
  })

  test('a known user gets a token; the password is never recorded', async () => {
    const u = await start({ users: { alice: 's3cret-pat' } })
    u.addImage(REPO, 'latest')
    const t = await token(u, `repository:${REPO}:pull`, basic('alice', 's3cret-pat'))
    expect(u.requests[0]?.authorization).toBe('Basic alice')
    expect(JSON.stringify(u.requests)).not.toContain('s3cret')
    expect(JSON.stringify(u.requests)).not.toContain(Buffer.from('alice:s3cret-pat').toString('base64'))
    expect((await get(`${u.url}/v2/${REPO}/manifests/latest`, bearer(t), 'HEAD')).status).toBe(200)
  })

  test('a wrong password or an unknown user is 401 at the token endpoint', async () => {
    const u = await start({ users: { alice: 'right' } })
    const q = `service=fake-registry&scope=repository:${REPO}:pull`
    expect((await get(`${u.authUrl}/token?${q}`, { authorization: basic('alice', 'wrong') })).status).toBe(
      401,
    )
    expect((await get(`${u.authUrl}/token?${q}`, { authorization: basic('bob', 'right') })).status).toBe(401)
    expect(u.count('GET', '/token', 'auth')).toBe(2)
  })

  test('a token for another service is refused', async () => {
    const u = await start()
    expect((await get(`${u.authUrl}/token?service=registry.docker.io`)).status).toBe(400)
  })

  test('a token covers only the repositories in its scope', async () => {
    const u = await start()
    u.addImage(REPO, 'latest')
    u.addImage('library/busybox', 'latest')
    const t = await token(u)
    const res = await get(`${u.url}/v2/library/busybox/manifests/latest`, bearer(t), 'HEAD')
    expect(res.status).toBe(401)
    expect(res.headers.get('www-authenticate')).toContain('error="insufficient_scope"')
    // Several scopes in one token request, as repeated parameters.
    const both = await get(
      `${u.authUrl}/token?service=fake-registry&scope=repository:${REPO}:pull&scope=repository:library/busybox:pull`,
    )
    const t2 = ((await both.json()) as { token: string }).token
    expect((await get(`${u.url}/v2/library/busybox/manifests/latest`, bearer(t2), 'HEAD')).status).toBe(200)
    expect((await get(`${u.url}/v2/${REPO}/manifests/latest`, bearer(t2), 'HEAD')).status).toBe(200)
  })

  test('privateRepos: only a known user gets their scope; anonymous tokens leave them out', async () => {
    const u = await start({ users: { alice: 's3cret' }, privateRepos: ['acme/private'] })
    u.addImage('acme/private', 'latest')
    const path = `${u.url}/v2/acme/private/manifests/latest`
    const anonymous = await token(u, 'repository:acme/private:pull')
    const refused = await get(path, bearer(anonymous), 'HEAD')
    expect(refused.status).toBe(401)
    expect(refused.headers.get('www-authenticate')).toContain('error="insufficient_scope"')
    const alice = await token(u, 'repository:acme/private:pull', basic('alice', 's3cret'))
    expect((await get(path, bearer(alice), 'HEAD')).status).toBe(200)
  })

  test('expireTokens() makes every earlier token 401 invalid_token; a new one works', async () => {
    const u = await start()
    u.addImage(REPO, 'latest')
    const old = await token(u)
    const path = `${u.url}/v2/${REPO}/manifests/latest`
    expect((await get(path, bearer(old), 'HEAD')).status).toBe(200)
    u.expireTokens()
    const res = await get(path, bearer(old), 'HEAD')
    expect(res.status).toBe(401)
    expect(res.headers.get('www-authenticate')).toBe(
      `Bearer realm="${u.authUrl}/token",service="fake-registry",scope="repository:${REPO}:pull",error="invalid_token"`,
    )
    expect((await get(path, bearer(await token(u)), 'HEAD')).status).toBe(200)
  })

  test('tokens also run out after tokenTtlSeconds', async () => {
    const u = await start({ tokenTtlSeconds: 1 })
    u.addImage(REPO, 'latest')
    const t = await token(u)
    expect((await get(`${u.url}/v2/`, bearer(t))).status).toBe(200)
    await new Promise((r) => setTimeout(r, 1100))
    expect((await get(`${u.url}/v2/`, bearer(t))).status).toBe(401)
  })

  test("auth: 'none' needs no token", async () => {
    const u = await start({ auth: 'none' })
    u.addImage(REPO, 'latest')
    expect((await get(`${u.url}/v2/`)).status).toBe(200)
    expect((await get(`${u.url}/v2/${REPO}/manifests/latest`)).status).toBe(200)
  })
})

describe('manifests', () => {
  test('GET and HEAD by tag and by digest: exact bytes and headers', async () => {
    const u = await start()
    const img = u.addImage(REPO, '3.20', { layers: 3, layerBytes: 100 })
    expect(img.manifestDigest).toBe(sha256(img.manifest))
    expect(img.configDigest).toBe(sha256(img.config))
    expect(img.layers).toHaveLength(3)
    const manifest = JSON.parse(new TextDecoder().decode(img.manifest)) as { layers: { digest: string }[] }
    expect(manifest.layers.map((l) => l.digest)).toEqual(img.layers.map((l) => l.digest))
    const t = await token(u)
    for (const ref of ['3.20', img.manifestDigest]) {
      const res = await get(`${u.url}/v2/${REPO}/manifests/${ref}`, bearer(t))
      expect(res.status).toBe(200)
      expect(res.headers.get('content-type')).toBe('application/vnd.docker.distribution.manifest.v2+json')
      expect(res.headers.get('docker-content-digest')).toBe(img.manifestDigest)
      expect(res.headers.get('etag')).toBe(`"${img.manifestDigest}"`)
      expect(res.headers.get('content-length')).toBe(String(img.manifest.length))
      expect(await bytes(res)).toEqual(img.manifest)
      const head = await get(`${u.url}/v2/${REPO}/manifests/${ref}`, bearer(t), 'HEAD')
      expect(head.status).toBe(200)
      expect(head.headers.get('content-length')).toBe(String(img.manifest.length))
      expect(head.headers.get('docker-content-digest')).toBe(img.manifestDigest)
      expect(head.headers.get('content-type')).toBe(img.mediaType)
    }
  })

  test('an unknown tag is MANIFEST_UNKNOWN, an unknown repository NAME_UNKNOWN', async () => {
    const u = await start({ auth: 'none' })
    u.addImage(REPO, 'latest')
    const tag = await get(`${u.url}/v2/${REPO}/manifests/nope`)
    expect(tag.status).toBe(404)
    expect(((await tag.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('MANIFEST_UNKNOWN')
    const repo = await get(`${u.url}/v2/library/nothing/manifests/latest`)
    expect(repo.status).toBe(404)
    expect(((await repo.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('NAME_UNKNOWN')
  })

  test('setTag moves a tag, deleteTag removes it', async () => {
    const u = await start({ auth: 'none' })
    const a = u.addImage(REPO, 'latest')
    const b = u.addImage(REPO, 'next')
    u.setTag(REPO, 'latest', b.manifestDigest)
    const moved = await get(`${u.url}/v2/${REPO}/manifests/latest`, {}, 'HEAD')
    expect(moved.headers.get('docker-content-digest')).toBe(b.manifestDigest)
    u.deleteTag(REPO, 'latest')
    expect((await get(`${u.url}/v2/${REPO}/manifests/latest`, {}, 'HEAD')).status).toBe(404)
    // The manifest itself stays reachable by digest, as on Hub.
    expect((await get(`${u.url}/v2/${REPO}/manifests/${a.manifestDigest}`, {}, 'HEAD')).status).toBe(200)
    expect(() => u.setTag(REPO, 'x', 'sha256:0000')).toThrow()
  })

  test('an OCI manifest is only served to a client that accepts its type (distribution)', async () => {
    const u = await start({ auth: 'none' })
    const body = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST }))
    const digest = u.addManifest(REPO, body, OCI_MANIFEST, 'oci')
    expect((await get(`${u.url}/v2/${REPO}/manifests/oci`, { accept: '*/*' })).status).toBe(404)
    const res = await get(`${u.url}/v2/${REPO}/manifests/oci`, {
      accept: `application/vnd.docker.distribution.manifest.v2+json, ${OCI_MANIFEST}`,
    })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe(OCI_MANIFEST)
    expect(res.headers.get('docker-content-digest')).toBe(digest)
    expect(await bytes(res)).toEqual(body)
  })

  test('push and delete methods answer 405 UNSUPPORTED', async () => {
    const u = await start({ auth: 'none' })
    const img = u.addImage(REPO, 'latest')
    const cases: [string, string][] = [
      ['PUT', `/v2/${REPO}/manifests/latest`],
      ['DELETE', `/v2/${REPO}/manifests/${img.manifestDigest}`],
      ['POST', `/v2/${REPO}/blobs/uploads/`],
      ['PATCH', `/v2/${REPO}/blobs/uploads/some-uuid`],
      ['DELETE', `/v2/${REPO}/blobs/${img.configDigest}`],
    ]
    for (const [method, path] of cases) {
      const res = await fetch(`${u.url}${path}`, { method })
      expect(res.status).toBe(405)
      expect(((await res.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('UNSUPPORTED')
    }
  })
})

describe('blobs', () => {
  test('HEAD is answered by the registry; GET redirects to a signed CDN URL', async () => {
    const u = await start()
    const img = u.addImage(REPO, 'latest', { layers: 1, layerBytes: 5000 })
    const layer = img.layers[0]!
    const t = await token(u)
    const head = await get(`${u.url}/v2/${REPO}/blobs/${layer.digest}`, bearer(t), 'HEAD')
    expect(head.status).toBe(200)
    expect(head.headers.get('content-length')).toBe('5000')
    expect(head.headers.get('docker-content-digest')).toBe(layer.digest)

    const redirect = await get(`${u.url}/v2/${REPO}/blobs/${layer.digest}`, bearer(t))
    expect(redirect.status).toBe(307)
    expect(redirect.headers.get('content-length')).toBe('0')
    const location = redirect.headers.get('location')!
    expect(location.startsWith(`${u.cdnUrl}/blobs/${layer.digest}?sig=`)).toBe(true)
    expect(u.cdnUrl).not.toBe(u.url)

    const cdn = await get(location)
    expect(cdn.status).toBe(200)
    expect(cdn.headers.get('content-length')).toBe('5000')
    expect(cdn.headers.get('accept-ranges')).toBe('bytes')
    const etag = cdn.headers.get('etag')!
    expect(etag).toMatch(/^"[0-9a-f]{32}"$/)
    expect(etag).not.toContain(layer.digest)
    const got = await bytes(cdn)
    expect(sha256(got)).toBe(layer.digest)
    expect(u.cdnAuthorizationLeaks).toBe(0)
    expect(u.count('GET', `/blobs/${layer.digest}`, 'cdn')).toBe(1)
  })

  test('the CDN honours Range: a-b, a- and unsatisfiable', async () => {
    const u = await start()
    const layer = u.addImage(REPO, 'latest', { layers: 1, layerBytes: 1000 }).layers[0]!
    const t = await token(u)
    const ab = await pullBlob(u, t, layer.digest, 'bytes=10-19')
    expect(ab.status).toBe(206)
    expect(ab.headers.get('content-range')).toBe('bytes 10-19/1000')
    expect(await bytes(ab)).toEqual(layer.bytes.subarray(10, 20))
    const from = await pullBlob(u, t, layer.digest, 'bytes=990-')
    expect(from.status).toBe(206)
    expect(from.headers.get('content-range')).toBe('bytes 990-999/1000')
    expect(await bytes(from)).toEqual(layer.bytes.subarray(990))
    const past = await pullBlob(u, t, layer.digest, 'bytes=1000-')
    expect(past.status).toBe(416)
    expect(past.headers.get('content-range')).toBe('bytes */1000')
    // The Range header went to both hosts, as moby's redirect policy forwards it.
    expect(u.requests.filter((r) => r.range === 'bytes=10-19').map((r) => r.host)).toEqual([
      'registry',
      'cdn',
    ])
  })

  test('Authorization sent to the CDN is recorded and counted as a leak', async () => {
    const u = await start()
    const layer = u.addImage(REPO, 'latest', { layers: 1 }).layers[0]!
    const t = await token(u)
    const redirect = await get(`${u.url}/v2/${REPO}/blobs/${layer.digest}`, bearer(t))
    const leaked = await get(redirect.headers.get('location')!, bearer(t))
    await leaked.arrayBuffer()
    expect(u.cdnAuthorizationLeaks).toBe(1)
    expect(u.requests.at(-1)).toMatchObject({ host: 'cdn', authorization: `Bearer ${t}` })
  })

  test('the CDN refuses a URL without a valid signature', async () => {
    const u = await start()
    const layer = u.addImage(REPO, 'latest', { layers: 1 }).layers[0]!
    expect((await get(`${u.cdnUrl}/blobs/${layer.digest}`)).status).toBe(403)
    expect((await get(`${u.cdnUrl}/blobs/${layer.digest}?sig=1-abc`)).status).toBe(403)
  })

  test('without redirectBlobs the registry serves the bytes, with Range', async () => {
    const u = await start({ redirectBlobs: false })
    const layer = u.addImage(REPO, 'latest', { layers: 1, layerBytes: 300 }).layers[0]!
    const t = await token(u)
    const full = await get(`${u.url}/v2/${REPO}/blobs/${layer.digest}`, bearer(t))
    expect(full.status).toBe(200)
    expect(full.headers.get('docker-content-digest')).toBe(layer.digest)
    expect(await bytes(full)).toEqual(layer.bytes)
    const part = await get(`${u.url}/v2/${REPO}/blobs/${layer.digest}`, { ...bearer(t), range: 'bytes=100-' })
    expect(part.status).toBe(206)
    expect(part.headers.get('content-range')).toBe('bytes 100-299/300')
    expect(await bytes(part)).toEqual(layer.bytes.subarray(100))
    expect(u.count('GET', /\/blobs\//, 'cdn')).toBe(0)
  })

  test('an unknown blob is BLOB_UNKNOWN', async () => {
    const u = await start({ auth: 'none' })
    u.addImage(REPO, 'latest')
    const res = await get(`${u.url}/v2/${REPO}/blobs/${sha256(new Uint8Array([1]))}`)
    expect(res.status).toBe(404)
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('BLOB_UNKNOWN')
  })
})

describe('tags/list', () => {
  test('lexical order, n, exclusive last and a Link while more remain', async () => {
    const u = await start({ auth: 'none' })
    const img = u.addImage(REPO, 'b')
    for (const tag of ['e', 'a', 'd', 'c']) u.setTag(REPO, tag, img.manifestDigest)
    const all = await get(`${u.url}/v2/${REPO}/tags/list`)
    expect(await all.json()).toEqual({ name: REPO, tags: ['a', 'b', 'c', 'd', 'e'] })
    expect(all.headers.get('link')).toBeNull()

    const pages: string[][] = []
    let next: string | null = `/v2/${REPO}/tags/list?n=2`
    while (next !== null) {
      const res = await get(`${u.url}${next}`)
      pages.push(((await res.json()) as { tags: string[] }).tags)
      const link = res.headers.get('link')
      next = link === null ? null : /^<([^>]+)>; rel="next"$/.exec(link)![1]!
    }
    expect(pages).toEqual([['a', 'b'], ['c', 'd'], ['e']])
    const first = await get(`${u.url}/v2/${REPO}/tags/list?n=2`)
    expect(first.headers.get('link')).toBe(`</v2/${REPO}/tags/list?last=b&n=2>; rel="next"`)

    const zero = await get(`${u.url}/v2/${REPO}/tags/list?n=0`)
    expect(await zero.json()).toEqual({ name: REPO, tags: [] })
    expect(zero.headers.get('link')).toBeNull()
    const exact = await get(`${u.url}/v2/${REPO}/tags/list?n=5`)
    expect(exact.headers.get('link')).toBeNull()
  })
})

describe('rate limit', () => {
  test('headers on GET and HEAD; GET spends; at zero GET is 429 with Retry-After, HEAD still works', async () => {
    const u = await start({ auth: 'none', rateLimit: { limit: 100, remaining: 2, window: 21600 } })
    u.addImage(REPO, 'latest')
    const path = `${u.url}/v2/${REPO}/manifests/latest`
    const head = await get(path, {}, 'HEAD')
    expect(head.headers.get('ratelimit-limit')).toBe('100;w=21600')
    expect(head.headers.get('ratelimit-remaining')).toBe('2;w=21600')
    expect((await get(path)).headers.get('ratelimit-remaining')).toBe('1;w=21600')
    expect((await get(path)).headers.get('ratelimit-remaining')).toBe('0;w=21600')
    const limited = await get(path)
    expect(limited.status).toBe(429)
    expect(limited.headers.get('retry-after')).toBe('21600')
    expect(((await limited.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('TOOMANYREQUESTS')
    expect((await get(path, {}, 'HEAD')).status).toBe(200)
    u.setRateLimit({ limit: 100, remaining: 100, window: 21600 })
    expect((await get(path)).status).toBe(200)
  })
})

describe('faults', () => {
  async function cdnSetup() {
    const u = await start()
    const layer = u.addImage(REPO, 'latest', { layers: 1, layerBytes: 64 * 1024 }).layers[0]!
    return { u, layer, t: await token(u) }
  }

  test('status: 429 with Retry-After, for the given number of requests only', async () => {
    const u = await start({ auth: 'none' })
    u.addImage(REPO, 'latest')
    const path = `/v2/${REPO}/manifests/latest`
    u.fault({ method: 'GET', path }, { kind: 'status', status: 429, headers: { 'Retry-After': '7' } }, 2)
    for (let i = 0; i < 2; i++) {
      const res = await get(`${u.url}${path}`)
      expect(res.status).toBe(429)
      expect(res.headers.get('retry-after')).toBe('7')
      expect(((await res.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('TOOMANYREQUESTS')
    }
    expect((await get(`${u.url}${path}`)).status).toBe(200)
    // The method filter: HEAD was never affected.
    u.fault({ method: 'GET', path }, { kind: 'status', status: 503 })
    expect((await get(`${u.url}${path}`, {}, 'HEAD')).status).toBe(200)
    expect((await get(`${u.url}${path}`)).status).toBe(503)
    expect((await get(`${u.url}${path}`)).status).toBe(503)
    u.clearFaults()
    expect((await get(`${u.url}${path}`)).status).toBe(200)
    // Recorded before the fault applied.
    expect(u.count('GET', path)).toBe(6)
  })

  test('status faults apply on the auth host too', async () => {
    const u = await start()
    u.fault({ path: '/token', host: 'auth' }, { kind: 'status', status: 500, body: 'boom' }, 1)
    const res = await get(`${u.authUrl}/token?service=fake-registry`)
    expect(res.status).toBe(500)
    expect(await res.text()).toBe('boom')
    await token(u)
  })

  test('cut: the full Content-Length is announced, the stream dies after N bytes', async () => {
    const { u, layer, t } = await cdnSetup()
    u.fault({ path: /\/blobs\//, host: 'cdn' }, { kind: 'cut', afterBytes: 1000 }, 1)
    const res = await pullBlob(u, t, layer.digest)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-length')).toBe(String(64 * 1024))
    const { received, error } = await drain(res)
    expect(error).toBeDefined()
    expect(received).toBe(1000)
    // Used up: the next pull is whole.
    expect(sha256(await bytes(await pullBlob(u, t, layer.digest)))).toBe(layer.digest)
  })

  test('a body fault is not used up by the 401 and 307 in front of the download', async () => {
    const { u, layer, t } = await cdnSetup()
    u.fault({ path: /\/blobs\// }, { kind: 'cut', afterBytes: 10 }, 1)
    u.fault({ path: /\/blobs\//, host: 'cdn' }, { kind: 'corrupt' }, 1)
    expect((await get(`${u.url}/v2/${REPO}/blobs/${layer.digest}`)).status).toBe(401)
    const got = await bytes(await pullBlob(u, t, layer.digest))
    expect(got.length).toBe(layer.bytes.length)
    expect(sha256(got)).not.toBe(layer.digest)
  })

  test('corrupt: same length, different digest', async () => {
    const { u, layer, t } = await cdnSetup()
    u.fault({ path: `/blobs/${layer.digest}`, host: 'cdn' }, { kind: 'corrupt' }, 1)
    const got = await bytes(await pullBlob(u, t, layer.digest))
    expect(got.length).toBe(layer.bytes.length)
    expect(sha256(got)).not.toBe(layer.digest)
    expect(got.subarray(0, -1)).toEqual(layer.bytes.subarray(0, -1))
  })

  test('corrupt works on manifests at the registry', async () => {
    const u = await start({ auth: 'none' })
    const img = u.addImage(REPO, 'latest')
    u.fault({ path: /\/manifests\// }, { kind: 'corrupt' }, 1)
    const res = await get(`${u.url}/v2/${REPO}/manifests/latest`)
    expect(res.headers.get('docker-content-digest')).toBe(img.manifestDigest)
    expect(sha256(await bytes(res))).not.toBe(img.manifestDigest)
  })

  test('short: the whole body arrives, one byte less than announced, then the socket dies', async () => {
    const { u, layer, t } = await cdnSetup()
    u.fault({ path: /\/blobs\//, host: 'cdn' }, { kind: 'short' }, 1)
    const res = await pullBlob(u, t, layer.digest)
    expect(res.headers.get('content-length')).toBe(String(layer.bytes.length + 1))
    const { received, error } = await drain(res)
    expect(received).toBe(layer.bytes.length)
    expect(error).toBeDefined()
  })

  test('slow: the body trickles but arrives whole', async () => {
    const { u, layer, t } = await cdnSetup()
    u.fault({ path: /\/blobs\//, host: 'cdn' }, { kind: 'slow', chunkBytes: 16 * 1024, delayMs: 60 }, 1)
    const started = performance.now()
    const got = await bytes(await pullBlob(u, t, layer.digest))
    expect(performance.now() - started).toBeGreaterThanOrEqual(150)
    expect(sha256(got)).toBe(layer.digest)
  })

  test('delay: the normal answer, late', async () => {
    const u = await start({ auth: 'none' })
    u.addImage(REPO, 'latest')
    const path = `/v2/${REPO}/manifests/latest`
    u.fault({ method: 'GET', path }, { kind: 'delay', ms: 300 }, 1)
    const t0 = performance.now()
    const res = await get(`${u.url}${path}`)
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290)
    expect(res.status).toBe(200)
    expect(res.headers.get('docker-content-digest')).toMatch(/^sha256:/)
    const t1 = performance.now()
    expect((await get(`${u.url}${path}`)).status).toBe(200)
    expect(performance.now() - t1).toBeLessThan(290)
  })

  test('hang: no answer until close() ends the request', async () => {
    const u = await start()
    u.fault({ path: '/v2/' }, { kind: 'hang' })
    const pending = get(`${u.url}/v2/`)
    await until(() => u.count('GET', '/v2/') === 1)
    const outcome = await Promise.race([
      pending.then(
        () => 'answered',
        () => 'failed',
      ),
      new Promise((r) => setTimeout(() => r('still waiting'), 200)),
    ])
    expect(outcome).toBe('still waiting')
    await u.close()
    await expect(pending).rejects.toThrow()
  })

  test('stall: N bytes, then silence until close()', async () => {
    const { u, layer, t } = await cdnSetup()
    u.fault({ path: /\/blobs\//, host: 'cdn' }, { kind: 'stall', afterBytes: 100 })
    const res = await pullBlob(u, t, layer.digest)
    const reader = res.body!.getReader()
    const first = await reader.read()
    expect(first.value?.length).toBe(100)
    const next = reader.read()
    const outcome = await Promise.race([
      next.then(() => 'data'),
      new Promise((r) => setTimeout(() => r('silent'), 200)),
    ])
    expect(outcome).toBe('silent')
    await u.close()
    await expect(next).rejects.toThrow()
  })

  test('reset: the connection dies before any response', async () => {
    const u = await start()
    u.fault({ path: '/v2/' }, { kind: 'reset' }, 1)
    await expect(get(`${u.url}/v2/`)).rejects.toThrow()
    expect((await get(`${u.url}/v2/`)).status).toBe(401)
    expect(u.count('GET', '/v2/')).toBe(2)
  })
})

describe('recording and counting', () => {
  test('every request on every host, with its headers; count() and reset()', async () => {
    const u = await start()
    const layer = u.addImage(REPO, 'latest', { layers: 1 }).layers[0]!
    const t = await token(u)
    const accept = 'application/vnd.docker.distribution.manifest.v2+json'
    await (await get(`${u.url}/v2/${REPO}/manifests/latest`, { ...bearer(t), accept })).arrayBuffer()
    await (await pullBlob(u, t, layer.digest, 'bytes=0-')).arrayBuffer()
    expect(u.requests.map((r) => `${r.host} ${r.method} ${r.path}`)).toEqual([
      `auth GET /token`,
      `registry GET /v2/${REPO}/manifests/latest`,
      `registry GET /v2/${REPO}/blobs/${layer.digest}`,
      `cdn GET /blobs/${layer.digest}`,
    ])
    expect(u.requests[0]?.query).toBe(`service=fake-registry&scope=repository%3Alibrary%2Falpine%3Apull`)
    expect(u.requests[1]).toMatchObject({ accept, authorization: `Bearer ${t}`, range: undefined })
    expect(u.requests[3]).toMatchObject({ range: 'bytes=0-', authorization: undefined })
    expect(u.requests[3]?.query).toMatch(/^sig=/)
    expect(u.count('GET', `/v2/${REPO}/manifests/latest`)).toBe(1)
    expect(u.count('get', /\/blobs\//)).toBe(1)
    expect(u.count('GET', /\/blobs\//, 'cdn')).toBe(1)
    expect(u.count('HEAD', /./)).toBe(0)
    const held = u.requests
    u.reset()
    expect(held).toHaveLength(0)
    expect(u.count('GET', /./, 'auth')).toBe(0)
    // Content survives reset().
    expect((await get(`${u.url}/v2/${REPO}/manifests/latest`, bearer(t), 'HEAD')).status).toBe(200)
  })

  test('ten concurrent GETs are ten recorded requests', async () => {
    const u = await start({ auth: 'none', redirectBlobs: false })
    const layer = u.addImage(REPO, 'latest', { layers: 1 }).layers[0]!
    const path = `/v2/${REPO}/blobs/${layer.digest}`
    const bodies = await Promise.all(
      Array.from({ length: 10 }, async () => bytes(await get(`${u.url}${path}`))),
    )
    for (const b of bodies) expect(sha256(b)).toBe(layer.digest)
    expect(u.count('GET', path)).toBe(10)
  })

  test('close() ends keep-alive connections and can be called twice', async () => {
    const u = await start()
    await (await get(`${u.url}/v2/`)).arrayBuffer()
    await Promise.all([u.close(), u.close()])
    await expect(get(`${u.url}/v2/`)).rejects.toThrow()
  })
})

describe('referrers', () => {
  test('off (distribution 2.8): the route is a plain 404; on: manifests whose subject is the digest', async () => {
    const u = await start({ auth: 'none' })
    const image = u.addImage(REPO, 'v1')
    const artifact = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType: 'application/example',
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(new Uint8Array()), size: 0 },
        layers: [],
        subject: { mediaType: image.mediaType, digest: image.manifestDigest, size: image.manifest.length },
      }),
    )
    const digest = u.addManifest(REPO, artifact, OCI_MANIFEST)
    const url = `${u.url}/v2/${REPO}/referrers/${image.manifestDigest}`
    const off = await get(url)
    expect(off.status).toBe(404)
    expect(await off.text()).toBe('404 page not found\n')

    u.setReferrersApi(true)
    const on = await get(url)
    expect(on.status).toBe(200)
    expect(on.headers.get('content-type')).toBe('application/vnd.oci.image.index.v1+json')
    expect(((await on.json()) as { manifests: unknown[] }).manifests).toEqual([
      { mediaType: OCI_MANIFEST, digest, size: artifact.length, artifactType: 'application/example' },
    ])
    const none = await get(`${u.url}/v2/${REPO}/referrers/${digest}`)
    expect(((await none.json()) as { manifests: unknown[] }).manifests).toEqual([])
  })
})
