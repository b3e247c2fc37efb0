// The status page's cluster panel: in a cluster, each member's client figures and the cluster's
// totals beside them (the stats document's `cluster` part, src/cluster/totals.ts), counted from
// each node's start. Members left out of the totals are named with the reason, so a total that
// is a floor says so. On a phone the upstream columns give way, so the table fits.

import type { NodeFigures } from '../cluster/figures.js'
import { humanBytes } from '../human-bytes.js'
import type { StatsReport } from '../mirror/stats-report.js'
import { type Html, html } from './html.js'
import { formatCount, formatPercent } from './status-page-numbers.js'

export function clusterPanel(report: StatsReport): Html | string {
  const cluster = report.cluster
  if (cluster === undefined) return ''
  const row = (label: Html | string, f: NodeFigures, id: string) => html`<tr data-testid="${id}">
        <td class="repo">${label}</td>
        <td class="num">${formatCount(f.requests)}</td>
        <td class="num">${formatPercent(f.hit_rate)}</td>
        <td class="num">${humanBytes(f.bytes_served)}</td>
        <td class="num wide">${humanBytes(f.bytes_from_upstream)}</td>
        <td class="num wide">${formatCount(f.upstream_requests)}</td>
      </tr>`
  const members = cluster.members.map((m) =>
    m.figures === null
      ? html`<tr class="missing" data-testid="cluster-missing"><td class="repo">${m.url}</td><td colspan="5" class="note">not counted: ${m.problem ?? 'no answer'}</td></tr>`
      : row(
          m.self ? html`${m.url} <span class="note">(this node)</span>` : m.url,
          m.figures,
          m.self ? 'cluster-self' : 'cluster-member',
        ),
  )
  const counted = cluster.members.length - cluster.missing.length
  return html`<section class="panel">
    <h2>Cluster</h2>
    <table class="repos cluster" data-testid="cluster">
      <thead><tr><th>Node</th><th class="num">Client requests</th><th class="num">Hit rate</th><th class="num">Served</th><th class="num wide">From upstream</th><th class="num wide">Upstream requests</th></tr></thead>
      <tbody>${members}${row(html`<b>cluster (${counted} of ${cluster.members.length} nodes)</b>`, cluster.totals, 'cluster-totals')}</tbody>
    </table>
    <p class="note">Since each node started. A request relayed to the node that owns it counts once, where its client asked; upstream traffic counts where it was sent.</p>
  </section>`
}
