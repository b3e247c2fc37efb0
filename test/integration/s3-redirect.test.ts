// Offload (storage.s3.redirect): a GET of a blob the bucket holds is answered with a 307 to a
// presigned URL of its object, against a real S3 server (Swift's S3 API, this file's own) and
// the counting fake upstream. What must hold: the URL fetches the right bytes with no other
// credentials and expires after the ttl; only a GET of a blob whole in the bucket goes (not a
// HEAD, not a cold fill, not a blob only in the hot tier); the access checks come first; a
// client's credentials are never sent on to a host they would follow it to.

import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { bucketKey } from '../../src/store/shared-tier.js'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { useS3Server } from '../support/s3-server.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/offloaded'
const SECRET = 'acme/secret'
const UPSTREAM_USER = 'puller'
const UPSTREAM_PASSWORD = 'upstream-secret-0ff1'
const ALICE = { user: 'alice', password: 'alice-pass-5e1d' }
const blobPath = (repo: string, digest: string) => `/v2/${repo}/blobs/${digest}`
const basic = (u: { user: string; password: string }) => ({
  authorization: `Basic ${Buffer.from(`${u.user}:${u.password}`).toString('base64')}`,
})
let buckets = 0
const newBucket = () => `pullcache-redirect-${process.pid}-${++buckets}`

