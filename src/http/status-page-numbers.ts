// Numbers, durations and times as the status page writes them for people ("1,234", "87.5%",
// "3 h 12 min", "5 min ago"), and the sums the page draws from a set of totals. The stats
// document keeps the exact numbers; this is only how they read.

import type { Totals } from '../store/stats.js'

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

export function ago(at: string, now: number): string {
  const seconds = (now - Date.parse(at)) / 1000
  return seconds < 5 ? 'just now' : `${formatDuration(seconds)} ago`
}

/** "2024-05-01T14:03:22.123Z" -> "2024-05-01 14:03:22 UTC". */
export function utc(iso: string): string {
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`
}

/** "1 request", "1,204 requests". */
export function plural(n: number, noun: string): string {
  return `${formatCount(n)} ${noun}${n === 1 ? '' : 's'}`
}

/** Requests the cache answered: hits, those that joined a fill in flight, and stale ones. */
export function answeredFromCache(t: Totals): number {
  return t.hits + t.coalesced + t.stale
}

/** Requests answered, from the cache or from upstream; failures aside. */
export function answered(t: Totals): number {
  return t.hits + t.misses + t.coalesced + t.stale
}

/** Two decimals: enough for SVG coordinates and CSS widths, and short markup. */
export function round(n: number): number {
  return Math.round(n * 100) / 100
}
