// The status page at / and /_pullcache/: the stats document (GET /_pullcache/stats) drawn as one
// self-contained HTML page for people. Server-rendered with no script, no outside asset and no
// build step, so it works from a phone on the LAN, behind any proxy, and while offline. Every
// string from the document passes through escapeHtml (the `html` template does it by default):
// repository names and upstream error messages come from clients and from the internet.

import { type Context, Hono } from 'hono'
import { humanBytes } from '../human-bytes.js'
import type { Mirror } from '../mirror/mirror.js'
import type { StatsReport } from '../mirror/stats-report.js'
import type { Totals } from '../store/stats.js'
import { challenge } from './access.js'
import { ADMIN_PREFIX, type AdminDeps, serverStats, type ViewerEnv } from './admin.js'
import { upstreamCheck } from './health.js'

/** Seconds between reloads of the page, by the browser itself (no script). */
export const REFRESH_SECONDS = 30
/** Hours the chart spans, ending with the hour the document was made in. */
export const CHART_HOURS = 24
/** Upstream errors listed, newest first; the document keeps a few more. */
const ERRORS_SHOWN = 8

const HOUR = 3_600_000

// Whatever an injection got past escaping could still not run a script or load anything.
const SECURITY_HEADERS = {
  'Content-Security-Policy':
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
}

/** Routes to mount at the root: the page at / and at ADMIN_PREFIX/. */
export function statusPageRoutes(mirror: Mirror, deps: AdminDeps): Hono<ViewerEnv> {
  // The app is made once per server, as it starts.
  const startedAt = Date.now()
  const page = new Hono<ViewerEnv>()
  const handler = async (c: Context<ViewerEnv>) => {
    // The badge tells how upstream is now, not at its last pull: wait (a few seconds at most)
    // for the readiness ping, which is sent at most once per 10 s however often pages load.
    await upstreamCheck(mirror)
    const body = renderStatusPage(serverStats(mirror, deps, startedAt, undefined, c.get('viewer')))
    return new Response(body, {
      status: 200,
      headers: {
        'Content-Type': 'text/html; charset=utf-8',
        'Cache-Control': 'no-store',
        ...SECURITY_HEADERS,
      },
    })
  }
  for (const path of ['/', ADMIN_PREFIX, `${ADMIN_PREFIX}/`]) page.get(path, handler)
  // Anonymous viewers see the page without private names. This is where a browser signs in:
  // the 401 makes it ask, and it then sends the account with every request under ADMIN_PREFIX/.
  page.get(`${ADMIN_PREFIX}/login`, (c) => {
    if (c.get('viewer').user === null) throw challenge('sign in to see every repository')
    return c.redirect(`${ADMIN_PREFIX}/`, 303)
  })
  return page
}

// --- escaping ------------------------------------------------------------------------------

/** Text safe to place in HTML text and in double- or single-quoted attribute values. */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (ch) => ESCAPES[ch]!)
}

const ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
}

/** Markup that is already safe; only `html` makes one, so a plain string is always escaped. */
export interface Html {
  readonly __html: string
}

type Fragment = Html | string | number | null | undefined | false | readonly Fragment[]

/** Template tag: the literal parts are markup, every interpolated value is escaped. */
export function html(strings: TemplateStringsArray, ...values: Fragment[]): Html {
  let out = strings[0]!
  for (let i = 0; i < values.length; i++) out += fragment(values[i]) + strings[i + 1]!
  return { __html: out }
}

function fragment(value: Fragment | undefined): string {
  if (value === null || value === undefined || value === false) return ''
  if (typeof value === 'string') return escapeHtml(value)
  if (typeof value === 'number') return escapeHtml(String(value))
  if (Array.isArray(value)) return value.map(fragment).join('')
  return (value as Html).__html
}

// --- numbers for people --------------------------------------------------------------------

/** 1234567 -> "1,234,567". */
export function formatCount(n: number): string {
  return Math.round(n)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, ',')
}

/** 0.8754 -> "87.5%"; null (nothing answered yet) -> "–". Never rounds up to 100% or down to 0%. */
export function formatPercent(rate: number | null): string {
  if (rate === null || !Number.isFinite(rate)) return '–'
  if (rate >= 1) return '100%'
  if (rate <= 0) return '0%'
  let text = (rate * 100).toFixed(1)
  if (text === '100.0') text = '99.9'
  if (text === '0.0') text = '0.1'
  return `${text}%`
}

/** Seconds -> "42 s", "12 min", "3 h 12 min", "4 d 3 h"; null -> "–". */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '–'
  const s = Math.max(0, Math.floor(seconds))
  if (s < 60) return `${s} s`
  const min = Math.floor(s / 60)
  if (min < 60) return `${min} min`
  const h = Math.floor(min / 60)
  if (h < 24) return min % 60 === 0 ? `${h} h` : `${h} h ${min % 60} min`
  const d = Math.floor(h / 24)
  return h % 24 === 0 ? `${d} d` : `${d} d ${h % 24} h`
}

