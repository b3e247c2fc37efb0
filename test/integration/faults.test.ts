// pullcache against an upstream that misbehaves: answers nothing, stalls, sends too few bytes,
// and against a store that fails under eviction. Deadlines are short (500 ms) so the file stays
// fast; each test says what the client must see, and that the next request after the fault
// starts afresh.

import { randomBytes } from 'node:crypto'
import { mkdir, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { describe, expect, test } from 'vitest'
import { FAILED_REPO } from '../../src/mirror/accounting.js'
import { sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import type { TestMirror } from '../support/start-mirror.js'

const REPO = 'library/faulty'
const DEADLINE_MS = 500
/**
 * What a deadline may overshoot by on a loaded machine (a full test run on two busy cores
 * measured 430 ms). Tests that must fail without the deadline compound undici's own timers,
 * which tick in about a second, so their figures land well past it.
 */
const SLACK_MS = 900
const FAST = { upstream: { header_timeout: `${DEADLINE_MS}ms`, idle_timeout: `${DEADLINE_MS}ms` } }
const SCHEMA2 = 'application/vnd.docker.distribution.manifest.v2+json'
const LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
const ALL_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  LIST,
  'application/vnd.oci.image.manifest.v1+json',
  SCHEMA2,
].join(', ')

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const blobPath = (digest: string, repo = REPO) => `/v2/${repo}/blobs/${digest}`

/**
 * A GET whose body is read to the end; `cut` when the connection broke before a clean end
 * (status 0 when it broke before the status line: the mirror had written its headers, but they
 * never left before the fill failed).
 */
async function fetchAll(
  mirror: TestMirror,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Buffer; cut: boolean; ms: number; headers: Record<string, unknown> }> {
  const started = Date.now()
  let res: Awaited<ReturnType<typeof request>>
  try {
    res = await request(`${mirror.url}${path}`, { headers })
  } catch {
    return { status: 0, body: Buffer.alloc(0), cut: true, ms: Date.now() - started, headers: {} }
  }
  const chunks: Buffer[] = []
  let cut = false
  try {
    for await (const chunk of res.body) chunks.push(chunk as Buffer)
  } catch {
    cut = true
  }
  return {
    status: res.statusCode,
    body: Buffer.concat(chunks),
    cut,
    ms: Date.now() - started,
    headers: res.headers,
  }
}

function errorOf(body: Buffer): { code: string; detail: unknown } {
  return JSON.parse(body.toString()).errors[0]
}

async function tmpFiles(mirror: TestMirror): Promise<string[]> {
  return readdir(join(mirror.dataDir, 'tmp'))
}

async function waitFor(check: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const until = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time')
    await sleep(20)
  }
}

