// The registry vocabulary every part of pullcache speaks: the grammar of repository names, tags
// and digests (OCI distribution and image specs), the manifest media types, the sha256 digest of
// a body, the manifest size cap, and what a manifest references. Nothing here does I/O or knows
// about HTTP, the store or upstream, so every floor can import it.

import { createHash } from 'node:crypto'

// --- names, tags, digests ------------------------------------------------------------------

/** One path component of a repository name (distribution spec: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`). */
export const NAME_COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/
/** A whole repository name: components joined by '/'. Length limits are the caller's. */
export const REPO_NAME = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/
export const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/
/** The only digests pullcache stores: sha256, 64 lowercase hex characters. */
export const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/
/**
 * Any well-formed digest, as the OCI image spec defines it (descriptor.md): algorithm
 * components `[a-z0-9]+` joined by `[+._-]`, a colon, then `[a-zA-Z0-9=_-]+`.
 */
export const ANY_DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/

export function isDigest(value: string): boolean {
  return SHA256_DIGEST.test(value)
}

export function isTag(value: string): boolean {
  return TAG.test(value)
}

/** A repository as the client named it and as upstream knows it. */
export interface RepoName {
  /** The name the client used, e.g. "alpine"; paths in Link headers keep it. */
  readonly client: string
  /**
   * The name upstream knows, e.g. "library/alpine" on Docker Hub, and the repository's name in
   * the index. For a registry other than the root one it is prefixed with that registry's host
   * ("ghcr.io/org/app"), so its repositories never meet Docker Hub's in the index; that
   * registry's client takes the prefix off before asking (upstream/client.ts).
   */
  readonly upstream: string
}

/**
 * The key the index files every tag and repository under: the root upstream's host (as its URL
 * has it). The other registries share it (mirror/mirrors.ts) and keep their repositories under
 * namePrefixOf(host), so none of their names can be a Docker Hub name.
 */
export function registryKeyOf(url: string | URL): string {
  return new URL(url).host
}

/** How another registry's repositories start in the index: "ghcr.io/" for ghcr.io/org/app. */
export function namePrefixOf(host: string): string {
  return `${host}/`
}

/**
 * Whether a name's first path component names a registry rather than a Docker Hub namespace:
 * a host has a '.' or a port, or is "localhost"; a Docker Hub namespace has neither.
 */
export function isRegistryHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost'
}

export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

// --- manifests -----------------------------------------------------------------------------

export const MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const

/** Every manifest type pullcache stores, in the order we ask for them. Schema 1 is left out: its
 * digest is not the hash of its bytes, so it cannot be verified like the others. */
export const MANIFEST_TYPES = [
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerManifestList,
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.dockerManifest,
] as const

/** Manifests that list other manifests (one per platform). */
export const INDEX_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerManifestList,
])

/** Registries refuse manifests above 4 MiB (Docker Hub's and distribution's limit); so do we. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024

/** One descriptor a manifest points at, as the index records it. */
export interface ManifestRef {
  child: string
  mediaType: string | null
  size: number | null
  platform: string | null
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
