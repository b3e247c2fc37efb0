import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { statsReport } from '../../src/mirror/stats-report.js'
import { type Accounted, type CacheResult, IndexDb } from '../../src/store/index-db.js'
import {
  blobStats,
  hitRate,
  hourlyStats,
  kindStats,
  overallStats,
  repositoryStats,
  storeCounts,
  tagStats,
} from '../../src/store/stats.js'
import { tmpRoot } from '../support/tmp.js'

const HOUR = 3_600_000
const T0 = Date.UTC(2024, 0, 1, 10) // an hour boundary

async function dbPath(): Promise<string> {
  return join(await tmpRoot('pullcache-stats'), 'index.db')
}

function account(
  index: IndexDb,
  at: number,
  repo: string,
  kind: Accounted['kind'],
  result: CacheResult,
  bytes = 0,
  method = 'GET',
): void {
  const fromUpstream = result === 'miss'
  index.account(
    {
      registry: 'registry-1.docker.io',
      repo,
      kind,
      method,
      result,
      bytesCache: fromUpstream ? 0 : bytes,
      bytesUpstream: fromUpstream ? bytes : 0,
      pullsAvoided:
        kind === 'manifest' && method === 'GET' && result !== 'miss' && result !== 'error' ? 1 : 0,
    },
    at,
  )
}

