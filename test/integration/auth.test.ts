import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { tmpRoot } from '../support/tmp.js'

const REPO = 'library/private'
const PASSWORD = 'correct horse battery staple'

describe('upstream authentication', () => {
  const fake = useFakeUpstream()

  test('an account authenticates at the token realm only; the password is never logged or sent to the CDN', async () => {
    const up = await fake.upstream({ users: { puller: PASSWORD } })
    const mirror = await fake.mirror({
      upstream: up.url,
      env: { PULLCACHE_UPSTREAM_USERNAME: 'puller', PULLCACHE_UPSTREAM_PASSWORD: PASSWORD },
    })
    const image = up.addImage(REPO, 'v1')
    const res = await mirror.get(`/v2/${REPO}/manifests/v1`)
    expect(res.status).toBe(200)
    for (const layer of image.layers) {
      const blob = await mirror.get(`/v2/${REPO}/blobs/${layer.digest}`)
      expect(sha256(blob.body)).toBe(layer.digest)
    }
    const tokenRequests = up.requests.filter((r) => r.host === 'auth')
    expect(tokenRequests.length).toBeGreaterThan(0)
    for (const r of tokenRequests) expect(r.authorization).toBe('Basic puller')
    // Basic credentials go to the realm only; the registry gets bearer tokens, the CDN nothing.
    for (const r of up.requests.filter((r) => r.host !== 'auth'))
      expect(r.authorization ?? '').not.toMatch(/^Basic/)
    expect(up.cdnAuthorizationLeaks).toBe(0)
    const logged = JSON.stringify(mirror.logs)
    expect(logged).not.toContain(PASSWORD)
    expect(logged).not.toContain(Buffer.from(`puller:${PASSWORD}`).toString('base64'))
  })

  test('a password from a file works; a refused account is a logged 503, not a crash or a 404', async () => {
    const up = await fake.upstream({ users: { puller: PASSWORD } })
    const dir = await tmpRoot('pullcache-secret')
    await writeFile(join(dir, 'password'), `${PASSWORD}\n`)
    const first = await fake.mirror({
      upstream: up.url,
      env: { PULLCACHE_UPSTREAM_USERNAME: 'puller', PULLCACHE_UPSTREAM_PASSWORD_FILE: join(dir, 'password') },
    })
    up.addImage(REPO, 'v1')
    expect((await first.get(`/v2/${REPO}/manifests/v1`)).status).toBe(200)
    await first.close()

    await writeFile(join(dir, 'password'), 'wrong\n')
    const mirror = await fake.mirror({
      upstream: up.url,
      env: { PULLCACHE_UPSTREAM_USERNAME: 'puller', PULLCACHE_UPSTREAM_PASSWORD_FILE: join(dir, 'password') },
    })
    const refused = await mirror.get(`/v2/${REPO}/manifests/v1`)
    expect(refused.status).toBe(503)
    const error = JSON.parse(refused.body.toString()).errors[0]
    expect(error.code).toBe('UNAVAILABLE')
    expect(error.detail).toContain('refused the configured account')
    expect(
      mirror.logs.some((l) => l.event === 'upstream.credentials_refused' && l.username === 'puller'),
    ).toBe(true)
    expect(JSON.stringify(mirror.logs)).not.toContain('wrong')
  })

  test('tokens are cached per scope and a revoked token is refreshed once', async () => {
    const up = fake.up
    const mirror = await fake.mirror()
    const digests = Array.from({ length: 5 }, () => up.addBlob(REPO, randomBytes(1000)))
    for (const d of digests) await mirror.get(`/v2/${REPO}/blobs/${d}`)
    expect(up.count('GET', '/token', 'auth')).toBe(1)

    up.expireTokens()
    const extra = up.addBlob(REPO, randomBytes(1000))
    const res = await mirror.get(`/v2/${REPO}/blobs/${extra}`)
    expect(res.status).toBe(200)
    expect(sha256(res.body)).toBe(extra)
    expect(up.count('GET', '/token', 'auth')).toBe(2)
  })

  test('a short-lived token is renewed before it expires', async () => {
    // expires_in under 60 s is raised to 60 s (as distribution does); the renewal margin keeps
    // us from presenting a token in its last seconds. Here: the fake's tokens last 60 s, so a
    // second request right away reuses the token.
    const up = await fake.upstream({ tokenTtlSeconds: 60 })
    const mirror = await fake.mirror({ upstream: up.url })
    const a = up.addBlob(REPO, randomBytes(100))
    const b = up.addBlob(REPO, randomBytes(100))
    await mirror.get(`/v2/${REPO}/blobs/${a}`)
    await mirror.get(`/v2/${REPO}/blobs/${b}`)
    expect(up.count('GET', '/token', 'auth')).toBe(1)
  })

  test('an upstream without auth works without any token request', async () => {
    const up = await fake.upstream({ auth: 'none', redirectBlobs: false })
    const mirror = await fake.mirror({ upstream: up.url })
    const d = up.addBlob(REPO, randomBytes(5000))
    const res = await mirror.get(`/v2/${REPO}/blobs/${d}`)
    expect(sha256(res.body)).toBe(d)
    expect(up.count('GET', '/token', 'auth')).toBe(0)
  })
})
