// Blobs on an S3-compatible bucket (a real one: Swift's S3 API, started for this file by
// test/support/s3-server.sh) behind the local hot tier, against the counting fake upstream.
// What must hold: a fill lands in the bucket verified; a node with an empty data dir serves the
// bucket's blobs without asking upstream; nothing unverified or half-uploaded is ever left in
// the bucket; a bucket that cannot be reached costs no pull.

import { createHash, randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { connect, createServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import {
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { BlobMismatch } from '../../src/store/blob-storage.js'
import { S3Tier } from '../../src/store/s3-storage.js'
import { bucketKey, manifestKey } from '../../src/store/shared-tier.js'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { startCli } from '../support/run-cli.js'
import { useS3Server } from '../support/s3-server.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'
import { waitFor } from '../support/wait-for.js'

const REPO = 'library/bucketed'
const blobPath = (digest: string) => `/v2/${REPO}/blobs/${digest}`
let buckets = 0
/** A bucket name no other test of this file uses: each test starts from an empty bucket. */
const newBucket = () => `pullcache-${process.pid}-${++buckets}`

describe('S3 storage', () => {
  const s3 = useS3Server()
  const fake = useFakeUpstream()
  let client: S3Client

  beforeAll(() => {
    client = s3.server.client()
  })
  afterAll(() => client?.destroy())

  const settings = (bucket: string) => s3.server.settings(bucket, 'pc/')
  const objectBytes = async (bucket: string, key: string) => {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }))
    return Buffer.from(await res.Body!.transformToByteArray())
  }
  const keys = async (bucket: string) =>
    ((await client.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map((o) => o.Key)
  const uploads = async (bucket: string) =>
    (await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? []
  const published = (mirror: TestMirror, digest: string) =>
    waitFor(() => mirror.logs.find((l) => l.event === 'store.blob_published' && l.digest === digest), {
      what: `the publish of ${digest}`,
      timeoutMs: 30_000,
    })

  test('a cold pull lands verified in the bucket, which was created at start and probed', async () => {
    const bucket = newBucket()
    const mirror = await fake.mirror({ env: s3.server.env(bucket, 'pc/') })
    const ready = mirror.logs.find((l) => l.event === 'storage.bucket_ready')
    // Stock Swift: no conditional PUT of either kind, and the probe says so.
    expect(ready).toMatchObject({
      bucket,
      created: true,
      conditional_create: false,
      conditional_replace: false,
    })
    await client.send(new HeadBucketCommand({ Bucket: bucket }))

    // Past one part, so the multipart path runs: three parts, the last one short.
    const bytes = randomBytes(2 * 16 * 1024 * 1024 + 4321)
    const digest = fake.up.addBlob(REPO, bytes)
    const res = await mirror.get(blobPath(digest))
    expect(res.status).toBe(200)
    expect(sha256(res.body)).toBe(digest)
    expect(await published(mirror, digest)).toMatchObject({ outcome: 'published' })
    expect(sha256(await objectBytes(bucket, bucketKey('pc/', digest)))).toBe(digest)
    // Only the blob: the probe's object is gone, and no upload is left open.
    expect(await keys(bucket)).toEqual([bucketKey('pc/', digest)])
    expect(await uploads(bucket)).toEqual([])

    const stats = await mirror.get('/_pullcache/stats')
    expect(JSON.parse(stats.body.toString()).storage).toEqual({
      type: 's3',
      endpoint: s3.server.endpoint,
      bucket,
      prefix: 'pc/',
      // Swift's S3 API takes presigned GETs (and refuses a forged one), and the probe fetched one.
      capabilities: { conditional_create: false, conditional_replace: false, presigned_get: true },
      redirected: 0,
    })
  })

  test('a node with an empty data dir serves a blob from the bucket with no upstream request', async () => {
    const bucket = newBucket()
    const env = s3.server.env(bucket)
    const first = await fake.mirror({ env })
    const small = randomBytes(200 * 1024)
    const big = randomBytes(20 * 1024 * 1024)
    const digests = [fake.up.addBlob(REPO, small), fake.up.addBlob(REPO, big)]
    for (const digest of digests) {
      expect(sha256((await first.get(blobPath(digest))).body)).toBe(digest)
      await published(first, digest)
    }

    fake.up.reset()
    const second = await fake.mirror({ env })
    for (const digest of digests) {
      const head = await second.head(blobPath(digest))
      expect(head.status).toBe(200)
      const res = await second.get(blobPath(digest))
      expect(res.status).toBe(200)
      expect(sha256(res.body)).toBe(digest)
      // Admitted to the hot tier: the next GET is a local hit.
      expect((await second.get(blobPath(digest))).headers['x-pullcache-cache']).toBe('hit')
    }
    expect(second.logs.filter((l) => l.event === 'store.blob_committed').map((l) => l.source)).toEqual([
      'bucket',
      'bucket',
    ])
    expect(fake.up.requests).toEqual([])
  })

  test('manifests by digest land in the bucket; a node with an empty data dir serves them, no upstream request', async () => {
    const bucket = newBucket()
    const env = s3.server.env(bucket, 'pc/')
    const first = await fake.mirror({ env })
    const image = fake.up.addImage(REPO, 'm1')
    const accept = { accept: image.mediaType }
    // By tag: the body's digest is what lands in the bucket, beside the blobs, and no tag does.
    const byTag = await first.get(`/v2/${REPO}/manifests/m1`, accept)
    expect(byTag.headers['docker-content-digest']).toBe(image.manifestDigest)
    await waitFor(
      () =>
        first.logs.find((l) => l.event === 'store.manifest_published' && l.digest === image.manifestDigest),
      { what: 'the manifest to be published' },
    )
    const key = manifestKey('pc/', image.manifestDigest)
    expect(key).toBe(
      `pc/manifests/sha256/${image.manifestDigest.slice(7, 9)}/${image.manifestDigest.slice(7)}`,
    )
    expect(sha256(await objectBytes(bucket, key))).toBe(image.manifestDigest)
    const meta = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))
    expect(meta.Metadata).toEqual({ 'media-type': image.mediaType, fetched: 'anonymous' })
    expect((await keys(bucket)).filter((k) => !k?.startsWith('pc/blobs/'))).toEqual([key])

    fake.up.reset()
    const second = await fake.mirror({ env })
    const path = `/v2/${REPO}/manifests/${image.manifestDigest}`
    const head = await second.head(path, accept)
    expect(head.status).toBe(200)
    expect(head.headers['content-type']).toBe(image.mediaType)
    const got = await second.get(path, accept)
    expect(got.status).toBe(200)
    expect(got.headers['content-type']).toBe(image.mediaType)
    expect(sha256(got.body)).toBe(image.manifestDigest)
    expect(fake.up.requests).toEqual([])
    expect(second.logs.filter((l) => l.event === 'store.manifest_committed').map((l) => l.source)).toEqual([
      'bucket',
    ])
  })

  test('a manifest object that does not verify is refused, fetched from upstream and replaced', async () => {
    const bucket = newBucket()
    const mirror = await fake.mirror({ env: s3.server.env(bucket) })
    const image = fake.up.addImage(REPO, 'm2')
    const key = manifestKey('', image.manifestDigest)
    const damaged = Buffer.from(image.manifest)
    damaged[damaged.length - 2]! ^= 0x01
    await client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: damaged,
        Metadata: { fetched: 'anonymous', 'media-type': image.mediaType },
      }),
    )
    fake.up.reset()
    const got = await mirror.get(`/v2/${REPO}/manifests/${image.manifestDigest}`, { accept: image.mediaType })
    expect(got.status).toBe(200)
    expect(sha256(got.body)).toBe(image.manifestDigest)
    expect(mirror.logs.some((l) => l.event === 'store.bucket_manifest_invalid')).toBe(true)
    expect(fake.up.count('GET', `/v2/${REPO}/manifests/${image.manifestDigest}`)).toBeGreaterThanOrEqual(1)
    expect(
      await waitFor(() => mirror.logs.find((l) => l.event === 'store.manifest_published'), {
        what: 'the replacing publish',
      }),
    ).toMatchObject({ outcome: 'published' })
    expect(sha256(await objectBytes(bucket, key))).toBe(image.manifestDigest)
  })

  test('an object in the bucket that does not verify is refused, fetched from upstream and replaced', async () => {
    const bucket = newBucket()
    const mirror = await fake.mirror({ env: s3.server.env(bucket) })
    const bytes = randomBytes(300 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    const damaged = Buffer.from(bytes)
    damaged[1000]! ^= 0xff
    // Marked as a node without an upstream account marks what it publishes.
    await client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: bucketKey('', digest),
        Body: damaged,
        Metadata: { fetched: 'anonymous' },
      }),
    )

    // The bucket's bytes are caught at the end: the client is cut, never given a clean end.
    const first = await mirror.get(blobPath(digest)).catch(() => undefined)
    if (first !== undefined) expect(sha256(first.body)).not.toBe(digest)
    expect(fake.up.requests).toEqual([])
    await waitFor(() => mirror.logs.find((l) => l.event === 'store.bucket_blob_invalid'), {
      what: 'the damaged object to be noticed',
    })
    const second = await mirror.get(blobPath(digest))
    expect(sha256(second.body)).toBe(digest)
    expect(fake.up.count('GET', `/blobs/${digest}`, 'cdn')).toBe(1)
    expect(await published(mirror, digest)).toMatchObject({ outcome: 'published' })
    expect(sha256(await objectBytes(bucket, bucketKey('', digest)))).toBe(digest)
  })

  test('a blob in the bucket not marked as fetched anonymously reaches an anonymous client only if upstream says so', async () => {
    const bucket = newBucket()
    const mirror = await fake.mirror({ env: s3.server.env(bucket) })
    // As a node with an upstream account leaves them: no mark. One upstream has under REPO,
    // one it does not (a private repository's layer, say).
    const listed = randomBytes(100 * 1024)
    const listedDigest = fake.up.addBlob(REPO, listed)
    const unlisted = randomBytes(100 * 1024)
    const unlistedDigest = sha256(unlisted)
    for (const [digest, body] of [
      [listedDigest, listed],
      [unlistedDigest, unlisted],
    ] as const) {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: bucketKey('', digest), Body: body }))
    }
    fake.up.reset()
    const ok = await mirror.get(blobPath(listedDigest))
    expect(ok.status).toBe(200)
    expect(sha256(ok.body)).toBe(listedDigest)
    expect(ok.headers['x-pullcache-cache']).toBe('hit')
    // Upstream was asked whether anonymous pulls may have it (a 401 challenge, then the HEAD
    // with an anonymous token); the bytes came from the bucket.
    expect(fake.up.count('HEAD', blobPath(listedDigest))).toBe(2)
    expect(fake.up.count('GET', blobPath(listedDigest))).toBe(0)
    expect(fake.up.count('GET', `/blobs/${listedDigest}`, 'cdn')).toBe(0)

    const refused = await mirror.get(blobPath(unlistedDigest))
    expect(refused.status).toBe(404)
    expect(JSON.parse(refused.body.toString()).errors[0].code).toBe('BLOB_UNKNOWN')
  })

  test('a fill cut midway or with the wrong bytes leaves nothing in the bucket', async () => {
    const bucket = newBucket()
    const mirror = await fake.mirror({ env: s3.server.env(bucket) })
    const cut = fake.up.addBlob(REPO, randomBytes(20 * 1024 * 1024))
    const corrupt = fake.up.addBlob(REPO, randomBytes(20 * 1024 * 1024))
    fake.up.fault({ path: `/blobs/${cut}`, host: 'cdn' }, { kind: 'cut', afterBytes: 18 * 1024 * 1024 })
    fake.up.fault({ path: `/blobs/${corrupt}`, host: 'cdn' }, { kind: 'corrupt' })
    for (const digest of [cut, corrupt]) {
      const res = await mirror.get(blobPath(digest)).catch(() => undefined)
      if (res !== undefined) expect(sha256(res.body)).not.toBe(digest)
    }
    await waitFor(() => mirror.logs.filter((l) => l.event === 'store.blob_fill_failed').length === 2, {
      what: 'both fills to fail',
    })
    expect(mirror.logs.filter((l) => l.event === 'store.blob_published')).toEqual([])
    expect(await keys(bucket)).toEqual([])
    expect(await uploads(bucket)).toEqual([])
  })

  test('a publish whose bytes do not hash to the digest aborts its upload', async () => {
    const bucket = newBucket()
    const tier = new S3Tier(settings(bucket))
    try {
      await tier.start()
      const bytes = randomBytes(40 * 1024 * 1024)
      const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
      bytes[bytes.length - 1]! ^= 0xff // what the file holds now is not what its name says
      const source = {
        size: bytes.length,
        read: async (buffer: Buffer, offset: number, length: number, position: number) => ({
          bytesRead: bytes.copy(buffer, offset, position, position + length),
        }),
      }
      await expect(tier.publish(digest, source, { anonymous: true })).rejects.toBeInstanceOf(BlobMismatch)
      // Three parts were sent; none of them became an object, and the upload is gone.
      expect(await keys(bucket)).toEqual([])
      expect(await uploads(bucket)).toEqual([])
    } finally {
      tier.close()
    }
  })

  test('the janitor aborts multipart uploads left behind, and only those older than its age', async () => {
    const bucket = newBucket()
    const tier = new S3Tier(settings(bucket))
    try {
      await tier.start()
      const Key = bucketKey('pc/', `sha256:${'ab'.repeat(32)}`)
      await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key }))
      expect(await tier.abortStaleUploads(3_600_000)).toBe(0)
      expect(await uploads(bucket)).toHaveLength(1)
      // Swift's upload times have whole seconds: wait past one so the upload is older than 0 ms.
      await new Promise((r) => setTimeout(r, 1100))
      expect(await tier.abortStaleUploads(0)).toBe(1)
      expect(await uploads(bucket)).toEqual([])
    } finally {
      tier.close()
    }
  })

  test('`serve` on local storage never loads the AWS SDK; on S3 storage it does', async () => {
    // A module hook in the served process notes every @aws-sdk module it resolves.
    const dir = await tmpRoot()
    await writeFile(
      join(dir, 'hooks.mjs'),
      `import { appendFileSync } from 'node:fs'
export async function resolve(specifier, context, next) {
  const found = await next(specifier, context)
  if (found.url.includes('/@aws-sdk/')) appendFileSync(${JSON.stringify(join(dir, 'loaded'))}, found.url + '\\n')
  return found
}
`,
    )
    await writeFile(
      join(dir, 'register.mjs'),
      `import { register } from 'node:module'\nregister('./hooks.mjs', import.meta.url)\n`,
    )
    const loaded = () => readFile(join(dir, 'loaded'), 'utf8').catch(() => '')
    const serve = async (env: Record<string, string>, until: string) => {
      const child = startCli(['serve'], {
        env: {
          NODE_OPTIONS: `--import ${pathToFileURL(join(dir, 'register.mjs')).href}`,
          PULLCACHE_LISTEN: '127.0.0.1:0',
          PULLCACHE_DATA_DIR: await tmpRoot(),
          PULLCACHE_UPSTREAM: fake.up.url,
          ...env,
        },
      })
      try {
        const listening = await waitFor(() => child.lines.find((l) => l.event === 'listening'), {
          what: 'serve to listen',
          timeoutMs: 30_000,
        })
        const digest = fake.up.addBlob(REPO, randomBytes(64 * 1024))
        const res = await fetch(`${listening.url as string}${blobPath(digest)}`)
        expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest)
        await waitFor(() => child.lines.some((l) => l.event === until), { what: until, timeoutMs: 30_000 })
        child.signal('SIGTERM')
        expect(await child.exited).toBe(0)
      } finally {
        await child.kill()
      }
    }
    await serve({}, 'store.blob_committed')
    expect(await loaded()).toBe('')
    await serve(s3.server.env(newBucket()), 'store.blob_published')
    expect(await loaded()).toContain('/@aws-sdk/client-s3/')
  })

  test('a bucket that goes away while serving: the hot tier and upstream serve, nothing waits on it', async () => {
    const bucket = newBucket()
    const port = Number(new URL(s3.server.endpoint).port)
    const proxy = await cuttableProxy(port)
    try {
      const env = { ...s3.server.env(bucket), PULLCACHE_S3_ENDPOINT: `http://127.0.0.1:${proxy.port}` }
      const mirror = await fake.mirror({ env })
      const before = fake.up.addBlob(REPO, randomBytes(512 * 1024))
      expect(sha256((await mirror.get(blobPath(before))).body)).toBe(before)
      await published(mirror, before)

      proxy.cut()
      const after = fake.up.addBlob(REPO, randomBytes(512 * 1024))
      const started = Date.now()
      const cold = await mirror.get(blobPath(after))
      expect(sha256(cold.body)).toBe(after)
      expect(Date.now() - started).toBeLessThan(5_000)
      const warm = await mirror.get(blobPath(before))
      expect(warm.headers['x-pullcache-cache']).toBe('hit')
      await waitFor(
        () =>
          mirror.logs.find(
            (l) => l.event === 'store.bucket_failed' && l.op === 'publish' && l.digest === after,
          ),
        { what: 'the failed publish to be logged', timeoutMs: 30_000 },
      )
      // A node that never held the blob fetches it from upstream while the bucket is away.
      const other = await fake.mirror({ env })
      fake.up.reset()
      expect(sha256((await other.get(blobPath(before))).body)).toBe(before)
      expect(fake.up.count('GET', `/blobs/${before}`, 'cdn')).toBe(1)
      // Nothing half-written: the bucket holds the one blob published before the cut.
      expect(await keys(bucket)).toEqual([bucketKey('', before)])
      expect(await uploads(bucket)).toEqual([])
    } finally {
      await proxy.close()
    }
  })

  test('a bucket that cannot be reached costs no pull: upstream and the hot tier serve', async () => {
    // A port that was free a moment ago: nothing answers there.
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as { port: number }
        probe.close(() => resolve(port))
      })
    })
    const mirror = await fake.mirror({
      env: { ...s3.server.env(newBucket()), PULLCACHE_S3_ENDPOINT: `http://127.0.0.1:${port}` },
    })
    expect(mirror.logs.some((l) => l.event === 'storage.bucket_unreachable')).toBe(true)
    const digest = fake.up.addBlob(REPO, randomBytes(1024 * 1024))
    const cold = await mirror.get(blobPath(digest))
    expect(cold.status).toBe(200)
    expect(sha256(cold.body)).toBe(digest)
    const warm = await mirror.get(blobPath(digest))
    expect(warm.headers['x-pullcache-cache']).toBe('hit')
    expect(fake.up.count('GET', `/blobs/${digest}`, 'cdn')).toBe(1)
    await waitFor(() => mirror.logs.find((l) => l.event === 'store.bucket_failed' && l.op === 'publish'), {
      what: 'the failed publish to be logged',
      timeoutMs: 30_000,
    })
  })
})

/** A TCP proxy to 127.0.0.1:`target` that can be cut: open connections dropped, new ones refused. */
async function cuttableProxy(target: number): Promise<{ port: number; cut(): void; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(target, '127.0.0.1')
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => {
        sockets.delete(socket)
        client.destroy()
        upstream.destroy()
      })
    }
    client.pipe(upstream).pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  let closed: Promise<void> | undefined
  const cut = () => {
    closed ??= new Promise((resolve) => server.close(() => resolve()))
    for (const socket of sockets) socket.destroy()
  }
  return {
    port,
    cut,
    async close() {
      cut()
      await closed
    },
  }
}