describe('stats from the index', () => {
  test('hit rate: hit + coalesced + stale over every answered request; errors on neither side', () => {
    expect(hitRate({ hits: 0, misses: 0, coalesced: 0, stale: 0 })).toBeNull()
    expect(hitRate({ hits: 1, misses: 1, coalesced: 1, stale: 1 })).toBe(3 / 4)
    expect(hitRate({ hits: 0, misses: 2, coalesced: 0, stale: 0 })).toBe(0)
  })

  test('an empty index: zeros, a null hit rate, every kind present, no rows', async () => {
    const index = new IndexDb(await dbPath())
    const zero = {
      requests: 0,
      hits: 0,
      misses: 0,
      coalesced: 0,
      stale: 0,
      errors: 0,
      hit_rate: null,
      bytes_from_cache: 0,
      bytes_from_upstream: 0,
      pulls_avoided: 0,
    }
    expect(overallStats(index)).toEqual(zero)
    expect(kindStats(index)).toEqual({ manifest: zero, blob: zero, tags: zero })
    expect(repositoryStats(index, { limit: 10 })).toEqual([])
    expect(hourlyStats(index)).toEqual([])
    expect(tagStats(index, { limit: 10 })).toEqual([])
    expect(storeCounts(index)).toEqual({ blobs: 0, bytes: 0, allocated_bytes: 0, manifests: 0, tags: 0 })
    index.close()
  })

  test('buffered accounting is flushed first; totals, kinds, repositories and hours add up', async () => {
    const index = new IndexDb(await dbPath())
    account(index, T0 + 1, 'library/a', 'blob', 'miss', 100)
    account(index, T0 + 2, 'library/a', 'blob', 'hit', 100)
    account(index, T0 + 3, 'library/a', 'blob', 'hit', 100)
    account(index, T0 + HOUR + 5, 'library/a', 'blob', 'coalesced', 100)
    account(index, T0 + HOUR + 6, 'library/a', 'manifest', 'stale', 10)
    account(index, T0 + HOUR + 7, 'library/b', 'manifest', 'hit', 10)
    account(index, T0 + HOUR + 8, 'library/b', 'manifest', 'hit', 0, 'HEAD')
    account(index, T0 + 3 * HOUR, 'library/b', 'blob', 'error')
    account(index, T0 + 3 * HOUR, 'library/c', 'tags', 'miss', 7)

    // Nothing flushed yet: the stats functions must do it.
    const overall = overallStats(index)
    expect(overall).toEqual({
      requests: 9,
      hits: 4,
      misses: 2,
      coalesced: 1,
      stale: 1,
      errors: 1,
      hit_rate: 6 / 8,
      bytes_from_cache: 320,
      bytes_from_upstream: 107,
      pulls_avoided: 2,
    })
    const kinds = kindStats(index)
    expect(kinds.blob).toMatchObject({ requests: 5, errors: 1, hit_rate: 3 / 4 })
    expect(kinds.manifest).toMatchObject({ requests: 3, hit_rate: 1, pulls_avoided: 2 })
    expect(kinds.tags).toMatchObject({ requests: 1, hit_rate: 0, bytes_from_upstream: 7 })
    expect(Object.keys(kinds.blob)).toEqual(Object.keys(overall))

    const repos = repositoryStats(index, { limit: 10 })
    expect(repos.map((r) => [r.repo, r.requests])).toEqual([
      ['library/a', 5],
      ['library/b', 3],
      ['library/c', 1],
    ])
    expect(repos[0]).toMatchObject({ registry: 'registry-1.docker.io', hit_rate: 4 / 5 })
    expect(repositoryStats(index, { limit: 2 })).toHaveLength(2)

    // Hours with requests only, oldest first: the empty hour T0+2h is absent.
    const hours = hourlyStats(index)
    expect(hours.map((h) => [h.hour, h.requests])).toEqual([
      [T0, 3],
      [T0 + HOUR, 4],
      [T0 + 3 * HOUR, 2],
    ])
    index.close()
  })

  test('since counts whole hours: the hour that contains it is included in full', async () => {
    const index = new IndexDb(await dbPath())
    account(index, T0 + 10, 'library/a', 'blob', 'hit', 1)
    account(index, T0 + HOUR + 10, 'library/a', 'blob', 'hit', 1)
    account(index, T0 + HOUR + 20, 'library/a', 'blob', 'miss', 1)
    expect(overallStats(index, { since: T0 + HOUR + 15 }).requests).toBe(2)
    expect(overallStats(index, { since: T0 + HOUR }).requests).toBe(2)
    expect(overallStats(index, { since: T0 + HOUR - 1 }).requests).toBe(3)
    expect(overallStats(index, { since: T0 + 2 * HOUR }).hit_rate).toBeNull()
    expect(hourlyStats(index, { since: T0 + HOUR })).toHaveLength(1)
    index.close()
  })

  test('per tag and per blob: lifetime counters, most requested first, since on the last use', async () => {
    const index = new IndexDb(await dbPath())
    const d1 = `sha256:${'1'.repeat(64)}`
    const d2 = `sha256:${'2'.repeat(64)}`
    index.addBlob(d1, 1000, null, T0)
    index.addBlob(d2, 50, null, T0)
    index.touchBlob(d1, 'miss', 1000, T0 + 1)
    index.touchBlob(d1, 'coalesced', 1000, T0 + 2)
    index.touchBlob(d1, 'hit', 1000, T0 + 3)
    index.touchBlob(d2, 'hit', 50, T0 + HOUR)
    index.touchTag('r', 'library/a', 'latest', 'miss', 10, false, T0)
    index.touchTag('r', 'library/a', 'latest', 'hit', 10, true, T0 + 1)
    index.touchTag('r', 'library/a', 'latest', 'stale', 10, true, T0 + 2)
    index.touchTag('r', 'library/a', 'old', 'error', 0, false, T0 + 3)
    index.touchTag('r', 'library/b', '1.0', 'hit', 10, true, T0 + 4 * HOUR)
    index.setTag('r', 'library/a', 'latest', `sha256:${'3'.repeat(64)}`, 'x')

    const blobs = blobStats(index, { limit: 10 })
    expect(blobs[0]).toEqual({
      digest: d1,
      size: 1000,
      media_type: null,
      requests: 3,
      hits: 1,
      coalesced: 1,
      misses: 1,
      hit_rate: 2 / 3,
      bytes_from_cache: 2000,
      bytes_from_upstream: 1000,
      first_cached: T0,
      last_access: T0 + 3,
    })
    expect(blobStats(index, { limit: 10, since: T0 + 10 }).map((b) => b.digest)).toEqual([d2])

    const tags = tagStats(index, { limit: 10 })
    expect(tags[0]).toEqual({
      registry: 'r',
      repo: 'library/a',
      tag: 'latest',
      requests: 3,
      hits: 1,
      misses: 1,
      stale: 1,
      errors: 0,
      pulls_avoided: 2,
      bytes_from_cache: 20,
      bytes_from_upstream: 10,
      last_request: T0 + 2,
    })
    // Equal requests: the most recently requested first.
    expect(tags.map((t) => t.tag)).toEqual(['latest', '1.0', 'old'])
    expect(tagStats(index, { limit: 10, since: T0 + HOUR }).map((t) => t.tag)).toEqual(['1.0'])
    expect(tagStats(index, { limit: 1 })).toHaveLength(1)
    expect(storeCounts(index)).toEqual({
      blobs: 2,
      bytes: 1050,
      allocated_bytes: 1050,
      manifests: 0,
      tags: 1,
    })
    index.close()
  })

  test('a read-only index sees what the writer flushed, and cannot be created or written', async () => {
    const path = await dbPath()
    expect(() => new IndexDb(path, { readonly: true })).toThrow()
    const writer = new IndexDb(path)
    account(writer, T0, 'library/a', 'blob', 'hit', 5)
    writer.flush()
    const reader = new IndexDb(path, { readonly: true })
    expect(overallStats(reader)).toMatchObject({ requests: 1, bytes_from_cache: 5 })
    account(writer, T0, 'library/a', 'blob', 'hit', 5)
    // Buffered in the writer: invisible until it flushes.
    expect(overallStats(reader).requests).toBe(1)
    writer.flush()
    expect(overallStats(reader).requests).toBe(2)
    expect(() => reader.addBlob(`sha256:${'4'.repeat(64)}`, 1, null)).toThrow(/readonly/i)
    reader.close()
    writer.close()
  })

  test('the report: ISO times, top N, the shape the status page reads', async () => {
    const index = new IndexDb(await dbPath())
    account(index, T0 + 5, 'library/a', 'manifest', 'hit', 10)
    index.touchTag('r', 'library/a', 'latest', 'hit', 10, true, T0 + 5)
    const report = statsReport({
      index,
      since: T0,
      top: 5,
      budgetBytes: 1000,
      upstreams: [
        {
          host: 'docker.io',
          namePrefix: '',
          report: {
            url: 'https://registry-1.docker.io',
            offline: false,
            state: 'unknown',
            last_answer: null,
            last_failure: null,
            rate_limit: null,
            recent_errors: [],
          },
        },
      ],
      uptimeSeconds: 12,
      now: T0 + 60_000,
    })
    expect(Object.keys(report)).toEqual([
      'generated_at',
      'since',
      'version',
      'uptime_seconds',
      'overall',
      'by_kind',
      'top_repositories',
      'top_tags',
      'hourly',
      'store',
      'upstream',
      'upstreams',
    ])
    // One upstream: its part is everything.
    expect(report.upstreams).toEqual([{ host: 'docker.io', ...report.upstream, totals: report.overall }])
    expect(report.generated_at).toBe('2024-01-01T10:01:00.000Z')
    expect(report.since).toBe('2024-01-01T10:00:00.000Z')
    expect(report.hourly).toEqual([{ hour: '2024-01-01T10:00:00.000Z', ...report.overall }])
    expect(report.top_tags[0]?.last_request).toBe('2024-01-01T10:00:00.005Z')
    expect(report.overall.pulls_avoided).toBe(1)
    expect(report.store).toEqual({
      blobs: 0,
      bytes: 0,
      allocated_bytes: 0,
      manifests: 0,
      tags: 0,
      budget_bytes: 1000,
    })
    index.close()
  })
})
