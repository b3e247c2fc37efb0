// The digest every test compares bodies against: "sha256:" and the hex of the bytes' hash, and
// the digest a blob request's path names.

import { createHash } from 'node:crypto'

export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/** The digest of `/v2/<name>/blobs/<digest>` (a query left off), or undefined for any other path. */
export function blobDigestOf(path: string): string | undefined {
  return /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(path.split('?')[0]!)?.[1]
}
