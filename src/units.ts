// Durations and sizes the way operators write them: "500ms", "60s", "5m", "24h", "7d";
// "1024", "64MiB", "50GiB", "1.5GB". The config reads them, the admin API and `pullcache stats`
// take them in queries and flags, and `config check` writes them back: each format gives text
// its parser reads back as the same number. One module, so every place agrees on the units.

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const UNITS_BYTES: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
}

/** The largest unit that divides `value` exactly, so that parsing the text gives `value` back. */
function inUnits(value: number, units: [string, number][]): string {
  if (value === 0) return `0${units.at(-1)![0]}`
  let best = `${value}${units.at(-1)![0]}`
  let smallest = value
  for (const [unit, factor] of units) {
    if (value % factor === 0 && value / factor < smallest) {
      smallest = value / factor
      best = `${smallest}${unit}`
    }
  }
  return best
}

/** 90_000 -> "90s", 3_600_000 -> "1h": text parseDuration reads back as the same number. */
export function formatDuration(ms: number): string {
  return inUnits(ms, [
    ['d', UNITS_MS.d!],
    ['h', UNITS_MS.h!],
    ['m', UNITS_MS.m!],
    ['s', UNITS_MS.s!],
    ['ms', 1],
  ])
}

/** 67_108_864 -> "64MiB", 5e10 -> "50GB": text parseSize reads back as the same number. */
export function formatSize(bytes: number): string {
  return inUnits(bytes, [
    ['TiB', UNITS_BYTES.tib!],
    ['GiB', UNITS_BYTES.gib!],
    ['MiB', UNITS_BYTES.mib!],
    ['KiB', UNITS_BYTES.kib!],
    ['TB', UNITS_BYTES.tb!],
    ['GB', UNITS_BYTES.gb!],
    ['MB', UNITS_BYTES.mb!],
    ['KB', UNITS_BYTES.kb!],
    ['B', 1],
  ])
}

/** "500ms", "60s", "5m", "24h", "7d" -> milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/i.exec(text)
  if (!m) return undefined
  return Math.round(Number(m[1]) * UNITS_MS[m[2]!.toLowerCase()]!)
}

/** "64MiB", "50GiB", "1.5GB", "1024" -> bytes. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$/i.exec(text)
  if (!m) return undefined
  return Math.floor(Number(m[1]) * UNITS_BYTES[(m[2] ?? 'b').toLowerCase()]!)
}
