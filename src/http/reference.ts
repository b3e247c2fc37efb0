// Parsing of everything a client puts in a URL or a Range header. Whatever passes here is safe
// to use in an upstream URL and, for digests, as a file name: the grammars admit no '/', '..',
// '%' or NUL, so no path built from them can leave the store.

import { RegistryError } from '../errors.js'
import { ANY_DIGEST, NAME_COMPONENT, type RepoName, SHA256_DIGEST, TAG } from '../oci.js'

export type { RepoName } from '../oci.js'

/**
 * Names longer than this are refused by clients anyway (host + '/' + name <= 255), and by
 * registries: neither the name the client used nor the one asked of upstream may be longer.
 */
const MAX_NAME = 255

export function parseName(raw: string, libraryPrefix: boolean): RepoName {
  if (raw.length === 0 || raw.length > MAX_NAME) {
    throw new RegistryError('NAME_INVALID', { name: clip(raw), reason: 'length must be 1 to 255' })
  }
  const parts = raw.split('/')
  for (const part of parts) {
    if (!NAME_COMPONENT.test(part)) {
      throw new RegistryError('NAME_INVALID', {
        name: raw,
        reason: `invalid path component ${JSON.stringify(part)}`,
      })
    }
  }
  // Docker Hub keeps official images under library/; "alpine" and "library/alpine" are one repo.
  const upstream = libraryPrefix && parts.length === 1 ? `library/${raw}` : raw
  if (upstream.length > MAX_NAME) {
    throw new RegistryError('NAME_INVALID', {
      name: raw,
      reason: `upstream knows it as ${upstream.slice(0, 8)}${raw}, longer than 255 characters`,
    })
  }
  return { client: raw, upstream }
}

/** What a client sent, echoed back in an error: no more of it than a valid value could be. */
function clip(text: string): string {
  return text.length > MAX_NAME ? `${text.slice(0, MAX_NAME)}...` : text
}

export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: string }

export function parseReference(raw: string): Reference {
  if (raw.includes(':')) return { kind: 'digest', digest: parseDigest(raw, 'MANIFEST_UNKNOWN') }
  if (!TAG.test(raw)) throw new RegistryError('TAG_INVALID', { tag: raw })
  return { kind: 'tag', tag: raw }
}

/**
 * A well-formed digest of an algorithm we do not store is "unknown" (404), as the spec has it;
 * a malformed one is DIGEST_INVALID (400).
 */
export function parseDigest(raw: string, unknownCode: 'BLOB_UNKNOWN' | 'MANIFEST_UNKNOWN'): string {
  // Only sha256 is stored; other algorithms are refused rather than half-supported.
  if (SHA256_DIGEST.test(raw)) return raw
  if (ANY_DIGEST.test(raw) && !raw.startsWith('sha256:')) {
    throw new RegistryError(unknownCode, { digest: raw, reason: 'only sha256 digests are supported' })
  }
  throw new RegistryError('DIGEST_INVALID', { digest: raw })
}

/** A byte range resolved against a known size: first and last byte, inclusive. */
export interface ByteRange {
  start: number
  end: number
}

/**
 * RFC 9110 single range. Returns undefined when the whole body should be sent: no Range, a
 * multi-range (the full body with 200 is a valid answer and what containers/image expects), or
 * a unit other than bytes. Throws RANGE_INVALID when the range cannot be satisfied.
 */
function unsatisfiable(range: string, size: number): RegistryError {
  return new RegistryError(
    'RANGE_INVALID',
    { range, size },
    { headers: { 'Content-Range': `bytes */${size}` } },
  )
}

export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  if (header === undefined) return undefined
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header)
  if (!m) {
    if (/^\s*bytes\s*=.*,/i.test(header) || !/^\s*bytes\s*=/i.test(header)) return undefined
    throw unsatisfiable(header, size)
  }
  const [, first, last] = m
  let start: number
  let end: number
  if (first === '' && last === '') {
    throw unsatisfiable(header, size)
  } else if (first === '') {
    // Suffix range: the last N bytes.
    const n = Number(last)
    if (n === 0) {
      throw unsatisfiable(header, size)
    }
    start = Math.max(0, size - n)
    end = size - 1
  } else {
    start = Number(first)
    end = last === '' ? size - 1 : Math.min(Number(last), size - 1)
    if (last !== '' && Number(last) < start) {
      throw unsatisfiable(header, size)
    }
  }
  if (start >= size) {
    throw unsatisfiable(header, size)
  }
  return { start, end }
}
