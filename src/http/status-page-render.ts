// The status page drawn: the stats document (GET /_pullcache/stats) as one self-contained HTML
// page for people. Server-rendered with no script, no outside asset and no build step, so it
// works from a phone on the LAN, behind any proxy, and while offline. This module lays the page
// out and draws the totals, disk, by-kind and repository panels; the chart, the upstream parts
// and the stylesheet have modules of their own. Every string passes through html.ts's escaping.

import { humanBytes } from '../human-bytes.js'
import type { StatsReport } from '../mirror/stats-report.js'
import { type Html, html } from './html.js'
import { CHART_HOURS, chart } from './status-page-chart.js'
import { clusterPanel } from './status-page-cluster.js'
import {
  answered,
  answeredFromCache,
  formatCount,
  formatDuration,
  formatPercent,
  plural,
  round,
  utc,
} from './status-page-numbers.js'
import { STYLE } from './status-page-style.js'
import {
  badge,
  banner,
  TITLE_SUFFIX,
  upstream,
  upstreamShares,
  upstreamState,
} from './status-page-upstream.js'

/** Seconds between reloads of the page, by the browser itself (no script). */
export const REFRESH_SECONDS = 30

export function renderStatusPage(report: StatsReport): string {
  const now = Date.parse(report.generated_at)
  const o = report.overall
  const hub = isDockerHub(report.upstream.url)
  const title = `pullcache${TITLE_SUFFIX[upstreamState(report)]}`
  const page = html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="${REFRESH_SECONDS}">
<meta name="color-scheme" content="light dark">
<title>${title}</title>
<style>${{ __html: STYLE }}</style>
</head>
<body>
<header class="top">
  <div class="wrap top-row">
    <h1><span class="logo" aria-hidden="true">▼</span>pullcache</h1>
    ${badge(report, now)}
    <span class="upstream-url" title="upstream">${hostOf(report.upstream.url)}</span>
  </div>
</header>
<main class="wrap">
  ${banner(report, now)}
  <section class="cards" aria-label="totals">
    ${card('Hit rate', formatPercent(o.hit_rate), answered(o) === 0 ? 'nothing answered yet' : `${formatCount(answeredFromCache(o))} of ${formatCount(answered(o))} answered from cache`, 'hit-rate', 'accent')}
    ${card(hub ? 'Docker Hub pulls avoided' : 'Upstream pulls avoided', formatCount(o.pulls_avoided), 'manifest GETs never sent upstream', 'pulls-avoided')}
    ${card('Served from cache', humanBytes(o.bytes_from_cache), `${plural(o.requests, 'request')} in all`, 'bytes-cache')}
    ${card('Fetched from upstream', humanBytes(o.bytes_from_upstream), o.errors > 0 ? `${plural(o.errors, 'request')} failed` : 'no failed requests', 'bytes-upstream')}
  </section>

  <section class="panel">
    <h2>Last ${CHART_HOURS} hours</h2>
    ${chart(report, now)}
  </section>

  <div class="two">
    <div class="stack">
      <section class="panel">
        <h2>Disk</h2>
        ${disk(report)}
      </section>
      <section class="panel">
        <h2>By kind</h2>
        ${byKind(report)}
      </section>
    </div>
    <section class="panel">
      <h2>Upstream</h2>
      ${upstream(report, now)}
    </section>
  </div>
  ${upstreamShares(report)}
  ${clusterPanel(report)}

  <section class="panel">
    <h2>Top repositories</h2>
    ${repositories(report)}
  </section>
</main>
<footer class="wrap foot">
  <span>pullcache <b data-testid="version">${report.version}</b></span>
  <span>up <b data-testid="uptime">${formatDuration(report.uptime_seconds)}</b></span>
  <span>as of ${utc(report.generated_at)}${report.since === null ? '' : html`, since ${utc(report.since)}`}</span>
  <span>refreshes every ${REFRESH_SECONDS} s</span>
  <span><a href="/_pullcache/stats">stats JSON</a> · <a href="/metrics">metrics</a> · <a href="/_pullcache/readyz">readiness</a></span>
</footer>
</body>
</html>
`
  return page.__html
}

function card(label: string, value: string, note: string, id: string, tone?: 'accent'): Html {
  return html`<div class="card${tone ? ` ${tone}` : ''}">
      <div class="label">${label}</div>
      <div class="big" data-testid="${id}">${value}</div>
      <div class="note">${note}</div>
    </div>`
}

function isDockerHub(url: string): boolean {
  const host = hostOf(url)
  return /(^|\.)docker\.(io|com)$/.test(host)
}

function hostOf(url: string): string {
  try {
    return new URL(url).host
  } catch {
    return url
  }
}

function byKind(report: StatsReport): Html {
  const kinds = [
    ['Manifests', report.by_kind.manifest],
    ['Blobs', report.by_kind.blob],
    ['Tag lists', report.by_kind.tags],
  ] as const
  return html`<div class="kinds">${kinds.map(
    ([label, t]) =>
      html`<div class="kind">
          <span class="kind-name">${label}</span>
          <span class="meter thin"><span style="width: ${round((t.hit_rate ?? 0) * 100)}%"></span></span>
          <b>${formatPercent(t.hit_rate)}</b>
          <span class="note">${plural(t.requests, 'request')}</span>
        </div>`,
  )}</div>`
}

function disk(report: StatsReport): Html {
  // The budget counts what the files take on disk; the logical size is shown beside it.
  const {
    allocated_bytes: bytes,
    bytes: logical,
    budget_bytes: budget,
    blobs,
    manifests,
    tags,
  } = report.store
  const counts = html`<div class="counts">
        <span><b>${formatCount(blobs)}</b> blobs</span>
        <span><b>${formatCount(manifests)}</b> manifests</span>
        <span><b>${formatCount(tags)}</b> tags</span>
        <span data-testid="logical"><b>${humanBytes(logical)}</b> logical</span>
      </div>`
  if (budget === null || budget <= 0) {
    return html`<div class="big" data-testid="disk">${humanBytes(bytes)}</div>
      <div class="note" data-testid="budget">on disk; no budget: the store grows as needed</div>
      ${counts}`
  }
  const used = bytes / budget
  const tone = used >= 0.95 ? 'full' : used >= 0.8 ? 'high' : ''
  return html`<div class="big" data-testid="disk">${humanBytes(bytes)}</div>
      <div class="note" data-testid="budget">on disk, of ${humanBytes(budget)} budget (${formatPercent(used)})</div>
      <div class="meter ${tone}" role="meter" aria-valuemin="0" aria-valuemax="${budget}" aria-valuenow="${bytes}" aria-label="disk use against the budget">
        <div style="width: ${round(Math.min(1, used) * 100)}%"></div>
      </div>
      ${counts}`
}

function repositories(report: StatsReport): Html {
  if (report.top_repositories.length === 0) {
    return html`<p class="note" data-testid="no-repos">No repositories pulled yet.</p>`
  }
  const rows = report.top_repositories.map(
    (r) => html`<tr>
        <td class="repo" title="${r.registry}/${r.repo}">${r.repo}</td>
        <td class="num">${formatCount(r.requests)}</td>
        <td class="num rate"><span class="pct">${formatPercent(r.hit_rate)}</span><span class="mini"><span style="width: ${round((r.hit_rate ?? 0) * 100)}%"></span></span></td>
        <td class="num">${humanBytes(r.bytes_from_cache)}</td>
      </tr>`,
  )
  return html`<table class="repos" data-testid="repos">
      <thead><tr><th>Repository</th><th class="num">Requests</th><th class="num">Hit rate</th><th class="num">Saved</th></tr></thead>
      <tbody>${rows}</tbody>
    </table>`
}
