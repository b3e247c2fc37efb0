// Image references as people write them (`alpine`, `user/app:1`, `ghcr.io/x/y:z`,
// `redis@sha256:...`), normalised the way Docker does it (distribution's reference package,
// ParseNormalizedNamed): no registry means Docker Hub, Docker Hub's names get `library/` when
// they have a single component, `index.docker.io` is Docker Hub too, and no tag means `latest`.
// The grammar is distribution's, so what passes here is safe to put in a registry URL.

import { ANY_DIGEST, isDigest, NAME_COMPONENT, TAG } from '../oci.js'

export const DOCKER_HUB_DOMAIN = 'docker.io'
const LEGACY_HUB_DOMAINS = new Set(['index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com'])

const DOMAIN =
  /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$/
const MAX_NAME = 255

export interface ImageReference {
  /** Registry host, `docker.io` for Docker Hub whichever way it was written. */
  readonly domain: string
  /** Repository path in the registry, e.g. `library/alpine`. */
  readonly path: string
  /** Null only when a digest was given without a tag. */
  readonly tag: string | null
  readonly digest: string | null
  /** Fully qualified: `docker.io/library/alpine:latest`, `docker.io/x/y@sha256:...`. */
  readonly canonical: string
}

export class InvalidReference extends Error {
  constructor(text: string, reason: string) {
    super(`invalid image reference ${JSON.stringify(text)}: ${reason}`)
    this.name = 'InvalidReference'
  }
}

export function parseImageReference(text: string): ImageReference {
  const input = text.trim()
  if (input === '') throw new InvalidReference(text, 'empty')
  if (/^[a-f0-9]{64}$/.test(input)) {
    // What Docker refuses too: it reads like an image ID, not a name.
    throw new InvalidReference(text, 'a 64-character hex string is an image ID, not a name')
  }

  let rest = input
  let digest: string | null = null
  const at = rest.indexOf('@')
  if (at !== -1) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!ANY_DIGEST.test(digest))
      throw new InvalidReference(text, `malformed digest ${JSON.stringify(digest)}`)
    if (!isDigest(digest)) {
      const reason = digest.startsWith('sha256:')
        ? 'a sha256 digest is 64 lowercase hex characters'
        : 'only sha256 digests are supported'
      throw new InvalidReference(text, reason)
    }
  }

  let tag: string | null = null
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!TAG.test(tag)) throw new InvalidReference(text, `invalid tag ${JSON.stringify(tag)}`)
  }

  // The first component is a registry when it looks like a host: it has a dot or a port, is
  // localhost, or has capitals (repository names never do).
  let domain = DOCKER_HUB_DOMAIN
  let path = rest
  const slash = rest.indexOf('/')
  if (slash !== -1) {
    const first = rest.slice(0, slash)
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      domain = first
      path = rest.slice(slash + 1)
      if (!DOMAIN.test(domain)) throw new InvalidReference(text, `invalid registry ${JSON.stringify(domain)}`)
    }
  }
  if (LEGACY_HUB_DOMAINS.has(domain.toLowerCase())) domain = DOCKER_HUB_DOMAIN
  if (domain === DOCKER_HUB_DOMAIN && !path.includes('/')) path = `library/${path}`

  if (path === '') throw new InvalidReference(text, 'no repository name')
  for (const component of path.split('/')) {
    if (!NAME_COMPONENT.test(component)) {
      const reason =
        component.toLowerCase() !== component
          ? 'repository names must be lowercase'
          : `invalid name component ${JSON.stringify(component)}`
      throw new InvalidReference(text, reason)
    }
  }
  if (`${domain}/${path}`.length > MAX_NAME) {
    throw new InvalidReference(text, `name longer than ${MAX_NAME} characters`)
  }

  if (tag === null && digest === null) tag = 'latest'
  const canonical = `${domain}/${path}${tag === null ? '' : `:${tag}`}${digest === null ? '' : `@${digest}`}`
  return { domain, path, tag, digest, canonical }
}

/** Whether a pullcache mirroring Docker Hub can serve this reference. */
export function isDockerHubReference(ref: ImageReference): boolean {
  return ref.domain === DOCKER_HUB_DOMAIN
}
