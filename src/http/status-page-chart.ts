// The status page's chart of the last CHART_HOURS hours: requests per hour as stacked bars
// (from cache, from upstream, failed) under the hit rate as a step line. Drawn as inline SVG
// with its labels in HTML, so it needs no script and stretches to any width.

import type { StatsReport } from '../mirror/stats-report.js'
import { type Html, html } from './html.js'
import { answeredFromCache, formatCount, formatPercent, round } from './status-page-numbers.js'

/** Hours the chart spans, ending with the hour the document was made in. */
export const CHART_HOURS = 24

const HOUR = 3_600_000

/**
 * Requests per hour as stacked bars (from cache, from upstream, failed) under the hit rate as a
 * step line, one step per hour. The SVG stretches to any width (preserveAspectRatio none, strokes
 * that do not scale), so its labels are HTML around it rather than SVG text that would stretch.
 */
export function chart(report: StatsReport, now: number): Html {
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