describe('an upstream that answers nothing', () => {
  const fake = useFakeUpstream()

  test('blob: leader, followers and fills queued behind it get 503 "timed out" within header_timeout', async () => {
    // One download slot: a second blob's fill waits behind the hung one, and its deadline counts
    // the wait too (without it, the client waits for two upstream timeouts, one after the other).
    const mirror = await fake.mirror({
      config: FAST,
      env: { PULLCACHE_UPSTREAM_MAX_CONCURRENT_FETCHES: '1' },
    })
    // Warm up (first request of the process, token): the figures below are the deadline's.
    const warm = fake.up.addBlob(REPO, randomBytes(1024))
    expect((await mirror.get(blobPath(warm))).status).toBe(200)
    const hung = fake.up.addBlob(REPO, randomBytes(64 * 1024))
    const queued = fake.up.addBlob(REPO, randomBytes(64 * 1024))
    fake.up.fault({ path: blobPath(hung) }, { kind: 'hang' })
    fake.up.fault({ path: blobPath(queued) }, { kind: 'hang' })

    const results = await Promise.all(
      [hung, hung, queued].map(async (digest, i) => {
        await sleep(i * 100)
        return fetchAll(mirror, blobPath(digest))
      }),
    )
    for (const r of results) {
      expect(r.status).toBe(503)
      expect(errorOf(r.body).code).toBe('UNAVAILABLE')
      expect(String(errorOf(r.body).detail)).toMatch(/timed out/)
      expect(r.ms).toBeLessThan(DEADLINE_MS + SLACK_MS)
    }
  })

  test('blob: once upstream is back, the next request succeeds at once instead of joining the dead fetch', async () => {
    const mirror = await fake.mirror({ config: FAST })
    const bytes = randomBytes(64 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault({ path: blobPath(digest) }, { kind: 'hang' })
    // The leader's answer comes when its fetch passes the deadline: from then on the fetch is
    // dead, and nothing may join it. (Waiting a fixed time instead raced the deadline's timer on
    // a loaded machine: a request just before it joins the live fetch, and rightly fails with it.)
    const leader = await fetchAll(mirror, blobPath(digest))
    expect(leader.status).toBe(503)
    fake.up.clearFaults()
    const next = await fetchAll(mirror, blobPath(digest))
    expect(next.status).toBe(200)
    expect(sha256(next.body)).toBe(digest)
  })

  test('blob: a stalled body cuts leader and followers, leaves no temp file, and the next request starts afresh', async () => {
    const mirror = await fake.mirror({ config: FAST })
    const bytes = randomBytes(1024 * 1024)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault({ path: `/blobs/${digest}`, host: 'cdn' }, { kind: 'stall', afterBytes: 100_000 }, 1)
    const [leader, follower] = await Promise.all([
      fetchAll(mirror, blobPath(digest)),
      sleep(100).then(() => fetchAll(mirror, blobPath(digest))),
    ])
    for (const r of [leader, follower]) {
      expect(r.cut).toBe(true)
      expect(r.body.length).toBeLessThan(bytes.length)
    }
    await waitFor(async () => (await tmpFiles(mirror)).length === 0)
    const next = await fetchAll(mirror, blobPath(digest))
    expect(next.status).toBe(200)
    expect(next.cut).toBe(false)
    expect(sha256(next.body)).toBe(digest)
    expect(fake.up.count('GET', `/blobs/${digest}`, 'cdn')).toBe(2)
  })

  test('manifest by tag and tags/list: 503 within header_timeout, then served as soon as upstream is back', async () => {
    const mirror = await fake.mirror({ config: FAST })
    const image = fake.up.addImage(REPO, 'hung')
    fake.up.fault({ path: `/v2/${REPO}/manifests/hung` }, { kind: 'hang' })
    fake.up.fault({ path: `/v2/${REPO}/tags/list` }, { kind: 'hang' })

    const waiting = Promise.all([
      fetchAll(mirror, `/v2/${REPO}/manifests/hung`, { accept: ALL_TYPES }),
      sleep(100).then(() => fetchAll(mirror, `/v2/${REPO}/manifests/hung`, { accept: ALL_TYPES })),
      fetchAll(mirror, `/v2/${REPO}/tags/list`),
    ])
    // Upstream comes back just after the deadline: the next requests must not join the dead ones.
    await sleep(DEADLINE_MS + 100)
    fake.up.clearFaults()
    const again = await fetchAll(mirror, `/v2/${REPO}/manifests/hung`, { accept: ALL_TYPES })
    expect(again.status).toBe(200)
    expect(again.headers['docker-content-digest']).toBe(image.manifestDigest)
    for (const r of await waiting) {
      expect(r.status).toBe(503)
      expect(String(errorOf(r.body).detail)).toMatch(/timed out/)
      expect(r.ms).toBeLessThan(DEADLINE_MS + SLACK_MS)
    }
    expect((await fetchAll(mirror, `/v2/${REPO}/tags/list`)).status).toBe(200)
  })

  test('a token service that hangs is upstream down: 503 in time, and a cached tag is served stale', async () => {
    const mirror = await fake.mirror({ config: FAST, env: { PULLCACHE_TAG_FRESHNESS: '50ms' } })
    fake.up.addImage(REPO, 'cached')
    expect((await mirror.get(`/v2/${REPO}/manifests/cached`, { accept: ALL_TYPES })).status).toBe(200)
    fake.up.addImage('library/uncached', 'latest')
    await sleep(60)
    fake.up.expireTokens()
    fake.up.fault({ path: '/token', host: 'auth' }, { kind: 'hang' })

    const cold = await fetchAll(mirror, '/v2/library/uncached/manifests/latest', { accept: ALL_TYPES })
    expect(cold.status).toBe(503)
    expect(cold.ms).toBeLessThan(DEADLINE_MS + SLACK_MS)

    const stale = await fetchAll(mirror, `/v2/${REPO}/manifests/cached`, { accept: ALL_TYPES })
    expect(stale.status).toBe(200)
    expect(stale.headers['x-pullcache-cache']).toBe('stale')
  })
})

describe('short and empty bodies', () => {
  const fake = useFakeUpstream()

  async function nothingStored(mirror: TestMirror, digest: string): Promise<void> {
    const hex = digest.slice(7)
    const shard = await readdir(join(mirror.dataDir, 'blobs', 'sha256', hex.slice(0, 2))).catch(() => [])
    expect(shard).not.toContain(hex)
    expect(mirror.server.index.getBlob(digest)).toBeUndefined()
  }

  test('Content-Length 0 for a non-empty digest: an OCI error before any 200, nothing committed', async () => {
    const mirror = await fake.mirror()
    const bytes = randomBytes(10_000)
    const digest = fake.up.addBlob(REPO, bytes)
    fake.up.fault({ path: `/blobs/${digest}`, host: 'cdn' }, { kind: 'empty' }, 1)
    const res = await fetchAll(mirror, blobPath(digest))
    expect(res.status).toBeGreaterThanOrEqual(502)
    expect(res.status).toBeLessThanOrEqual(503)
    expect(errorOf(res.body).code).toBe('UNAVAILABLE')
    expect(res.headers['cache-control']).toBeUndefined()
    await nothingStored(mirror, digest)
    const next = await fetchAll(mirror, blobPath(digest))
    expect(next.status).toBe(200)
    expect(sha256(next.body)).toBe(digest)
  })

  test('the empty blob itself is served from an empty body', async () => {
    const mirror = await fake.mirror()
    const digest = fake.up.addBlob(REPO, new Uint8Array(0))
    const res = await fetchAll(mirror, blobPath(digest))
    expect(res.status).toBe(200)
    expect(res.body.length).toBe(0)
    await waitFor(() => mirror.server.index.getBlob(digest)?.size === 0)
  })

  test('no Content-Length and a body that ends at 0 bytes or early: an OCI error, nothing committed', async () => {
    const mirror = await fake.mirror()
    for (const afterBytes of [0, 5_000]) {
      const digest = fake.up.addBlob(REPO, randomBytes(10_000))
      fake.up.fault({ path: `/blobs/${digest}`, host: 'cdn' }, { kind: 'unsized', afterBytes }, 1)
      const res = await fetchAll(mirror, blobPath(digest))
      expect(res.status).toBe(503)
      expect(errorOf(res.body).code).toBe('UNAVAILABLE')
      await nothingStored(mirror, digest)
    }
  })

  test('a body longer than its Content-Length is never a clean response, and is not committed', async () => {
    const mirror = await fake.mirror()
    const digest = fake.up.addBlob(REPO, randomBytes(10_000))
    fake.up.fault({ path: `/blobs/${digest}`, host: 'cdn' }, { kind: 'long' }, 1)
    const res = await fetchAll(mirror, blobPath(digest))
    expect(res.cut).toBe(true)
    await nothingStored(mirror, digest)
  })
})

describe('eviction', () => {
  const fake = useFakeUpstream()

  async function metric(mirror: TestMirror, name: string): Promise<number> {
    const text = (await mirror.get('/metrics')).body.toString()
    const line = text.split('\n').find((l) => l.startsWith(`${name} `))
    return line === undefined ? 0 : Number(line.split(' ')[1])
  }

  test('an eviction error is logged and counted, the server lives on, and a download in progress completes', async () => {
    const mirror = await fake.mirror()
    // A new store is reconciled in the background; done first, it cannot drop a's row below.
    await mirror.server.reconciliation?.done
    const a = fake.up.addBlob(REPO, randomBytes(50_000))
    expect((await mirror.get(blobPath(a))).status).toBe(200)
    // Where blob a's file was, a directory: unlink fails with EISDIR.
    const hex = a.slice(7)
    const file = join(mirror.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex)
    await rm(file)
    await mkdir(file)
    const evictor = mirror.server.evictor
    evictor.setPolicy({ maxSize: 1, highWater: 0.95, lowWater: 0.85, maxUnusedAgeMs: null, pins: [] })

    const slowBytes = randomBytes(1024 * 1024)
    const slow = fake.up.addBlob(REPO, slowBytes)
    fake.up.fault(
      { path: `/blobs/${slow}`, host: 'cdn' },
      { kind: 'slow', chunkBytes: 128 * 1024, delayMs: 40 },
    )
    const inProgress = fetchAll(mirror, blobPath(slow))
    await sleep(100)
    // b's commit starts an eviction, which meets a's directory.
    const b = fake.up.addBlob(REPO, randomBytes(20_000))
    expect((await mirror.get(blobPath(b))).status).toBe(200)
    await evictor.idle()

    const done = await inProgress
    expect(done.cut).toBe(false)
    expect(sha256(done.body)).toBe(slow)
    expect(await metric(mirror, 'pullcache_eviction_errors_total')).toBeGreaterThanOrEqual(1)
    expect(mirror.logs.some((l) => l.event === 'store.eviction_error')).toBe(true)
    expect((await mirror.get('/v2/')).status).toBe(200)
  })

  test('a budget smaller than one blob: the client that caused the fill still gets it, eviction removes it after', async () => {
    const mirror = await fake.mirror({ env: { PULLCACHE_MAX_SIZE: '1KiB' } })
    const bytes = randomBytes(200_000)
    const digest = fake.up.addBlob(REPO, bytes)
    // No Content-Length: the response waits for the commit and then opens the stored file.
    fake.up.fault({ path: `/blobs/${digest}`, host: 'cdn' }, { kind: 'unsized' }, 1)
    const res = await fetchAll(mirror, blobPath(digest))
    expect(res.status).toBe(200)
    expect(res.cut).toBe(false)
    expect(sha256(res.body)).toBe(digest)
    await waitFor(() => !mirror.server.mirror.isInUse(digest))
    await mirror.server.evictor.run()
    expect(mirror.server.index.getBlob(digest)).toBeUndefined()
  })
})

describe('HEAD by tag for a schema2-only client', () => {
  const fake = useFakeUpstream()

  test('on an uncached manifest list, HEAD answers as GET does: the amd64 child, same digest and size', async () => {
    const amd = fake.up.addImage(REPO, 'amd')
    const arm = fake.up.addImage(REPO, 'arm')
    const list = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: LIST,
        manifests: [
          {
            mediaType: SCHEMA2,
            digest: arm.manifestDigest,
            size: arm.manifest.length,
            platform: { os: 'linux', architecture: 'arm64' },
          },
          {
            mediaType: SCHEMA2,
            digest: amd.manifestDigest,
            size: amd.manifest.length,
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      }),
    )
    fake.up.addManifest(REPO, list, LIST, 'multi')

    const headMirror = await fake.mirror()
    const head = await headMirror.head(`/v2/${REPO}/manifests/multi`, { accept: SCHEMA2 })
    const getMirror = await fake.mirror()
    const get = await getMirror.get(`/v2/${REPO}/manifests/multi`, { accept: SCHEMA2 })
    expect(get.status).toBe(200)
    expect(head.status).toBe(get.status)
    expect(head.headers['docker-content-digest']).toBe(amd.manifestDigest)
    expect(head.headers['docker-content-digest']).toBe(get.headers['docker-content-digest'])
    expect(head.headers['content-length']).toBe(get.headers['content-length'])
    expect(head.headers['content-type']).toBe(SCHEMA2)
  })
})

