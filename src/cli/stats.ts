// `pullcache stats`: hit rates and bytes saved, read from the index of a data dir. It opens the
// index read-only, so it runs safely next to a `pullcache serve` on the same data dir (SQLite WAL
// lets it read while the server writes) and never creates or migrates anything. Without a running
// server it knows the index only: the server flushes its counters every index.flush_interval, so
// the last second of requests may be missing.

import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import type { NodeFigures } from '../cluster/figures.js'
import { askEveryNode } from '../cluster/totals.js'
import { humanBytes } from '../human-bytes.js'
import {
  budgetBytes,
  configuredUpstreams,
  DEFAULT_TOP,
  type StatsReport,
  statsReport,
} from '../mirror/stats-report.js'
import { IndexDb } from '../store/index-db.js'
import type { Totals } from '../store/stats.js'
import { parseDuration } from '../units.js'
import { CliExit, CONFIG_FLAGS, configFrom, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parseCommand } from './args.js'

export const STATS_USAGE = `Usage: pullcache stats [options]

Hit rates, bytes served from the cache and from upstream, and Docker Hub pulls avoided, read from
the index of the data dir. Safe to run while pullcache serve is running on it.

  --config FILE          JSON config file (default: embedded defaults; env PULLCACHE_CONFIG)
  --data-dir DIR         store and index (default ./data; env PULLCACHE_DATA_DIR)
  --upstream URL         the upstream the report names (env PULLCACHE_UPSTREAM)
  --since DUR            only requests of the last DUR, e.g. 24h or 7d (counted in whole hours)
  --top N                how many repositories and tags to list (default ${DEFAULT_TOP})
  --json                 print the JSON document GET /_pullcache/stats answers

In a cluster (cluster.node_url, cluster.peers and the secret configured), every node is asked for
its figures since it started, and the cluster's totals are shown beside this node's (a node that
does not answer within 3 s is named and left out).

Hit rate: requests answered without downloading the body from upstream for that request (hit,
coalesced or stale) over all requests answered without an error.
`

/** How long `pullcache stats` waits for each node of its cluster. */
const CLUSTER_ASK_TIMEOUT_MS = 3_000

export const STATS_OPTIONS = {
  ...CONFIG_FLAGS,
  json: { type: 'boolean' },
  since: { type: 'string' },
  top: { type: 'string' },
} as const

export async function stats(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, STATS_OPTIONS, STATS_USAGE)
  if (values.help) {
    process.stdout.write(STATS_USAGE)
    return EXIT_OK
  }
  if (positionals.length > 0) {
    throw new CliExit(EXIT_USAGE, `unexpected argument ${JSON.stringify(positionals[0])}\n\n${STATS_USAGE}`)
  }
  const sinceMs = optionalDuration(values.since as string | undefined)
  const top = optionalCount(values.top as string | undefined)
  const config = configFrom(values)

  const dataDir = resolve(config.data_dir)
  // Looking must not create anything: a typo in --data-dir is reported, not turned into a store.
  if (!existsSync(dataDir)) throw new CliExit(EXIT_FAILED, `data dir ${dataDir} does not exist`)
  const path = join(dataDir, 'index.db')
  if (!existsSync(path)) {
    throw new CliExit(EXIT_FAILED, `no index at ${path}: has pullcache serve run with this data dir?`)
  }
  let index: IndexDb
  try {
    index = new IndexDb(path, { readonly: true })
  } catch (err) {
    throw new CliExit(EXIT_FAILED, `cannot open the index ${path}: ${(err as Error).message}`)
  }

  let report: StatsReport
  try {
    report = statsReport({
      index,
      since: sinceMs === undefined ? undefined : Date.now() - sinceMs,
      top,
      budgetBytes: budgetBytes(config),
      upstreams: configuredUpstreams(config),
      uptimeSeconds: null,
    })
  } catch (err) {
    throw new CliExit(EXIT_FAILED, `cannot read the index ${path}: ${(err as Error).message}`)
  } finally {
    index.close()
  }

  const { node_url: self, peers, secret } = config.cluster
  if (self !== null && secret !== null && peers.length > 0) {
    report.cluster = await askEveryNode(self, peers, secret, CLUSTER_ASK_TIMEOUT_MS)
  }
  process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : renderTable(report, dataDir))
  return EXIT_OK
}

