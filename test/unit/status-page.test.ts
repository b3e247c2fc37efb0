import { describe, expect, test } from 'vitest'
import { escapeHtml, html } from '../../src/http/html.js'
import { formatCount, formatDuration, formatPercent } from '../../src/http/status-page-numbers.js'
import { renderStatusPage } from '../../src/http/status-page-render.js'
import type { StatsReport } from '../../src/mirror/stats-report.js'
import {
  busyReport,
  emptyReport,
  GENERATED_AT,
  HOSTILE_MESSAGE,
  HOSTILE_REPO,
  totals,
} from '../support/stats-fixture.js'

const HOSTILE = [
  '<script>alert(1)</script>',
  '"><img src=x onerror=alert(1)>',
  "' onmouseover='alert(1)",
  '</style><script>alert(1)</script>',
  '</title></head><body onload=alert(1)>',
  '<svg onload=alert(1)>',
  ']]><!--',
  '&lt;already escaped&gt;',
]

/** Markup a hostile string could only have produced by getting through unescaped. */
function assertNoInjection(page: string): void {
  expect(page).not.toMatch(/<script/i)
  expect(page).not.toMatch(/<img/i)
  expect(page).not.toMatch(/<svg onload/i)
  expect(page).not.toMatch(/<body onload/i)
  expect(page).not.toMatch(/\son\w+='/i)
  // Nothing closed the style sheet, the head or the body early.
  for (const end of ['</style>', '</head>', '</body>']) expect(page.split(end)).toHaveLength(2)
}

describe('escapeHtml', () => {
  test('escapes the five characters that matter in text and quoted attributes', () => {
    expect(escapeHtml(`<a href="x" title='y'>&</a>`)).toBe(
      '&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;',
    )
  })

  test('leaves everything else alone, including non-ASCII', () => {
    expect(escapeHtml('library/alpine:3.20 — ünïcode ✓ 🐳')).toBe('library/alpine:3.20 — ünïcode ✓ 🐳')
    expect(escapeHtml('')).toBe('')
  })

  test.each(HOSTILE)('hostile input %s comes out with no markup', (input) => {
    const out = escapeHtml(input)
    expect(out).not.toMatch(/[<>"']/)
    // Decoding it gives back exactly the input: escaped, not mangled.
    const decoded = out
      .replace(/&lt;/g, '<')
      .replace(/&gt;/g, '>')
      .replace(/&quot;/g, '"')
      .replace(/&#39;/g, "'")
      .replace(/&amp;/g, '&')
    expect(decoded).toBe(input)
  })

  test('already escaped text is escaped again: the page shows what the document says', () => {
    expect(escapeHtml('&lt;b&gt;')).toBe('&amp;lt;b&amp;gt;')
  })
})

describe('the html template', () => {
  test('escapes interpolated strings and numbers, keeps its own markup', () => {
    const name = '<b>x</b>'
    expect(html`<td title="${name}">${name}</td>`.__html).toBe(
      '<td title="&lt;b&gt;x&lt;/b&gt;">&lt;b&gt;x&lt;/b&gt;</td>',
    )
    expect(html`<i>${42}</i>`.__html).toBe('<i>42</i>')
  })

  test('nests without escaping twice, flattens arrays, drops null, undefined and false', () => {
    const inner = html`<b>${'&'}</b>`
    expect(html`<p>${inner}${[inner, '<', null]}${undefined}${false}</p>`.__html).toBe(
      '<p><b>&amp;</b><b>&amp;</b>&lt;</p>',
    )
  })
})

describe('numbers for people', () => {
  test('counts are grouped by thousands', () => {
    expect(formatCount(0)).toBe('0')
    expect(formatCount(999)).toBe('999')
    expect(formatCount(1000)).toBe('1,000')
    expect(formatCount(1_234_567)).toBe('1,234,567')
  })

  test('rates have one decimal and never round to a 0% or 100% they are not', () => {
    expect(formatPercent(null)).toBe('–')
    expect(formatPercent(0)).toBe('0%')
    expect(formatPercent(1)).toBe('100%')
    expect(formatPercent(0.8754)).toBe('87.5%')
    expect(formatPercent(2 / 3)).toBe('66.7%')
    expect(formatPercent(0.99999)).toBe('99.9%')
    expect(formatPercent(0.00001)).toBe('0.1%')
  })

  test('durations in the largest two units that matter', () => {
    expect(formatDuration(null)).toBe('–')
    expect(formatDuration(0)).toBe('0 s')
    expect(formatDuration(59)).toBe('59 s')
    expect(formatDuration(61)).toBe('1 min')
    expect(formatDuration(3600)).toBe('1 h')
    expect(formatDuration(3 * 3600 + 12 * 60 + 5)).toBe('3 h 12 min')
    expect(formatDuration(86_400)).toBe('1 d')
    expect(formatDuration(4 * 86_400 + 3 * 3600 + 59)).toBe('4 d 3 h')
  })
})

describe('renderStatusPage', () => {
  test('a complete standalone page: doctype, charset, viewport, refresh, no script, no outside asset', () => {
    // Empty: the busy document's hostile strings would show escaped "src=" as text.
    const page = renderStatusPage(emptyReport())
    expect(page.startsWith('<!doctype html>')).toBe(true)
    expect(page).toContain('<meta charset="utf-8">')
    expect(page).toContain('<meta name="viewport" content="width=device-width, initial-scale=1">')
    expect(page).toContain('<meta http-equiv="refresh" content="30">')
    expect(page).not.toMatch(/<script|<link|src=|url\(/i)
    // The only links are pullcache's own endpoints.
    const hrefs = [...page.matchAll(/href="([^"]*)"/g)].map((m) => m[1])
    expect(hrefs).toEqual(['/_pullcache/stats', '/metrics', '/_pullcache/readyz'])
  })

  test('hostile repository names and upstream error messages are shown as text', () => {
    const page = renderStatusPage(busyReport())
    assertNoInjection(page)
    expect(page).toContain(`<td class="repo" title="registry-1.docker.io/${escapeHtml(HOSTILE_REPO)}">`)
    expect(page).toContain(`>${escapeHtml(HOSTILE_REPO)}</td>`)
    expect(page).toContain(`<div class="err-msg">${escapeHtml(HOSTILE_MESSAGE)}</div>`)
  })

  test('every string of the document is escaped, wherever it lands', () => {
    for (const bad of HOSTILE) {
      const doc = busyReport()
      doc.version = bad
      doc.upstream.url = bad
      doc.top_repositories[0]!.registry = bad
      doc.top_repositories[0]!.repo = bad
      doc.upstream.recent_errors[0]!.kind = bad
      doc.upstream.recent_errors[0]!.message = bad
      const page = renderStatusPage(doc)
      assertNoInjection(page)
      expect(page).toContain(escapeHtml(bad))
    }
  })

  test('a javascript: upstream URL is text, never a link', () => {
    const doc = busyReport()
    doc.upstream.url = 'javascript:alert(1)'
    const page = renderStatusPage(doc)
    expect(page).toContain('javascript:alert(1)')
    expect(page).not.toMatch(/href="javascript/i)
  })

  test('the numbers, formatted', () => {
    const doc = busyReport()
    const page = renderStatusPage(doc)
    const big = (id: string) => new RegExp(`data-testid="${id}">([^<]*)<`).exec(page)?.[1]
    expect(big('hit-rate')).toBe(formatPercent(doc.overall.hit_rate))
    expect(big('hit-rate')).toBe('70.7%')
    expect(big('pulls-avoided')).toBe('1,234')
    expect(big('bytes-cache')).toBe('171.6 GiB')
    expect(big('bytes-upstream')).toBe('21.5 GiB')
    expect(big('disk')).toBe('80.1 GiB')
    expect(big('budget')).toBe('on disk, of 100.0 GiB budget (80.1%)')
    expect(page).toContain('1,105 of 1,564 answered from cache')
    expect(page).toContain('<span class="of">of 200 per 6 h</span>')
    expect(page).toContain('pulls left, reported 3 min ago')
    expect(page).toContain('<b data-testid="uptime">3 d 4 h</b>')
    expect(page).toContain('<b data-testid="version">0.1.0</b>')
    expect(page).toContain('22 min ago')
    // Docker Hub is named as such; another upstream is not.
    expect(page).toContain('Docker Hub pulls avoided')
    doc.upstream.url = 'https://registry.example.com'
    expect(renderStatusPage(doc)).toContain('Upstream pulls avoided')
  })

  test('the chart: one bar group per hour with traffic in the last 24, tallest at full height', () => {
    const doc = busyReport()
    const now = Date.parse(GENERATED_AT)
    // Out of the window on both sides: drawn nowhere.
    doc.hourly.unshift({ hour: new Date(now - 30 * 3_600_000).toISOString(), ...totals(500, 0) })
    const page = renderStatusPage(doc)
    const groups = page.match(/<g><title>/g) ?? []
    expect(groups).toHaveLength(busyReport().hourly.length)
    const heights = [...page.matchAll(/<rect class="b-\w+" x="[\d.]+" y="([\d.]+)"/g)].map((m) =>
      Number(m[1]),
    )
    expect(Math.min(...heights)).toBe(4)
    expect(page).toMatch(/<path class="rate" d="M\d+ [\d.]+H\d+/)
    expect(page).toContain(
      '<title>14:00–15:00 UTC: 46 requests, hit rate 97.8%, 45 from cache, 1 from upstream, 0 failed</title>',
    )
  })

  test('the rate limit bar turns warning-coloured when few pulls are left', () => {
    const doc = busyReport()
    doc.upstream.rate_limit = { limit: 100, remaining: 5, window_seconds: null, at: GENERATED_AT }
    const page = renderStatusPage(doc)
    expect(page).toContain('class="meter inverse full"')
    expect(page).toContain('<span class="of">of 100</span>')
  })

  test('an empty store: placeholders, not zeros dressed up as rates', () => {
    const page = renderStatusPage(emptyReport())
    assertNoInjection(page)
    expect(page).toContain('data-testid="hit-rate">–<')
    expect(page).toContain('nothing answered yet')
    expect(page).toContain('No requests in the last 24 hours')
    expect(page).toContain('No repositories pulled yet.')
    expect(page).toContain('no budget: the store grows as needed')
    expect(page).toContain('data-testid="rate-limit">not reported<')
    expect(page).toContain('No upstream errors since start.')
    expect(page).not.toContain('<path class="rate"')
    expect(page).not.toContain('<rect')
    expect(page).not.toContain('data-testid="offline"')
  })

  test('offline: a badge, a banner and the title say so', () => {
    const doc: StatsReport = { ...emptyReport() }
    doc.upstream = { ...doc.upstream, offline: true }
    const page = renderStatusPage(doc)
    expect(page).toContain('<title>pullcache (offline)</title>')
    expect(page).toContain('data-testid="offline"')
    expect(page).toContain('Offline on purpose')
    expect(page).toContain('offline: upstream is not asked')
  })

  test('a document from the CLI has no uptime', () => {
    const doc = emptyReport()
    doc.uptime_seconds = null
    expect(renderStatusPage(doc)).toContain('<b data-testid="uptime">–</b>')
  })
})
