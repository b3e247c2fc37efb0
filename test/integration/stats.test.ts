import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { beforeAll, describe, expect, test } from 'vitest'
import type { StatsReport } from '../../src/mirror/stats-report.js'
import { type FakeUpstream, sha256 } from '../support/fake-upstream.js'
import { useFakeUpstream } from '../support/fake-upstream-fixture.js'
import { MAIN_JS, runCli } from '../support/run-cli.js'
import type { TestMirror } from '../support/start-mirror.js'
import { tmpRoot } from '../support/tmp.js'

const ALPHA = 'library/alpha'
const BETA = 'library/beta'
const ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ')

/** Prometheus text exposition -> "name{label="v",...}" -> value, labels sorted by name. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (!m) continue
    const labels = [...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)]
      .map(([, k, v]) => `${k}="${v}"`)
      .sort()
    out.set(labels.length > 0 ? `${m[1]}{${labels.join(',')}}` : m[1]!, Number(m[3]))
  }
  return out
}

function metric(metrics: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  const keys = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
  return metrics.get(keys.length > 0 ? `${name}{${keys.join(',')}}` : name) ?? 0
}

function sumOf(metrics: Map<string, number>, name: string): number {
  let total = 0
  for (const [key, value] of metrics) if (key === name || key.startsWith(`${name}{`)) total += value
  return total
}

describe('stats: the numbers match the requests made', () => {
  const fake = useFakeUpstream({ rateLimit: { limit: 100, remaining: 100, window: 21600 } })
  let up: FakeUpstream
  let mirror: TestMirror
  // What the sequence in beforeAll sent, for the expectations.
  const sizes = { b1: 100_000, b2: 50_000, b3: 4 * 1024 * 1024, manifest: 0, tagList: 0 }
  let upstreamRequests = 0
  let cdnBlobGets = 0

  beforeAll(async () => {
    expect(existsSync(MAIN_JS), 'run `npm run build` first: this test runs the built CLI').toBe(true)
    up = fake.up
    mirror = await fake.fileMirror()
    const blob = (repo: string, digest: string) => mirror.get(`/v2/${repo}/blobs/${digest}`)
    const cacheOf = (res: { headers: Record<string, unknown> }) => res.headers['x-pullcache-cache']

    // Blobs in alpha: 2 cold GETs (miss), then 3 warm GETs (hit).
    const b1 = up.addBlob(ALPHA, randomBytes(sizes.b1))
    const b2 = up.addBlob(ALPHA, randomBytes(sizes.b2))
    expect(cacheOf(await blob(ALPHA, b1))).toBe('miss')
    expect(cacheOf(await blob(ALPHA, b2))).toBe('miss')
    for (const d of [b1, b1, b2]) expect(cacheOf(await blob(ALPHA, d))).toBe('hit')

    // Blob in beta: 4 concurrent cold GETs share one download (1 miss, 3 coalesced).
    const b3 = up.addBlob(BETA, randomBytes(sizes.b3))
    up.fault({ path: `/blobs/${b3}`, host: 'cdn' }, { kind: 'slow', chunkBytes: 256 * 1024, delayMs: 20 })
    const together = await Promise.all(Array.from({ length: 4 }, () => blob(BETA, b3)))
    for (const res of together) expect(sha256(res.body)).toBe(b3)
    expect(together.map(cacheOf).sort()).toEqual(['coalesced', 'coalesced', 'coalesced', 'miss'])
    up.clearFaults()

    // A blob upstream does not have: 404, an error.
    const missing = await blob(BETA, sha256(randomBytes(16)))
    expect(missing.status).toBe(404)

    // A manifest by tag: miss, then 2 GET hits and a HEAD hit inside the freshness window.
    const image = up.addImage(ALPHA, 'v1')
    sizes.manifest = image.manifest.length
    const tagPath = `/v2/${ALPHA}/manifests/v1`
    expect(cacheOf(await mirror.get(tagPath, { accept: ACCEPT }))).toBe('miss')
    expect(cacheOf(await mirror.get(tagPath, { accept: ACCEPT }))).toBe('hit')
    expect(cacheOf(await mirror.get(tagPath, { accept: ACCEPT }))).toBe('hit')
    expect(cacheOf(await mirror.head(tagPath, { accept: ACCEPT }))).toBe('hit')

    // The tag list, from upstream.
    const list = await mirror.get(`/v2/${ALPHA}/tags/list`)
    expect(cacheOf(list)).toBe('miss')
    sizes.tagList = list.body.length

    // The tag past its freshness with upstream failing: served stale.
    mirror.server.mirror.setTagFreshness(0)
    up.fault({ method: 'HEAD', path: tagPath }, { kind: 'status', status: 500 })
    const stale = await mirror.get(tagPath, { accept: ACCEPT })
    expect(stale.status).toBe(200)
    expect(cacheOf(stale)).toBe('stale')
    up.clearFaults()
    mirror.server.mirror.setTagFreshness(60_000)

    // The fixture empties the request log after each test: what the sequence sent, kept.
    upstreamRequests = up.requests.length
    cdnBlobGets = up.count('GET', /^\/blobs\//, 'cdn')
  })

  const { b1, b2 } = sizes
  const blobCache = () => 2 * b1 + b2 + 3 * sizes.b3
  const blobUpstream = () => b1 + b2 + sizes.b3

  function expectTotals(report: StatsReport) {
    const L = sizes.manifest
    expect(report.by_kind.blob).toEqual({
      requests: 10,
      hits: 3,
      misses: 3,
      coalesced: 3,
      stale: 0,
      errors: 1,
      hit_rate: 6 / 9,
      bytes_from_cache: blobCache(),
      bytes_from_upstream: blobUpstream(),
      pulls_avoided: 0,
    })
    expect(report.by_kind.manifest).toEqual({
      requests: 5,
      hits: 3,
      misses: 1,
      coalesced: 0,
      stale: 1,
      errors: 0,
      hit_rate: 4 / 5,
      bytes_from_cache: 3 * L,
      bytes_from_upstream: L,
      pulls_avoided: 3,
    })
    expect(report.by_kind.tags).toEqual({
      requests: 1,
      hits: 0,
      misses: 1,
      coalesced: 0,
      stale: 0,
      errors: 0,
      hit_rate: 0,
      bytes_from_cache: 0,
      bytes_from_upstream: sizes.tagList,
      pulls_avoided: 0,
    })
    expect(report.overall).toEqual({
      requests: 16,
      hits: 6,
      misses: 5,
      coalesced: 3,
      stale: 1,
      errors: 1,
      hit_rate: 10 / 15,
      bytes_from_cache: blobCache() + 3 * L,
      bytes_from_upstream: blobUpstream() + L + sizes.tagList,
      pulls_avoided: 3,
    })
    expect(report.top_repositories).toEqual([
      {
        registry: new URL(up.url).host,
        repo: ALPHA,
        requests: 11,
        hits: 6,
        misses: 4,
        coalesced: 0,
        stale: 1,
        errors: 0,
        hit_rate: 7 / 11,
        bytes_from_cache: 2 * b1 + b2 + 3 * L,
        bytes_from_upstream: b1 + b2 + L + sizes.tagList,
        pulls_avoided: 3,
      },
      {
        registry: new URL(up.url).host,
        repo: BETA,
        requests: 5,
        hits: 0,
        misses: 1,
        coalesced: 3,
        stale: 0,
        errors: 1,
        hit_rate: 3 / 4,
        bytes_from_cache: 3 * sizes.b3,
        bytes_from_upstream: sizes.b3,
        pulls_avoided: 0,
      },
    ])
    expect(report.top_tags).toEqual([
      {
        registry: new URL(up.url).host,
        repo: ALPHA,
        tag: 'v1',
        requests: 5,
        hits: 3,
        misses: 1,
        stale: 1,
        errors: 0,
        pulls_avoided: 3,
        bytes_from_cache: 3 * L,
        bytes_from_upstream: L,
        last_request: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      },
    ])
    // Everything happened within a minute or two: one hour, or two when it crossed an hour.
    const hourly = report.hourly
    expect(hourly.length).toBeGreaterThanOrEqual(1)
    expect(hourly.length).toBeLessThanOrEqual(2)
    expect(hourly.map((h) => h.hour)).toEqual([...hourly.map((h) => h.hour)].sort())
    expect(hourly.reduce((n, h) => n + h.requests, 0)).toBe(16)
    expect(hourly.reduce((n, h) => n + h.bytes_from_cache, 0)).toBe(report.overall.bytes_from_cache)
    expect(report.store).toMatchObject({ blobs: 3, bytes: b1 + b2 + sizes.b3, manifests: 1, tags: 1 })
    expect(report.version).toBe('0.1.0')
  }

  test('GET /_pullcache/stats', async () => {
    const res = await mirror.get('/_pullcache/stats')
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toMatch(/^application\/json/)
    const report = JSON.parse(res.body.toString()) as StatsReport
    expectTotals(report)
    expect(report.since).toBeNull()
    expect(report.uptime_seconds).toBeGreaterThanOrEqual(0)
    expect(report.store.budget_bytes).toBeNull()
    expect(Date.parse(report.generated_at)).toBeGreaterThan(Date.now() - 60_000)
    expect(report.upstream.url).toBe(up.url)
    expect(report.upstream.offline).toBe(false)
    expect(report.upstream.rate_limit).toMatchObject({ limit: 100, remaining: 99, window_seconds: 21600 })
    // The 500 on the revalidation; a 404 is an answer, not an upstream failure.
    expect(report.upstream.recent_errors).toEqual([
      { at: expect.any(String), kind: 'SERVER', status: 500, message: expect.stringContaining('500') },
    ])
  })

  test('?since= counts whole hours, and a bad value is a 400 in OCI JSON', async () => {
    const recent = JSON.parse(
      (await mirror.get('/_pullcache/stats?since=24h')).body.toString(),
    ) as StatsReport
    expect(recent.overall.requests).toBe(16)
    expect(Date.parse(recent.since!)).toBeGreaterThan(Date.now() - 24 * 3_600_000 - 60_000)

    const bad = await mirror.get('/_pullcache/stats?since=yesterday')
    expect(bad.status).toBe(400)
    const body = JSON.parse(bad.body.toString()) as {
      errors: { code: string; detail: { parameter: string } }[]
    }
    expect(body.errors[0]?.code).toBe('REQUEST_INVALID')
    expect(body.errors[0]?.detail.parameter).toBe('since')

    const unknown = await mirror.get('/_pullcache/nothing')
    expect(unknown.status).toBe(404)
    expect(JSON.parse(unknown.body.toString()).errors[0].code).toBe('NOT_FOUND')
  })

  test('/metrics agrees', async () => {
    const res = await mirror.get('/metrics')
    expect(res.status).toBe(200)
    const m = parseMetrics(res.body.toString())
    const requests = (kind: string, method: string, result: string) =>
      metric(m, 'pullcache_requests_total', { upstream: 'docker.io', kind, method, result })
    expect(requests('blob', 'GET', 'miss')).toBe(3)
    expect(requests('blob', 'GET', 'hit')).toBe(3)
    expect(requests('blob', 'GET', 'coalesced')).toBe(3)
    expect(requests('blob', 'GET', 'error')).toBe(1)
    expect(requests('manifest', 'GET', 'miss')).toBe(1)
    expect(requests('manifest', 'GET', 'hit')).toBe(2)
    expect(requests('manifest', 'HEAD', 'hit')).toBe(1)
    expect(requests('manifest', 'GET', 'stale')).toBe(1)
    expect(requests('tags', 'GET', 'miss')).toBe(1)
    expect(sumOf(m, 'pullcache_requests_total')).toBe(16)

    const L = sizes.manifest
    expect(metric(m, 'pullcache_served_bytes_total', { upstream: 'docker.io', source: 'cache' })).toBe(
      blobCache() + 3 * L,
    )
    expect(metric(m, 'pullcache_served_bytes_total', { upstream: 'docker.io', source: 'upstream' })).toBe(
      blobUpstream() + L + sizes.tagList,
    )
    expect(metric(m, 'pullcache_upstream_pulls_avoided_total', { upstream: 'docker.io' })).toBe(3)
    // Every request the fake upstream saw (registry, token service, CDN), and nothing else.
    expect(sumOf(m, 'pullcache_upstream_requests_total')).toBe(upstreamRequests)
    expect(
      metric(m, 'pullcache_upstream_requests_total', {
        upstream: 'docker.io',
        kind: 'cdn',
        method: 'GET',
        status: '200',
      }),
    ).toBe(cdnBlobGets)
    expect(
      metric(m, 'pullcache_upstream_requests_total', {
        upstream: 'docker.io',
        kind: 'manifest',
        method: 'GET',
        status: '200',
      }),
    ).toBe(1)
    expect(metric(m, 'pullcache_inflight_fetches')).toBe(0)
    expect(metric(m, 'pullcache_store_bytes')).toBe(b1 + b2 + sizes.b3)
  })

  test('pullcache stats --json, next to the running server, prints the same document', async () => {
    // The server's endpoint flushed the accounting; the CLI reads what is on disk.
    await mirror.get('/_pullcache/stats')
    const { code, stdout, stderr } = await runCli(['stats', '--json', '--data-dir', mirror.dataDir])
    expect(stderr).toBe('')
    expect(code).toBe(0)
    const report = JSON.parse(stdout) as StatsReport
    expectTotals(report)
    expect(report.uptime_seconds).toBeNull()
    // No server to ask: whether upstream answers is not known.
    expect(report.upstream).toEqual({
      url: 'https://registry-1.docker.io',
      offline: false,
      state: 'unknown',
      last_answer: null,
      last_failure: null,
      rate_limit: null,
      recent_errors: [],
    })

    const top1 = JSON.parse(
      (await runCli(['stats', '--json', '--top', '1', '--data-dir', mirror.dataDir])).stdout,
    )
    expect(top1.top_repositories.map((r: { repo: string }) => r.repo)).toEqual([ALPHA])
  })

  test('pullcache stats prints a table with the repositories and their hit rates', async () => {
    const { code, stdout } = await runCli(['stats', '--data-dir', mirror.dataDir, '--since', '24h'])
    expect(code).toBe(0)
    expect(stdout).toMatch(/^overall\s+16\s+66\.7%/m)
    expect(stdout).toMatch(/^blob\s+10\s+66\.7%/m)
    expect(stdout).toMatch(/^manifest\s+5\s+80\.0%\s/m)
    expect(stdout).toMatch(new RegExp(`^${ALPHA}\\s+11\\s+63\\.6%`, 'm'))
    expect(stdout).toMatch(new RegExp(`^${BETA}\\s+5\\s+75\\.0%\\s+12\\.0 MiB\\s+4\\.0 MiB`, 'm'))
    expect(stdout.indexOf(ALPHA)).toBeLessThan(stdout.indexOf(BETA))
  })

  test('pullcache stats works on a stopped server’s data dir, read-only', async () => {
    await mirror.close({ wipe: false })
    const db = join(mirror.dataDir, 'index.db')
    const before = sha256(await readFile(db))
    const { code, stdout } = await runCli(['stats', '--json', '--data-dir', mirror.dataDir])
    expect(code).toBe(0)
    expectTotals(JSON.parse(stdout) as StatsReport)
    // Looking changed nothing: SQLite may leave an empty -wal beside the file, never data.
    expect(sha256(await readFile(db))).toBe(before)
    const wal = join(mirror.dataDir, 'index.db-wal')
    if (existsSync(wal)) expect((await stat(wal)).size).toBe(0)
    await rm(mirror.dataDir, { recursive: true, force: true })
  })
})

describe('stats: concurrent manifest requests', () => {
  const fake = useFakeUpstream()

  test('requests that join another one’s manifest download are coalesced: one pull spent, the rest avoided', async () => {
    const up = fake.up
    const mirror = await fake.mirror()
    const image = up.addImage(ALPHA, 'busy')
    const byDigest = `/v2/${ALPHA}/manifests/${image.manifestDigest}`
    // Slow enough that all five are in flight together.
    up.fault({ method: 'GET', path: byDigest }, { kind: 'slow', chunkBytes: 64, delayMs: 10 })
    const byTag = await Promise.all(
      Array.from({ length: 5 }, () => mirror.get(`/v2/${ALPHA}/manifests/busy`, { accept: ACCEPT })),
    )
    for (const r of byTag) expect(sha256(r.body)).toBe(image.manifestDigest)
    expect(byTag.map((r) => r.headers['x-pullcache-cache']).sort()).toEqual([
      'coalesced',
      'coalesced',
      'coalesced',
      'coalesced',
      'miss',
    ])
    expect(up.count('GET', byDigest)).toBe(1)

    const other = up.addImage(BETA, 'busy')
    const otherPath = `/v2/${BETA}/manifests/${other.manifestDigest}`
    up.fault({ method: 'GET', path: otherPath }, { kind: 'slow', chunkBytes: 64, delayMs: 10 })
    const direct = await Promise.all(Array.from({ length: 3 }, () => mirror.get(otherPath)))
    expect(direct.map((r) => r.headers['x-pullcache-cache']).sort()).toEqual([
      'coalesced',
      'coalesced',
      'miss',
    ])
    expect(up.count('GET', otherPath)).toBe(1)

    const report = JSON.parse((await mirror.get('/_pullcache/stats')).body.toString()) as StatsReport
    expect(report.by_kind.manifest).toMatchObject({
      requests: 8,
      misses: 2,
      coalesced: 6,
      pulls_avoided: 6,
      bytes_from_upstream: image.manifest.length + other.manifest.length,
      bytes_from_cache: 4 * image.manifest.length + 2 * other.manifest.length,
    })
    expect(report.top_tags[0]).toMatchObject({
      tag: 'busy',
      requests: 5,
      hits: 4,
      misses: 1,
      pulls_avoided: 4,
    })
  })
})

describe('pullcache stats: usage and failures', () => {
  test('exit 1 for a data dir that does not exist, which it does not create', async () => {
    const dir = join(await tmpRoot(), 'nope')
    const { code, stderr } = await runCli(['stats', '--data-dir', dir])
    expect(code).toBe(1)
    expect(stderr).toContain('does not exist')
    expect(existsSync(dir)).toBe(false)
  })

  test('exit 1 for a data dir without an index, and nothing is created in it', async () => {
    const dir = await tmpRoot()
    const { code, stderr } = await runCli(['stats', '--data-dir', dir])
    expect(code).toBe(1)
    expect(stderr).toContain('no index')
    expect(existsSync(join(dir, 'index.db'))).toBe(false)
  })

  test('exit 2 for bad flags and bad config', async () => {
    const dir = await tmpRoot()
    await mkdir(dir, { recursive: true })
    for (const args of [
      ['stats', '--since', 'soon', '--data-dir', dir],
      ['stats', '--top', '0', '--data-dir', dir],
      ['stats', '--frobnicate'],
      ['stats', '--config', join(dir, 'missing.json')],
    ]) {
      const { code } = await runCli(args)
      expect(code, args.join(' ')).toBe(2)
    }
    const help = await runCli(['stats', '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('--since')
  })
})