describe('redirects to presigned bucket URLs', () => {
  const s3 = useS3Server()
  const fake = useFakeUpstream({ users: { [UPSTREAM_USER]: UPSTREAM_PASSWORD } })
  let client: S3Client

  beforeAll(() => {
    client = s3.server.client()
  })
  afterAll(() => client?.destroy())

  const redirectEnv = (bucket: string, extra: Record<string, string> = {}) => ({
    ...s3.server.env(bucket),
    PULLCACHE_S3_REDIRECT: '1',
    PULLCACHE_S3_REDIRECT_TTL: '2m',
    ...extra,
  })
  const published = (mirror: TestMirror, digest: string) =>
    waitFor(() => mirror.logs.find((l) => l.event === 'store.blob_published' && l.digest === digest), {
      what: `the publish of ${digest}`,
      timeoutMs: 30_000,
    })
  const storage = async (mirror: TestMirror) =>
    JSON.parse((await mirror.get('/_pullcache/stats')).body.toString()).storage as {
      capabilities: { presigned_get: boolean }
      redirected: number
    }
  const redirectsMetric = async (mirror: TestMirror) => {
    const text = (await mirror.get('/metrics')).body.toString()
    const line = text.split('\n').find((l) => l.startsWith('pullcache_blob_redirects_total{'))
    return line === undefined ? 0 : Number(line.split(' ').at(-1))
  }

  test('a warm blob: 307 to a URL on the bucket that serves its bytes, ranges too, for the ttl', async () => {
    const bucket = newBucket()
    const mirror = await fake.mirror({ env: redirectEnv(bucket) })
    expect(mirror.logs.find((l) => l.event === 'storage.bucket_ready')).toMatchObject({
      presigned_get: true,
      redirect: 'on',
    })
    const bytes = randomBytes(3 * 1024 * 1024 + 17)
    const digest = fake.up.addBlob(REPO, bytes)

    // Cold: streamed from the fill as ever, never redirected.
    const cold = await mirror.get(blobPath(REPO, digest))
    expect(cold.status).toBe(200)
    expect(cold.headers['x-pullcache-cache']).toBe('miss')
    expect(sha256(cold.body)).toBe(digest)
    await published(mirror, digest)

    const before = Date.now()
    const warm = await mirror.get(blobPath(REPO, digest))
    expect(warm.status).toBe(307)
    expect(warm.headers['docker-content-digest']).toBe(digest)
    expect(warm.headers['cache-control']).toBe('no-store')
    expect(warm.body.length).toBe(0)
    const location = new URL(String(warm.headers.location))
    expect(location.origin).toBe(new URL(s3.server.endpoint).origin)
    expect(location.pathname).toBe(`/${bucket}/${bucketKey('', digest)}`)
    // Signed now, for the configured 2 minutes.
    expect(location.searchParams.get('X-Amz-Expires')).toBe('120')
    const signedAt = location.searchParams.get('X-Amz-Date')!
    const signedMs = Date.parse(
      signedAt.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z'),
    )
    expect(Math.abs(signedMs - before)).toBeLessThan(5_000)
    // Nothing but the URL: no credentials of pullcache's, no header of the client's.
    const fetched = await fetch(location)
    expect(fetched.status).toBe(200)
    expect(sha256(Buffer.from(await fetched.arrayBuffer()))).toBe(digest)

    // A range: redirected as well, and the bucket answers the range.
    const ranged = await mirror.get(blobPath(REPO, digest), { range: 'bytes=1000-1999' })
    expect(ranged.status).toBe(307)
    const part = await fetch(String(ranged.headers.location), { headers: { range: 'bytes=1000-1999' } })
    expect(part.status).toBe(206)
    expect(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(1000, 2000))).toBe(true)

    // HEAD is answered here; a client with the bytes gets its 304 here.
    const head = await mirror.head(blobPath(REPO, digest))
    expect(head.status).toBe(200)
    expect(head.headers['content-length']).toBe(String(bytes.length))
    expect((await mirror.get(blobPath(REPO, digest), { 'if-none-match': `"${digest}"` })).status).toBe(304)

    // Upstream served the blob once, for the cold fill.
    expect(fake.up.count('GET', `/blobs/${digest}`, 'cdn')).toBe(1)
    expect((await storage(mirror)).redirected).toBe(2)
    expect(await redirectsMetric(mirror)).toBe(2)
  })

  test('a blob only in the hot tier is served here, and so is everything with redirects off', async () => {
    const bucket = newBucket()
    const mirror = await fake.mirror({
      env: redirectEnv(bucket, { PULLCACHE_CLUSTER_SECRET: 'cluster-secret-9a7f' }),
    })
    const digest = fake.up.addBlob(REPO, randomBytes(200 * 1024))
    expect((await mirror.get(blobPath(REPO, digest))).status).toBe(200)
    await published(mirror, digest)
    // Another node of the cluster relays the bytes itself, and its secret goes nowhere else.
    const peer = await mirror.get(blobPath(REPO, digest), { 'x-pullcache-peer': 'cluster-secret-9a7f' })
    expect(peer.status).toBe(200)
    expect(sha256(peer.body)).toBe(digest)
    expect((await mirror.get(blobPath(REPO, digest))).status).toBe(307)
    // As if its publish had not happened yet (or the bucket lost it): not in the bucket.
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: bucketKey('', digest) }))
    const local = await mirror.get(blobPath(REPO, digest))
    expect(local.status).toBe(200)
    expect(local.headers['x-pullcache-cache']).toBe('hit')
    expect(sha256(local.body)).toBe(digest)
    expect((await storage(mirror)).redirected).toBe(1)

    const other = newBucket()
    const off = await fake.mirror({ env: s3.server.env(other) })
    const second = fake.up.addBlob(REPO, randomBytes(100 * 1024))
    expect((await off.get(blobPath(REPO, second))).status).toBe(200)
    await published(off, second)
    expect((await off.get(blobPath(REPO, second))).status).toBe(200)
    expect(await storage(off)).toMatchObject({ capabilities: { presigned_get: true }, redirected: 0 })
  })

  test('private content: anonymous clients are refused before any redirect; signed-in clients are sent on', async () => {
    const dir = await tmpRoot('pullcache-redirect-auth')
    const htpasswd = join(dir, 'htpasswd')
    await rm(htpasswd, { force: true })
    await promisify(execFile)('htpasswd', ['-c', '-B', '-b', htpasswd, ALICE.user, ALICE.password])
    const bucket = newBucket()
    const mirror = await fake.mirror({
      env: redirectEnv(bucket, {
        PULLCACHE_UPSTREAM_USERNAME: UPSTREAM_USER,
        PULLCACHE_UPSTREAM_PASSWORD: UPSTREAM_PASSWORD,
        PULLCACHE_AUTH_HTPASSWD: htpasswd,
      }),
    })
    const secret = fake.up.addImage(SECRET, 'v1', { layers: 1, layerBytes: 64 * 1024 })
    fake.up.setPrivate(SECRET)
    const layer = secret.layers[0]!.digest
    expect((await mirror.get(blobPath(SECRET, layer), basic(ALICE))).status).toBe(200)
    await published(mirror, layer)

    // Anonymous: no Location, under its own name or another.
    for (const repo of [SECRET, 'library/busybox']) {
      const refused = await mirror.get(blobPath(repo, layer))
      expect(refused.status, repo).not.toBe(307)
      expect([401, 404]).toContain(refused.status)
      expect(refused.headers.location).toBeUndefined()
    }
    // Signed in, reaching pullcache by a name the bucket's host is not under: sent on.
    const viaName = await mirror.get(blobPath(SECRET, layer), { ...basic(ALICE), host: 'mirror.test' })
    expect(viaName.status).toBe(307)
    const fetched = await fetch(String(viaName.headers.location))
    expect(sha256(Buffer.from(await fetched.arrayBuffer()))).toBe(layer)
    // Signed in on the bucket's own host (both are 127.0.0.1 here): the client would carry its
    // Authorization to the bucket, so the bytes are served here instead.
    const sameHost = await mirror.get(blobPath(SECRET, layer), basic(ALICE))
    expect(sameHost.status).toBe(200)
    expect(sha256(sameHost.body)).toBe(layer)
    expect((await storage(mirror)).redirected).toBe(1)
  })
})