describe('junk requests', () => {
  const fake = useFakeUpstream({ auth: 'none' })

  test('10,000 requests for names and tags that do not exist leave the index row counts bounded', async () => {
    const mirror = await fake.mirror()
    const image = fake.up.addImage(REPO, 'real')
    expect((await mirror.get(`/v2/${REPO}/manifests/real`, { accept: ALL_TYPES })).status).toBe(200)
    const layer = image.layers[0]!.digest
    expect((await mirror.get(blobPath(layer))).status).toBe(200)

    const zero = `sha256:${'0'.repeat(64)}`
    const paths = (i: number) => {
      switch (i % 4) {
        case 0:
          return `/v2/junk/n${i}/manifests/t${i}`
        case 1:
          return `/v2/${REPO}/manifests/nope${i}`
        case 2:
          return `/v2/junk/n${i}/tags/list`
        default:
          return blobPath(zero, `junk/n${i}`)
      }
    }
    const run = async (from: number, to: number, expected: number) => {
      let next = from
      const worker = async () => {
        while (next < to) {
          const i = next++
          const res = await request(`${mirror.url}${paths(i)}`, { headers: { accept: ALL_TYPES } })
          await res.body.dump()
          expect(res.statusCode).toBe(expected)
        }
      }
      await Promise.all(Array.from({ length: 16 }, worker))
    }
    // Names and tags upstream says do not exist (404 each; a few hundred, as each costs an
    // upstream exchange), then the bulk while upstream is unreachable (offline: 503 each).
    await run(0, 800, 404)
    mirror.server.mirror.offline = true
    await run(800, 10_000, 503)

    const index = mirror.server.index
    index.flush()
    const count = (table: string) =>
      (index.database.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n
    // The real image's rows, and nothing for the junk.
    expect(count('tag_stats')).toBe(1)
    expect(count('tag_lists')).toBe(0)
    const linkedRepos = index.database.prepare('SELECT DISTINCT repo FROM repo_links').pluck().all()
    expect(linkedRepos).toEqual([REPO])
    // Accounting: the real requests under their repo, every failure under one placeholder.
    const repos = index.database.prepare('SELECT DISTINCT repo FROM accounting ORDER BY repo').pluck().all()
    expect(repos.sort()).toEqual([FAILED_REPO, REPO].sort())
    expect(count('accounting')).toBeLessThanOrEqual(12)
  }, 120_000)
})
