// Stats documents made up for the status page's tests: a busy day with a hostile repository name
// and hostile upstream errors, and the document of a store that has seen nothing.
import type { StatsReport } from '../../src/mirror/stats-report.js'
import type { Totals } from '../../src/store/stats.js'

export const GENERATED_AT = '2026-05-01T14:25:00.000Z'
const HOUR = 3_600_000

export const HOSTILE_REPO = '<script>alert("repo")</script>/x&y'
export const HOSTILE_MESSAGE = `GET manifest x: upstream answered 500 (<img src=x onerror="alert('err')">)`

export function totals(hits: number, misses: number, extra: Partial<Totals> = {}): Totals {
  const coalesced = extra.coalesced ?? 0
  const stale = extra.stale ?? 0
  const errors = extra.errors ?? 0
  const answered = hits + misses + coalesced + stale
  return {
    requests: answered + errors,
    hits,
    misses,
    coalesced,
    stale,
    errors,
    hit_rate: answered === 0 ? null : (hits + coalesced + stale) / answered,
    bytes_from_cache: extra.bytes_from_cache ?? hits * 30_000_000,
    bytes_from_upstream: extra.bytes_from_upstream ?? misses * 30_000_000,
    pulls_avoided: extra.pulls_avoided ?? Math.floor(hits / 4),
  }
}

export function emptyReport(): StatsReport {
  const zero = totals(0, 0)
  const report: Omit<StatsReport, 'upstreams'> = {
    generated_at: GENERATED_AT,
    since: null,
    version: '0.1.0',
    uptime_seconds: 12,
    overall: zero,
    by_kind: { manifest: zero, blob: zero, tags: zero },
    top_repositories: [],
    top_tags: [],
    hourly: [],
    store: { blobs: 0, bytes: 0, allocated_bytes: 0, manifests: 0, tags: 0, budget_bytes: null },
    upstream: {
      url: 'https://registry-1.docker.io',
      offline: false,
      state: 'online',
      last_answer: GENERATED_AT,
      last_failure: null,
      rate_limit: null,
      recent_errors: [],
    },
  }
  return { ...report, upstreams: [{ host: 'docker.io', ...report.upstream, totals: zero }] }
}

/** A day of traffic: mornings cold, the cache warming up, one outage hour with stale answers. */
export function busyReport(): StatsReport {
  const now = Date.parse(GENERATED_AT)
  const last = now - (now % HOUR)
  const hourly: StatsReport['hourly'] = []
  for (let back = 23; back >= 0; back--) {
    if (back === 20 || back === 19 || back === 6) continue // quiet hours: no row at all
    const load = 40 + Math.round(60 * Math.sin(((23 - back) / 23) * Math.PI))
    const warm = Math.min(0.97, 0.35 + (23 - back) * 0.03)
    const hits = Math.round(load * warm)
    const outage = back === 9
    const t = outage
      ? totals(0, 0, { stale: 18, errors: 9 })
      : totals(hits, load - hits, { coalesced: back % 5 === 0 ? 6 : 0 })
    hourly.push({ hour: new Date(last - back * HOUR).toISOString(), ...t })
  }
  const sum = (k: keyof Omit<Totals, 'hit_rate'>) => hourly.reduce((n, h) => n + h[k], 0)
  const overall = totals(sum('hits'), sum('misses'), {
    coalesced: sum('coalesced'),
    stale: sum('stale'),
    errors: sum('errors'),
    bytes_from_cache: 184_223_190_016,
    bytes_from_upstream: 23_102_339_072,
    pulls_avoided: 1234,
  })
  const report: Omit<StatsReport, 'upstreams'> = {
    generated_at: GENERATED_AT,
    since: null,
    version: '0.1.0',
    uptime_seconds: 3 * 86_400 + 4 * 3600 + 120,
    overall,
    by_kind: {
      manifest: totals(310, 35, { pulls_avoided: 1234 }),
      blob: totals(700, 120, { coalesced: 30 }),
      tags: totals(95, 15),
    },
    top_repositories: [
      { registry: 'registry-1.docker.io', repo: 'library/python', ...totals(812, 40) },
      { registry: 'registry-1.docker.io', repo: 'library/node', ...totals(640, 95) },
      { registry: 'registry-1.docker.io', repo: HOSTILE_REPO, ...totals(120, 30) },
      {
        registry: 'registry-1.docker.io',
        repo: 'some-organisation-with-a-long-name/an-image-with-an-even-longer-name-for-testing',
        ...totals(33, 30),
      },
      { registry: 'registry-1.docker.io', repo: 'grafana/grafana', ...totals(0, 12) },
    ],
    top_tags: [],
    hourly,
    store: {
      blobs: 4211,
      bytes: 85_000_000_000,
      allocated_bytes: 86_000_000_000,
      manifests: 1380,
      tags: 212,
      budget_bytes: 100 * 1024 ** 3,
    },
    upstream: {
      url: 'https://registry-1.docker.io',
      offline: false,
      state: 'online',
      last_answer: '2026-05-01T14:21:40.000Z',
      // The hostile message once more, where the page says why upstream was last unreachable.
      last_failure: { at: '2026-05-01T14:02:11.000Z', message: HOSTILE_MESSAGE },
      rate_limit: { limit: 200, remaining: 143, window_seconds: 21_600, at: '2026-05-01T14:21:40.000Z' },
      recent_errors: [
        {
          at: '2026-05-01T14:02:11.000Z',
          kind: 'SERVER',
          status: 500,
          message: HOSTILE_MESSAGE,
        },
        {
          at: '2026-05-01T05:40:00.000Z',
          kind: 'NETWORK',
          status: null,
          message: 'manifest HEAD https://registry-1.docker.io: upstream unreachable: ECONNREFUSED',
        },
        {
          at: '2026-05-01T05:39:30.000Z',
          kind: 'RATE_LIMITED',
          status: 429,
          message:
            'GET manifest library/python:3.12-slim-bookworm-with-a-very-long-tag-name-that-does-not-wrap: upstream answered 429 (TOOMANYREQUESTS: You have reached your pull rate limit)',
        },
      ],
    },
  }
  // Three registries: the panel per upstream, with a long host among them.
  const other = { ...report.upstream, last_failure: null, rate_limit: null, recent_errors: [] }
  return {
    ...report,
    upstreams: [
      { host: 'docker.io', ...report.upstream, totals: totals(900, 140) },
      { host: 'ghcr.io', ...other, url: 'https://ghcr.io', totals: totals(180, 25) },
      {
        host: 'registry.some-long-company-name.example.com:5443',
        ...other,
        url: 'https://registry.some-long-company-name.example.com:5443',
        state: 'unreachable',
        totals: totals(25, 5, { errors: 7 }),
      },
    ],
  }
}
