// Platforms as `os/arch[/variant]`, normalised and matched the way containerd does it, so that
// `linux/arm64` finds the `linux/arm64/v8` entry of an index and `linux/arm` finds `arm/v7`.

export interface Platform {
  os: string
  architecture: string
  /** Empty when the architecture has none, or its default one. */
  variant: string
}

export class InvalidPlatform extends Error {
  readonly code = 'PLATFORM_INVALID'
  constructor(text: string, reason: string) {
    super(`invalid platform ${JSON.stringify(text)}: ${reason}`)
    this.name = 'InvalidPlatform'
  }
}

const PART = /^[a-z0-9_.-]+$/

export function parsePlatform(text: string): Platform {
  const parts = text.trim().toLowerCase().split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !PART.test(p))) {
    throw new InvalidPlatform(text, 'expected os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm/v7')
  }
  return normalizePlatform({ os: parts[0]!, architecture: parts[1]!, variant: parts[2] ?? '' })
}

/** A comma-separated list, e.g. "linux/amd64,linux/arm64", without duplicates. */
export function parsePlatforms(text: string): Platform[] {
  const out: Platform[] = []
  for (const part of text.split(',')) {
    if (part.trim() === '') continue
    const p = parsePlatform(part)
    if (!out.some((q) => formatPlatform(q) === formatPlatform(p))) out.push(p)
  }
  if (out.length === 0) throw new InvalidPlatform(text, 'no platform given')
  return out
}

/** containerd's normalisation: architecture aliases, and default variants dropped or filled in. */
export function normalizePlatform(p: Platform): Platform {
  let os = p.os.toLowerCase()
  let architecture = p.architecture.toLowerCase()
  let variant = p.variant.toLowerCase()
  if (os === 'macos') os = 'darwin'
  switch (architecture) {
    case 'i386':
      architecture = '386'
      variant = ''
      break
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      architecture = 'amd64'
      if (variant === 'v1') variant = ''
      break
    case 'aarch64':
    case 'arm64':
      architecture = 'arm64'
      if (variant === '8' || variant === 'v8' || variant === 'v8.0') variant = ''
      break
    case 'armhf':
      architecture = 'arm'
      variant = 'v7'
      break
    case 'armel':
      architecture = 'arm'
      variant = 'v6'
      break
    case 'arm':
      if (variant === '' || variant === '7') variant = 'v7'
      else if (variant === '5' || variant === '6' || variant === '8') variant = `v${variant}`
      break
  }
  return { os, architecture, variant }
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant === '' ? '' : `/${p.variant}`}`
}

/**
 * The entry of an index that a client on `wanted` would pull: the first with the same os,
 * architecture and variant, else, when no variant was asked for, the first of that os and
 * architecture. Entries without a platform (attestations, for one) never match.
 */
export function pickPlatform<T>(
  entries: readonly T[],
  platformOf: (entry: T) => Platform | null,
  wanted: Platform,
): T | undefined {
  const candidates = entries.flatMap((entry) => {
    const p = platformOf(entry)
    if (p === null) return []
    const n = normalizePlatform(p)
    return n.os === wanted.os && n.architecture === wanted.architecture ? [{ entry, variant: n.variant }] : []
  })
  const exact = candidates.find((c) => c.variant === wanted.variant)
  if (exact) return exact.entry
  return wanted.variant === '' ? candidates[0]?.entry : undefined
}