function ago(at: string, now: number): string {
  const seconds = (now - Date.parse(at)) / 1000
  return seconds < 5 ? 'just now' : `${formatDuration(seconds)} ago`
}

/** "2024-05-01T14:03:22.123Z" -> "2024-05-01 14:03:22 UTC". */
function utc(iso: string): string {
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`
}

// --- the page ------------------------------------------------------------------------------

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

/** "1 request", "1,204 requests". */
function plural(n: number, noun: string): string {
  return `${formatCount(n)} ${noun}${n === 1 ? '' : 's'}`
}

function answeredFromCache(t: Totals): number {
  return t.hits + t.coalesced + t.stale
}

function answered(t: Totals): number {
  return t.hits + t.misses + t.coalesced + t.stale
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

/**
 * Requests per hour as stacked bars (from cache, from upstream, failed) under the hit rate as a
 * step line, one step per hour. The SVG stretches to any width (preserveAspectRatio none, strokes
 * that do not scale), so its labels are HTML around it rather than SVG text that would stretch.
 */
function chart(report: StatsReport, now: number): Html {
  const byHour = new Map(report.hourly.map((h) => [Date.parse(h.hour), h]))
  const last = now - (now % HOUR)
  const slots = Array.from({ length: CHART_HOURS }, (_, i) => {
    const start = last - (CHART_HOURS - 1 - i) * HOUR
    return { start, totals: byHour.get(start) }
  })
  const peak = Math.max(0, ...slots.map((s) => (s.totals ? s.totals.requests : 0)))
  const W = CHART_HOURS * 10
  const H = 100
  // Bars and line keep inside [TOP, H]: a 100% line at the very edge would be half clipped.
  const TOP = 4
  const y = (fraction: number) => H - fraction * (H - TOP)

  const bars = slots.map(({ start, totals: t }, i) => {
    if (!t || t.requests === 0) return ''
    const parts = [
      { n: answeredFromCache(t), cls: 'b-hit' },
      { n: t.misses, cls: 'b-miss' },
      { n: t.errors, cls: 'b-err' },
    ]
    let base = H
    const rects = parts.map(({ n, cls }) => {
      if (n === 0) return ''
      const h = (n / peak) * (H - TOP)
      base -= h
      return html`<rect class="${cls}" x="${i * 10 + 1}" y="${round(base)}" width="8" height="${round(h)}"></rect>`
    })
    const when = `${hourLabel(start)}–${hourLabel(start + HOUR)} UTC`
    const tip = `${when}: ${formatCount(t.requests)} requests, hit rate ${formatPercent(t.hit_rate)}, ${formatCount(answeredFromCache(t))} from cache, ${formatCount(t.misses)} from upstream, ${formatCount(t.errors)} failed`
    return html`<g><title>${tip}</title>${rects}</g>`
  })

  // The hit-rate line: a level for each hour that had answers, joined where hours are adjacent.
  let d = ''
  let previous: number | undefined
  slots.forEach(({ totals: t }, i) => {
    const rate = t?.hit_rate ?? null
    if (rate === null) {
      previous = undefined
      return
    }
    const level = round(y(rate))
    d += previous === undefined ? `M${i * 10} ${level}` : `V${level}`
    d += `H${i * 10 + 10}`
    previous = level
  })

  const grid = [0.25, 0.5, 0.75].map(
    (f) => html`<line class="grid" x1="0" x2="${W}" y1="${round(y(f))}" y2="${round(y(f))}"></line>`,
  )
  const empty = peak === 0
  const summary = empty
    ? `No requests in the last ${CHART_HOURS} hours`
    : `Requests per hour, at most ${formatCount(peak)}, and hit rate per hour, over the last ${CHART_HOURS} hours`
  const middle = slots[Math.floor(CHART_HOURS / 2)]!.start

  return html`<figure class="chart">
      <div class="plot">
        <div class="axis left"><span>${empty ? '' : formatCount(peak)}</span><span>0</span></div>
        <div class="canvas">
          <svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="${summary}">
            ${grid}
            <line class="base" x1="0" x2="${W}" y1="${H}" y2="${H}"></line>
            ${bars}
            ${d ? html`<path class="halo" d="${d}"></path><path class="rate" d="${d}"></path>` : ''}
          </svg>
          ${empty ? html`<div class="empty">No requests in the last ${CHART_HOURS} hours</div>` : ''}
        </div>
        <div class="axis right"><span>100%</span><span>50%</span><span>0%</span></div>
        <div class="xaxis"><span>${hourLabel(slots[0]!.start)}</span><span>${hourLabel(middle)}</span><span>now (UTC)</span></div>
      </div>
      <figcaption class="legend">
        <span><i class="sw hit"></i>from cache</span>
        <span><i class="sw miss"></i>from upstream</span>
        <span><i class="sw err"></i>failed</span>
        <span><i class="sw line"></i>hit rate</span>
      </figcaption>
    </figure>`
}

function hourLabel(ms: number): string {
  return new Date(ms).toISOString().slice(11, 16)
}

function round(n: number): number {
  return Math.round(n * 100) / 100
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

// --- upstream state: the badge, the banner, and the panel's first lines -------------------

const TITLE_SUFFIX: Record<StatsReport['upstream']['state'], string> = {
  online: '',
  unreachable: ' (upstream unreachable)',
  offline: ' (offline)',
  unknown: '',
}

/** The state the page shows: offline on purpose says so whatever the last contact was. */
function upstreamState(report: StatsReport): StatsReport['upstream']['state'] {
  return report.upstream.offline ? 'offline' : report.upstream.state
}

function badge(report: StatsReport, now: number): Html {
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

function banner(report: StatsReport, now: number): Html | string {
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

function upstream(report: StatsReport, now: number): Html {
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

const STYLE = `
:root {
  --bg: #f4f5f7; --panel: #fff; --ink: #14171c; --muted: #667085; --line: #e3e6eb;
  --hit: #12a17a; --miss: #f0a53a; --err: #e5484d; --rate: #3b4fd8; --accent: #0f7b60;
  --warn: #d97706;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0e1014; --panel: #171a20; --ink: #e6e8eb; --muted: #9aa3af; --line: #2a2f38;
    --hit: #23b48c; --miss: #e9a13b; --err: #f2555a; --rate: #8b9bff; --accent: #3fd0a5;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-variant-numeric: tabular-nums;
}
a { color: inherit; }
.wrap { max-width: 1080px; margin: 0 auto; padding: 0 16px; }
.top { background: var(--panel); border-bottom: 1px solid var(--line); }
.top-row { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; min-height: 56px; padding-top: 8px; padding-bottom: 8px; }
h1 { font-size: 20px; margin: 0; letter-spacing: -0.01em; display: flex; align-items: center; gap: 8px; }
.logo { color: var(--accent); font-size: 16px; }
.upstream-url { color: var(--muted); margin-left: auto; font-size: 13px; overflow-wrap: anywhere; }
.badge { font-size: 12px; font-weight: 600; text-transform: uppercase; letter-spacing: 0.06em; padding: 2px 8px; border-radius: 999px; }
.badge.online { color: var(--accent); background: color-mix(in srgb, var(--accent) 12%, transparent); }
.badge.offline { color: #fff; background: var(--warn); }
.badge.unreachable { color: #fff; background: var(--err); }
.badge.unknown { color: var(--muted); border: 1px solid currentColor; }
.banner { margin: 0; padding: 10px 14px; border-radius: 10px; border: 1px solid color-mix(in srgb, var(--warn) 45%, transparent); background: color-mix(in srgb, var(--warn) 12%, var(--panel)); font-size: 14px; }
main.wrap { padding-top: 16px; padding-bottom: 8px; display: grid; gap: 16px; }
.cards { display: grid; gap: 12px; grid-template-columns: repeat(auto-fit, minmax(min(100%, 220px), 1fr)); }
.card, .panel { background: var(--panel); border: 1px solid var(--line); border-radius: 12px; padding: 14px 16px; min-width: 0; }
.card.accent .big { color: var(--accent); }
.label { color: var(--muted); font-size: 13px; font-weight: 500; }
.label.gap { margin-top: 14px; }
.big { font-size: 34px; font-weight: 700; line-height: 1.15; letter-spacing: -0.02em; margin: 2px 0; overflow-wrap: anywhere; }
.big.small { font-size: 24px; }
.big .of { font-size: 15px; font-weight: 500; color: var(--muted); letter-spacing: 0; }
.note { color: var(--muted); font-size: 13px; }
.note.ok { color: var(--accent); margin: 4px 0 0; }
.note.url { margin-top: 12px; overflow-wrap: anywhere; }
h2 { font-size: 15px; margin: 0 0 10px; }
.two { display: grid; gap: 16px; grid-template-columns: repeat(auto-fit, minmax(min(100%, 340px), 1fr)); }
.stack { display: flex; flex-direction: column; gap: 16px; min-width: 0; }
.stack > :last-child { flex: 1; }
.chart { margin: 0; }
.plot { display: grid; grid-template-columns: auto 1fr auto; column-gap: 6px; row-gap: 4px; }
.axis { display: flex; flex-direction: column; justify-content: space-between; font-size: 11px; color: var(--muted); min-width: 2ch; }
.axis.left { text-align: right; }
.canvas { position: relative; height: 190px; min-width: 0; }
.canvas svg { display: block; width: 100%; height: 100%; overflow: visible; }
.grid { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; stroke-dasharray: 3 3; }
.base { stroke: var(--muted); stroke-width: 1; vector-effect: non-scaling-stroke; }
.b-hit { fill: var(--hit); } .b-miss { fill: var(--miss); } .b-err { fill: var(--err); }
g:hover rect { opacity: 0.8; }
.rate, .halo { fill: none; vector-effect: non-scaling-stroke; stroke-linejoin: round; stroke-linecap: round; }
.rate { stroke: var(--rate); stroke-width: 2.5; }
.halo { stroke: var(--panel); stroke-width: 6; }
.empty { position: absolute; inset: 0; display: grid; place-items: center; color: var(--muted); font-size: 14px; }
.xaxis { grid-column: 2; display: flex; justify-content: space-between; font-size: 11px; color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 12px; color: var(--muted); margin-top: 10px; }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; }
.sw.hit { background: var(--hit); } .sw.miss { background: var(--miss); } .sw.err { background: var(--err); }
.sw.line { height: 3px; width: 14px; background: var(--rate); border-radius: 2px; }
.kinds { display: grid; gap: 10px; }
.kind { display: grid; grid-template-columns: 6.5em 1fr 4.2em 7.5em; align-items: center; gap: 10px; min-width: 0; }
.kind b { text-align: right; }
.kind .note { text-align: right; }
.meter.thin { height: 6px; margin: 0; display: block; }
.meter.thin > span { display: block; height: 100%; background: var(--hit); border-radius: 999px; }
.counts { display: flex; flex-wrap: wrap; gap: 4px 16px; margin-top: 12px; color: var(--muted); font-size: 13px; }
.counts b { color: var(--ink); }
.meter { height: 10px; border-radius: 999px; background: var(--line); overflow: hidden; margin: 10px 0 6px; }
.meter > div { height: 100%; background: var(--hit); border-radius: 999px; }
.meter.high > div { background: var(--warn); } .meter.full > div { background: var(--err); }
.errors { list-style: none; margin: 6px 0 0; padding: 0; display: grid; gap: 8px; }
.errors li { border-left: 3px solid var(--err); padding: 2px 0 2px 10px; min-width: 0; }
.err-head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; font-size: 12px; }
.kind-tag { font-weight: 700; color: var(--err); letter-spacing: 0.03em; }
.status { font-weight: 600; }
.err-head time { color: var(--muted); margin-left: auto; }
.err-msg { font-size: 13px; overflow-wrap: anywhere; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.repos { width: 100%; border-collapse: collapse; font-size: 14px; }
.repos th { text-align: left; color: var(--muted); font-weight: 500; font-size: 12px; padding: 0 8px 6px; border-bottom: 1px solid var(--line); }
.repos td { padding: 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
.repos tr:last-child td { border-bottom: 0; }
.repos th:first-child, .repos td:first-child { padding-left: 0; }
.repos th:last-child, .repos td:last-child { padding-right: 0; }
.repo { overflow-wrap: anywhere; word-break: break-word; font-weight: 500; }
.num { text-align: right; white-space: nowrap; }
.repos th.num { text-align: right; }
.rate .pct { display: block; }
.mini { display: block; height: 4px; width: 56px; margin: 3px 0 0 auto; background: var(--line); border-radius: 2px; overflow: hidden; }
.mini > span { display: block; height: 100%; background: var(--hit); }
.foot { display: flex; flex-wrap: wrap; gap: 4px 18px; color: var(--muted); font-size: 12px; padding-top: 8px; padding-bottom: 24px; }
.foot b { color: var(--ink); font-weight: 600; }
@media (max-width: 520px) {
  body { font-size: 14px; }
  .wrap { padding: 0 12px; }
  main { gap: 12px; padding-top: 12px; }
  .cards { grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 10px; }
  .card, .panel { padding: 12px; border-radius: 10px; }
  .big { font-size: 26px; }
  .big.small { font-size: 20px; }
  .canvas { height: 150px; }
  .repos { font-size: 13px; }
  .repos td, .repos th { padding-left: 4px; padding-right: 4px; }
  .mini { width: 40px; }
  .kind { grid-template-columns: 5.5em 1fr 3.8em; }
  .kind .note { grid-column: 1 / -1; text-align: left; margin-top: -8px; }
  .upstream-url { margin-left: 0; width: 100%; }
}
`
