// What pullcache needs to know about manifest bodies: that their bytes hash to their digest,
// what they reference, and how a client's Accept header meets a stored media type.

import { createHash } from 'node:crypto'
import type { ManifestRef } from '../store/index-db.js'

export const INDEX_TYPES = new Set([
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
])

export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

interface Descriptor {
  mediaType?: unknown
  digest?: unknown
  size?: unknown
  platform?: { os?: unknown; architecture?: unknown; variant?: unknown }
}

/** The descriptors a manifest points at: config and layers, or an index's child manifests. */
export function manifestRefs(body: Buffer): ManifestRef[] {
  let parsed: { config?: Descriptor; layers?: Descriptor[]; manifests?: Descriptor[] }
  try {
    parsed = JSON.parse(body.toString('utf8'))
  } catch {
    return []
  }
  if (typeof parsed !== 'object' || parsed === null) return []
  const descriptors: Descriptor[] = [
    ...(parsed.config ? [parsed.config] : []),
    ...(Array.isArray(parsed.layers) ? parsed.layers : []),
    ...(Array.isArray(parsed.manifests) ? parsed.manifests : []),
  ]
  const refs: ManifestRef[] = []
  for (const d of descriptors) {
    if (typeof d !== 'object' || d === null || typeof d.digest !== 'string') continue
    const p = d.platform
    const platform =
      p && typeof p.os === 'string' && typeof p.architecture === 'string'
        ? [p.os, p.architecture, typeof p.variant === 'string' ? p.variant : undefined]
            .filter(Boolean)
            .join('/')
        : null
    refs.push({
      child: d.digest,
      mediaType: typeof d.mediaType === 'string' ? d.mediaType : null,
      size: typeof d.size === 'number' ? d.size : null,
      platform,
    })
  }
  return refs
}

/** The media types a client accepts; Node joins repeated Accept lines with ", ". */
export function acceptedTypes(accept: string | undefined): string[] {
  if (!accept) return []
  return accept
    .split(',')
    .map((part) => part.split(';')[0]!.trim().toLowerCase())
    .filter((t) => t.length > 0)
}

/** No Accept, or one that lists the type or a wildcard, takes the stored manifest as it is. */
export function accepts(accepted: string[], mediaType: string): boolean {
  return (
    accepted.length === 0 ||
    accepted.includes(mediaType) ||
    accepted.includes('*/*') ||
    accepted.includes('application/*')
  )
}