function optionalDuration(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  const ms = parseDuration(text)
  if (ms === undefined) {
    throw new CliExit(EXIT_USAGE, `--since: not a duration like "24h" or "7d": ${JSON.stringify(text)}`)
  }
  return ms
}

function optionalCount(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  if (!/^\d{1,6}$/.test(text) || Number(text) < 1) {
    throw new CliExit(EXIT_USAGE, `--top: not a positive whole number: ${JSON.stringify(text)}`)
  }
  return Number(text)
}

/** The report for people: overall, per kind, then the busiest repositories. */
export function renderTable(report: StatsReport, dataDir: string): string {
  const out: string[] = []
  out.push(
    `pullcache stats for ${dataDir}, ${report.since === null ? 'all time' : `since ${report.since}`}`,
    `upstream ${report.upstream.url}`,
    '',
  )
  const totalsRow = (label: string, t: Totals) => [
    label,
    String(t.requests),
    percent(t.hit_rate),
    humanBytes(t.bytes_from_cache),
    humanBytes(t.bytes_from_upstream),
    String(t.pulls_avoided),
    String(t.errors),
  ]
  out.push(
    ...columns([
      ['', 'requests', 'hit rate', 'from cache', 'from upstream', 'pulls avoided', 'errors'],
      totalsRow('overall', report.overall),
      ...Object.entries(report.by_kind).map(([kind, t]) => totalsRow(kind, t)),
    ]),
    '',
  )
  if (report.upstreams.length > 1) {
    out.push(
      ...columns([
        ['upstream', 'requests', 'hit rate', 'from cache', 'from upstream', 'pulls avoided', 'errors'],
        ...report.upstreams.map((u) => totalsRow(u.host, u.totals)),
      ]),
      '',
    )
  }
  if (report.top_repositories.length === 0) {
    out.push('no requests recorded', '')
  } else {
    out.push(
      ...columns([
        ['repository', 'requests', 'hit rate', 'bytes saved', 'from upstream', 'pulls avoided'],
        ...report.top_repositories.map((r) => [
          r.repo,
          String(r.requests),
          percent(r.hit_rate),
          humanBytes(r.bytes_from_cache),
          humanBytes(r.bytes_from_upstream),
          String(r.pulls_avoided),
        ]),
      ]),
      '',
    )
  }
  out.push(...clusterTable(report))
  const s = report.store
  out.push(
    `store: ${s.blobs} blobs, ${humanBytes(s.allocated_bytes)} on disk` +
      `${s.budget_bytes === null ? '' : ` of ${humanBytes(s.budget_bytes)}`} (${humanBytes(s.bytes)} logical); ` +
      `${s.manifests} manifests; ${s.tags} tags`,
    '',
  )
  return out.join('\n')
}

/** In a cluster: each node's client figures since it started, and their sum. */
function clusterTable(report: StatsReport): string[] {
  const cluster = report.cluster
  if (cluster === undefined) return []
  const row = (label: string, f: NodeFigures) => [
    label,
    String(f.requests),
    percent(f.hit_rate),
    humanBytes(f.bytes_served),
    humanBytes(f.bytes_from_upstream),
    String(f.upstream_requests),
  ]
  const counted = cluster.members.length - cluster.missing.length
  const lines = columns([
    [
      'cluster, since each node started',
      'requests',
      'hit rate',
      'served',
      'from upstream',
      'upstream requests',
    ],
    ...cluster.members.flatMap((m) =>
      m.figures === null ? [] : [row(`${m.url}${m.self ? ' (this node)' : ''}`, m.figures)],
    ),
    row(`cluster (${counted} of ${cluster.members.length} nodes)`, cluster.totals),
  ])
  for (const m of cluster.members) {
    if (m.figures === null) lines.push(`not counted: ${m.url}${m.self ? ' (this node)' : ''}: ${m.problem}`)
  }
  return [...lines, '']
}

/** Left-aligned first column, right-aligned numbers, two spaces between columns. */
function columns(rows: string[][]): string[] {
  const widths: number[] = []
  for (const row of rows) {
    for (const [i, cell] of row.entries()) widths[i] = Math.max(widths[i] ?? 0, cell.length)
  }
  return rows.map((row) =>
    row
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join('  ')
      .trimEnd(),
  )
}

function percent(rate: number | null): string {
  return rate === null ? '-' : `${(rate * 100).toFixed(1)}%`
}
