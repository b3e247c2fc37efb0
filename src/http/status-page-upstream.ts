// How the status page tells of upstream: the badge in the header, the banner when upstream is
// offline on purpose or cannot be reached, the page title, and the upstream panel (reachability,
// the pull budget, recent errors). All from the document's upstream section: "online" only while
// upstream answers, never while the last contact failed.

import { humanBytes } from '../human-bytes.js'
import type { StatsReport } from '../mirror/stats-report.js'
import { type Html, html } from './html.js'
import { ago, formatCount, formatDuration, formatPercent, plural, round, utc } from './status-page-numbers.js'

/** Upstream errors listed, newest first; the document keeps a few more. */
const ERRORS_SHOWN = 8

export const TITLE_SUFFIX: Record<StatsReport['upstream']['state'], string> = {
  online: '',
  unreachable: ' (upstream unreachable)',
  offline: ' (offline)',
  unknown: '',
}

/** The state the page shows: offline on purpose says so whatever the last contact was. */
export function upstreamState(report: StatsReport): StatsReport['upstream']['state'] {
  return report.upstream.offline ? 'offline' : report.upstream.state
}

export function badge(report: StatsReport, now: number): Html {
  const up = report.upstream
  switch (upstreamState(report)) {
    case 'online':
      return html`<span class="badge online" data-testid="upstream-state" data-state="online" title="upstream answered ${up.last_answer === null ? 'recently' : ago(up.last_answer, now)}">online</span>`
    case 'unreachable':
      return html`<span class="badge unreachable" data-testid="upstream-state" data-state="unreachable" title="the last contact with upstream failed; what is cached is still served">upstream unreachable (serving from cache)</span>`
    case 'offline':
      return html`<span class="badge offline" data-testid="offline" data-state="offline" title="Upstream is not contacted: only what is cached is served">offline mode</span>`
    case 'unknown':
      return html`<span class="badge unknown" data-testid="upstream-state" data-state="unknown" title="no contact with upstream in the last minute">upstream not checked</span>`
  }
}

export function banner(report: StatsReport, now: number): Html | string {
  const up = report.upstream
  const state = upstreamState(report)
  if (state === 'offline') {
    return html`<p class="banner" role="status">Offline on purpose: upstream is not contacted, and only what is cached is served. Tags are answered from the cache however old they are.</p>`
  }
  if (state === 'unreachable') {
    const since = up.last_failure === null ? '' : html`, last tried ${ago(up.last_failure.at, now)}`
    return html`<p class="banner" role="status" data-testid="unreachable-banner">Upstream cannot be reached${since}. What is cached is served (tags as stale); what is not cached fails until upstream is back.</p>`
  }
  return ''
}

/** The panel's lines on the last answer and the last failure. */
function contact(report: StatsReport, now: number): Html {
  const up = report.upstream
  const answered =
    up.last_answer === null
      ? html`<div class="note" data-testid="last-answer">no answer from upstream yet</div>`
      : html`<div class="note" data-testid="last-answer">last answer <time datetime="${up.last_answer}" title="${utc(up.last_answer)}">${ago(up.last_answer, now)}</time></div>`
  const failed =
    up.last_failure === null
      ? ''
      : html`<div class="note" data-testid="last-failure">last failure <time datetime="${up.last_failure.at}" title="${utc(up.last_failure.at)}">${ago(up.last_failure.at, now)}</time>: ${up.last_failure.message}</div>`
  return html`${answered}${failed}`
}

export function upstream(report: StatsReport, now: number): Html {
  const up = report.upstream
  const rl = up.rate_limit
  let limit: Html
  if (rl === null) {
    limit = html`<div class="big small" data-testid="rate-limit">not reported</div>
      <div class="note">${up.offline ? 'offline: upstream is not asked' : 'upstream has not sent a pull budget yet'}</div>`
  } else {
    const left = rl.limit > 0 ? rl.remaining / rl.limit : 0
    const tone = left < 0.1 ? 'full' : left < 0.25 ? 'high' : ''
    const window = rl.window_seconds === null ? '' : ` per ${formatDuration(rl.window_seconds)}`
    limit = html`<div class="big small" data-testid="rate-limit">${formatCount(rl.remaining)} <span class="of">of ${formatCount(rl.limit)}${window}</span></div>
      <div class="meter inverse ${tone}" role="meter" aria-valuemin="0" aria-valuemax="${rl.limit}" aria-valuenow="${rl.remaining}" aria-label="pulls left upstream">
        <div style="width: ${round(Math.min(1, Math.max(0, left)) * 100)}%"></div>
      </div>
      <div class="note">pulls left, reported ${ago(rl.at, now)}</div>`
  }
  const errors = up.recent_errors.slice(0, ERRORS_SHOWN)
  const list =
    errors.length === 0
      ? html`<p class="note ok" data-testid="no-errors">No upstream errors since start.</p>`
      : html`<ol class="errors" data-testid="errors">${errors.map(
          (e) => html`<li>
          <div class="err-head"><span class="kind-tag">${e.kind}</span>${e.status === null ? '' : html`<span class="status">${e.status}</span>`}<time datetime="${e.at}" title="${utc(e.at)}">${ago(e.at, now)}</time></div>
          <div class="err-msg">${e.message}</div>
        </li>`,
        )}</ol>`
  return html`<div class="label">Reachability</div>
      ${contact(report, now)}
      <div class="label gap">Rate limit</div>
      ${limit}
      <div class="label gap">Recent errors${up.recent_errors.length > ERRORS_SHOWN ? html` <span class="note">(newest ${ERRORS_SHOWN} of ${up.recent_errors.length})</span>` : ''}</div>
      ${list}
      <div class="note url">${up.url}</div>`
}

/**
 * With several upstreams: one line each, its state and its requests' hit rate and bytes (the
 * panel above tells of the root upstream alone). Empty with one upstream.
 */
export function upstreamShares(report: StatsReport): Html | string {
  if (report.upstreams.length < 2) return ''
  return html`<section class="panel" data-testid="upstreams">
    <h2>By upstream</h2>
    <div class="kinds shares">${report.upstreams.map((u) => {
      const state = u.offline ? 'offline' : u.state
      return html`<div class="kind" data-testid="upstream-share" data-host="${u.host}">
          <span class="kind-name" title="${u.url}">${u.host}</span>
          <span class="meter thin"><span style="width: ${round((u.totals.hit_rate ?? 0) * 100)}%"></span></span>
          <b>${formatPercent(u.totals.hit_rate)}</b>
          <span class="note">${plural(u.totals.requests, 'request')}, ${humanBytes(u.totals.bytes_from_upstream)} fetched, ${state}</span>
        </div>`
    })}</div>
  </section>`
}
